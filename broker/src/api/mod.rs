//! The HTTP edge: routes, request ids, limits, timeouts. Handlers translate wire formats
//! into calls on [`crate::exchange::Broker`]; no decision is made here.

pub mod admin;
pub mod body;
pub mod client_address;
pub mod entra_compat;
pub mod error;
pub mod exchange;
pub mod mutate;
pub mod openapi;
pub mod ops;
/// The HTTP server loop (shared with the agent; see [`wif_proto::serve`]).
pub use wif_proto::serve;
pub mod well_known;

use crate::error::ErrorCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use crate::exchange::Broker;
pub use error::ApiError;

/// State shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    pub broker: Arc<Broker>,
    pub admin: Arc<crate::admin::Admin>,
    pub auth: Arc<admin::auth::AdminAuth>,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// False once shutdown begins, so load balancers stop sending traffic.
    pub ready: Arc<AtomicBool>,
    /// The listener serves TLS: URLs the broker gives out about itself use `https`.
    pub tls: bool,
    /// Where clients reach the broker, for the URLs it gives out about itself.
    pub self_address: Arc<entra_compat::SelfAddress>,
    /// The sidecar-injecting admission webhook, when `[webhook] enabled`; served by
    /// [`webhook_router`] on its own listener only, never by [`crate::server::router`].
    pub webhook: Option<Arc<mutate::Webhook>>,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// The API's routes: the exchange endpoints, discovery, operations and the admin API.
/// [`crate::server::router`] composes them with the console's and adds [`edge`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/token", post(exchange::native))
        .route("/oauth2/token", post(exchange::rfc8693))
        .route("/{tenant}/oauth2/v2.0/token", post(entra_compat::token))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(entra_compat::discovery),
        )
        .route(
            "/.well-known/openid-configuration",
            get(well_known::discovery),
        )
        .route("/.well-known/jwks.json", get(well_known::jwks))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/v1/identities", get(admin::list_identities))
        .route(
            "/v1/identities/{name}",
            put(admin::put_identity)
                .get(admin::get_identity)
                .delete(admin::delete_identity),
        )
        .route(
            "/v1/identities/{name}/federatedIdentityCredentials",
            post(admin::create_credential).get(admin::list_credentials),
        )
        .route(
            "/v1/identities/{name}/federatedIdentityCredentials/{credential}",
            get(admin::get_credential)
                .patch(admin::update_credential)
                .delete(admin::delete_credential),
        )
        .route("/v1/identities/{name}/entraSetup", get(admin::entra_setup))
        .route("/v1/simulate", post(admin::simulate))
        .route("/v1/audit", get(admin::audit_events))
}

/// What every route of a listener shares: the request id, the deadline and the access
/// log (`request_context`), the JSON 404 and 405, and no framework body limit (bodies
/// are read by [`body`]'s extractors, against `max_body_bytes` unless the routes set their
/// own [`body::BodyLimit`]).
pub fn edge(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}

/// The admission webhook's own listener (docs/kubernetes.md): `POST /mutate/v1/pods` and
/// a liveness check, nothing else. Never merged into the API's [`routes`]: the API port
/// does not serve the webhook.
pub fn webhook_router(state: AppState) -> Router {
    let limit = state
        .webhook
        .as_ref()
        .map_or(state.max_body_bytes, |w| w.max_body_bytes);
    let routes = Router::new()
        .route("/mutate/v1/pods", post(mutate::pods))
        .route("/healthz", get(ops::healthz))
        .layer(axum::Extension(body::BodyLimit(limit)));
    edge(routes, state)
}

async fn fallback() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not accept that method",
    )
}

/// Gives each request an id (the caller's `x-request-id` when it is sane), a deadline, and
/// one access-log line. The log line never includes headers or bodies.
async fn request_context(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(serve::next_request_id);
    // The id's header value, made once (the id itself moves into the request's scope);
    // the method and path are copied only when the access log is on.
    let header = HeaderValue::from_str(&id).ok();
    let logged = tracing::enabled!(tracing::Level::DEBUG).then(|| {
        (
            request.method().clone(),
            request.uri().path().chars().take(200).collect::<String>(),
            std::time::Instant::now(),
        )
    });
    let timeout = state.request_timeout;
    let mut response = error::REQUEST_ID
        .scope(id, async move {
            match tokio::time::timeout(timeout, next.run(request)).await {
                Ok(response) => response,
                Err(_) => ApiError::new(
                    ErrorCode::Timeout,
                    format!("the request took longer than {} s", timeout.as_secs()),
                )
                .with_retry_after(1)
                .into_response(),
            }
        })
        .await;
    if let Some((method, path, started)) = logged {
        let id = header
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        tracing::debug!(request_id = %id, %method, %path,
            status = response.status().as_u16(), ms = started.elapsed().as_millis() as u64, "request");
    }
    if let Some(value) = header {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
