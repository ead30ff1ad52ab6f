//! The local stack for `wif-broker dev` and for tests: a local OIDC issuer, an Entra
//! emulator that behaves like Entra's token endpoint, and JWT signing keys.
//! Nothing here is used by `serve`.
//!
//! All of it but the constants below is behind the `dev` cargo feature (on by default,
//! off in the container image): a broker built without it has no emulator to turn on by
//! mistake (docs/architecture.md, "Crates, and what each may depend on").

#[cfg(feature = "dev")]
pub mod entra;
#[cfg(feature = "dev")]
pub mod imds;
#[cfg(feature = "dev")]
pub mod issuer;
#[cfg(feature = "dev")]
pub mod jwt;
#[cfg(feature = "dev")]
pub mod stack;

#[cfg(feature = "dev")]
mod server;

/// The subject of the dev stack's demo token and demo credential (`dev token --sub`'s
/// default). These constants stay in every build: `wif-broker dev token` is only a client
/// of a running dev stack.
pub const DEMO_SUBJECT: &str = "repo:contoso/demo:ref:refs/heads/main";
/// How long the printed demo token stays valid (`dev token --lifetime`'s default).
pub const DEMO_TOKEN_SECS: u64 = 3600;
/// Where the dev stack's issuer mints tokens over HTTP.
pub const MINT_PATH: &str = "/dev/token";

/// What `wif-broker dev` says in a build without the `dev` feature.
pub const NOT_BUILT: &str = "this wif-broker was built without the `dev` feature, so it has no \
     local issuer, Entra emulator or IMDS emulator (the container image leaves them out); \
     build it with default features (`cargo run -p wif-broker -- dev`) to run the local stack";

/// Why a local issuer or the Entra emulator could not start or mint.
#[cfg(feature = "dev")]
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
