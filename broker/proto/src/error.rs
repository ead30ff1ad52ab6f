//! The error body. Every error the broker answers has this shape (docs/api.md, "Error
//! responses"): a stable snake_case code, a description safe for the caller, and the
//! request id that ties the answer to the broker's log and audit.

use serde::{Deserialize, Serialize};

/// `{"error", "error_description", "request_id"}`, plus `details` for validation errors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ErrorBody {
    /// A stable snake_case code, e.g. `no_matching_credential`.
    pub error: String,
    /// What went wrong, for the caller.
    pub error_description: String,
    /// Quote it when asking an operator; also in the `x-request-id` header.
    pub request_id: String,
    /// For validation errors: one `{field, message}` per violated rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<FieldError>>,
}

/// One violated rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// The error codes a client of the broker acts on. docs/api.md lists every code.
pub mod code {
    /// 400: the token may act as several identities; the request must name one.
    pub const IDENTITY_REQUIRED: &str = "identity_required";
    /// 403: the token is verified, but no federated credential matches it.
    pub const NO_MATCHING_CREDENTIAL: &str = "no_matching_credential";
    /// 403: the requested identity is not one this token may act as.
    pub const IDENTITY_NOT_ALLOWED: &str = "identity_not_allowed";
    /// 401: the token names an issuer no federated credential trusts.
    pub const UNKNOWN_ISSUER: &str = "unknown_issuer";
    /// 403: the identity is disabled.
    pub const IDENTITY_DISABLED: &str = "identity_disabled";
    /// 403: the matching federated credential is disabled.
    pub const CREDENTIAL_DISABLED: &str = "credential_disabled";
    /// 403: the matching federated credential is past its `notAfter`.
    pub const CREDENTIAL_EXPIRED: &str = "credential_expired";
    /// 403: the identity or credential does not allow the requested scope.
    pub const SCOPE_NOT_ALLOWED: &str = "scope_not_allowed";
    /// 503: the server is at its connection limit; retry.
    pub const OVERLOADED: &str = "overloaded";
    /// 503: the server is stopping; retry (another replica answers).
    pub const SHUTTING_DOWN: &str = "shutting_down";

    /// The codes above.
    pub const ALL: &[&str] = &[
        IDENTITY_REQUIRED,
        NO_MATCHING_CREDENTIAL,
        IDENTITY_NOT_ALLOWED,
        UNKNOWN_ISSUER,
        IDENTITY_DISABLED,
        CREDENTIAL_DISABLED,
        CREDENTIAL_EXPIRED,
        SCOPE_NOT_ALLOWED,
        OVERLOADED,
        SHUTTING_DOWN,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_left_out_unless_there_are_some() {
        let body = ErrorBody {
            error: code::OVERLOADED.into(),
            error_description: "retry".into(),
            request_id: "r-1".into(),
            details: None,
        };
        let json = serde_json::to_value(&body).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"error": "overloaded", "error_description": "retry", "request_id": "r-1"})
        );
        let back: ErrorBody = serde_json::from_value(json).unwrap_or_default();
        assert_eq!(back, body);
    }
}
