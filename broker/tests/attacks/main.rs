//! The attack suite: every attack on the broker that docs/security.md lists, performed as
//! an attacker would, against the real `wif-broker serve` process over loopback HTTP, with
//! an assertion that it does no harm. One module per kind of attacker.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)] // a shared harness: not every helper is used by every module
mod support;

mod admin;
mod anonymous;
mod connections;
mod gaps;
mod harness;
mod issuers;
mod tokens;
mod webhook;
