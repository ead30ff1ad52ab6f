//! Reading a request body: the one place bodies are read and size-capped, as extractors
//! for the API's handlers, the webhook and the console. The framework's own limit is off
//! ([`super::edge`]); the limit is the state's [`BodyLimit`] (`[server] max_body_bytes`),
//! unless the router set its own as a request extension (the webhook's listener:
//! `[webhook] max_body_bytes`). A larger body is a 413 `body_too_large`.
//!
//! A handler that must answer some other refusal first (authentication, a missing token)
//! takes `Result<Capped, ApiError>` (or `Result<CappedJson<T>, ApiError>`) and looks at it
//! when its turn comes.

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};

/// The most bytes a request body may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit(pub usize);

impl FromRef<super::AppState> for BodyLimit {
    fn from_ref(state: &super::AppState) -> Self {
        BodyLimit(state.max_body_bytes)
    }
}

/// The whole body, at most the limit's bytes, with its `Content-Type` (lower-cased;
/// empty when absent or not text).
#[derive(Debug, Clone)]
pub struct Capped {
    pub bytes: Bytes,
    pub content_type: String,
}

/// A JSON body (`Content-Type: application/json`, else 415 `unsupported_media_type`)
/// within the limit, read into `T` (else 400 `invalid_request`).
#[derive(Debug, Clone)]
pub struct CappedJson<T>(pub T);

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

impl<S> FromRequest<S> for Capped
where
    S: Send + Sync,
    BodyLimit: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let BodyLimit(limit) = request
            .extensions()
            .get::<BodyLimit>()
            .copied()
            .unwrap_or_else(|| BodyLimit::from_ref(state));
        let content_type = content_type(request.headers());
        let bytes = axum::body::to_bytes(request.into_body(), limit)
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::BodyTooLarge,
                    format!("the request body is larger than {limit} bytes"),
                )
            })?;
        Ok(Capped {
            bytes,
            content_type,
        })
    }
}

impl<S, T> FromRequest<S> for CappedJson<T>
where
    S: Send + Sync,
    BodyLimit: FromRef<S>,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !content_type(request.headers()).starts_with("application/json") {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send application/json",
            ));
        }
        let body = Capped::from_request(request, state).await?;
        serde_json::from_slice(&body.bytes)
            .map(CappedJson)
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("the body is not a valid request: {e}"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::body::Body;

    #[derive(Clone)]
    struct State(usize);

    impl FromRef<State> for BodyLimit {
        fn from_ref(state: &State) -> Self {
            BodyLimit(state.0)
        }
    }

    fn request(content_type: &str, body: &'static str) -> Request {
        Request::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap()
    }

    #[tokio::test]
    async fn bodies_are_capped_by_the_state_or_the_routers_limit() {
        let state = State(4);
        let body = Capped::from_request(request("Text/Plain", "1234"), &state)
            .await
            .unwrap();
        assert_eq!(
            (&body.bytes[..], body.content_type.as_str()),
            (&b"1234"[..], "text/plain")
        );
        let e = Capped::from_request(request("text/plain", "12345"), &state)
            .await
            .unwrap_err();
        assert_eq!((e.code, e.status.as_u16()), (ErrorCode::BodyTooLarge, 413));
        let mut larger = request("text/plain", "12345");
        larger.extensions_mut().insert(BodyLimit(5));
        assert!(Capped::from_request(larger, &state).await.is_ok());
    }

    #[tokio::test]
    async fn json_bodies_are_json() {
        let state = State(64);
        let long: &'static str = "1".repeat(65).leak();
        let CappedJson(v): CappedJson<serde_json::Value> =
            CappedJson::from_request(request("application/json; charset=utf-8", "[1]"), &state)
                .await
                .unwrap();
        assert_eq!(v, serde_json::json!([1]));
        for (content_type, body, code, status) in [
            ("text/plain", "[1]", ErrorCode::UnsupportedMediaType, 415),
            ("application/json", "[1", ErrorCode::InvalidRequest, 400),
            ("application/json", long, ErrorCode::BodyTooLarge, 413),
        ] {
            let e =
                CappedJson::<serde_json::Value>::from_request(request(content_type, body), &state)
                    .await
                    .unwrap_err();
            assert_eq!(
                (e.code, e.status.as_u16()),
                (code, status),
                "{content_type} {body}"
            );
        }
    }
}
