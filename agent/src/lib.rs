//! WIF agent: runs beside workloads and gets them Azure tokens through the WIF broker.
//!
//! - [`serve`]: the managed-identity endpoints the Azure SDKs already call (App Service and
//!   IMDS protocols), backed by [`broker`] exchanges and a [`cache`];
//! - [`source`]: where the external token comes from (a file, a command), and [`ci`]: a CI
//!   platform's OIDC endpoint or variable;
//! - [`exec`]: the endpoints for the life of one command in a CI job;
//! - [`guard`]: only direct local callers are answered (no DNS rebinding, no proxies);
//! - [`cli`]: `wif-agent serve`, `token` and `exec`.
//!
//! The agent never logs a token or the identity header secret.

pub mod broker;
pub mod cache;
pub mod ci;
// The command line's doc comments are its `--help` text, written for a terminal: rustdoc's
// link syntax does not apply there.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::bare_urls)]
pub mod cli;
pub mod exec;
pub mod guard;
pub mod serve;
pub mod source;
