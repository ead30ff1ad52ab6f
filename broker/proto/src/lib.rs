//! What the broker, its command line and the agent share, and nothing else.
//!
//! - [`exchange`] and [`error`]: the wire types of the token endpoints and the one error
//!   body every broker error is answered with (docs/api.md);
//! - [`admin`] and [`entra_setup`]: the admin API's wire types (docs/admin.md);
//! - [`clock`] and [`timespec`]: time, passed in, and its written forms;
//! - [`outbound`]: every outbound HTTP client, with its timeouts and URL rules;
//! - [`crypto`]: the process's one crypto provider for TLS (aws-lc-rs);
//! - [`shutdown`]: the signal that starts a graceful stop;
//! - [`secret`]: values that must never be printed;
//! - [`redact`]: untrusted values capped before they reach an error, a log or a store;
//! - [`serve`]: the HTTP server loop with its connection limits and drained shutdown.
//!
//! This crate must never depend on the broker or on anything only the broker needs
//! (the store, JWT verification, the OpenAPI generator outside the `openapi` feature):
//! the agent links it, and a test in `tests/tests/architecture.rs` keeps the agent's
//! dependency graph free of them. docs/architecture.md describes the crates.

pub mod admin;
pub mod clock;
pub mod crypto;
pub mod entra_setup;
pub mod error;
pub mod exchange;
pub mod outbound;
pub mod redact;
pub mod secret;
pub mod serve;
pub mod shutdown;
pub mod timespec;

/// Whether log lines on stderr may carry ANSI colours: stderr is a terminal and `NO_COLOR`
/// is unset or empty. Both binaries use it.
pub fn stderr_colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
