//! Signing keys and hand-made JWTs for the local issuer, the Entra emulator and tests.
//!
//! Tokens are assembled and signed here directly with aws-lc-rs (compact JWS, base64url
//! without padding) so tests can craft exactly the header and claims they need, including
//! tokens no well-behaved library would produce (`alg: none`, HS256 keyed with an RSA
//! public key). Never used to verify anything in `serve`.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// The kinds of signing key the local stack can mint with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyKind {
    /// RSA 2048, RS256 (what Entra requires of an assertion).
    #[default]
    Rsa2048,
    /// ECDSA P-256, ES256.
    EcP256,
    /// ECDSA P-384, ES384 (one of the algorithms AWS signs web-identity tokens with).
    EcP384,
    /// Ed25519, EdDSA.
    Ed25519,
}

impl KeyKind {
    /// The JWS `alg` this kind of key signs with.
    pub fn alg(self) -> &'static str {
        match self {
            KeyKind::Rsa2048 => "RS256",
            KeyKind::EcP256 => "ES256",
            KeyKind::EcP384 => "ES384",
            KeyKind::Ed25519 => "EdDSA",
        }
    }
}

/// Why a key could not be made or a token not signed.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("could not generate a {0:?} key")]
    KeyGeneration(KeyKind),
    #[error("signing failed")]
    Signing,
    #[error("could not serialize the token: {0}")]
    Serialize(#[from] serde_json::Error),
}

enum KeyMaterial {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A private signing key with its `kid`. Cloning shares the key material.
#[derive(Clone)]
pub struct SigningKey {
    kid: Arc<str>,
    kind: KeyKind,
    material: Arc<KeyMaterial>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a fresh key of `kind` named `kid`.
    pub fn generate(kind: KeyKind, kid: &str) -> Result<Self, JwtError> {
        crate::crypto::install_provider();
        let material = match kind {
            KeyKind::Rsa2048 => RsaKeyPair::generate(KeySize::Rsa2048).map(KeyMaterial::Rsa),
            KeyKind::EcP256 => {
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map(KeyMaterial::Ec)
            }
            KeyKind::EcP384 => {
                EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).map(KeyMaterial::Ec)
            }
            KeyKind::Ed25519 => Ed25519KeyPair::generate().map(KeyMaterial::Ed),
        }
        .map_err(|_| JwtError::KeyGeneration(kind))?;
        Ok(Self {
            kid: Arc::from(kid),
            kind,
            material: Arc::new(material),
        })
    }

    /// The same key material published under another `kid` (cheap: shares the key).
    /// Handy for padding a JWKS with many entries, or for a kid/key mismatch test.
    pub fn with_kid(&self, kid: &str) -> Self {
        Self {
            kid: Arc::from(kid),
            kind: self.kind,
            material: Arc::clone(&self.material),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// `"RS256"`, `"ES256"` or `"EdDSA"`.
    pub fn alg(&self) -> &'static str {
        self.kind.alg()
    }

    /// The public half as a JWK, as an issuer publishes it.
    pub fn public_jwk(&self) -> Value {
        let mut jwk = match &*self.material {
            KeyMaterial::Rsa(pair) => {
                let public = pair.public_key();
                json!({
                    "kty": "RSA",
                    "n": b64url(public.modulus().big_endian_without_leading_zero()),
                    "e": b64url(public.exponent().big_endian_without_leading_zero()),
                })
            }
            KeyMaterial::Ec(pair) => {
                // Uncompressed SEC1 point: 0x04 || x || y, 32 bytes each on P-256, 48 on P-384.
                let point = pair.public_key().as_ref();
                let (x, y) = match point {
                    [0x04, rest @ ..] => rest.split_at(rest.len() / 2),
                    _ => (&[][..], &[][..]),
                };
                let crv = if x.len() == 48 { "P-384" } else { "P-256" };
                json!({ "kty": "EC", "crv": crv, "x": b64url(x), "y": b64url(y) })
            }
            KeyMaterial::Ed(pair) => {
                json!({ "kty": "OKP", "crv": "Ed25519", "x": b64url(pair.public_key().as_ref()) })
            }
        };
        if let Value::Object(map) = &mut jwk {
            map.insert("kid".into(), Value::from(self.kid()));
            map.insert("use".into(), Value::from("sig"));
            map.insert("alg".into(), Value::from(self.alg()));
        }
        jwk
    }

    /// The public key as DER `SubjectPublicKeyInfo`.
    pub fn public_key_der(&self) -> Option<Vec<u8>> {
        let der = match &*self.material {
            KeyMaterial::Rsa(pair) => pair.public_key().as_der().ok()?.as_ref().to_vec(),
            KeyMaterial::Ec(pair) => pair.public_key().as_der().ok()?.as_ref().to_vec(),
            KeyMaterial::Ed(pair) => pair.public_key().as_der().ok()?.as_ref().to_vec(),
        };
        Some(der)
    }

    /// The public key as a PEM `PUBLIC KEY` (SPKI) block, the bytes an attacker would use
    /// as an HS256 secret in an algorithm-confusion attack.
    pub fn public_key_pem(&self) -> Option<String> {
        let der = self.public_key_der()?;
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        Some(pem)
    }

    /// Signs `claims` under the header `{"alg", "typ": "JWT", "kid"}`.
    pub fn sign(&self, claims: &Value) -> Result<String, JwtError> {
        let header = json!({ "alg": self.alg(), "typ": "JWT", "kid": self.kid() });
        self.sign_with_header(&header, claims)
    }

    /// Signs exactly `header` and `claims` with this key, whatever the header says (so a
    /// test can lie about `alg` or `kid`).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, JwtError> {
        let signing_input = signing_input(header, claims)?;
        let signature = self.raw_sign(signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", b64url(&signature)))
    }

    /// Signs a header and payload given as JSON text, byte for byte (so a test can sign
    /// JSON no `Value` can hold, such as an object naming a member twice).
    pub fn sign_json_text(&self, header: &str, payload: &str) -> Result<String, JwtError> {
        let signing_input = format!(
            "{}.{}",
            b64url(header.as_bytes()),
            b64url(payload.as_bytes())
        );
        let signature = self.raw_sign(signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", b64url(&signature)))
    }

    fn raw_sign(&self, message: &[u8]) -> Result<Vec<u8>, JwtError> {
        match &*self.material {
            KeyMaterial::Rsa(pair) => {
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    message,
                    &mut signature,
                )
                .map_err(|_| JwtError::Signing)?;
                Ok(signature)
            }
            KeyMaterial::Ec(pair) => pair
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| JwtError::Signing),
            KeyMaterial::Ed(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        }
    }
}

/// A JWKS document publishing the public half of `keys`, in order.
pub fn jwks(keys: &[SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(SigningKey::public_jwk).collect::<Vec<_>>() })
}

/// An `alg: none` token with an empty signature (`header.payload.`).
pub fn unsigned_token(claims: &Value) -> String {
    let header = json!({ "alg": "none", "typ": "JWT" });
    format!("{}.{}.", b64url_json(&header), b64url_json(claims))
}

/// An HS256 token keyed with `secret`.
pub fn hmac_token(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({ "alg": "HS256", "typ": "JWT" });
    if let (Some(kid), Value::Object(map)) = (kid, &mut header) {
        map.insert("kid".into(), Value::from(kid));
    }
    let signing_input = format!("{}.{}", b64url_json(&header), b64url_json(claims));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(tag.as_ref()))
}

/// base64url without padding, as JWS uses.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes one base64url segment of a compact JWT into JSON (tolerates `=` padding).
pub fn decode_segment(segment: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(segment.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn signing_input(header: &Value, claims: &Value) -> Result<String, JwtError> {
    let header = serde_json::to_vec(header)?;
    let claims = serde_json::to_vec(claims)?;
    Ok(format!("{}.{}", b64url(&header), b64url(&claims)))
}

fn b64url_json(value: &Value) -> String {
    // Serializing a `Value` cannot fail (its map keys are strings).
    b64url(value.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_token_has_empty_signature() {
        let token = unsigned_token(&json!({"sub": "x"}));
        let parts: Vec<_> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2], "");
        assert_eq!(decode_segment(parts[0]).unwrap()["alg"], "none");
        assert_eq!(decode_segment(parts[1]).unwrap()["sub"], "x");
    }

    #[test]
    fn public_jwks_have_the_right_shape() {
        let rsa = SigningKey::generate(KeyKind::Rsa2048, "r").unwrap();
        let jwk = rsa.public_jwk();
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["e"], "AQAB");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwk["n"].as_str().unwrap())
                .unwrap()
                .len(),
            256
        );
        assert!(
            rsa.public_key_pem()
                .unwrap()
                .starts_with("-----BEGIN PUBLIC KEY-----\n")
        );

        let ec = SigningKey::generate(KeyKind::EcP256, "e").unwrap();
        let jwk = ec.public_jwk();
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(jwk["x"].as_str().unwrap().len(), 43);
        assert_eq!(jwk["y"].as_str().unwrap().len(), 43);

        let ed = SigningKey::generate(KeyKind::Ed25519, "d").unwrap();
        let jwk = ed.public_jwk();
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["kid"], "d");
        assert_eq!(jwk["use"], "sig");
    }
}
