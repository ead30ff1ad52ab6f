//! Federated credentials: Entra's validation rules, the FFL expression language, and the
//! registry that matches a verified token to the identities it may act as.

pub mod authority;
pub mod conditions;
pub mod ffl;
pub mod registry;
pub mod rules;

pub use registry::{
    Credential, Identity, MatchError, Registry, SelectError, SubjectRule, select_identity,
};
