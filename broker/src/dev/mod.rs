//! The local stack for `wif-broker dev` and for tests: a local OIDC issuer, an Entra
//! emulator that behaves like Entra's token endpoint, and JWT signing keys.
//! Nothing here is used by `serve`.

pub mod entra;
pub mod issuer;
pub mod jwt;
pub mod stack;
