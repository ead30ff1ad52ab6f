//! The local stack for `wif-broker dev` and for tests: a local OIDC issuer, an Entra
//! emulator that behaves like Entra's token endpoint, and JWT signing keys.
//! Nothing here is used by `serve`.

pub mod entra;
pub mod imds;
pub mod issuer;
pub mod jwt;
pub mod stack;

mod server;

/// Why a local issuer or the Entra emulator could not start or mint.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("could not listen on a loopback port: {0}")]
    Bind(std::io::Error),
    #[error(transparent)]
    Jwt(#[from] jwt::JwtError),
    #[error("could not build the HTTP client: {0}")]
    HttpClient(reqwest::Error),
    #[error("claims must be a JSON object")]
    ClaimsNotObject,
}
