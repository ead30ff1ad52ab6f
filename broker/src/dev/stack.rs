//! `wif-broker dev`: the whole stack on loopback.
