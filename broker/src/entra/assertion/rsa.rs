//! RSA signing keys for the assertions the broker signs (RS256, the only algorithm Entra
//! accepts for a client assertion), and their public halves as JWKs.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

use crate::entra::Secret;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("no PEM private key found (expected BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)")]
    NoKey,
    #[error("the private key is not an RSA key of at least 2048 bits")]
    NotRsa,
    #[error("cannot generate an RSA key")]
    Generate,
    #[error("cannot sign")]
    Sign,
}

/// A private RSA key. `kid` is its RFC 7638 JWK thumbprint, so every replica loading the
/// same key names it the same way.
pub struct RsaKey {
    pair: RsaKeyPair,
    kid: String,
    jwk: Value,
}

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl RsaKey {
    pub fn generate() -> Result<Self, KeyError> {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate)?;
        Ok(Self::from_pair(pair))
    }

    /// From PEM: PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| KeyError::NoKey)?;
        let pair = match &der {
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => return Err(KeyError::NotRsa),
        }
        .map_err(|_| KeyError::NotRsa)?;
        if pair.public_modulus_len() < 256 {
            return Err(KeyError::NotRsa);
        }
        Ok(Self::from_pair(pair))
    }

    /// From PKCS#8 DER, base64-encoded (how the store keeps generated keys).
    pub fn from_pkcs8_base64(text: &str) -> Result<Self, KeyError> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| KeyError::NoKey)?;
        let pair = RsaKeyPair::from_pkcs8(&der).map_err(|_| KeyError::NotRsa)?;
        Ok(Self::from_pair(pair))
    }

    /// PKCS#8 DER, base64-encoded, for the store.
    pub fn to_pkcs8_base64(&self) -> Result<Secret, KeyError> {
        let der = self.pair.as_der().map_err(|_| KeyError::NotRsa)?;
        Ok(Secret::new(
            base64::engine::general_purpose::STANDARD.encode(der.as_ref()),
        ))
    }

    fn from_pair(pair: RsaKeyPair) -> Self {
        let public = pair.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let kid = thumbprint(&n, &e);
        let jwk = json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e });
        Self { pair, kid, jwk }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (`kty`, `use`, `alg`, `kid`, `n`, `e`).
    pub fn public_jwk(&self) -> &Value {
        &self.jwk
    }

    /// The public key as PKCS#1 `RSAPublicKey` DER.
    pub fn public_key_der(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// A compact JWS of `claims` under `header` (which must say `"alg": "RS256"`).
    pub fn sign(&self, header: &Value, claims: &Value) -> Result<Secret, KeyError> {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| KeyError::Sign)?;
        Ok(Secret::new(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(&signature)
        )))
    }
}

/// RFC 7638 thumbprint of an RSA JWK: SHA-256 of the required members in lexicographic
/// order without whitespace, base64url.
fn thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref(),
    )
}

/// A new key as a PKCS#8 PEM file's text, for tests that load keys from files.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_key_pem() -> String {
    let key = RsaKey::generate().unwrap();
    let body = key.to_pkcs8_base64().unwrap();
    let lines: Vec<&str> = body
        .expose()
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kid_is_the_rfc7638_thumbprint_and_survives_the_store() {
        crate::crypto::install_provider();
        let key = RsaKey::generate().unwrap();
        let stored = key.to_pkcs8_base64().unwrap();
        let again = RsaKey::from_pkcs8_base64(stored.expose()).unwrap();
        assert_eq!(key.kid(), again.kid());
        assert_eq!(key.kid().len(), 43, "base64url of a SHA-256 digest");
        assert_eq!(key.public_jwk()["kid"], key.kid());
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // The example key of RFC 7638 section 3.1 has this thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(
            thumbprint(n, "AQAB"),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert_eq!(RsaKey::from_pem(b"hello").unwrap_err(), KeyError::NoKey);
        assert!(RsaKey::from_pkcs8_base64("AAAA").is_err());
    }
}
