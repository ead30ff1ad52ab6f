//! The one HTTP error type.
//!
//! Every error leaves the broker as `{"error", "error_description", "request_id"}` with a
//! stable snake_case `error` code and a status that fits (400/401/403/404/409/413/429/502/
//! 503). The description is safe for the caller; anything internal goes to the log only.
//! 503s carry `Retry-After`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::cache::CacheError;
use crate::entra::EntraError;
use crate::exchange::ExchangeError;
use crate::issuer::KeyError;

tokio::task_local! {
    /// The current request's id, set by the request-id middleware.
    pub static REQUEST_ID: String;
}

/// The current request id, or empty outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: String,
    pub retry_after: Option<u64>,
    /// One entry per violated rule, for validation errors: `[{"field","message"}]`.
    pub details: Option<serde_json::Value>,
    /// The exchange recorded this refusal already (audit event and metrics); the
    /// exchange endpoints record every other refusal themselves.
    pub recorded: bool,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    error_description: &'a str,
    request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a serde_json::Value>,
}

/// The error shape, for the OpenAPI document and for clients (the server writes `Body`).
pub use wif_proto::error::{ErrorBody, FieldError};

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            retry_after: None,
            details: None,
            recorded: false,
        }
    }

    pub fn bad_request(code: &'static str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, description)
    }

    pub fn unauthorized(code: &'static str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, description)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
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

/// What a caller is told when the store fails; the store's own text (a database error)
/// goes to the log only, tied to the answer by the request id.
pub const STORE_UNAVAILABLE: &str =
    "the broker's store cannot be reached; retry later, or quote the request id to an operator";

/// For a store failure shown to a caller (the console's error pages): logs the detail
/// and returns [`STORE_UNAVAILABLE`].
pub fn store_failure(e: &crate::store::StoreError) -> String {
    log_internal("store_unavailable", e);
    STORE_UNAVAILABLE.to_owned()
}

/// Logs an internal failure's detail with the request id, for [`STORE_UNAVAILABLE`] and
/// its kind.
fn log_internal(code: &'static str, detail: &dyn std::fmt::Display) {
    let request_id = current_request_id();
    tracing::error!(error = %detail, code, request_id = %request_id, "internal failure; the caller got a fixed description");
}

/// Whether `e` carries internal (store or database) text that must not reach a caller.
fn is_internal(e: &ExchangeError) -> bool {
    use crate::entra::assertion::AssertionError;
    use crate::entra::assertion::issuer::IssuerKeyError;
    matches!(e, ExchangeError::Store(_))
        || matches!(e, ExchangeError::Cache(CacheError::Entra(entra))
        if matches!(entra.as_ref(), EntraError::Assertion(AssertionError::Issuer(
            IssuerKeyError::Store(_) | IssuerKeyError::StoredKey(_)
        ))))
}

impl From<ExchangeError> for ApiError {
    fn from(e: ExchangeError) -> Self {
        ApiError {
            recorded: true,
            ..exchange_error(e)
        }
    }
}

fn exchange_error(e: ExchangeError) -> ApiError {
    let code = e.code();
    let description = if is_internal(&e) {
        log_internal(code, &e);
        STORE_UNAVAILABLE.to_owned()
    } else {
        e.to_string()
    };
    let status = match &e {
        ExchangeError::Scope(_)
        | ExchangeError::Select(crate::policy::SelectError::Ambiguous(_)) => {
            StatusCode::BAD_REQUEST
        }
        ExchangeError::Token(crate::token::TokenError::TooLarge { .. }) => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        ExchangeError::Token(_)
        | ExchangeError::UnknownIssuer
        | ExchangeError::Keys(KeyError::UnknownKey { .. })
        | ExchangeError::Match(crate::policy::MatchError::Audience { .. }) => {
            StatusCode::UNAUTHORIZED
        }
        ExchangeError::Keys(KeyError::Unavailable { .. }) => {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, description)
                .with_retry_after(crate::issuer::RETRY_AFTER_FAILURE_SECS);
        }
        ExchangeError::Match(_) | ExchangeError::Select(_) | ExchangeError::Refused(_) => {
            StatusCode::FORBIDDEN
        }
        ExchangeError::RateLimited(limited) => {
            let retry_after = limited.retry_after;
            return ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, description)
                .with_retry_after(retry_after);
        }
        ExchangeError::Replayed => StatusCode::UNAUTHORIZED,
        ExchangeError::TenantMismatch(_) => StatusCode::BAD_REQUEST,
        ExchangeError::Store(_) => {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, description)
                .with_retry_after(5);
        }
        ExchangeError::Cache(CacheError::ShortLived { .. }) => StatusCode::BAD_GATEWAY,
        ExchangeError::Cache(CacheError::Entra(_)) if is_internal(&e) => {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, description)
                .with_retry_after(5);
        }
        ExchangeError::Cache(CacheError::Entra(entra)) => return entra_error(code, entra),
    };
    ApiError::new(status, code, description)
}

impl From<crate::admin::AdminError> for ApiError {
    fn from(e: crate::admin::AdminError) -> Self {
        use crate::admin::AdminError;
        let code = e.code();
        let description = match &e {
            AdminError::Store(store) => {
                log_internal(code, store);
                STORE_UNAVAILABLE.to_owned()
            }
            _ => e.to_string(),
        };
        match e {
            AdminError::Invalid(violations) => {
                let mut err = ApiError::bad_request(code, description);
                err.details = serde_json::to_value(violations).ok();
                err
            }
            AdminError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, code, description),
            AdminError::Conflict(_) | AdminError::ReadOnly(_) | AdminError::Limit { .. } => {
                ApiError::new(StatusCode::CONFLICT, code, description)
            }
            AdminError::Store(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, description)
                    .with_retry_after(5)
            }
        }
    }
}

impl From<crate::api::admin::auth::AuthError> for ApiError {
    fn from(e: crate::api::admin::auth::AuthError) -> Self {
        use crate::api::admin::auth::AuthError;
        match e {
            AuthError::Missing => ApiError::unauthorized("unauthenticated", e.to_string()),
            AuthError::Invalid(_) => ApiError::unauthorized("invalid_admin_token", e.to_string()),
            AuthError::NoRole(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
            }
        }
    }
}

fn entra_error(code: &'static str, e: &EntraError) -> ApiError {
    match e {
        EntraError::Unavailable { retry_after, .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            format!("{e}; no cached token is available, retry later"),
        )
        .with_retry_after(retry_after.unwrap_or(5)),
        EntraError::Protocol(_) => ApiError::new(StatusCode::BAD_GATEWAY, code, e.to_string()),
        EntraError::Assertion(a) if a.is_transient() => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string()).with_retry_after(5)
        }
        EntraError::Assertion(_) => ApiError::new(StatusCode::BAD_GATEWAY, code, e.to_string()),
        EntraError::Rejected { description, .. } => {
            let (status, hint) = match code {
                "entra_no_matching_federated_credential" => (
                    StatusCode::FORBIDDEN,
                    " The broker accepted the token, but the Entra app registration has no federated credential matching the assertion: with the passthrough assertion, register the token's issuer, subject and audience in Entra; with the broker assertion, one credential trusting the broker's issuer URL and the identity's assertion subject (see docs/assertion-sources.md).",
                ),
                "entra_assertion_expired" => (
                    StatusCode::UNAUTHORIZED,
                    " The presented token expired before Entra saw it; request a fresh one.",
                ),
                "entra_assertion_rejected" => (StatusCode::UNAUTHORIZED, ""),
                "entra_application_not_found" => (
                    StatusCode::BAD_GATEWAY,
                    " Check the identity's client_id and tenant_id.",
                ),
                "entra_tenant_not_found" => (
                    StatusCode::BAD_GATEWAY,
                    " Check the identity's tenant_id and cloud (authority host).",
                ),
                _ => (StatusCode::BAD_GATEWAY, ""),
            };
            ApiError::new(
                status,
                code,
                format!("Entra refused the request: {description}.{hint}"),
            )
        }
    }
}
