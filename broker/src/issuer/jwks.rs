//! Turning a JWKS document into verification keys. The algorithm a key may verify comes
//! from the key itself (`kty`, `crv`, and `alg` when present), never from a token.

use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// A public key ready to verify signatures.
pub struct VerifyingKey {
    pub kid: Option<String>,
    /// The algorithms this key may verify (a family narrowed by the JWK's `alg`).
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JwksError {
    #[error("the JWKS has no `keys` array")]
    NoKeysArray,
    #[error("the JWKS holds no usable signing key")]
    NoUsableKeys,
}

const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Parses `doc`, keeping at most `max_keys` usable signature keys. Keys that are for
/// encryption, symmetric (`oct`), of an unknown type, or malformed are skipped.
pub fn parse(
    doc: &serde_json::Value,
    max_keys: usize,
) -> Result<Vec<Arc<VerifyingKey>>, JwksError> {
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or(JwksError::NoKeysArray)?;
    let usable: Vec<Arc<VerifyingKey>> = keys
        .iter()
        .filter_map(|raw| serde_json::from_value::<Jwk>(raw.clone()).ok())
        .filter_map(|jwk| to_verifying_key(&jwk))
        .take(max_keys)
        .map(Arc::new)
        .collect();
    if usable.is_empty() {
        return Err(JwksError::NoUsableKeys);
    }
    Ok(usable)
}

fn to_verifying_key(jwk: &Jwk) -> Option<VerifyingKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA.to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return None,
        },
        // Symmetric keys would let anyone holding the JWKS forge tokens.
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        Some(declared) => {
            let declared = Algorithm::try_from(declared).ok()?;
            if !family.contains(&declared) {
                return None;
            }
            vec![declared]
        }
        None => family,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyingKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    #[test]
    fn rsa_key_without_alg_may_verify_the_rsa_family() {
        let keys = parse(
            &json!({"keys":[{"kty":"RSA","kid":"a","n":N,"e":"AQAB"}]}),
            100,
        )
        .unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("a"));
        assert!(keys[0].algorithms.contains(&Algorithm::RS256));
        assert!(keys[0].algorithms.contains(&Algorithm::PS512));
        assert!(!keys[0].algorithms.contains(&Algorithm::HS256));
    }

    #[test]
    fn declared_alg_narrows_and_must_fit_the_key_type() {
        let keys = parse(
            &json!({"keys":[
                {"kty":"RSA","kid":"a","alg":"RS256","n":N,"e":"AQAB"},
                {"kty":"RSA","kid":"b","alg":"ES256","n":N,"e":"AQAB"},
            ]}),
            100,
        )
        .unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].algorithms, vec![Algorithm::RS256]);
    }

    #[test]
    fn symmetric_encryption_and_garbage_keys_are_skipped() {
        let doc = json!({"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"RSA","kid":"e","use":"enc","n":N,"e":"AQAB"},
            {"kty":"RSA","kid":"x"},
            "not an object",
        ]});
        assert_eq!(parse(&doc, 100).unwrap_err(), JwksError::NoUsableKeys);
        assert_eq!(
            parse(&json!({"nokeys":[]}), 100).unwrap_err(),
            JwksError::NoKeysArray
        );
    }

    #[test]
    fn key_count_is_capped() {
        let keys: Vec<_> = (0..10)
            .map(|i| json!({"kty":"RSA","kid":format!("k{i}"),"n":N,"e":"AQAB"}))
            .collect();
        assert_eq!(parse(&json!({ "keys": keys }), 3).unwrap().len(), 3);
    }
}
