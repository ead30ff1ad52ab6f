//! Reading a token before anything about it is trusted: size limit, shape, header, and the
//! payload's claims. Nothing read here decides anything except which issuer to look up.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::TokenError;

/// A JWT split and decoded but not verified.
pub struct UnverifiedToken<'a> {
    pub raw: &'a str,
    /// `header.payload`, the bytes the signature covers.
    pub signed_part: &'a str,
    pub signature: &'a str,
    pub alg: String,
    pub kid: Option<String>,
    /// The payload; always a JSON object.
    pub claims: Value,
    /// The `iss` claim, not yet trusted.
    pub iss: String,
    /// SHA-256 of `raw`, when the caller already computed it (else verification does).
    pub sha256: Option<[u8; 32]>,
}

impl<'a> UnverifiedToken<'a> {
    pub fn parse(raw: &'a str, max_bytes: usize) -> Result<Self, TokenError> {
        if raw.len() > max_bytes {
            return Err(TokenError::TooLarge { limit: max_bytes });
        }
        let malformed = |why: &str| TokenError::Malformed(why.to_owned());
        let (signed_part, signature) = raw
            .rsplit_once('.')
            .ok_or_else(|| malformed("a JWT has three dot-separated parts"))?;
        let (header_b64, payload_b64) = signed_part
            .split_once('.')
            .ok_or_else(|| malformed("a JWT has three dot-separated parts"))?;
        if payload_b64.contains('.') {
            return Err(malformed(
                "a JWT has three dot-separated parts (JWE is not accepted)",
            ));
        }
        let header: Value =
            decode_json(header_b64).ok_or_else(|| malformed("the header is not base64url JSON"))?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("the header has no `alg`"))?
            .to_owned();
        if header.get("crit").is_some() {
            return Err(malformed("critical header extensions are not supported"));
        }
        let kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
        let claims = match decode_json(payload_b64) {
            Some(claims @ Value::Object(_)) => claims,
            _ => return Err(malformed("the payload is not a base64url JSON object")),
        };
        let iss = match claims.get("iss") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(TokenError::MissingClaim("iss")),
        };
        Ok(Self {
            raw,
            signed_part,
            signature,
            alg,
            kid,
            claims,
            iss,
            sha256: None,
        })
    }
}

fn decode_json(segment: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(segment.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}
