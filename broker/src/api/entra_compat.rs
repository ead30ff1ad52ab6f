//! The Entra-compatible endpoints, so an unchanged `WorkloadIdentityCredential` (or MSAL's
//! client-credentials flow with a client assertion) pointed at the broker gets its tokens
//! from it: `GET /{tenant}/v2.0/.well-known/openid-configuration` and
//! `POST /{tenant}/oauth2/v2.0/token`.
//!
//! The client assertion is the workload's external OIDC token; `client_id` names the
//! identity. The handlers only translate Entra's wire format to [`ExchangeRequest`] and
//! [`super::ApiError`] back to Entra's error shape.

use super::body::Capped;
use crate::error::ErrorCode;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::client_address::ClientAddress;
use super::error::current_request_id;
use super::exchange::read_params;
use super::{ApiError, AppState};
use crate::exchange::ExchangeRequest;

pub const ENDPOINT: &str = "/{tenant}/oauth2/v2.0/token";
const CLIENT_CREDENTIALS: &str = "client_credentials";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Scopes MSAL may add that name no resource.
const RESERVED_SCOPES: &[&str] = &["openid", "profile", "offline_access"];

/// `POST /{tenant}/oauth2/v2.0/token` body (form), as MSAL sends it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EntraTokenRequest {
    /// The identity's client id (or name).
    pub client_id: String,
    /// `client_credentials`
    pub grant_type: String,
    /// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`
    pub client_assertion_type: String,
    /// The workload's external OIDC token.
    pub client_assertion: String,
    /// One resource's `/.default` scope.
    pub scope: String,
}

/// `POST /{tenant}/oauth2/v2.0/token` answer, as Entra's.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EntraTokenResponse {
    /// Always `Bearer`.
    pub token_type: String,
    pub expires_in: u64,
    pub ext_expires_in: u64,
    pub access_token: String,
}

/// Entra's error shape.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EntraErrorBody {
    /// An OAuth code: `invalid_request`, `invalid_client`, `unauthorized_client`,
    /// `invalid_scope`, `unsupported_grant_type`, `temporarily_unavailable`, `server_error`.
    pub error: String,
    /// Starts with the broker's stable code (docs/api.md), e.g. `no_matching_credential: ...`.
    pub error_description: String,
    /// Always empty: the broker has no AADSTS codes of its own.
    pub error_codes: Vec<u32>,
    /// `YYYY-MM-DD HH:MM:SSZ`
    pub timestamp: String,
    pub trace_id: String,
    /// The broker's request id (also in `x-request-id`).
    pub correlation_id: String,
}

/// Entra's tenant discovery document, with the broker as the authority.
#[utoipa::path(
    get,
    path = "/{tenant}/v2.0/.well-known/openid-configuration",
    // The broker's own discovery document is `discovery`.
    operation_id = "tenant_discovery",
    tag = "exchange",
    params(("tenant" = String, Path, description = "The identity's tenant id")),
    responses(
        (status = 200, description = "OpenID Connect discovery document naming the broker's token endpoint", body = Object),
        (status = 400, description = "the tenant is not a valid tenant id, or the request's host is not one the broker answers for", body = EntraErrorBody),
    )
)]
pub async fn discovery(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let now = state.broker.clock().now();
    if !sane_tenant(&tenant) {
        return entra_error(
            ApiError::new(
                ErrorCode::InvalidRequest,
                "the tenant is not a valid tenant id",
            ),
            now,
        );
    }
    let scheme = if state.tls { "https" } else { "http" };
    let (origin, host) = match state.self_address.origin(scheme, host(&uri, &headers)) {
        Ok(found) => found,
        Err(e) => return entra_error(e, now),
    };
    let base = format!("{origin}/{tenant}");
    let document = json!({
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        // The access tokens handed out are Entra's; Entra's keys verify them.
        "jwks_uri": format!(
            "{}/{tenant}/discovery/v2.0/keys",
            state.broker.default_authority_host()
        ),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/v2.0"),
        "request_uri_parameter_supported": false,
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "http_logout_supported": false,
        "frontchannel_logout_supported": false,
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid"],
        "tenant_region_scope": null,
        "cloud_instance_name": host,
        "cloud_graph_host_name": host,
        "msgraph_host": host,
        "rbac_url": host,
    });
    let mut response = (StatusCode::OK, Json(document)).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=86400, private"),
    );
    response
}

/// Entra's token endpoint: client credentials with the external token as the client
/// assertion.
#[utoipa::path(
    post,
    path = "/{tenant}/oauth2/v2.0/token",
    tag = "exchange",
    params(("tenant" = String, Path, description = "The identity's tenant id")),
    request_body(content = EntraTokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "an Entra access token, in Entra's answer shape", body = EntraTokenResponse),
        (status = 400, body = EntraErrorBody, description = "refused; `error_description` starts with the broker's code"),
        (status = 401, body = EntraErrorBody, description = "the client assertion is not acceptable"),
        (status = "5XX", body = EntraErrorBody, description = "Entra, the issuer or the store is unavailable"),
    )
)]
pub async fn token(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    ClientAddress(client): ClientAddress,
    body: Result<Capped, ApiError>,
) -> Response {
    match token_inner(&state, &tenant, client, body).await {
        Ok(response) => response,
        Err(e) => entra_error(
            super::exchange::recorded(&state, ENDPOINT, e),
            state.broker.clock().now(),
        ),
    }
}

async fn token_inner(
    state: &AppState,
    tenant: &str,
    client: Option<std::net::IpAddr>,
    body: Result<Capped, ApiError>,
) -> Result<Response, ApiError> {
    let params = read_params(body?)?;
    let param = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    match param("grant_type") {
        Some(CLIENT_CREDENTIALS) => {}
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedGrantType,
                format!(
                    "grant_type {:?} is not supported; use {CLIENT_CREDENTIALS}",
                    other.chars().take(64).collect::<String>()
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
    if param("client_assertion_type") != Some(JWT_BEARER) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("client_assertion_type must be {JWT_BEARER}"),
        ));
    }
    let assertion = param("client_assertion").ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "client_assertion (the external OIDC token) is required",
        )
    })?;
    let client_id = param("client_id")
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "client_id is required"))?;
    let scope = resource_scope(param("scope").unwrap_or_default())?;
    let request_id = current_request_id();
    let done = state
        .broker
        .exchange(ExchangeRequest {
            endpoint: ENDPOINT,
            request_id: &request_id,
            token: assertion,
            scope: Some(&scope),
            identity: Some(client_id),
            tenant: Some(tenant),
            client,
        })
        .await?;
    let expires_in = done
        .token
        .expires_on
        .saturating_sub(state.broker.clock().now());
    let mut response = (
        StatusCode::OK,
        Json(EntraTokenResponse {
            token_type: "Bearer".into(),
            expires_in,
            ext_expires_in: expires_in,
            access_token: done.token.access_token.expose().to_owned(),
        }),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The one resource scope among MSAL's scopes (which may include `openid` and friends).
fn resource_scope(scopes: &str) -> Result<String, ApiError> {
    let mut resources = scopes
        .split(' ')
        .filter(|s| !s.is_empty() && !RESERVED_SCOPES.contains(s));
    match (resources.next(), resources.next()) {
        (Some(one), None) => Ok(one.to_owned()),
        (None, _) => Err(ApiError::new(
            ErrorCode::InvalidScope,
            "scope is required: one resource's `/.default` scope",
        )),
        (Some(_), Some(_)) => Err(ApiError::new(
            ErrorCode::InvalidScope,
            "give one resource's `/.default` scope",
        )),
    }
}

fn sane_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 128
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// Where clients reach this broker, for the URLs it gives out about itself: `[server]
/// public_url` when set; otherwise the request's `Host`, accepted only when it names the
/// listen address (or `localhost`/loopback on its port, when the broker listens on
/// loopback or every address), so a forged `Host` is never reflected into a document a
/// client (or a cache) trusts. See docs/configuration.md.
#[derive(Debug, Clone, Default)]
pub struct SelfAddress {
    /// `public_url` without its trailing `/`, and its host (with the port, when not the
    /// scheme's default).
    public_url: Option<(String, String)>,
    hosts: Vec<String>,
}

impl SelfAddress {
    /// `public_url` as `wif-config` parsed it (an origin, validated).
    pub fn new(public_url: Option<&url::Url>, listen: std::net::SocketAddr) -> Self {
        let port = listen.port();
        let mut hosts = vec![listen.to_string()];
        if listen.ip().is_unspecified() || wif_config::is_loopback_ip(listen.ip()) {
            hosts.extend([
                format!("localhost:{port}"),
                format!("127.0.0.1:{port}"),
                format!("[::1]:{port}"),
            ]);
        }
        Self {
            public_url: public_url.map(|u| {
                let host = u
                    .host_str()
                    .map(|h| u.port().map_or(h.to_owned(), |p| format!("{h}:{p}")))
                    .unwrap_or_default();
                (u.as_str().trim_end_matches('/').to_owned(), host)
            }),
            hosts,
        }
    }

    /// The origin (`scheme://host[:port]`) and host to name in URLs about the broker.
    fn origin(&self, scheme: &str, host: Option<String>) -> Result<(String, String), ApiError> {
        if let Some((url, host)) = &self.public_url {
            return Ok((url.clone(), host.clone()));
        }
        let host = host.ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "the request has no valid Host header",
            )
        })?;
        if self.hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
            return Ok((format!("{scheme}://{host}"), host));
        }
        Err(ApiError::new(
            ErrorCode::UnknownHost,
            format!(
                "Host {:?} is not this broker's address; the operator sets [server] public_url to the URL clients use",
                host.chars().take(64).collect::<String>()
            ),
        ))
    }
}

/// The authority the client used: the Host header (HTTP/1.1) or the URI's (HTTP/2).
fn host(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))?;
    let sane = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
    sane.then_some(host)
}

/// An [`ApiError`] in Entra's shape: the OAuth `error` and status the error's
/// classification names ([`ApiError::oauth`]), the broker's code first in
/// `error_description`, `Retry-After` on 503 and 429.
fn entra_error(e: ApiError, now: u64) -> Response {
    let (status, error) = e.oauth();
    let correlation = current_request_id();
    let trace_id = uuid::Uuid::new_v4().to_string();
    let timestamp = crate::entra::entra_timestamp(now);
    let body = EntraErrorBody {
        error: error.as_str().to_owned(),
        error_description: format!(
            "{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation}\r\nTimestamp: {timestamp}",
            e.code, e.description
        ),
        error_codes: Vec::new(),
        timestamp,
        trace_id,
        correlation_id: correlation,
    };
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    if matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(e.retry_after.unwrap_or(5)),
        );
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_resource_scope_is_kept_and_reserved_scopes_dropped() {
        assert_eq!(
            resource_scope("https://management.azure.com/.default offline_access openid").unwrap(),
            "https://management.azure.com/.default"
        );
        assert_eq!(resource_scope("").unwrap_err().code, "invalid_scope");
        assert_eq!(
            resource_scope("https://a/.default https://b/.default")
                .unwrap_err()
                .code,
            "invalid_scope"
        );
    }

    #[test]
    fn errors_take_entra_statuses() {
        let e = entra_error(ApiError::new(ErrorCode::UnknownIssuer, "x"), 0);
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        let e = entra_error(ApiError::new(ErrorCode::NoMatchingCredential, "x"), 0);
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = entra_error(
            ApiError::new(ErrorCode::EntraUnavailable, "x").with_retry_after(7),
            0,
        );
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.headers()[header::RETRY_AFTER], "7");
    }
}
