//! Every issuer the broker is documented to federate with (docs/compatibility.md,
//! "Issuers"), with tokens shaped exactly as that issuer documents them: claims present
//! and absent, algorithms, header members, where its keys are published, and its `iss`
//! string to the byte. For each: a credential admits the token, another refuses it with
//! the documented error, and near misses of the issuer string (a trailing `/`, case, a
//! port) are refused without anything being fetched. The broker is the real
//! `wif-broker serve` process; the issuers are stand-ins at their real URLs (see `farm`).

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)] // the attack suite's harness: only some of it is used here
#[path = "../attacks/support.rs"]
mod support;

mod farm;

mod ci;
mod clouds;
mod kubernetes;
