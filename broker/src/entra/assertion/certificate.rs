//! Certificate client assertions (`assertion = "certificate"`): a JWT signed with the
//! private key of a certificate registered on the app, carrying the certificate's SHA-256
//! (`x5t#S256`) and SHA-1 (`x5t`) thumbprints so Entra can find it. Files are read again
//! when they change, so a renewed certificate is used without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::json;

use super::reuse::Reused;
use super::rsa::{KeyError, RsaKey};
use crate::clock::SharedClock;
use crate::entra::Secret;

/// `exp - iat` of a certificate assertion (what MSAL uses).
const LIFETIME_SECS: u64 = 600;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CertificateError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("the certificate in {path} does not hold an RSA public key")]
    NotRsa { path: String },
    #[error("{path}: {error}")]
    Key { path: String, error: KeyError },
    #[error("the private key in {key} does not belong to the certificate in {certificate}")]
    Mismatch { certificate: String, key: String },
}

/// The certificate and key of one identity, and the files' states they were read from.
struct Loaded {
    stamp: (Option<FileStamp>, Option<FileStamp>),
    key: RsaKey,
    x5t: String,
    x5t_s256: String,
}

type FileStamp = (SystemTime, u64);

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Loaded certificates by certificate file.
pub struct Certificates {
    clock: SharedClock,
    loaded: std::sync::Mutex<HashMap<PathBuf, Arc<Loaded>>>,
    /// Assertions signed, by (certificate file, key file, client id, token endpoint), reused
    /// while the same certificate is loaded and at least half their life is left
    /// ([`super::reuse`]).
    reused: Reused<(PathBuf, PathBuf, String, String)>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").finish_non_exhaustive()
    }
}

impl Certificates {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            loaded: std::sync::Mutex::new(HashMap::new()),
            reused: Reused::default(),
        }
    }

    /// A client assertion for `client_id`: `iss` = `sub` = the client id, `aud` = the
    /// token endpoint it is sent to. The one signed for the same files, client and
    /// endpoint is reused while the files still hold the certificate that signed it and at
    /// least half its life is left.
    pub fn sign(
        &self,
        certificate: &Path,
        key: &Path,
        client_id: &str,
        token_endpoint: &str,
    ) -> Result<Secret, CertificateError> {
        let loaded = self.load(certificate, key)?;
        let now = self.clock.now();
        let kept_as = (
            certificate.to_owned(),
            key.to_owned(),
            client_id.to_owned(),
            token_endpoint.to_owned(),
        );
        if let Some(assertion) = self.reused.get(&kept_as, &loaded.x5t_s256, now) {
            return Ok(assertion);
        }
        let assertion = Self::sign_with(&loaded, key, client_id, token_endpoint, now)?;
        self.reused.keep(
            kept_as,
            &loaded.x5t_s256,
            &assertion,
            now,
            now + LIFETIME_SECS,
        );
        Ok(assertion)
    }

    fn sign_with(
        loaded: &Loaded,
        key: &Path,
        client_id: &str,
        token_endpoint: &str,
        now: u64,
    ) -> Result<Secret, CertificateError> {
        let header = json!({
            "alg": "RS256",
            "typ": "JWT",
            "x5t": loaded.x5t,
            "x5t#S256": loaded.x5t_s256,
        });
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": token_endpoint,
            "iat": now,
            "nbf": now.saturating_sub(60),
            "exp": now + LIFETIME_SECS,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        loaded
            .key
            .sign(&header, &claims)
            .map_err(|error| CertificateError::Key {
                path: key.display().to_string(),
                error,
            })
    }

    /// The loaded pair, read again when either file changed since.
    fn load(&self, certificate: &Path, key: &Path) -> Result<Arc<Loaded>, CertificateError> {
        let now_stamp = (stamp(certificate), stamp(key));
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = loaded.get(certificate)
            && known.stamp == now_stamp
        {
            return Ok(known.clone());
        }
        let fresh = Arc::new(read_pair(certificate, key, now_stamp)?);
        if loaded.contains_key(certificate) {
            tracing::info!(certificate = %certificate.display(), x5t_s256 = %fresh.x5t_s256,
                "certificate reloaded");
        }
        loaded.insert(certificate.to_owned(), fresh.clone());
        Ok(fresh)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertificateError> {
    std::fs::read(path).map_err(|e| CertificateError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn read_pair(
    certificate: &Path,
    key_path: &Path,
    stamp: (Option<FileStamp>, Option<FileStamp>),
) -> Result<Loaded, CertificateError> {
    let shown = |p: &Path| p.display().to_string();
    let cert_pem = read(certificate)?;
    // The first certificate is the leaf; a chain may follow it.
    let der = CertificateDer::pem_slice_iter(&cert_pem)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| CertificateError::NoCertificate {
            path: shown(certificate),
        })?;
    let public = rsa_public_key(der.as_ref()).ok_or_else(|| CertificateError::NotRsa {
        path: shown(certificate),
    })?;
    let key_pem = if key_path == certificate {
        cert_pem.clone()
    } else {
        read(key_path)?
    };
    let key = RsaKey::from_pem(&key_pem).map_err(|error| CertificateError::Key {
        path: shown(key_path),
        error,
    })?;
    if key.public_key_der() != public {
        return Err(CertificateError::Mismatch {
            certificate: shown(certificate),
            key: shown(key_path),
        });
    }
    let (x5t, x5t_s256) = thumbprints(der.as_ref());
    Ok(Loaded {
        stamp,
        key,
        x5t,
        x5t_s256,
    })
}

/// `x5t` (SHA-1) and `x5t#S256` (SHA-256) of a DER certificate, base64url.
pub fn thumbprints(der: &[u8]) -> (String, String) {
    use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, SHA256, digest};
    (
        URL_SAFE_NO_PAD.encode(digest(&SHA1_FOR_LEGACY_USE_ONLY, der).as_ref()),
        URL_SAFE_NO_PAD.encode(digest(&SHA256, der).as_ref()),
    )
}

/// One DER element at the start of `input`: its tag, its contents, and what follows.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len, rest) = rest.split_at(n);
        (
            len.iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            rest,
        )
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
/// 1.2.840.113549.1.1.1, rsaEncryption.
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// The RSA public key (PKCS#1 `RSAPublicKey` DER) of an X.509 certificate, or `None` when
/// the certificate is malformed or its key is not RSA.
pub fn rsa_public_key(certificate: &[u8]) -> Option<&[u8]> {
    let (SEQUENCE, cert, _) = element(certificate)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = element(cert)? else {
        return None;
    };
    // [0] version is optional; then serial, signature, issuer, validity, subject.
    if let Some((0xa0, _, rest)) = element(tbs) {
        tbs = rest;
    }
    for _ in 0..5 {
        tbs = element(tbs)?.2;
    }
    let (SEQUENCE, spki, _) = element(tbs)? else {
        return None;
    };
    let (SEQUENCE, algorithm, rest) = element(spki)? else {
        return None;
    };
    let (0x06, oid, _) = element(algorithm)? else {
        return None;
    };
    if oid != RSA_ENCRYPTION {
        return None;
    }
    let (0x03, bits, _) = element(rest)? else {
        return None;
    };
    match bits.split_first()? {
        (0, key) => Some(key),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn short_and_long_der_lengths() {
        assert_eq!(
            element(&[0x04, 0x02, 1, 2, 9]),
            Some((0x04, &[1u8, 2][..], &[9u8][..]))
        );
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7u8; 0x80]);
        assert_eq!(element(&long).unwrap().1.len(), 0x80);
        assert_eq!(element(&[0x04, 0x05, 1]), None, "truncated");
        assert_eq!(element(&[0x04, 0x85, 1, 1, 1, 1, 1]), None, "absurd length");
    }

    fn key_pem() -> String {
        super::super::rsa::test_key_pem()
    }

    /// A self-signed certificate for a new key, written to `dir`.
    fn write_pair(dir: &Path) -> (PathBuf, PathBuf) {
        let key_pem = key_pem();
        let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["wif-broker-app".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.join("app.crt"), dir.join("app.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key_pem).unwrap();
        (cert_path, key_path)
    }

    #[test]
    fn an_assertion_is_reused_for_its_endpoint_while_the_certificate_and_half_its_life_last() {
        crate::crypto::install_provider();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path());
        let clock = crate::clock::OffsetClock::new();
        let certificates = Certificates::new(clock.clone());
        let client = "3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6c";
        let endpoint = "https://login.microsoftonline.com/tenant/oauth2/v2.0/token";
        let sign = |client: &str, endpoint: &str| {
            certificates
                .sign(&cert, &key, client, endpoint)
                .unwrap()
                .expose()
                .to_owned()
        };

        let first = sign(client, endpoint);
        assert_eq!(sign(client, endpoint), first, "reused");
        assert_ne!(
            sign(
                client,
                "https://login.microsoftonline.us/tenant/oauth2/v2.0/token"
            ),
            first,
            "never for another endpoint"
        );
        assert_ne!(sign("another-client", endpoint), first);
        // Half of its 600 s.
        clock.advance(290);
        assert_eq!(sign(client, endpoint), first);
        clock.advance(20);
        let renewed = sign(client, endpoint);
        assert_ne!(renewed, first, "past half its life");
        assert_eq!(sign(client, endpoint), renewed);

        // A renewed certificate on disk signs a new assertion at once.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_pair(dir.path());
        assert_ne!(sign(client, endpoint), renewed);
    }

    #[test]
    fn garbage_has_no_public_key() {
        assert_eq!(rsa_public_key(b""), None);
        assert_eq!(rsa_public_key(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
    }
}
