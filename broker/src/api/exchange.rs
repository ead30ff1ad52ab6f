//! The exchange endpoints: `POST /v1/token` (native) and `POST /oauth2/token` (RFC 8693).
//! Both accept JSON or form bodies and answer through [`crate::exchange::Broker`].

use crate::error::ErrorCode;
use std::collections::HashMap;
use std::net::IpAddr;

use super::body::Capped;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
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
    Authorization(authorization): Authorization,
    body: Result<Capped, ApiError>,
) -> Result<Response, ApiError> {
    native_inner(&state, client, authorization.as_ref(), body)
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
    authorization: Option<&HeaderValue>,
    body: Result<Capped, ApiError>,
) -> Result<Response, ApiError> {
    let token = bearer(authorization)?;
    let params = read_params(body?)?;
    reject_unknown(&params, &["scope", "resource", "client_id", "identity"])?;
    let (done, now) = exchange(state, "/v1/token", client, token, &params).await?;
    Ok(no_store(&NativeAnswer {
        access_token: done.token.access_token.expose(),
        token_type: "Bearer",
        expires_in: done.token.expires_on.saturating_sub(now),
        expires_on: done.token.expires_on,
        scope: &done.scope,
        identity: IdentityAnswer {
            name: &done.identity.name,
            tenant_id: &done.identity.tenant_id,
            client_id: &done.identity.client_id,
        },
    }))
}

/// [`TokenResponse`] as written, borrowing from the exchange's result: the answer is
/// serialised straight into its body, without copying the access token first
/// (docs/PERFORMANCE.md, "Every request verified"). The test `answers_keep_the_wire_shape`
/// holds it to the wire type, field for field and byte for byte.
#[derive(Serialize)]
struct NativeAnswer<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
    expires_on: u64,
    scope: &'a str,
    identity: IdentityAnswer<'a>,
}

/// [`IdentityRef`], borrowed.
#[derive(Serialize)]
struct IdentityAnswer<'a> {
    name: &'a str,
    tenant_id: &'a str,
    client_id: &'a str,
}

/// [`TokenExchangeResponse`], borrowed (see [`NativeAnswer`]).
#[derive(Serialize)]
struct ExchangeAnswer<'a> {
    access_token: &'a str,
    issued_token_type: &'static str,
    token_type: &'static str,
    expires_in: u64,
    scope: &'a str,
}

/// The request's `Authorization` header alone: the exchange needs no other header, so
/// the header map is not copied.
pub struct Authorization(Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for Authorization {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.get(header::AUTHORIZATION).cloned()))
    }
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
    Ok(no_store(&ExchangeAnswer {
        access_token: done.token.access_token.expose(),
        issued_token_type: ACCESS_TOKEN_TYPE,
        token_type: "Bearer",
        expires_in: done.token.expires_on.saturating_sub(now),
        scope: &done.scope,
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

/// A 200 JSON answer that no cache may keep, serialised into a buffer sized for it once
/// (an access token is 1–2 KB; axum's `Json` starts at 128 bytes and grows).
fn no_store(body: &impl Serialize) -> Response {
    let mut bytes = Vec::with_capacity(ANSWER_CAPACITY);
    match serde_json::to_writer(&mut bytes, body) {
        Ok(()) => (
            StatusCode::OK,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            bytes,
        )
            .into_response(),
        // Strings and numbers always serialise; were one not to, axum's `Json` answers
        // its own 500.
        Err(_) => axum::Json(body).into_response(),
    }
}

/// Room for an answer with a typical access token, so writing one rarely grows the buffer.
const ANSWER_CAPACITY: usize = 4096;

/// The token from `Authorization: Bearer <token>`.
fn bearer(authorization: Option<&HeaderValue>) -> Result<&str, ApiError> {
    let missing = || {
        ApiError::new(
            ErrorCode::MissingToken,
            "send the external OIDC token as `Authorization: Bearer <token>`",
        )
    };
    let value = authorization.ok_or_else(missing)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_keep_the_wire_shape() {
        let native = NativeAnswer {
            access_token: "eyJ0.e30.c2ln",
            token_type: "Bearer",
            expires_in: 3599,
            expires_on: 1_800_000_000,
            scope: "https://management.azure.com/.default",
            identity: IdentityAnswer {
                name: "deploy \"prod\"",
                tenant_id: "contoso.onmicrosoft.com",
                client_id: "00000000-0000-0000-0000-000000000001",
            },
        };
        let wire = TokenResponse {
            access_token: native.access_token.into(),
            token_type: native.token_type.into(),
            expires_in: native.expires_in,
            expires_on: native.expires_on,
            scope: native.scope.into(),
            identity: IdentityRef {
                name: native.identity.name.into(),
                tenant_id: native.identity.tenant_id.into(),
                client_id: native.identity.client_id.into(),
            },
        };
        assert_eq!(
            serde_json::to_string(&native).unwrap(),
            serde_json::to_string(&wire).unwrap()
        );
        let rfc8693 = ExchangeAnswer {
            access_token: "eyJ0.e30.c2ln",
            issued_token_type: ACCESS_TOKEN_TYPE,
            token_type: "Bearer",
            expires_in: 3599,
            scope: "api://x/.default",
        };
        let wire = TokenExchangeResponse {
            access_token: rfc8693.access_token.into(),
            issued_token_type: rfc8693.issued_token_type.into(),
            token_type: rfc8693.token_type.into(),
            expires_in: rfc8693.expires_in,
            scope: rfc8693.scope.into(),
        };
        assert_eq!(
            serde_json::to_string(&rfc8693).unwrap(),
            serde_json::to_string(&wire).unwrap()
        );
    }

    #[tokio::test]
    async fn an_answer_is_json_and_not_to_be_cached() {
        let response = no_store(&ExchangeAnswer {
            access_token: "a",
            issued_token_type: ACCESS_TOKEN_TYPE,
            token_type: "Bearer",
            expires_in: 1,
            scope: "s",
        });
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let back: TokenExchangeResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!(back.access_token, "a");
    }
}
