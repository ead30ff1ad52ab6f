//! Reading a request body: the one place bodies are read and size-capped, for the API's
//! handlers, the webhook and the console. The framework's own limit is off
//! ([`super::edge`]); each caller passes its limit (`[server] max_body_bytes`, or
//! `[webhook] max_body_bytes`), and a larger body is a 413 `body_too_large`.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};

/// The whole body, at most `limit` bytes.
pub async fn read(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            ErrorCode::BodyTooLarge,
            format!("the request body is larger than {limit} bytes"),
        )
    })
}

/// The request's `Content-Type`, lower-cased (empty when absent or not text).
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// A JSON body (`Content-Type: application/json`, else 415) of at most `limit` bytes,
/// read into `T` (else 400 `invalid_request`).
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    if !content_type(headers).starts_with("application/json") {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send application/json",
        ));
    }
    let bytes = read(body, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the body is not a valid request: {e}"),
        )
    })
}
