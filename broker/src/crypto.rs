//! The process's one crypto provider. aws-lc-rs is installed explicitly for both rustls
//! and jsonwebtoken before anything signs, verifies or opens a TLS connection, so no
//! library ever chooses at runtime (and `ring` is not in the dependency graph).

/// Installs aws-lc-rs as the default provider for rustls and jsonwebtoken. Idempotent.
pub fn install_provider() {
    wif_proto::crypto::install_provider();
    // `Err` means a provider is installed already: by an earlier call of ours (tests
    // start many servers in one process), which is the same provider.
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
}
