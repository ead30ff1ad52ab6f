//! The admin commands of `wif-broker`: `identity`, `credential`, `simulate` and `audit`
//! call a running broker's admin API ([`admin`]); `plan`, `apply`, `export` and `entra
//! plan` manage registry files as code ([`gitops`]); `admin-token` makes admin tokens
//! locally. The `wif-broker` binary parses and dispatches them.
//!
//! This crate is a client of the admin API: it speaks the wire types of [`wif_proto`]
//! and never depends on the broker crate (docs/architecture.md; a test in
//! `tests/tests/architecture.rs` keeps it so).

// The commands' doc comments are their `--help` text, written for a terminal: rustdoc's
// link syntax does not apply there (as when they were `wif_broker::cli`).
#[allow(rustdoc::broken_intra_doc_links, rustdoc::bare_urls)]
pub mod admin;
pub mod client;
#[allow(rustdoc::broken_intra_doc_links, rustdoc::bare_urls)]
pub mod gitops;
pub mod output;
