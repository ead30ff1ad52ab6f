//! The TLS listener's certificate, reloaded when its files change (cert-manager rotates
//! them in place). A bad new pair is logged and the previous one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// Reads a PEM chain and key into a rustls certified key.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.display().to_string(),
            reason: "no certificates found".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der).map_err(|e| {
        TlsError::Key {
            path: key.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| TlsError::Setup(format!("certificate and key do not match: {e}")))?;
    Ok(certified)
}

/// Serves whatever pair was loaded last.
#[derive(Debug)]
pub struct ReloadingResolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Builds the server config and starts a task that reloads the pair every `interval`
/// when either file's modification time changed.
pub fn server_config(
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let resolver = Arc::new(ReloadingResolver {
        current: ArcSwap::from_pointee(load(&cert, &key)?),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Setup(e.to_string()))?
    .with_no_client_auth()
    .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let weak = Arc::downgrade(&resolver);
    tokio::spawn(async move {
        let mut seen = (modified(&cert), modified(&key));
        loop {
            tokio::time::sleep(interval).await;
            let Some(resolver) = weak.upgrade() else {
                return;
            };
            let now = (modified(&cert), modified(&key));
            if now == seen {
                continue;
            }
            match load(&cert, &key) {
                Ok(pair) => {
                    resolver.current.store(Arc::new(pair));
                    seen = now;
                    tracing::info!(cert = %cert.display(), "reloaded TLS certificate");
                }
                // Files may be mid-rotation; try again next tick.
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate reload failed; keeping the previous one")
                }
            }
        }
    });
    Ok(Arc::new(config))
}
