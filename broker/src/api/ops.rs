//! Liveness, readiness and metrics.

use crate::error::ErrorCode;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState};

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "`{\"status\":\"ok\"}`")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: 503 once shutdown has begun. While the store cannot be reached the broker
/// still serves (its config file's identities, the last registry it loaded, cached
/// tokens), so it stays ready and says `degraded`.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, description = "`{\"status\":\"ready\"}`, or `{\"status\":\"degraded\",\"store\":\"unreachable\"}` while the store cannot be reached"), (status = 503, description = "shutting down: load balancers should move away", body = super::error::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        if state.broker.store_reachable() {
            Json(json!({"status": "ready"})).into_response()
        } else {
            Json(json!({"status": "degraded", "store": "unreachable"})).into_response()
        }
    } else {
        ApiError::new(ErrorCode::ShuttingDown, "the broker is shutting down")
            .with_retry_after(1)
            .into_response()
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.broker.metrics().render(),
    )
        .into_response()
}

/// This API's OpenAPI document (also checked in as `docs/openapi.json`).
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "this document", content_type = "application/json", body = Object)))]
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi::document(),
    )
        .into_response()
}
