//! WIF Broker: trades external OIDC tokens for Entra access tokens.
//!
//! The modules follow one exchange in order: [`issuer`] (discovery and signing keys),
//! [`token`] (verification), [`policy`] (federated credentials and matching), [`cache`]
//! (Entra tokens per identity and scope), [`ratelimit`] (token buckets per identity and caller), [`entra`] (the token endpoint), [`audit`]
//! (one event per decision) and [`api`] (the HTTP edge); [`exchange`] strings them
//! together. [`dev`] holds the local issuer, the Entra emulator and the IMDS emulator used
//! by `wif-broker dev` and by the tests, behind the `dev` cargo feature (on by default, off
//! in the container image); [`cli`] is the command line; [`ui`] is the admin
//! console served at `/ui/`.

pub mod admin;
pub mod api;
pub mod audit;
pub mod cache;
// The command line's doc comments are its `--help` text, written for a terminal: rustdoc's
// link syntax does not apply there.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::bare_urls)]
pub mod cli;
/// Time, passed in (shared with the agent; see [`wif_proto::clock`]).
pub use wif_proto::clock;
pub mod crypto;
pub mod dev;
pub mod entra;
pub mod entra_setup;
pub mod error;
pub mod exchange;
pub mod inject;
pub mod issuer;
pub mod metrics;
/// Outbound HTTP clients (shared with the CLI; see [`wif_proto::outbound`]).
pub use wif_proto::outbound;
pub mod policy;
pub mod ratelimit;
/// Untrusted values, capped (shared with the agent; see [`wif_proto::redact`]).
pub use wif_proto::redact;
pub mod server;
pub mod simulate;
pub mod store;
pub mod sync;
pub mod tls;
pub mod token;
pub mod ui;
