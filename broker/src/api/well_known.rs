//! The broker as an OIDC issuer: the discovery document and the JWKS Entra fetches to
//! verify the assertions the broker signs (`assertion = "broker"`). Public and
//! unauthenticated, like every issuer's; 404 when `[broker_issuer] url` is unset.

use crate::error::ErrorCode;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

fn not_an_issuer() -> ApiError {
    ApiError::new(
        ErrorCode::NotAnIssuer,
        "this broker is not configured as an issuer ([broker_issuer] url is unset)",
    )
}

/// Verifiers cache these documents; the next key is published long before it signs
/// (`publish_ahead_hours`), so an hour of caching is safe.
fn cacheable(body: serde_json::Value) -> Response {
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    response
}

/// OpenID Connect discovery for the broker as issuer.
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "issuer",
    responses((status = 200, description = "`issuer`, `jwks_uri` and the supported algorithms", body = Object),
        (status = 404, description = "the broker is not configured as an issuer (`[broker_issuer]`)", body = super::error::ErrorBody)))]
pub async fn discovery(State(state): State<AppState>) -> Response {
    match state.broker.issuer() {
        Some(issuer) => cacheable(issuer.discovery()),
        None => not_an_issuer().into_response(),
    }
}

/// The public keys of the broker's assertions: the signing key, the next key, and retired
/// keys whose assertions may still be presented.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "issuer",
    responses((status = 200, description = "A JWKS (`keys`: RSA, RS256)", body = Object),
        (status = 404, description = "the broker is not configured as an issuer (`[broker_issuer]`)", body = super::error::ErrorBody)))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    match state.broker.issuer() {
        Some(issuer) => cacheable(issuer.jwks().await),
        None => not_an_issuer().into_response(),
    }
}
