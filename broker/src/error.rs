//! The one error type (docs/architecture.md, "Errors").
//!
//! Every part keeps its own error enum; each is classified once, by its own module, into
//! an [`ApiError`]: the stable [`ErrorCode`], the HTTP status, `Retry-After`, a description
//! safe for the caller and, when there is one, an internal message that only the log sees
//! (tied to the answer by the request id). The Entra-compatible endpoint's OAuth error
//! ([`OAuthError`]) follows from the code and status, here, in one place.
//!
//! This module depends on nothing else of the broker, so every step can classify its
//! errors without importing the HTTP edge (`api`).

use std::fmt;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

tokio::task_local! {
    /// The current request's id, set by the request-id middleware (`api`).
    pub static REQUEST_ID: String;
}

/// The current request id, or empty outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident = $name:literal, $status:ident;)*) => {
        /// The stable error codes on the wire (docs/api.md, "Errors", lists every one).
        /// Codes are an external contract: add, never rename.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as callers see it: snake_case.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                }
            }

            /// The status an error with this code is answered with.
            pub const fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)*
                }
            }
        }
    };
}

codes! {
    /// A malformed request: body, field, parameter.
    InvalidRequest = "invalid_request", BAD_REQUEST;
    InvalidScope = "invalid_scope", BAD_REQUEST;
    UnsupportedGrantType = "unsupported_grant_type", BAD_REQUEST;
    UnknownHost = "unknown_host", BAD_REQUEST;
    TenantMismatch = "tenant_mismatch", BAD_REQUEST;
    IdentityRequired = "identity_required", BAD_REQUEST;
    InvalidAdmissionReview = "invalid_admission_review", BAD_REQUEST;
    NotAPod = "not_a_pod", BAD_REQUEST;
    HostNetworkNeedsPort = "host_network_needs_port", BAD_REQUEST;
    InvalidAgentPort = "invalid_agent_port", BAD_REQUEST;
    AgentPortInUse = "agent_port_in_use", BAD_REQUEST;
    MissingToken = "missing_token", UNAUTHORIZED;
    InvalidToken = "invalid_token", UNAUTHORIZED;
    MissingClaim = "missing_claim", UNAUTHORIZED;
    UnknownIssuer = "unknown_issuer", UNAUTHORIZED;
    UnknownSigningKey = "unknown_signing_key", UNAUTHORIZED;
    UnsupportedAlgorithm = "unsupported_algorithm", UNAUTHORIZED;
    InvalidSignature = "invalid_signature", UNAUTHORIZED;
    TokenExpired = "token_expired", UNAUTHORIZED;
    TokenNotYetValid = "token_not_yet_valid", UNAUTHORIZED;
    TokenLifetimeTooLong = "token_lifetime_too_long", UNAUTHORIZED;
    InvalidAudience = "invalid_audience", UNAUTHORIZED;
    TokenReplayed = "token_replayed", UNAUTHORIZED;
    EntraAssertionExpired = "entra_assertion_expired", UNAUTHORIZED;
    EntraAssertionRejected = "entra_assertion_rejected", UNAUTHORIZED;
    /// Admin API: no admin token.
    Unauthenticated = "unauthenticated", UNAUTHORIZED;
    InvalidAdminToken = "invalid_admin_token", UNAUTHORIZED;
    NoMatchingCredential = "no_matching_credential", FORBIDDEN;
    IdentityNotAllowed = "identity_not_allowed", FORBIDDEN;
    IdentityDisabled = "identity_disabled", FORBIDDEN;
    CredentialDisabled = "credential_disabled", FORBIDDEN;
    CredentialNotYetValid = "credential_not_yet_valid", FORBIDDEN;
    CredentialExpired = "credential_expired", FORBIDDEN;
    SourceNotAllowed = "source_not_allowed", FORBIDDEN;
    TokenTooOld = "token_too_old", FORBIDDEN;
    ScopeNotAllowed = "scope_not_allowed", FORBIDDEN;
    EntraNoMatchingFederatedCredential = "entra_no_matching_federated_credential", FORBIDDEN;
    /// Admin API: the admin token's role does not allow the call.
    Forbidden = "forbidden", FORBIDDEN;
    CsrfTokenRequired = "csrf_token_required", FORBIDDEN;
    NotAnIssuer = "not_an_issuer", NOT_FOUND;
    NotFound = "not_found", NOT_FOUND;
    MethodNotAllowed = "method_not_allowed", METHOD_NOT_ALLOWED;
    Conflict = "conflict", CONFLICT;
    ReadOnly = "read_only", CONFLICT;
    TooManyCredentials = "too_many_credentials", CONFLICT;
    PreconditionFailed = "precondition_failed", PRECONDITION_FAILED;
    TokenTooLarge = "token_too_large", PAYLOAD_TOO_LARGE;
    BodyTooLarge = "body_too_large", PAYLOAD_TOO_LARGE;
    UnsupportedMediaType = "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE;
    RateLimited = "rate_limited", TOO_MANY_REQUESTS;
    EntraApplicationNotFound = "entra_application_not_found", BAD_GATEWAY;
    EntraTenantNotFound = "entra_tenant_not_found", BAD_GATEWAY;
    EntraRejected = "entra_rejected", BAD_GATEWAY;
    EntraBadResponse = "entra_bad_response", BAD_GATEWAY;
    EntraTokenTooShort = "entra_token_too_short", BAD_GATEWAY;
    AssertionMisconfigured = "assertion_misconfigured", BAD_GATEWAY;
    IssuerUnavailable = "issuer_unavailable", SERVICE_UNAVAILABLE;
    AssertionUnavailable = "assertion_unavailable", SERVICE_UNAVAILABLE;
    EntraUnavailable = "entra_unavailable", SERVICE_UNAVAILABLE;
    Timeout = "timeout", SERVICE_UNAVAILABLE;
    ShuttingDown = "shutting_down", SERVICE_UNAVAILABLE;
    Overloaded = "overloaded", SERVICE_UNAVAILABLE;
    StoreUnavailable = "store_unavailable", SERVICE_UNAVAILABLE;
    /// A resource of the broker's own (random bytes) failed.
    Unavailable = "unavailable", SERVICE_UNAVAILABLE;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The OAuth `error` the Entra-compatible endpoint answers (docs/api.md, "Entra-compatible
/// endpoint"), as Entra itself would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthError {
    InvalidRequest,
    InvalidClient,
    UnauthorizedClient,
    InvalidScope,
    UnsupportedGrantType,
    TemporarilyUnavailable,
    ServerError,
}

impl OAuthError {
    pub const fn as_str(self) -> &'static str {
        match self {
            OAuthError::InvalidRequest => "invalid_request",
            OAuthError::InvalidClient => "invalid_client",
            OAuthError::UnauthorizedClient => "unauthorized_client",
            OAuthError::InvalidScope => "invalid_scope",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::TemporarilyUnavailable => "temporarily_unavailable",
            OAuthError::ServerError => "server_error",
        }
    }
}

/// What a caller is told when the store fails; the store's own text (a database error)
/// goes to the log only, tied to the answer by the request id.
pub const STORE_UNAVAILABLE: &str =
    "the broker's store cannot be reached; retry later, or quote the request id to an operator";

/// An error, classified: what the caller is told and what only the log sees.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    /// Safe for the caller: never a database error, a file path or an upstream body.
    pub description: String,
    /// For the log only, with the request id; never sent.
    pub internal: Option<String>,
    pub retry_after: Option<u64>,
    /// One entry per violated rule, for validation errors: `[{"field","message"}]`.
    pub details: Option<serde_json::Value>,
    /// The exchange recorded this refusal already (audit event and metrics); the
    /// exchange endpoints record every other refusal themselves.
    pub recorded: bool,
}

#[derive(Serialize)]
struct Body<'a> {
    error: ErrorCode,
    error_description: &'a str,
    request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a serde_json::Value>,
}

impl ApiError {
    /// An error with `code`'s status.
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        Self {
            status: code.status(),
            code,
            description: description.into(),
            internal: None,
            retry_after: None,
            details: None,
            recorded: false,
        }
    }

    /// An internal failure: the caller gets `description`; `internal` is logged now, with
    /// the request id, once (whichever page or body the error is answered as).
    pub fn internal(
        code: ErrorCode,
        description: impl Into<String>,
        internal: impl fmt::Display,
    ) -> Self {
        let error = Self {
            internal: Some(internal.to_string()),
            ..Self::new(code, description)
        };
        error.log_internal();
        error
    }

    /// A refusal whose cause has text the caller must not see (a store's message naming
    /// rows): the caller gets the description; `internal` is logged now, with the request
    /// id, at info level (a refusal, not a failure).
    pub fn with_internal(mut self, internal: impl fmt::Display) -> Self {
        let internal = internal.to_string();
        tracing::info!(error = %internal, code = %self.code, request_id = %current_request_id(),
            "refused; the caller got a fixed description");
        self.internal = Some(internal);
        self
    }

    /// A store failure: a fixed description, the store's text for the log, retry in 5 s.
    pub fn store(internal: impl fmt::Display) -> Self {
        Self::internal(ErrorCode::StoreUnavailable, STORE_UNAVAILABLE, internal).with_retry_after(5)
    }

    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "no such route")
    }

    /// Answers with `status` rather than the code's own.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// The Entra-compatible endpoint's status and OAuth error for this error: broker 401s
    /// are 401 `invalid_client`; 403s are 400 `unauthorized_client`; `invalid_scope` and
    /// `unsupported_grant_type` keep their names; other 4xx are 400 `invalid_request`;
    /// 503 and 429 are `temporarily_unavailable`; other 5xx are 500 `server_error`.
    pub fn oauth(&self) -> (StatusCode, OAuthError) {
        match (self.status.as_u16(), self.code) {
            // Entra answers its own throttling 429 with Retry-After; MSAL honours it.
            (429, _) => (
                StatusCode::TOO_MANY_REQUESTS,
                OAuthError::TemporarilyUnavailable,
            ),
            (503, _) => (
                StatusCode::SERVICE_UNAVAILABLE,
                OAuthError::TemporarilyUnavailable,
            ),
            (500..=599, _) => (StatusCode::INTERNAL_SERVER_ERROR, OAuthError::ServerError),
            (401, _) => (StatusCode::UNAUTHORIZED, OAuthError::InvalidClient),
            (403, _) => (StatusCode::BAD_REQUEST, OAuthError::UnauthorizedClient),
            (_, ErrorCode::InvalidScope) => (StatusCode::BAD_REQUEST, OAuthError::InvalidScope),
            (_, ErrorCode::UnsupportedGrantType) => {
                (StatusCode::BAD_REQUEST, OAuthError::UnsupportedGrantType)
            }
            _ => (StatusCode::BAD_REQUEST, OAuthError::InvalidRequest),
        }
    }

    /// Logs the internal message, if any, with the request id ([`ApiError::internal`]
    /// does, when the error is classified).
    fn log_internal(&self) {
        if let Some(internal) = &self.internal {
            let request_id = current_request_id();
            tracing::error!(error = %internal, code = %self.code, request_id = %request_id,
                "internal failure; the caller got a fixed description");
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.description)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.code,
            error_description: &self.description,
            request_id: current_request_id(),
            details: self.details.as_ref(),
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
    }

    #[test]
    fn the_codes_clients_act_on_are_wif_protos() {
        for name in wif_proto::error::code::ALL {
            assert!(
                ErrorCode::ALL.iter().any(|c| c.as_str() == *name),
                "wif_proto's {name} is not an ErrorCode"
            );
        }
    }

    #[test]
    fn an_internal_message_is_never_answered() {
        let e = ApiError::store("connection to 10.0.0.7:5432 refused: password for user wif");
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        let body = futures_body(response);
        assert!(!body.contains("10.0.0.7"), "{body}");
        assert!(body.contains("store_unavailable"), "{body}");
    }

    fn futures_body(response: Response) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt
            .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn oauth_errors_follow_entra() {
        let cases = [
            (ErrorCode::UnknownIssuer, 401, "invalid_client"),
            (ErrorCode::NoMatchingCredential, 400, "unauthorized_client"),
            (ErrorCode::InvalidScope, 400, "invalid_scope"),
            (
                ErrorCode::UnsupportedGrantType,
                400,
                "unsupported_grant_type",
            ),
            (ErrorCode::TenantMismatch, 400, "invalid_request"),
            (ErrorCode::TokenTooLarge, 400, "invalid_request"),
            (ErrorCode::RateLimited, 429, "temporarily_unavailable"),
            (ErrorCode::EntraUnavailable, 503, "temporarily_unavailable"),
            (ErrorCode::EntraRejected, 500, "server_error"),
        ];
        for (code, status, oauth) in cases {
            let (got_status, got) = ApiError::new(code, "x").oauth();
            assert_eq!(
                (got_status.as_u16(), got.as_str()),
                (status, oauth),
                "{code}"
            );
        }
    }
}
