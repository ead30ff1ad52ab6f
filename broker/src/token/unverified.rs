//! Reading a token before anything about it is trusted: size limit, shape, header, and the
//! payload's claims. Nothing read here decides anything except which issuer to look up.
//!
//! The header and payload are parsed strictly: a JSON object naming a member twice (at any
//! depth) is refused, because JSON parsers disagree on which duplicate wins and the issuer
//! may have meant the other one (docs/api.md, `invalid_token`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::TokenError;

/// A JWT split and decoded but not verified.
///
/// `alg`, `kid` and `iss` are raw (they select keys and issuers exactly); an error that
/// names one holds a [`crate::redact::Untrusted`] copy, never the raw value.
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
        let three_parts = TokenError::Malformed("a JWT has three dot-separated parts");
        let (signed_part, signature) = raw.rsplit_once('.').ok_or(three_parts.clone())?;
        let (header_b64, payload_b64) = signed_part.split_once('.').ok_or(three_parts)?;
        if payload_b64.contains('.') {
            return Err(TokenError::Malformed(
                "a JWT has three dot-separated parts (JWE is not accepted)",
            ));
        }
        let header = match decode_json(header_b64) {
            Ok(Value::Object(header)) => header,
            Err(Problem::Duplicate) => {
                return Err(TokenError::Malformed("the header names a member twice"));
            }
            _ => return Err(TokenError::Malformed("the header is not base64url JSON")),
        };
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(TokenError::Malformed("the header has no `alg`"))?
            .to_owned();
        if header.get("crit").is_some() {
            return Err(TokenError::Malformed(
                "critical header extensions are not supported",
            ));
        }
        let kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
        let claims = match decode_json(payload_b64) {
            Ok(claims @ Value::Object(_)) => claims,
            Err(Problem::Duplicate) => {
                return Err(TokenError::Malformed("the payload names a member twice"));
            }
            _ => {
                return Err(TokenError::Malformed(
                    "the payload is not a base64url JSON object",
                ));
            }
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

enum Problem {
    Duplicate,
    Invalid,
}

const DUPLICATE: &str = "duplicate member";

fn decode_json(segment: &str) -> Result<Value, Problem> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .map_err(|_| Problem::Invalid)?;
    match serde_json::from_slice::<Strict>(&bytes) {
        Ok(Strict(value)) => Ok(value),
        Err(e) if e.to_string().starts_with(DUPLICATE) => Err(Problem::Duplicate),
        Err(_) => Err(Problem::Invalid),
    }
}

/// A JSON value parsed like `serde_json::Value`, except that an object naming a member
/// twice is an error (serde_json's `Value` silently keeps the last one). Same cost as
/// `Value`: one pass, one lookup per member.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                // No name in the message: the caller reports a fixed text.
                return Err(de::Error::custom(DUPLICATE));
            }
            let Strict(value) = map.next_value()?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", b64(header), b64(payload))
    }

    const PAYLOAD: &str = r#"{"iss":"https://issuer.example","sub":"a","n":[1,-2,3.5,null,true]}"#;

    #[test]
    fn a_well_formed_token_parses_like_serde_json_value() {
        let raw = token(r#"{"alg":"RS256","kid":"k1"}"#, PAYLOAD);
        let t = UnverifiedToken::parse(&raw, 16_384).unwrap();
        assert_eq!(t.alg, "RS256");
        assert_eq!(t.kid.as_deref(), Some("k1"));
        assert_eq!(t.iss, "https://issuer.example");
        assert_eq!(t.claims, serde_json::from_str::<Value>(PAYLOAD).unwrap());
    }

    #[test]
    fn a_member_named_twice_is_refused_in_header_and_payload_at_any_depth() {
        let cases = [
            (r#"{"alg":"RS256","alg":"none"}"#, PAYLOAD, "header"),
            (r#"{"alg":"RS256","kid":"a","kid":"b"}"#, PAYLOAD, "header"),
            (
                r#"{"alg":"RS256"}"#,
                r#"{"iss":"https://a","sub":"x","sub":"y"}"#,
                "payload",
            ),
            (
                r#"{"alg":"RS256"}"#,
                r#"{"iss":"https://a","iss":"https://b"}"#,
                "payload",
            ),
            (
                r#"{"alg":"RS256"}"#,
                r#"{"iss":"https://a","x":{"k":[{"n":1,"n":2}]}}"#,
                "payload",
            ),
        ];
        for (header, payload, part) in cases {
            let raw = token(header, payload);
            match UnverifiedToken::parse(&raw, 16_384) {
                Err(TokenError::Malformed(why)) => {
                    assert!(why.contains(part) && why.contains("twice"), "{why}")
                }
                Err(e) => panic!("{header} {payload}: {e}"),
                Ok(_) => panic!("{header} {payload} was accepted"),
            }
        }
    }

    #[test]
    fn distinct_members_with_the_same_name_at_different_levels_are_fine() {
        let raw = token(
            r#"{"alg":"RS256"}"#,
            r#"{"iss":"https://a","sub":"x","nested":{"sub":"y","iss":"z"}}"#,
        );
        assert!(UnverifiedToken::parse(&raw, 16_384).is_ok());
    }
}
