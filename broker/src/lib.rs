//! WIF Broker: trades external OIDC tokens for Entra access tokens.
//!
//! The modules follow one exchange in order: [`issuer`] (discovery and signing keys),
//! [`token`] (verification), [`policy`] (federated credentials and matching), [`cache`]
//! (Entra tokens per identity and scope), [`entra`] (the token endpoint), [`audit`]
//! (one event per decision) and [`api`] (the HTTP edge). [`dev`] holds the local issuer
//! and the Entra emulator used by `wif-broker dev` and by the tests.

pub mod clock;
pub mod crypto;
pub mod dev;
pub mod policy;
