//! The token endpoints' wire types: `POST /v1/token` (native) and `POST /oauth2/token`
//! (RFC 8693). The broker answers with them and the agent reads them (docs/api.md).

use serde::{Deserialize, Serialize};

/// RFC 8693's grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The subject token types the broker accepts: a JWT...
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// ...or an OIDC ID token.
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// The one token type the broker issues.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// `POST /v1/token` body (form or JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenRequest {
    /// One resource's scope, e.g. `https://management.azure.com/.default`.
    pub scope: Option<String>,
    /// Alternatively the resource itself; `/.default` is appended.
    pub resource: Option<String>,
    /// The identity to act as (name), when the token may act as several.
    pub identity: Option<String>,
    /// The identity to act as (client id).
    pub client_id: Option<String>,
}

/// The identity a token was issued for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IdentityRef {
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
}

/// `POST /v1/token` answer.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until expiry (never under `[cache] min_remaining_secs`).
    pub expires_in: u64,
    /// Epoch seconds.
    pub expires_on: u64,
    pub scope: String,
    pub identity: IdentityRef,
}

/// `POST /oauth2/token` body (form or JSON), RFC 8693.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenExchangeRequest {
    /// `urn:ietf:params:oauth:grant-type:token-exchange`
    pub grant_type: String,
    pub subject_token: String,
    /// `urn:ietf:params:oauth:token-type:jwt` or `...:id_token`
    pub subject_token_type: String,
    pub requested_token_type: Option<String>,
    pub scope: Option<String>,
    pub resource: Option<String>,
    pub identity: Option<String>,
    pub client_id: Option<String>,
}

/// `POST /oauth2/token` answer, RFC 8693.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenExchangeResponse {
    pub access_token: String,
    /// `urn:ietf:params:oauth:token-type:access_token`
    pub issued_token_type: String,
    pub token_type: String,
    pub expires_in: u64,
    pub scope: String,
}

/// Tokens are never printed.
macro_rules! redacted_debug {
    ($type:ident, $secret:ident, $($field:ident),*) => {
        impl std::fmt::Debug for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($type))
                    .field(stringify!($secret), &"<redacted>")
                    $(.field(stringify!($field), &self.$field))*
                    .finish()
            }
        }
    };
}

redacted_debug!(
    TokenResponse,
    access_token,
    token_type,
    expires_in,
    expires_on,
    scope,
    identity
);
redacted_debug!(
    TokenExchangeRequest,
    subject_token,
    grant_type,
    subject_token_type,
    requested_token_type,
    scope,
    resource,
    identity,
    client_id
);
redacted_debug!(
    TokenExchangeResponse,
    access_token,
    issued_token_type,
    token_type,
    expires_in,
    scope
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_token() {
        let answer = TokenResponse {
            access_token: "eyJ.secret.sig".into(),
            token_type: "Bearer".into(),
            expires_in: 3600,
            expires_on: 1,
            scope: "https://management.azure.com/.default".into(),
            identity: IdentityRef {
                name: "deployer".into(),
                tenant_id: "t".into(),
                client_id: "c".into(),
            },
        };
        let shown = format!("{answer:?}");
        assert!(!shown.contains("eyJ.secret.sig"), "{shown}");
        assert!(shown.contains("deployer"), "{shown}");
    }
}
