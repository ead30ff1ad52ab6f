//! Verifying external tokens (README, "How an exchange works", step 4).
//!
//! The algorithm comes from the key and must equal the header's and be allowed for the
//! issuer; `none` and HMAC are never accepted. `iss`, `aud` and `exp` are required; `nbf`
//! and `iat` are checked when present, because real issuers omit them (Google ID tokens,
//! AWS web-identity tokens and SPIFFE JWT-SVIDs carry no `nbf`; a JWT-SVID needs no `iat`).
//! The lifetime is capped (25 h by default, like Entra): `exp - iat`, or `exp - now` for a
//! token without `iat`. Time comes from the caller's clock. The audience is checked against
//! the matched credential in `policy` (docs/api.md, "Claims the broker checks").
//!
//! Work per unverified token is bounded: at most [`MAX_CANDIDATE_KEYS`] keys are tried
//! (docs/api.md, "Which key verifies a token"). Values read from the token appear in errors
//! only capped and escaped ([`crate::redact::Untrusted`]).

pub mod claims;
pub mod unverified;

use std::sync::Arc;

use jsonwebtoken::Algorithm;

use crate::issuer::VerifyingKey;
use crate::redact::Untrusted;
pub use claims::{Claims, Numeric, Registered};
pub use unverified::UnverifiedToken;

/// Why a token was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("the token is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(&'static str),
    #[error("the token has no valid `{0}` claim")]
    MissingClaim(&'static str),
    #[error("algorithm {0:?} is never accepted")]
    ForbiddenAlgorithm(Untrusted),
    #[error("algorithm {0} is not allowed for this issuer")]
    AlgorithmNotAllowed(Untrusted),
    #[error("the signing key does not support algorithm {0}")]
    AlgorithmKeyMismatch(Untrusted),
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
    #[error(
        "the token has no `iat` and expires in {remaining} s, more than the maximum lifetime of {max} s"
    )]
    RemainingTooLong { remaining: u64, max: u64 },
}

/// What verification needs besides the token and keys.
#[derive(Debug, Clone)]
pub struct VerifyPolicy {
    pub algorithms: Vec<Algorithm>,
    pub leeway_secs: u64,
    pub max_lifetime_secs: u64,
    /// Refuse ECDSA signatures whose `s` is above half the curve order (`[tokens]
    /// ecdsa_low_s_only`). Off by default: many issuers sign with high `s` half the time.
    pub ecdsa_low_s_only: bool,
}

/// Most keys one token's signature is checked against. A token with a `kid` is checked
/// against the keys with that `kid`, one without against the issuer's keys that support
/// its algorithm, in JWKS order; either way only the first two count, so a JWKS of many
/// keys cannot multiply the work an anonymous caller causes.
pub const MAX_CANDIDATE_KEYS: usize = 2;

/// A token whose signature and times have been checked.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub iss: String,
    pub sub: Option<String>,
    pub aud: Vec<String>,
    pub exp: u64,
    /// Absent from some issuers' tokens (a SPIFFE JWT-SVID needs none).
    pub iat: Option<u64>,
    pub jti: Option<String>,
    /// Hex SHA-256 of the raw token, for audit and the verified-token cache.
    pub sha256: String,
    /// What replay protection spends: the `jti`, or, when there is none, the hex SHA-256
    /// of `header.payload`, what the issuer signed (the same for every signature over it).
    /// Hashed only for a token without a `jti`.
    pub replay_id: String,
    /// The payload, a JSON object; its `serde_json::Value` is built only when something
    /// reads claims by path (an expression, `simulate`), then kept.
    pub claims: Claims,
}

/// Parses an algorithm name from a header; HMAC and `none` are refused here.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, TokenError> {
    if name.eq_ignore_ascii_case("none") || name.starts_with("HS") {
        return Err(TokenError::ForbiddenAlgorithm(Untrusted::new(name)));
    }
    name.parse::<Algorithm>()
        .map_err(|_| TokenError::AlgorithmNotAllowed(Untrusted::new(name)))
}

/// The verifiers of algorithms the configuration names (`wif-config` parsed the names).
pub fn algorithms(configured: &[wif_config::Algorithm]) -> Vec<Algorithm> {
    configured
        .iter()
        .map(|a| match a {
            wif_config::Algorithm::RS256 => Algorithm::RS256,
            wif_config::Algorithm::RS384 => Algorithm::RS384,
            wif_config::Algorithm::RS512 => Algorithm::RS512,
            wif_config::Algorithm::PS256 => Algorithm::PS256,
            wif_config::Algorithm::PS384 => Algorithm::PS384,
            wif_config::Algorithm::PS512 => Algorithm::PS512,
            wif_config::Algorithm::ES256 => Algorithm::ES256,
            wif_config::Algorithm::ES384 => Algorithm::ES384,
            wif_config::Algorithm::EdDSA => Algorithm::EdDSA,
        })
        .collect()
}

/// Verifies signature and times. `keys` are the issuer's keys: those with the header's
/// `kid`, or, when the header names none, those that support its algorithm; at most
/// [`MAX_CANDIDATE_KEYS`] of them are tried.
pub fn verify(
    token: UnverifiedToken<'_>,
    keys: &[Arc<VerifyingKey>],
    policy: &VerifyPolicy,
    now: u64,
) -> Result<VerifiedToken, TokenError> {
    let alg = parse_algorithm(&token.alg)?;
    if !policy.algorithms.contains(&alg) {
        return Err(TokenError::AlgorithmNotAllowed(Untrusted::new(&token.alg)));
    }
    let kid = token.kid.as_deref();
    let mut candidates = keys
        .iter()
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
        .filter(|k| k.algorithms.contains(&alg))
        .take(MAX_CANDIDATE_KEYS)
        .peekable();
    if candidates.peek().is_none() {
        return Err(TokenError::AlgorithmKeyMismatch(Untrusted::new(&token.alg)));
    }
    if policy.ecdsa_low_s_only && is_high_s_ecdsa(alg, token.signature) {
        return Err(TokenError::BadSignature);
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

/// Whether `signature` (base64url `r || s`) is an ECDSA signature whose `s` is above half
/// the curve order. For every valid `(r, s)`, `(r, n - s)` verifies too; only one of the
/// two is low. Anything that is not a well-sized ECDSA signature is left to the verifier.
pub fn is_high_s_ecdsa(alg: Algorithm, signature: &str) -> bool {
    // Half the group orders of P-256 and P-384 (n / 2, rounded down), big-endian.
    const P256_HALF: [u8; 32] = [
        0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31,
        0x92, 0xa8,
    ];
    const P384_HALF: [u8; 48] = [
        0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xe3, 0xb1, 0xa6, 0xc0, 0xfa, 0x1b,
        0x96, 0xef, 0xac, 0x0d, 0x06, 0xd9, 0x24, 0x58, 0x53, 0xbd, 0x76, 0x76, 0x0c, 0xb5, 0x66,
        0x62, 0x94, 0xb9,
    ];
    let half: &[u8] = match alg {
        Algorithm::ES256 => &P256_HALF,
        Algorithm::ES384 => &P384_HALF,
        _ => return false,
    };
    use base64::Engine;
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    if bytes.len() != 2 * half.len() {
        return false;
    }
    // Equal-length big-endian numbers compare like byte strings.
    &bytes[half.len()..] > half
}

fn check_times(
    token: UnverifiedToken<'_>,
    policy: &VerifyPolicy,
    now: u64,
) -> Result<VerifiedToken, TokenError> {
    let registered = token.registered;
    let exp = numeric(registered.exp, "exp")?;
    let nbf = optional_numeric(registered.nbf, "nbf")?;
    let iat = optional_numeric(registered.iat, "iat")?;
    let aud = registered.aud.ok_or(TokenError::MissingClaim("aud"))?;
    let leeway = policy.leeway_secs;
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired { exp, now });
    }
    if let Some(nbf) = nbf.filter(|nbf| *nbf > now.saturating_add(leeway)) {
        return Err(TokenError::NotYetValid { nbf, now });
    }
    match iat {
        Some(iat) if iat > now.saturating_add(leeway) => {
            return Err(TokenError::IssuedInFuture { iat, now });
        }
        Some(iat) if exp.saturating_sub(iat) > policy.max_lifetime_secs => {
            return Err(TokenError::LifetimeTooLong {
                lifetime: exp.saturating_sub(iat),
                max: policy.max_lifetime_secs,
            });
        }
        // Without `iat` the lifetime is unknown; what is left of it is bounded instead.
        None if exp.saturating_sub(now) > policy.max_lifetime_secs => {
            return Err(TokenError::RemainingTooLong {
                remaining: exp.saturating_sub(now),
                max: policy.max_lifetime_secs,
            });
        }
        _ => {}
    }
    let replay_id = match &registered.jti {
        Some(jti) => jti.clone(),
        None => hex::encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.signed_part.as_bytes())
                .as_ref(),
        ),
    };
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
        sub: registered.sub,
        aud,
        exp,
        iat,
        jti: registered.jti,
        sha256: hex::encode(digest),
        replay_id,
        claims: token.claims,
    })
}

/// A NumericDate claim that may be absent; present, it must be valid.
fn optional_numeric(claim: Numeric, name: &'static str) -> Result<Option<u64>, TokenError> {
    match claim {
        Numeric::Absent => Ok(None),
        Numeric::Valid(n) => Ok(Some(n)),
        Numeric::Invalid => Err(TokenError::MissingClaim(name)),
    }
}

/// A NumericDate claim that must be there: a non-negative integer (a fraction is truncated,
/// as RFC 7519 allows; `claims::Numeric`).
fn numeric(claim: Numeric, name: &'static str) -> Result<u64, TokenError> {
    match claim {
        Numeric::Valid(n) => Ok(n),
        Numeric::Absent | Numeric::Invalid => Err(TokenError::MissingClaim(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::Value;

    fn signature(r: u8, s: &[u8]) -> String {
        let mut bytes = vec![r; s.len()];
        bytes.extend_from_slice(s);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// `check_times` on a token with `claims` (signature not checked), at `now`.
    fn times(claims: serde_json::Value, now: u64) -> Result<VerifiedToken, TokenError> {
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let raw = format!(
            "{}.{}.c2ln",
            b64(&serde_json::json!({"alg": "RS256"})),
            b64(&claims)
        );
        let policy = VerifyPolicy {
            algorithms: vec![Algorithm::RS256],
            leeway_secs: 60,
            max_lifetime_secs: 90_000,
            ecdsa_low_s_only: false,
        };
        check_times(UnverifiedToken::parse(&raw, 16_384)?, &policy, now)
    }

    #[test]
    fn nbf_and_iat_are_checked_only_when_present() {
        let now = 1_800_000_000;
        let base = serde_json::json!({"iss": "https://i", "aud": ["a"], "exp": now + 300});
        // Google, AWS and SPIFFE tokens: no `nbf`; a minimal JWT-SVID: no `iat` either.
        let verified = times(base.clone(), now).unwrap();
        assert_eq!(verified.iat, None);
        let mut with = base.clone();
        with["iat"] = now.into();
        assert_eq!(times(with.clone(), now).unwrap().iat, Some(now));
        with["nbf"] = (now + 600).into();
        assert_eq!(
            times(with, now).unwrap_err(),
            TokenError::NotYetValid {
                nbf: now + 600,
                now
            }
        );
        let mut invalid = base.clone();
        invalid["nbf"] = "soon".into();
        assert_eq!(
            times(invalid, now).unwrap_err(),
            TokenError::MissingClaim("nbf")
        );
        let mut no_exp = base;
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            times(no_exp, now).unwrap_err(),
            TokenError::MissingClaim("exp")
        );
    }

    #[test]
    fn without_iat_the_remaining_life_is_capped() {
        let now = 1_800_000_000;
        let far = serde_json::json!({"iss": "https://i", "aud": "a", "exp": now + 90_001});
        assert_eq!(
            times(far, now).unwrap_err(),
            TokenError::RemainingTooLong {
                remaining: 90_001,
                max: 90_000
            }
        );
        let within = serde_json::json!({"iss": "https://i", "aud": "a", "exp": now + 90_000});
        assert!(times(within, now).is_ok());
    }

    /// The payload `json` (raw text: duplicates and escapes are kept as written), read.
    fn read(json: &str) -> Result<(String, Registered, Claims), TokenError> {
        let raw = format!(
            "{}.{}.c2ln",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        );
        let t = UnverifiedToken::parse(&raw, 16_384)?;
        Ok((t.iss, t.registered, t.claims))
    }

    /// The registered claims read from a `serde_json::Value` with the rules the broker
    /// applied to one before they were read typed: what the typed read must agree with.
    fn from_value(claims: &Value) -> (Option<String>, Registered) {
        let numeric = |name: &str| match claims.get(name) {
            None => Numeric::Absent,
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| *f >= 0.0 && f.is_finite())
                        .map(|f| f as u64)
                })
                .map_or(Numeric::Invalid, Numeric::Valid),
            Some(_) => Numeric::Invalid,
        };
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let aud = match claims.get("aud") {
            Some(Value::String(s)) if !s.is_empty() => Some(vec![s.clone()]),
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>(),
            _ => None,
        };
        let iss = text("iss").filter(|s| !s.is_empty());
        let registered = Registered {
            sub: text("sub"),
            jti: text("jti"),
            aud,
            exp: numeric("exp"),
            nbf: numeric("nbf"),
            iat: numeric("iat"),
        };
        (iss, registered)
    }

    #[test]
    fn the_typed_claims_agree_with_the_value_built_from_the_same_bytes() {
        use Numeric::{Absent, Invalid, Valid};
        let base = r#""iss":"https://i","aud":"a","exp":1800000300"#;
        // (what, members besides `base` or instead of it, what the typed read must hold)
        type Check = fn(&Registered) -> bool;
        let rows: Vec<(&str, String, Check)> = vec![
            ("an integer", format!(r#"{{{base},"iat":1800000000}}"#), |r| {
                r.iat == Valid(1_800_000_000) && r.nbf == Absent
            }),
            ("a fraction is truncated", format!(r#"{{{base},"iat":1800000000.9}}"#), |r| {
                r.iat == Valid(1_800_000_000)
            }),
            ("an exponent", format!(r#"{{{base},"iat":1.8e9}}"#), |r| {
                r.iat == Valid(1_800_000_000)
            }),
            ("beyond u64 saturates", format!(r#"{{{base},"iat":1e20}}"#), |r| {
                r.iat == Valid(u64::MAX)
            }),
            ("u64::MAX", format!(r#"{{{base},"iat":18446744073709551615}}"#), |r| {
                r.iat == Valid(u64::MAX)
            }),
            ("minus zero", format!(r#"{{{base},"iat":-0.0}}"#), |r| r.iat == Valid(0)),
            ("a negative integer", format!(r#"{{{base},"iat":-1}}"#), |r| {
                r.iat == Invalid
            }),
            ("a negative fraction", format!(r#"{{{base},"nbf":-0.5}}"#), |r| {
                r.nbf == Invalid
            }),
            ("a numeric string", format!(r#"{{{base},"nbf":"1800000000"}}"#), |r| {
                r.nbf == Invalid
            }),
            ("null", format!(r#"{{{base},"nbf":null}}"#), |r| r.nbf == Invalid),
            ("true", format!(r#"{{{base},"nbf":true}}"#), |r| r.nbf == Invalid),
            ("an array", format!(r#"{{{base},"nbf":[1]}}"#), |r| r.nbf == Invalid),
            ("exp absent", r#"{"iss":"https://i","aud":"a"}"#.into(), |r| {
                r.exp == Absent
            }),
            ("aud one string", r#"{"iss":"https://i","aud":"a"}"#.into(), |r| {
                r.aud == Some(vec!["a".into()])
            }),
            ("aud empty", r#"{"iss":"https://i","aud":""}"#.into(), |r| r.aud.is_none()),
            ("aud array", r#"{"iss":"https://i","aud":["a","","b"]}"#.into(), |r| {
                r.aud == Some(vec!["a".into(), "".into(), "b".into()])
            }),
            ("aud empty array", r#"{"iss":"https://i","aud":[]}"#.into(), |r| {
                r.aud.is_none()
            }),
            ("aud with a number", r#"{"iss":"https://i","aud":["a",1]}"#.into(), |r| {
                r.aud.is_none()
            }),
            ("aud nested", r#"{"iss":"https://i","aud":[["a"]]}"#.into(), |r| {
                r.aud.is_none()
            }),
            ("aud object", r#"{"iss":"https://i","aud":{"a":"b"}}"#.into(), |r| {
                r.aud.is_none()
            }),
            ("aud number", r#"{"iss":"https://i","aud":7}"#.into(), |r| r.aud.is_none()),
            ("sub a number", r#"{"iss":"https://i","sub":42,"jti":null}"#.into(), |r| {
                r.sub.is_none() && r.jti.is_none()
            }),
            ("sub an array", r#"{"iss":"https://i","sub":["a"],"jti":{}}"#.into(), |r| {
                r.sub.is_none() && r.jti.is_none()
            }),
            ("sub empty", r#"{"iss":"https://i","sub":"","jti":""}"#.into(), |r| {
                r.sub.as_deref() == Some("") && r.jti.as_deref() == Some("")
            }),
            (
                "escapes in values",
                r#"{"iss":"https:\/\/i","sub":"repo:\u0041\"b\\","aud":["\u00e9"],"jti":"\ud83d\ude00"}"#
                    .into(),
                |r| {
                    r.sub.as_deref() == Some("repo:A\"b\\")
                        && r.aud == Some(vec!["é".into()])
                        && r.jti.as_deref() == Some("😀")
                },
            ),
            (
                "escapes in names",
                r#"{"\u0069ss":"https://i","s\u0075b":"x","\u0061ud":"a","\u0065xp":5}"#.into(),
                |r| r.sub.as_deref() == Some("x") && r.aud.is_some() && r.exp == Valid(5),
            ),
            (
                "nested registered names are not the registered claims",
                r#"{"iss":"https://i","x":{"sub":"y","exp":1},"a":[{"aud":"b"}]}"#.into(),
                |r| r.sub.is_none() && r.exp == Absent && r.aud.is_none(),
            ),
        ];
        for (what, json, check) in rows {
            let (iss, registered, claims) = read(&json).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(check(&registered), "{what}: {registered:?}");
            assert!(!claims.is_parsed(), "{what}: the value was built unasked");
            let value = claims.value();
            assert_eq!(
                *value,
                serde_json::from_str::<Value>(&json).unwrap(),
                "{what}"
            );
            assert_eq!(from_value(value), (Some(iss), registered), "{what}");
        }
        // `iss`, the one claim read before verification, is required as before.
        for json in [
            r#"{"aud":"a"}"#,
            r#"{"iss":""}"#,
            r#"{"iss":7}"#,
            r#"{"iss":["https://i"]}"#,
            r#"{"iss":null}"#,
        ] {
            assert_eq!(
                read(json).unwrap_err(),
                TokenError::MissingClaim("iss"),
                "{json}"
            );
        }
    }

    #[test]
    fn a_member_named_twice_is_refused_however_it_is_spelled() {
        let twice = TokenError::Malformed("the payload names a member twice");
        // 40 distinct members: objects of more than 32 are checked with a set.
        let many: String = (0..40).map(|i| format!(r#","m{i}":{i}"#)).collect();
        let rows = [
            r#"{"iss":"https://i","sub":"a","sub":"b"}"#.to_owned(),
            r#"{"iss":"https://i","aud":"a","aud":["b"]}"#.to_owned(),
            r#"{"iss":"https://i","exp":1,"exp":2}"#.to_owned(),
            r#"{"iss":"https://i","nbf":1,"nbf":2}"#.to_owned(),
            r#"{"iss":"https://i","iat":1,"iat":"x"}"#.to_owned(),
            r#"{"iss":"https://i","jti":"a","jti":"b"}"#.to_owned(),
            r#"{"iss":"https://a","iss":"https://b"}"#.to_owned(),
            r#"{"iss":"https://i","repository":"a/b","repository":"a/c"}"#.to_owned(),
            // The same name, one spelled with an escape, or both.
            r#"{"iss":"https://i","sub":"a","s\u0075b":"b"}"#.to_owned(),
            r#"{"iss":"https://i","\u0073ub":"a","s\u0075b":"b"}"#.to_owned(),
            r#"{"\u0069ss":"https://a","iss":"https://b"}"#.to_owned(),
            // At any depth, in objects and in arrays.
            r#"{"iss":"https://i","x":{"k":[{"n":1,"n":2}]}}"#.to_owned(),
            r#"{"iss":"https://i","aud":["a",{"n":1,"n":2}]}"#.to_owned(),
            r#"{"iss":"https://i","sub":{"n":1,"n":2}}"#.to_owned(),
            r#"{"iss":"https://i","exp":[{"n":1,"n":2}]}"#.to_owned(),
            // Among many members, first and last.
            format!(r#"{{"iss":"https://i"{many},"m0":1}}"#),
            format!(r#"{{"iss":"https://i"{many},"x":{{"a":1{many},"a":2}}}}"#),
        ];
        for json in rows {
            assert_eq!(read(&json).unwrap_err(), twice, "{json}");
        }
        // The same names at different levels, and many distinct ones, are fine.
        for json in [
            r#"{"iss":"https://i","sub":"x","nested":{"sub":"y","iss":"z"}}"#.to_owned(),
            format!(r#"{{"iss":"https://i"{many},"x":{{"a":1{many}}}}}"#),
        ] {
            assert!(read(&json).is_ok(), "{json}");
        }
        // A payload that is not an object is refused as before, a duplicate inside or not.
        let not_object = TokenError::Malformed("the payload is not a base64url JSON object");
        for json in [
            r#"["iss"]"#,
            r#""x""#,
            "1",
            "null",
            r#"{"iss":"https://i"} x"#,
        ] {
            assert_eq!(read(json).unwrap_err(), not_object, "{json}");
        }
        assert_eq!(read(r#"[{"a":1,"a":2}]"#).unwrap_err(), twice);
    }

    #[test]
    fn high_s_is_above_half_the_order_exactly() {
        let half_p256: [u8; 32] = [
            0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61,
            0x7e, 0x31, 0x92, 0xa8,
        ];
        let mut above = half_p256;
        above[31] += 1;
        assert!(!is_high_s_ecdsa(
            Algorithm::ES256,
            &signature(1, &half_p256)
        ));
        assert!(is_high_s_ecdsa(Algorithm::ES256, &signature(1, &above)));
        assert!(is_high_s_ecdsa(
            Algorithm::ES256,
            &signature(1, &[0xff; 32])
        ));
        assert!(!is_high_s_ecdsa(
            Algorithm::ES256,
            &signature(1, &[0x01; 32])
        ));
        // Other algorithms and malformed signatures are left to the verifier.
        assert!(!is_high_s_ecdsa(
            Algorithm::RS256,
            &signature(1, &[0xff; 32])
        ));
        assert!(!is_high_s_ecdsa(
            Algorithm::ES256,
            &signature(1, &[0xff; 48])
        ));
        assert!(is_high_s_ecdsa(
            Algorithm::ES384,
            &signature(1, &[0xff; 48])
        ));
        assert!(!is_high_s_ecdsa(Algorithm::ES256, "not base64!"));
    }
}

/// Signature and algorithm rules, one row per rule, with tokens signed by the committed
/// test keys of `src/issuer/testdata` (their public halves in its `jwks.json`).
#[cfg(test)]
mod verification {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};

    const NOW: u64 = 1_800_000_000;

    fn pem(kid: &str) -> &'static str {
        match kid {
            "2026-a" => include_str!("../issuer/testdata/2026-a.key.pem"),
            "2026-b" => include_str!("../issuer/testdata/2026-b.key.pem"),
            "2026-c" => include_str!("../issuer/testdata/2026-c.key.pem"),
            "2026-rsa" => include_str!("../issuer/testdata/2026-rsa.key.pem"),
            other => panic!("no committed key {other}"),
        }
    }

    /// The issuer's published keys, in JWKS order.
    fn published(kids: &[&str]) -> Vec<Arc<VerifyingKey>> {
        let doc: Value =
            serde_json::from_str(include_str!("../issuer/testdata/jwks.json")).unwrap();
        let all = crate::issuer::jwks::parse(&doc, 100).unwrap();
        kids.iter()
            .map(|kid| {
                all.iter()
                    .find(|k| k.kid.as_deref() == Some(*kid))
                    .unwrap()
                    .clone()
            })
            .collect()
    }

    fn claims() -> Value {
        json!({"iss": "https://i", "sub": "s", "aud": "api://AzureADTokenExchange",
               "iat": NOW - 10, "exp": NOW + 300})
    }

    /// Signed by `signer`, with header `alg` and `kid`.
    fn signed(alg: Algorithm, kid: Option<&str>, signer: &str, claims: &Value) -> String {
        crate::crypto::install_provider();
        use base64::Engine as _;
        let body: String = pem(signer)
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        let key = if signer == "2026-rsa" {
            EncodingKey::from_rsa_der(&der)
        } else {
            EncodingKey::from_ec_der(&der)
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn policy(algorithms: &[Algorithm]) -> VerifyPolicy {
        VerifyPolicy {
            algorithms: algorithms.to_vec(),
            leeway_secs: 60,
            max_lifetime_secs: 90_000,
            ecdsa_low_s_only: false,
        }
    }

    fn check(
        raw: &str,
        keys: &[&str],
        algorithms: &[Algorithm],
    ) -> Result<VerifiedToken, TokenError> {
        let token = UnverifiedToken::parse(raw, 16_384).unwrap();
        verify(token, &published(keys), &policy(algorithms), NOW)
    }

    fn unsigned(header: Value, claims: &Value) -> String {
        use base64::Engine as _;
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
        };
        format!("{}.{}.c2ln", b64(&header), b64(claims))
    }

    /// What a row checks, the token, the keys published, the issuer's algorithms, and
    /// the outcome.
    type Row<'a> = (
        &'a str,
        String,
        &'a [&'a str],
        &'a [Algorithm],
        Result<(), TokenError>,
    );

    #[test]
    fn every_signature_and_algorithm_rule() {
        let es = [Algorithm::ES256, Algorithm::RS256];
        let all = ["2026-a", "2026-b", "2026-c", "2026-rsa"];
        let c = claims();
        let mismatch = |alg: &str| TokenError::AlgorithmKeyMismatch(Untrusted::new(alg));
        let rows: Vec<Row> = vec![
            (
                "ES256 by the key its kid names",
                signed(Algorithm::ES256, Some("2026-a"), "2026-a", &c),
                &all,
                &es,
                Ok(()),
            ),
            (
                "RS256 by the key its kid names",
                signed(Algorithm::RS256, Some("2026-rsa"), "2026-rsa", &c),
                &all,
                &es,
                Ok(()),
            ),
            (
                "kid of one key, signed by another",
                signed(Algorithm::ES256, Some("2026-a"), "2026-b", &c),
                &all,
                &es,
                Err(TokenError::BadSignature),
            ),
            (
                "kid the issuer does not publish",
                signed(Algorithm::ES256, Some("2026-x"), "2026-a", &c),
                &all,
                &es,
                Err(mismatch("ES256")),
            ),
            (
                "RS256 header on an EC key",
                signed(Algorithm::ES256, Some("2026-a"), "2026-a", &c).replacen(
                    "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiI",
                    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiI",
                    1,
                ),
                &all,
                &es,
                Err(mismatch("RS256")),
            ),
            (
                "an algorithm this issuer may not use",
                signed(Algorithm::ES256, Some("2026-a"), "2026-a", &c),
                &all,
                &[Algorithm::RS256],
                Err(TokenError::AlgorithmNotAllowed(Untrusted::new("ES256"))),
            ),
            (
                "alg none",
                unsigned(json!({"alg": "none", "kid": "2026-a"}), &c),
                &all,
                &es,
                Err(TokenError::ForbiddenAlgorithm(Untrusted::new("none"))),
            ),
            (
                "alg NONE",
                unsigned(json!({"alg": "NONE"}), &c),
                &all,
                &es,
                Err(TokenError::ForbiddenAlgorithm(Untrusted::new("NONE"))),
            ),
            (
                "HMAC with the public key as secret",
                unsigned(json!({"alg": "HS256", "kid": "2026-rsa"}), &c),
                &all,
                &es,
                Err(TokenError::ForbiddenAlgorithm(Untrusted::new("HS256"))),
            ),
            (
                "no kid: a key among the first two that support ES256",
                signed(Algorithm::ES256, None, "2026-b", &c),
                &all,
                &es,
                Ok(()),
            ),
            (
                "no kid: the third such key is never tried",
                signed(Algorithm::ES256, None, "2026-c", &c),
                &all,
                &es,
                Err(TokenError::BadSignature),
            ),
            (
                "no kid: the same key second in a shorter set",
                signed(Algorithm::ES256, None, "2026-c", &c),
                &["2026-a", "2026-c"],
                &es,
                Ok(()),
            ),
        ];
        for (what, raw, keys, algorithms, want) in rows {
            let got = check(&raw, keys, algorithms).map(|_| ());
            assert_eq!(got, want, "{what}");
        }
        // A payload changed after signing.
        let raw = signed(Algorithm::ES256, Some("2026-a"), "2026-a", &c);
        let mut parts: Vec<&str> = raw.split('.').collect();
        let forged = unsigned(
            json!({}),
            &json!({"iss": "https://i", "sub": "admin", "aud": "x", "exp": NOW + 300}),
        );
        let payload = forged.split('.').nth(1).unwrap().to_owned();
        parts[1] = &payload;
        assert_eq!(
            check(&parts.join("."), &all, &es).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn every_time_rule() {
        let es = [Algorithm::ES256];
        let at = |iat: Option<u64>, nbf: Option<u64>, exp: u64| {
            let mut c = json!({"iss": "https://i", "sub": "s", "aud": "a", "exp": exp});
            if let Some(iat) = iat {
                c["iat"] = iat.into();
            }
            if let Some(nbf) = nbf {
                c["nbf"] = nbf.into();
            }
            check(
                &signed(Algorithm::ES256, Some("2026-a"), "2026-a", &c),
                &["2026-a"],
                &es,
            )
        };
        // Expiry, with the 60 s leeway.
        assert!(at(Some(NOW - 100), None, NOW - 59).is_ok());
        assert!(matches!(
            at(Some(NOW - 100), None, NOW - 61),
            Err(TokenError::Expired { .. })
        ));
        // Not before, with the leeway.
        assert!(at(Some(NOW), Some(NOW + 59), NOW + 300).is_ok());
        assert!(matches!(
            at(Some(NOW), Some(NOW + 61), NOW + 300),
            Err(TokenError::NotYetValid { .. })
        ));
        // Issued in the future.
        assert!(at(Some(NOW + 59), None, NOW + 300).is_ok());
        assert!(matches!(
            at(Some(NOW + 61), None, NOW + 300),
            Err(TokenError::IssuedInFuture { .. })
        ));
        // Lifetime: exp - iat at most 90,000 s; without iat, the remaining life.
        assert!(at(Some(NOW - 10), None, NOW - 10 + 90_000).is_ok());
        assert_eq!(
            at(Some(NOW - 10), None, NOW - 9 + 90_000).unwrap_err(),
            TokenError::LifetimeTooLong {
                lifetime: 90_001,
                max: 90_000
            }
        );
        assert!(matches!(
            at(None, None, NOW + 90_001),
            Err(TokenError::RemainingTooLong { .. })
        ));
        // The verified token carries what was checked.
        let ok = at(Some(NOW - 10), None, NOW + 300).unwrap();
        assert_eq!(
            (ok.iss.as_str(), ok.sub.as_deref(), ok.exp, ok.iat),
            ("https://i", Some("s"), NOW + 300, Some(NOW - 10))
        );
        assert_eq!(ok.aud, ["a"]);
    }

    #[test]
    fn every_configured_algorithm_has_the_verifier_of_its_name() {
        let verifiers = algorithms(&wif_config::Algorithm::ALL);
        assert_eq!(verifiers.len(), wif_config::ALGORITHMS.len());
        for (configured, verifier) in wif_config::Algorithm::ALL.iter().zip(verifiers) {
            assert_eq!(parse_algorithm(configured.as_str()).unwrap(), verifier);
        }
    }
}
