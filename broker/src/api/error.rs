//! The one HTTP error type, [`crate::error::ApiError`], at the edge.
//!
//! Every error leaves the broker as `{"error", "error_description", "request_id"}` with a
//! stable snake_case `error` code and a status that fits (400/401/403/404/409/413/429/502/
//! 503). Each part classifies its own errors once (`ExchangeError::classify`,
//! `AdminError::classify`, ...); this module only names the conversions.

pub use crate::error::{
    ApiError, ErrorCode, OAuthError, REQUEST_ID, STORE_UNAVAILABLE, current_request_id,
};

/// The error shape, for the OpenAPI document and for clients (the server writes its own).
pub use wif_proto::error::{ErrorBody, FieldError};

/// For a store failure shown to a caller (the console's error pages): logs the detail
/// and returns [`STORE_UNAVAILABLE`].
pub fn store_failure(e: &crate::store::StoreError) -> String {
    let error = ApiError::store(e);
    error.log_internal();
    error.description
}

impl From<crate::exchange::ExchangeError> for ApiError {
    fn from(e: crate::exchange::ExchangeError) -> Self {
        ApiError {
            recorded: true,
            ..e.classify()
        }
    }
}

impl From<crate::admin::AdminError> for ApiError {
    fn from(e: crate::admin::AdminError) -> Self {
        e.classify()
    }
}

impl From<crate::api::admin::auth::AuthError> for ApiError {
    fn from(e: crate::api::admin::auth::AuthError) -> Self {
        e.classify()
    }
}
