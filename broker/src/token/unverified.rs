//! Reading a token before anything about it is trusted: size limit, shape, header, and the
//! payload's claims. Nothing read here decides anything except which issuer to look up.
//!
//! The header and payload are read strictly, in one pass each (`super::claims`): a JSON
//! object naming a member twice (at any depth) is refused, because JSON parsers disagree on
//! which duplicate wins and the issuer may have meant the other one (docs/api.md,
//! `invalid_token`). The registered claims are read typed; the payload becomes a
//! `serde_json::Value` only when something asks for it ([`Claims::value`]).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::TokenError;
use super::claims::{self, Claims, Problem, Registered};

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
    /// The payload, a JSON object; its `serde_json::Value` is built on first use.
    pub claims: Claims,
    /// The `iss` claim, not yet trusted.
    pub iss: String,
    /// The other registered claims, read but not yet judged (`super::verify` judges them).
    pub registered: Registered,
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
        let header = match decode(header_b64).and_then(|bytes| claims::read_header(&bytes)) {
            Ok(header) => header,
            Err(Problem::Duplicate) => {
                return Err(TokenError::Malformed("the header names a member twice"));
            }
            Err(Problem::Invalid) => {
                return Err(TokenError::Malformed("the header is not base64url JSON"));
            }
        };
        let alg = header
            .alg
            .ok_or(TokenError::Malformed("the header has no `alg`"))?;
        if header.crit {
            return Err(TokenError::Malformed(
                "critical header extensions are not supported",
            ));
        }
        let payload = match decode(payload_b64).and_then(claims::read_payload) {
            Ok(payload) => payload,
            Err(Problem::Duplicate) => {
                return Err(TokenError::Malformed("the payload names a member twice"));
            }
            Err(Problem::Invalid) => {
                return Err(TokenError::Malformed(
                    "the payload is not a base64url JSON object",
                ));
            }
        };
        let iss = payload.iss.ok_or(TokenError::MissingClaim("iss"))?;
        Ok(Self {
            raw,
            signed_part,
            signature,
            alg,
            kid: header.kid,
            claims: payload.claims,
            iss,
            registered: payload.registered,
            sha256: None,
        })
    }
}

fn decode(segment: &str) -> Result<Vec<u8>, Problem> {
    URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .map_err(|_| Problem::Invalid)
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
        assert!(
            !t.claims.is_parsed(),
            "the value is built only when asked for"
        );
        assert_eq!(
            *t.claims.value(),
            serde_json::from_str::<serde_json::Value>(PAYLOAD).unwrap()
        );
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
