//! The TLS crypto provider. aws-lc-rs is installed explicitly before any TLS connection
//! is opened or accepted, so no library chooses one at runtime, and `ring` is never in
//! the dependency graph (`deny.toml` bans it).

/// Installs aws-lc-rs as rustls's process-wide default provider. Idempotent.
pub fn install_provider() {
    // `Err` means a provider is installed already: by an earlier call (tests start many
    // servers in one process), which installed this same provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
