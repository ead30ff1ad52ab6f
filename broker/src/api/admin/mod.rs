//! The admin API: identities and federated credentials (Graph-shaped), simulate, audit.

pub mod model;
