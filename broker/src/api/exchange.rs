//! The exchange endpoints: `POST /v1/token` (native) and `POST /oauth2/token` (RFC 8693).
//! Both accept JSON or form bodies and answer through [`crate::exchange::Broker`].

use crate::error::ErrorCode;
use std::collections::HashMap;
use std::net::IpAddr;

use super::body::Capped;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use super::client_address::ClientAddress;
use super::{ApiError, AppState};
use crate::exchange::{ExchangeRequest, Exchanged};

pub use wif_proto::exchange::{
    ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE, IdentityRef, JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT,
    TokenExchangeRequest, TokenExchangeResponse, TokenRequest, TokenResponse,
};

/// Exchange an external OIDC token for an Entra access token.
///
/// The external token goes in `Authorization: Bearer`.
#[utoipa::path(
    post,
    path = "/v1/token",
    tag = "exchange",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "an Entra access token for the requested scope", body = TokenResponse),
        (status = "4XX", body = super::error::ErrorBody, description = "refused; see docs/api.md for every code"),
        (status = "5XX", body = super::error::ErrorBody, description = "Entra, the issuer or the store is unavailable"),
    ),
    security(("external_token" = []))
)]
pub async fn native(
    State(state): State<AppState>,
    ClientAddress(client): ClientAddress,
    headers: HeaderMap,
    body: Result<Capped, ApiError>,
) -> Result<Response, ApiError> {
    native_inner(&state, client, headers, body)
        .await
        .map_err(|e| recorded(&state, "/v1/token", e))
}

/// `e`, recorded first unless the exchange recorded it: every refusal of an exchange
/// endpoint is audited and counted, also those before the token is looked at.
pub(super) fn recorded(state: &AppState, endpoint: &'static str, e: ApiError) -> ApiError {
    if !e.recorded {
        state.broker.record_refusal(
            endpoint,
            &super::error::current_request_id(),
            e.code.as_str(),
            &e.description,
        );
    }
    e
}

async fn native_inner(
    state: &AppState,
    client: Option<IpAddr>,
    headers: HeaderMap,
    body: Result<Capped, ApiError>,
) -> Result<Response, ApiError> {
    let token = bearer(&headers)?;
    let params = read_params(body?)?;
    reject_unknown(&params, &["scope", "resource", "client_id", "identity"])?;
    let (done, now) = exchange(state, "/v1/token", client, token, &params).await?;
    Ok(no_store(TokenResponse {
        access_token: done.token.access_token.expose().to_owned(),
        token_type: "Bearer".into(),
        expires_in: done.token.expires_on.saturating_sub(now),
        expires_on: done.token.expires_on,
        scope: done.scope,
        identity: IdentityRef {
            name: done.identity.name.clone(),
            tenant_id: done.identity.tenant_id.clone(),
            client_id: done.identity.client_id.clone(),
        },
    }))
}

/// RFC 8693 token exchange.
#[utoipa::path(
    post,
    path = "/oauth2/token",
    tag = "exchange",
    request_body(content = TokenExchangeRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "an Entra access token for the requested scope", body = TokenExchangeResponse),
        (status = "4XX", description = "refused; see docs/api.md for every code", body = super::error::ErrorBody),
        (status = "5XX", description = "Entra, the issuer or the store is unavailable", body = super::error::ErrorBody),
    )
)]
pub async fn rfc8693(
    State(state): State<AppState>,
    ClientAddress(client): ClientAddress,
    body: Result<Capped, ApiError>,
) -> Result<Response, ApiError> {
    rfc8693_inner(&state, client, body)
        .await
        .map_err(|e| recorded(&state, "/oauth2/token", e))
}

async fn rfc8693_inner(
    state: &AppState,
    client: Option<IpAddr>,
    body: Result<Capped, ApiError>,
) -> Result<Response, ApiError> {
    let params = read_params(body?)?;
    // As `/v1/token`: a parameter the broker would ignore (`audience`, `actor_token`, a
    // typo) is refused rather than silently dropped.
    reject_unknown(
        &params,
        &[
            "grant_type",
            "subject_token",
            "subject_token_type",
            "requested_token_type",
            "scope",
            "resource",
            "client_id",
            "identity",
        ],
    )?;
    match params.get("grant_type").map(String::as_str) {
        Some(TOKEN_EXCHANGE_GRANT) => {}
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedGrantType,
                format!(
                    "grant_type \"{}\" is not supported; use {TOKEN_EXCHANGE_GRANT}",
                    crate::redact::untrusted(other)
                ),
            ));
        }
        None => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "grant_type is required",
            ));
        }
    }
    let token = params
        .get("subject_token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "subject_token is required"))?;
    match params.get("subject_token_type").map(String::as_str) {
        Some(JWT_TOKEN_TYPE | ID_TOKEN_TYPE) => {}
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("subject_token_type must be {JWT_TOKEN_TYPE}"),
            ));
        }
    }
    if let Some(t) = params.get("requested_token_type")
        && t != ACCESS_TOKEN_TYPE
    {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("requested_token_type must be {ACCESS_TOKEN_TYPE}"),
        ));
    }
    let (done, now) = exchange(state, "/oauth2/token", client, token, &params).await?;
    Ok(no_store(TokenExchangeResponse {
        access_token: done.token.access_token.expose().to_owned(),
        issued_token_type: ACCESS_TOKEN_TYPE.into(),
        token_type: "Bearer".into(),
        expires_in: done.token.expires_on.saturating_sub(now),
        scope: done.scope,
    }))
}

/// Runs the exchange with the body's scope and identity; returns the result and the time.
async fn exchange(
    state: &AppState,
    endpoint: &'static str,
    client: Option<IpAddr>,
    token: &str,
    params: &HashMap<String, String>,
) -> Result<(Exchanged, u64), ApiError> {
    let request_id = super::error::current_request_id();
    let done = state
        .broker
        .exchange(ExchangeRequest {
            endpoint,
            request_id: &request_id,
            token,
            scope: scope_param(params)?,
            identity: identity_param(params)?,
            tenant: None,
            client,
        })
        .await?;
    Ok((done, state.broker.clock().now()))
}

fn no_store(body: impl Serialize) -> Response {
    let mut response = (StatusCode::OK, Json(body)).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The token from `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || {
        ApiError::new(
            ErrorCode::MissingToken,
            "send the external OIDC token as `Authorization: Bearer <token>`",
        )
    };
    let value = headers.get(header::AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(missing());
    }
    Ok(token.trim())
}

/// Reads a JSON object or form body (by `Content-Type`) into string parameters.
pub fn read_params(body: Capped) -> Result<HashMap<String, String>, ApiError> {
    let Capped {
        bytes,
        content_type,
    } = body;
    let mut params = HashMap::new();
    if content_type.starts_with("application/json") {
        if bytes.is_empty() {
            return Ok(params);
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("the body is not valid JSON: {e}"),
            )
        })?;
        let Value::Object(map) = value else {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "the JSON body must be an object",
            ));
        };
        for (k, v) in map {
            match v {
                Value::String(s) => {
                    params.insert(k, s);
                }
                Value::Null => {}
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!("`{k}` must be a string"),
                    ));
                }
            }
        }
    } else if content_type.starts_with("application/x-www-form-urlencoded") || bytes.is_empty() {
        for (k, v) in url::form_urlencoded::parse(&bytes) {
            if params.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("parameter `{k}` is repeated"),
                ));
            }
        }
    } else {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send application/json or application/x-www-form-urlencoded",
        ));
    }
    Ok(params)
}

fn reject_unknown(params: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "unknown parameter `{}`; accepted: {}",
                crate::redact::untrusted(k),
                known.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn scope_param(params: &HashMap<String, String>) -> Result<Option<&str>, ApiError> {
    match (params.get("scope"), params.get("resource")) {
        (Some(_), Some(_)) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "give either `scope` or `resource`, not both",
        )),
        (Some(s), None) | (None, Some(s)) => Ok(Some(s.as_str())),
        (None, None) => Ok(None),
    }
}

fn identity_param(params: &HashMap<String, String>) -> Result<Option<&str>, ApiError> {
    match (params.get("identity"), params.get("client_id")) {
        (Some(a), Some(b)) if a != b => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "give either `identity` or `client_id`, not both",
        )),
        (Some(s), _) | (None, Some(s)) => Ok(Some(s.as_str()).filter(|s| !s.is_empty())),
        (None, None) => Ok(None),
    }
}
