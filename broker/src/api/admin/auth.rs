//! Who is calling the admin API.
//!
//! Two ways in, both as `Authorization: Bearer`:
//! - static tokens from `[admin] tokens_file`, which holds only SHA-256 hashes
//!   (`ROLE NAME sha256:HEX` per line); a presented token is hashed and compared with
//!   every entry in constant time;
//! - tokens from `[admin] oidc_issuer` (e.g. Entra), verified like any external token
//!   (keys, signature, times), with the configured audience and a role in the role claim.
//!
//! No token or a bad one is 401; a valid one without the needed role is 403.

use std::path::Path;

use subtle::ConstantTimeEq;
use wif_config::AdminConfig;

use crate::exchange::Broker;
use crate::token::{self, UnverifiedToken};

pub use wif_proto::admin::{Role, new_admin_token, token_hash};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// When the credential that authenticated it ends (an OIDC admin token's verified
    /// `exp`, integer or fractional); `None` for static tokens. A console session opened
    /// with it ends then too (docs/console.md).
    pub expires_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the admin API needs `Authorization: Bearer <admin token>`")]
    Missing,
    #[error("the admin token is not valid: {0}")]
    Invalid(String),
    #[error("{0}")]
    NoRole(String),
}

impl AuthError {
    /// The error's one classification (docs/admin.md).
    pub fn classify(&self) -> crate::error::ApiError {
        use crate::error::{ApiError, ErrorCode};
        let code = match self {
            AuthError::Missing => ErrorCode::Unauthenticated,
            AuthError::Invalid(_) => ErrorCode::InvalidAdminToken,
            AuthError::NoRole(_) => ErrorCode::Forbidden,
        };
        ApiError::new(code, self.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("cannot read admin.tokens_file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("admin.tokens_file {path} line {line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
}

struct StaticToken {
    name: String,
    role: Role,
    hash: [u8; 32],
}

struct Oidc {
    issuer: String,
    audience: String,
    role_claim: String,
    admin_role: Option<String>,
    reader_role: Option<String>,
}

/// Admin authentication, built once at start-up.
pub struct AdminAuth {
    tokens: Vec<StaticToken>,
    oidc: Option<Oidc>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("static_tokens", &self.tokens.len())
            .field("oidc_issuer", &self.oidc.as_ref().map(|o| &o.issuer))
            .finish()
    }
}

fn parse_tokens(path: &Path, text: &str) -> Result<Vec<StaticToken>, AuthSetupError> {
    let mut tokens = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |message: &str| AuthSetupError::Line {
            path: path.display().to_string(),
            line: i + 1,
            message: message.to_owned(),
        };
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [role, name, hash] = parts.as_slice() else {
            return Err(fail("expected `ROLE NAME sha256:HEX`"));
        };
        let role = match *role {
            "admin" => Role::Admin,
            "reader" => Role::Reader,
            _ => return Err(fail("the role must be `admin` or `reader`")),
        };
        let hex_part = hash.strip_prefix("sha256:").ok_or_else(|| {
            fail("the hash must look like sha256:HEX (the file holds hashes, never tokens)")
        })?;
        let bytes = hex::decode(hex_part).map_err(|_| fail("the hash is not hexadecimal"))?;
        let hash: [u8; 32] = bytes
            .try_into()
            .map_err(|_| fail("a SHA-256 hash is 64 hexadecimal digits"))?;
        tokens.push(StaticToken {
            name: (*name).to_owned(),
            role,
            hash,
        });
    }
    Ok(tokens)
}

impl AdminAuth {
    pub fn from_config(cfg: &AdminConfig) -> Result<Self, AuthSetupError> {
        let tokens = match &cfg.tokens_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| AuthSetupError::Read {
                    path: path.display().to_string(),
                    error,
                })?;
                parse_tokens(path, &text)?
            }
            None => Vec::new(),
        };
        let oidc = match (&cfg.oidc_issuer, &cfg.oidc_audience) {
            (Some(issuer), Some(audience)) => Some(Oidc {
                issuer: issuer.clone(),
                audience: audience.clone(),
                role_claim: cfg.oidc_role_claim.clone(),
                admin_role: cfg.oidc_admin_role.clone(),
                reader_role: cfg.oidc_reader_role.clone(),
            }),
            _ => None,
        };
        Ok(Self { tokens, oidc })
    }

    /// The issuer admin tokens may come from, if any (trusted for key fetches).
    pub fn oidc_issuer(&self) -> Option<&str> {
        self.oidc.as_ref().map(|o| o.issuer.as_str())
    }

    /// Authenticates a bearer token.
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        broker: &Broker,
    ) -> Result<Principal, AuthError> {
        let token = bearer.ok_or(AuthError::Missing)?;
        let presented = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        // Compare with every entry, so timing says nothing about which one matched.
        let mut found: Option<&StaticToken> = None;
        for entry in &self.tokens {
            if bool::from(entry.hash.as_slice().ct_eq(presented.as_ref())) {
                found = Some(entry);
            }
        }
        if let Some(entry) = found {
            return Ok(Principal {
                name: entry.name.clone(),
                role: entry.role,
                expires_at: None,
            });
        }
        match &self.oidc {
            Some(oidc) if token.matches('.').count() == 2 => oidc.authenticate(token, broker).await,
            _ => Err(AuthError::Invalid("unknown token".into())),
        }
    }
}

impl Oidc {
    async fn authenticate(&self, raw: &str, broker: &Broker) -> Result<Principal, AuthError> {
        let invalid = |e: &dyn std::fmt::Display| AuthError::Invalid(e.to_string());
        let unverified =
            UnverifiedToken::parse(raw, broker.max_token_bytes()).map_err(|e| invalid(&e))?;
        if unverified.iss != self.issuer {
            return Err(AuthError::Invalid("unknown token".into()));
        }
        let keys = broker
            .keys()
            .keys_for(&self.issuer, unverified.kid.as_deref())
            .await
            .map_err(|e| invalid(&e))?;
        let policy = broker.verify_policy(&self.issuer);
        let verified = token::verify(unverified, &keys, policy, broker.clock().now())
            .map_err(|e| invalid(&e))?;
        if !verified.aud.iter().any(|a| a == &self.audience) {
            return Err(AuthError::Invalid(format!(
                "the token is not meant for {}",
                self.audience
            )));
        }
        let claims = verified.claims.value();
        let name = ["preferred_username", "upn", "email", "oid", "sub"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(|v| v.as_str()))
            .unwrap_or("unknown")
            .to_owned();
        let held: Vec<&str> = match claims.get(&self.role_claim) {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(|v| v.as_str()).collect()
            }
            _ => Vec::new(),
        };
        let has = |role: &Option<String>| role.as_deref().is_some_and(|r| held.contains(&r));
        let role = if has(&self.admin_role) {
            Role::Admin
        } else if has(&self.reader_role) {
            Role::Reader
        } else {
            return Err(AuthError::NoRole(format!(
                "{name} holds neither the admin nor the reader role in claim `{}`",
                self.role_claim
            )));
        };
        Ok(Principal {
            name,
            role,
            expires_at: Some(verified.exp),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hashes_are_sha256_hex() {
        assert_eq!(
            token_hash("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_tokens_file_holds_roles_names_and_hashes() {
        let path = Path::new("admins");
        let text = format!(
            "# admins\n\nadmin alice {}\nreader grafana {}\n",
            token_hash("a"),
            token_hash("b")
        );
        let tokens = parse_tokens(path, &text).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[1].role, Role::Reader);
        let bad = parse_tokens(path, "admin alice plaintext-token")
            .err()
            .unwrap();
        assert!(bad.to_string().contains("line 1"), "{bad}");
        assert!(parse_tokens(path, "owner bob sha256:00").is_err());
        assert!(parse_tokens(path, "admin bob sha256:00").is_err());
    }
}
