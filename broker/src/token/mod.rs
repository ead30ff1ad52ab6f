//! Verifying external tokens (DESIGN.md step 4).
//!
//! The algorithm comes from the key and must equal the header's and be allowed for the
//! issuer; `none` and HMAC are never accepted. `iss`, `aud`, `exp`, `nbf` and `iat` are
//! required, the lifetime is capped (25 h by default, like Entra), and time comes from the
//! caller's clock. The audience is checked against the matched credential in `policy`.

pub mod unverified;

use std::sync::Arc;

use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::issuer::VerifyingKey;
pub use unverified::UnverifiedToken;

/// Why a token was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("the token is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the token has no valid `{0}` claim")]
    MissingClaim(&'static str),
    #[error("algorithm {0:?} is never accepted")]
    ForbiddenAlgorithm(String),
    #[error("algorithm {0} is not allowed for this issuer")]
    AlgorithmNotAllowed(String),
    #[error("the signing key does not support algorithm {0}")]
    AlgorithmKeyMismatch(String),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("the token is not valid before {nbf} (now {now})")]
    NotYetValid { nbf: u64, now: u64 },
    #[error("the token was issued in the future (iat {iat}, now {now})")]
    IssuedInFuture { iat: u64, now: u64 },
    #[error("the token's lifetime (exp - iat = {lifetime} s) exceeds the maximum of {max} s")]
    LifetimeTooLong { lifetime: u64, max: u64 },
}

/// What verification needs besides the token and keys.
#[derive(Debug, Clone)]
pub struct VerifyPolicy {
    pub algorithms: Vec<Algorithm>,
    pub leeway_secs: u64,
    pub max_lifetime_secs: u64,
}

/// A token whose signature and times have been checked.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub iss: String,
    pub sub: Option<String>,
    pub aud: Vec<String>,
    pub exp: u64,
    pub iat: u64,
    pub jti: Option<String>,
    /// Hex SHA-256 of the raw token, for audit and replay checks.
    pub sha256: String,
    /// The payload; always a JSON object.
    pub claims: Value,
}

/// Parses an algorithm name from a header; HMAC and `none` are refused here.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, TokenError> {
    if name.eq_ignore_ascii_case("none") || name.starts_with("HS") {
        return Err(TokenError::ForbiddenAlgorithm(name.to_owned()));
    }
    name.parse::<Algorithm>()
        .map_err(|_| TokenError::AlgorithmNotAllowed(name.to_owned()))
}

/// Verifies signature and times. `keys` are the issuer's keys: the one with the header's
/// `kid` is used, or, when the header names none, each key of the right type is tried.
pub fn verify(
    token: UnverifiedToken<'_>,
    keys: &[Arc<VerifyingKey>],
    policy: &VerifyPolicy,
    now: u64,
) -> Result<VerifiedToken, TokenError> {
    let alg = parse_algorithm(&token.alg)?;
    if !policy.algorithms.contains(&alg) {
        return Err(TokenError::AlgorithmNotAllowed(token.alg.clone()));
    }
    let kid = token.kid.as_deref();
    let mut candidates = keys
        .iter()
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
        .filter(|k| k.algorithms.contains(&alg))
        .peekable();
    if candidates.peek().is_none() {
        return Err(TokenError::AlgorithmKeyMismatch(token.alg.clone()));
    }
    let signed = candidates.any(|k| {
        jsonwebtoken::crypto::verify(token.signature, token.signed_part.as_bytes(), &k.key, alg)
            .unwrap_or(false)
    });
    if !signed {
        return Err(TokenError::BadSignature);
    }
    check_times(token, policy, now)
}

fn check_times(
    token: UnverifiedToken<'_>,
    policy: &VerifyPolicy,
    now: u64,
) -> Result<VerifiedToken, TokenError> {
    let claims = &token.claims;
    let exp = numeric(claims, "exp")?;
    let nbf = numeric(claims, "nbf")?;
    let iat = numeric(claims, "iat")?;
    let aud = match claims.get("aud") {
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(TokenError::MissingClaim("aud"))?,
        _ => return Err(TokenError::MissingClaim("aud")),
    };
    let leeway = policy.leeway_secs;
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired { exp, now });
    }
    if nbf > now.saturating_add(leeway) {
        return Err(TokenError::NotYetValid { nbf, now });
    }
    if iat > now.saturating_add(leeway) {
        return Err(TokenError::IssuedInFuture { iat, now });
    }
    let lifetime = exp.saturating_sub(iat);
    if lifetime > policy.max_lifetime_secs {
        return Err(TokenError::LifetimeTooLong {
            lifetime,
            max: policy.max_lifetime_secs,
        });
    }
    let sub = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
    let jti = claims.get("jti").and_then(Value::as_str).map(str::to_owned);
    let digest = match token.sha256 {
        Some(known) => known,
        None => {
            let mut out = [0u8; 32];
            out.copy_from_slice(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.raw.as_bytes())
                    .as_ref(),
            );
            out
        }
    };
    Ok(VerifiedToken {
        iss: token.iss,
        sub,
        aud,
        exp,
        iat,
        jti,
        sha256: hex::encode(digest),
        claims: token.claims,
    })
}

/// NumericDate claims: non-negative integers (fractions are truncated, as RFC 7519 allows).
fn numeric(claims: &Value, name: &'static str) -> Result<u64, TokenError> {
    match claims.get(name) {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| *f >= 0.0 && f.is_finite())
                    .map(|f| f as u64)
            })
            .ok_or(TokenError::MissingClaim(name)),
        _ => Err(TokenError::MissingClaim(name)),
    }
}
