//! The managed-identity endpoints the Azure SDKs already call, answered
//! with tokens from the broker:
//! - App Service at `/msi/token`: 2019-08-01 guarded by the `X-IDENTITY-HEADER` secret, and
//!   the older 2017-09-01 (`MSI_ENDPOINT`/`MSI_SECRET`) guarded by the same secret in `secret`;
//! - IMDS (2018-02-01) at `/metadata/identity/oauth2/token`, guarded by `Metadata: true`;
//! - `/healthz`, `/readyz`, `/metrics`.
//!
//! A request without its guard is refused before anything else happens: no external token
//! is read and nothing is exchanged. Tokens with under five minutes left are never handed
//! out; when the broker is down and no usable token is cached, the answer is a 503 the
//! SDKs retry. An identity this workload cannot act as is answered as Azure's IMDS answers
//! it (400, `Identity not found`), which credential chains take as "try the next one";
//! no answer that SDKs retry (404, 410, 429, 5xx) is given where retrying cannot help.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use wif_config::ListenAddr;
use wif_proto::clock::SharedClock;
use wif_proto::error::code;
use wif_proto::serve::{ConnectionMetrics, Limits, serve_counted};

use crate::broker::{BrokerClient, BrokerError, Selector};
use crate::cache::{Cached, Key, Outcome, TokenCache};
use crate::source::TokenSource;

/// The API versions each protocol accepts. App Service's 2017-09-01 is what older SDKs and
/// tools (and MSAL's `MSI_ENDPOINT` + `MSI_SECRET` source) send: header `secret`, query
/// `clientid`; its answer is the same as 2019-08-01's (see docs/agent.md on `expires_on`).
const APP_SERVICE_VERSIONS: &[&str] = &["2019-08-01", "2017-09-01"];
const IMDS_VERSIONS: &[&str] = &[
    "2018-02-01",
    "2019-08-01",
    "2019-11-01",
    "2020-06-01",
    "2021-02-01",
];

/// Broker refusals that mean "this workload has no such identity": answered like IMDS
/// answers an identity not assigned to the machine, so credential chains move on.
const IDENTITY_NOT_SERVED: &[&str] = &[
    code::IDENTITY_NOT_ALLOWED,
    code::NO_MATCHING_CREDENTIAL,
    code::IDENTITY_REQUIRED,
];

type Labels = Vec<(&'static str, String)>;

struct Metrics {
    registry: prometheus_client::registry::Registry,
    requests: Family<Labels, Counter>,
    /// `requests` for each protocol's `ok`, looked up once: the cache-hit path counts
    /// without building labels or taking the family's lock.
    app_service_ok: Counter,
    imds_ok: Counter,
    broker_calls: Family<Labels, Counter>,
    connections: ConnectionMetrics,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = prometheus_client::registry::Registry::with_prefix("wif_agent");
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "Token requests by protocol (app_service, imds) and outcome (hit, miss or an error code)",
            requests.clone(),
        );
        let broker_calls = Family::<Labels, Counter>::default();
        registry.register(
            "broker_calls",
            "Exchanges at the broker, by outcome",
            broker_calls.clone(),
        );
        let connections = ConnectionMetrics::registered(&mut registry);
        let labels = |protocol: &str, outcome: &str| {
            vec![
                ("protocol", protocol.to_owned()),
                ("outcome", outcome.to_owned()),
            ]
        };
        let ok = |protocol| requests.get_or_create(&labels(protocol, "ok")).clone();
        let (app_service_ok, imds_ok) = (ok("app_service"), ok("imds"));
        Self {
            registry,
            requests,
            app_service_ok,
            imds_ok,
            broker_calls,
            connections,
        }
    }

    fn request(&self, protocol: &'static str, outcome: &str) {
        match (protocol, outcome) {
            ("app_service", "ok") => self.app_service_ok.inc(),
            ("imds", "ok") => self.imds_ok.inc(),
            _ => self
                .requests
                .get_or_create(&vec![
                    ("protocol", protocol.to_owned()),
                    ("outcome", outcome.to_owned()),
                ])
                .inc(),
        };
    }
}

/// What the endpoints share.
pub struct Agent {
    client: Arc<BrokerClient>,
    source: Arc<dyn TokenSource>,
    cache: TokenCache,
    /// The App Service protocol's secret; `None` disables `/msi/token`.
    header_secret: Option<String>,
    /// Whether `/metadata/identity/oauth2/token` answers (IMDS carries no secret).
    imds: bool,
    default_identity: Option<String>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("source", &self.source.describe())
            .finish_non_exhaustive()
    }
}

/// Settings for [`Agent::new`].
pub struct AgentSettings {
    pub client: BrokerClient,
    pub source: Arc<dyn TokenSource>,
    pub header_secret: Option<String>,
    pub default_identity: Option<String>,
    pub min_remaining_secs: u64,
    pub refresh_before_secs: u64,
    /// Serve the IMDS protocol (no secret: anything reaching the listener may ask).
    pub imds: bool,
}

/// A protocol's error, in the shape the SDKs parse: `{"error","error_description"}`.
#[derive(Debug)]
pub(crate) struct AgentError {
    status: StatusCode,
    error: &'static str,
    description: String,
    retry_after: Option<u64>,
}

impl AgentError {
    pub(crate) fn new(
        status: StatusCode,
        error: &'static str,
        description: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            retry_after: None,
        }
    }

    /// The answer on `/msi/token`: the same, plus App Service's own error fields
    /// (`statusCode`, `message`), which MSAL for Python (and so the Azure CLI) reads
    /// there instead of `error_description`.
    fn into_app_service_response(self) -> Response {
        let mut body = self.body();
        body["statusCode"] = json!(self.status.as_u16());
        body["message"] = json!(self.description);
        self.respond(body)
    }

    fn body(&self) -> serde_json::Value {
        json!({"error": self.error, "error_description": self.description})
    }

    fn respond(self, body: serde_json::Value) -> Response {
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let body = self.body();
        self.respond(body)
    }
}

impl Agent {
    pub fn new(settings: AgentSettings, clock: SharedClock) -> Arc<Self> {
        Arc::new(Self {
            client: Arc::new(settings.client),
            source: settings.source,
            cache: TokenCache::new(
                clock.clone(),
                settings.min_remaining_secs,
                settings.refresh_before_secs,
            ),
            header_secret: settings.header_secret,
            imds: settings.imds,
            default_identity: settings.default_identity,
            clock,
            metrics: Arc::new(Metrics::new()),
            ready: AtomicBool::new(true),
        })
    }

    /// A token for `resource` as `selector`: cached, or exchanged now with a fresh
    /// external token.
    async fn token(
        &self,
        resource: &str,
        mut selector: Selector,
    ) -> Result<(Arc<Cached>, Outcome), AgentError> {
        if selector.client_id.is_none() && selector.identity.is_none() {
            selector.identity = self.default_identity.clone();
        }
        let key = Key {
            selector: selector.clone(),
            resource: resource.to_owned(),
        };
        let make = || {
            let (client, source, metrics, resource) = (
                self.client.clone(),
                self.source.clone(),
                self.metrics.clone(),
                resource.to_owned(),
            );
            let selector = selector.clone();
            move || {
                let (client, source, metrics, resource, selector) = (
                    client.clone(),
                    source.clone(),
                    metrics.clone(),
                    resource.clone(),
                    selector.clone(),
                );
                async move {
                    let token = source
                        .token()
                        .await
                        .map_err(|e| BrokerError::Unavailable(format!("no external token: {e}")))?;
                    let result = client.exchange(&token, &resource, &selector).await;
                    let outcome = match &result {
                        Ok(_) => "ok".to_owned(),
                        Err(BrokerError::Unavailable(_)) => "unavailable".to_owned(),
                        Err(BrokerError::Refused { code, .. }) => code.clone(),
                    };
                    metrics
                        .broker_calls
                        .get_or_create(&vec![("outcome", outcome)])
                        .inc();
                    result
                }
            }
        };
        self.cache
            .get(key, make)
            .await
            .map_err(|e| match e.as_ref() {
                BrokerError::Unavailable(reason) => {
                    let mut err = AgentError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        format!("no token is cached and the broker cannot give one: {reason}"),
                    );
                    err.retry_after = Some(5);
                    err
                }
                refused @ BrokerError::Refused { code, .. }
                    if IDENTITY_NOT_SERVED.contains(&code.as_str()) =>
                {
                    AgentError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        format!("Identity not found: {refused}"),
                    )
                }
                refused @ BrokerError::Refused { status, .. } => AgentError::new(
                    if *status == 403 {
                        StatusCode::FORBIDDEN
                    } else {
                        StatusCode::BAD_REQUEST
                    },
                    "invalid_request",
                    refused.to_string(),
                ),
            })
    }
}

/// A request's query parameters, percent-decoded, borrowed from the request target where
/// nothing needed decoding. A key given twice counts with its last value.
struct Params<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Params<'a> {
    fn of(uri: &'a Uri) -> Self {
        Self(
            uri.query()
                .map(|query| url::form_urlencoded::parse(query.as_bytes()).collect())
                .unwrap_or_default(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }
}

fn selector(params: &Params) -> Result<Selector, AgentError> {
    // `clientid` is App Service 2017-09-01's spelling of `client_id`; `msi_res_id` is
    // IMDS's spelling of App Service's `mi_res_id` (MSAL sends each to its protocol).
    let given: Vec<&str> = [
        "client_id",
        "clientid",
        "principal_id",
        "object_id",
        "mi_res_id",
        "msi_res_id",
    ]
    .into_iter()
    .filter(|k| params.get(k).is_some_and(|v| !v.is_empty()))
    .collect();
    if given.len() > 1 {
        return Err(AgentError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "give at most one of client_id (clientid), principal_id, object_id, mi_res_id \
                 (msi_res_id) (got {})",
                given.join(", ")
            ),
        ));
    }
    let mut selector = Selector::default();
    match given.first().copied() {
        Some(key @ ("client_id" | "clientid")) => {
            selector.client_id = params.get(key).map(str::to_owned)
        }
        Some(key @ ("mi_res_id" | "msi_res_id")) => {
            // .../userAssignedIdentities/NAME names the identity.
            selector.identity = params
                .get(key)
                .and_then(|r| r.trim_end_matches('/').rsplit('/').next())
                .map(str::to_owned);
        }
        Some(key) => selector.identity = params.get(key).map(str::to_owned),
        None => {}
    }
    Ok(selector)
}

fn required<'a>(params: &'a Params, key: &str) -> Result<&'a str, AgentError> {
    params.get(key).filter(|v| !v.is_empty()).ok_or_else(|| {
        AgentError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("`{key}` is required"),
        )
    })
}

fn api_version(params: &Params, accepted: &[&str]) -> Result<(), AgentError> {
    let version = required(params, "api-version")?;
    if accepted.contains(&version) {
        Ok(())
    } else {
        Err(AgentError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "api-version {version} is not supported; use {}",
                accepted.join(" or ")
            ),
        ))
    }
}

fn outcome_label(result: &Result<Response, AgentError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.error,
    }
}

/// `GET /msi/token`: the App Service protocol (2019-08-01 and 2017-09-01).
///
/// It reads the request in place (no copy of its headers or query into maps), and a cache
/// hit answers the bytes written for the cached token (docs/PERFORMANCE.md, the agent's
/// row): the path every SDK call of a running workload takes.
async fn app_service(State(agent): State<Arc<Agent>>, request: Request) -> Response {
    let (headers, params) = (request.headers(), Params::of(request.uri()));
    let result = async {
        let Some(secret) = &agent.header_secret else {
            // 400, not 404: the SDKs retry a 404, and no retry turns this agent's App
            // Service endpoint on.
            return Err(AgentError::new(
                StatusCode::BAD_REQUEST,
                "app_service_disabled",
                "the App Service endpoint is not enabled (no identity header secret)",
            ));
        };
        // 2019-08-01 sends the secret in `X-IDENTITY-HEADER`, 2017-09-01 in `secret`.
        let presented = headers
            .get("x-identity-header")
            .or_else(|| headers.get("secret"))
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if presented.is_empty() || !bool::from(presented.ct_eq(secret.as_bytes())) {
            return Err(AgentError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong X-IDENTITY-HEADER (or `secret`)",
            ));
        }
        api_version(&params, APP_SERVICE_VERSIONS)?;
        let resource = required(&params, "resource")?;
        let (token, _) = agent.token(resource, selector(&params)?).await?;
        // The cache's key holds `resource`, so the answer is the same for every hit.
        let answer = token.app_service_answer.get_or_init(|| {
            Bytes::from(
                json!({
                    "access_token": token.access_token,
                    "expires_on": token.expires_on.to_string(),
                    "resource": resource,
                    "token_type": "Bearer",
                    "client_id": token.client_id,
                })
                .to_string(),
            )
        });
        Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            answer.clone(),
        )
            .into_response())
    }
    .await;
    agent.metrics.request("app_service", outcome_label(&result));
    result.unwrap_or_else(AgentError::into_app_service_response)
}

/// `GET /metadata/identity/oauth2/token`: the IMDS protocol.
async fn imds(State(agent): State<Arc<Agent>>, request: Request) -> Response {
    let (headers, params) = (request.headers(), Params::of(request.uri()));
    let result = async {
        if !agent.imds {
            // 400, not 404: the SDKs retry a 404, while a 400 moves a credential chain on.
            return Err(AgentError::new(
                StatusCode::BAD_REQUEST,
                "imds_disabled",
                "this agent does not serve the IMDS protocol (imds = false); use \
                 IDENTITY_ENDPOINT and IDENTITY_HEADER",
            ));
        }
        let metadata = headers.get("metadata").and_then(|v| v.to_str().ok());
        if !metadata.is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Err(AgentError::new(
                StatusCode::BAD_REQUEST,
                "bad_request_102",
                "Required metadata header not specified",
            ));
        }
        api_version(&params, IMDS_VERSIONS)?;
        let resource = required(&params, "resource")?;
        let (token, _) = agent.token(resource, selector(&params)?).await?;
        let now = agent.clock.now();
        let expires_in = token.expires_on.saturating_sub(now).to_string();
        Ok(Json(json!({
            "access_token": token.access_token,
            "client_id": token.client_id,
            "expires_in": expires_in,
            "expires_on": token.expires_on.to_string(),
            "ext_expires_in": expires_in,
            "not_before": now.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }))
        .into_response())
    }
    .await;
    agent.metrics.request("imds", outcome_label(&result));
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(agent): State<Arc<Agent>>) -> Response {
    if agent.ready.load(Ordering::SeqCst) {
        Json(json!({"status": "ready", "token_source": agent.source.describe()})).into_response()
    } else {
        AgentError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the agent is stopping",
        )
        .into_response()
    }
}

async fn metrics(State(agent): State<Arc<Agent>>) -> Response {
    let mut out = String::new();
    let _ = encode(&mut out, &agent.metrics.registry);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn not_found() -> AgentError {
    AgentError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// The connection limits and shutdown timing of `cfg` (the HTTP/2 settings are the
/// broker's defaults: SDKs speak HTTP/1.1 to the agent).
pub fn limits(cfg: &wif_config::AgentConfig) -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(cfg.header_read_timeout_secs),
        idle_timeout: Duration::from_secs(cfg.idle_timeout_secs),
        max_connections: cfg.max_connections,
        ops_reserve_connections: 8,
        drain: Duration::from_secs(cfg.drain_secs),
        shutdown_timeout: Duration::from_secs(cfg.shutdown_timeout_secs),
        ..Limits::default()
    }
}

/// The agent's routes, unguarded.
fn routes(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/msi/token", get(app_service))
        .route("/metadata/identity/oauth2/token", get(imds))
        // MSAL for Node sends IMDS requests to `.../token/`; Azure's IMDS answers both.
        .route("/msi/token/", get(app_service))
        .route("/metadata/identity/oauth2/token/", get(imds))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(agent)
}

/// The agent's routes as the Unix socket serves them. Relayed requests are refused on all
/// of them (like IMDS: a request that passed through a proxy is not from the workload
/// itself; see [`crate::guard`]); the TCP listener also checks `Host`.
pub fn router(agent: Arc<Agent>) -> Router {
    crate::guard::Guard::unix().apply(routes(agent))
}

/// An agent serving on a loopback TCP port (and optionally a Unix socket) in this process.
pub struct RunningAgent {
    pub addr: Option<SocketAddr>,
    pub agent: Arc<Agent>,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    limits: Limits,
}

impl std::fmt::Debug for RunningAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningAgent")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RunningAgent {
    /// Binds `listen` (parsed as `--listen` is; empty: no TCP listener) and
    /// `unix_socket`, and serves with the default connection limits.
    pub async fn start(
        agent: Arc<Agent>,
        listen: &str,
        unix_socket: Option<&std::path::Path>,
    ) -> std::io::Result<Self> {
        let listen = listen
            .parse::<ListenAddr>()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        Self::start_with_limits(
            agent,
            &listen,
            unix_socket,
            limits(&wif_config::AgentConfig::default()),
        )
        .await
    }

    /// Like [`Self::start`], with the connection limits and shutdown timing given (both
    /// listeners get them; see docs/agent.md).
    pub async fn start_with_limits(
        agent: Arc<Agent>,
        listen: &ListenAddr,
        unix_socket: Option<&std::path::Path>,
        limits: Limits,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = futures::future::FutureExt::shared(async move {
            let _ = stopped.await;
        });
        let mut tasks = Vec::new();
        let mut addr = None;
        let listener = match listen {
            ListenAddr::Off => None,
            ListenAddr::Addr(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
            ListenAddr::Name { host, port } => {
                Some(tokio::net::TcpListener::bind((host.as_str(), *port)).await?)
            }
        };
        if let Some(listener) = listener {
            addr = Some(listener.local_addr()?);
            // On TCP, only requests naming the agent by address (no DNS rebinding).
            let guard = crate::guard::Guard::tcp(crate::guard::HostPolicy::for_listen(listen));
            let app = guard.apply(routes(agent.clone()));
            tasks.push(tokio::spawn(serve_counted(
                listener,
                app,
                None,
                stopped.clone(),
                limits.clone(),
                agent.metrics.connections.clone(),
            )));
        }
        #[cfg(unix)]
        if let Some(path) = unix_socket {
            let _ = std::fs::remove_file(path);
            let listener = tokio::net::UnixListener::bind(path)?;
            tasks.push(tokio::spawn(serve_counted(
                listener,
                router(agent.clone()),
                None,
                stopped.clone(),
                limits.clone(),
                agent.metrics.connections.clone(),
            )));
        }
        Ok(Self {
            addr,
            agent,
            stop: Some(stop),
            tasks,
            limits,
        })
    }

    /// `http://addr` of the TCP listener.
    pub fn url(&self) -> Option<String> {
        self.addr.map(|a| format!("http://{a}"))
    }

    /// Fails readiness, serves on for `drain_secs`, then stops accepting; in-flight
    /// requests finish (bounded by `shutdown_timeout_secs`, then 503 `shutting_down`).
    pub async fn shutdown(mut self) {
        self.agent.ready.store(false, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // `serve` ends on its own within drain + deadline; this only guards against a bug.
        let bound = self.limits.drain + self.limits.shutdown_timeout + Duration::from_secs(5);
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(bound, task).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params<'a>(pairs: &[(&'a str, &'a str)]) -> Params<'a> {
        Params(
            pairs
                .iter()
                .map(|(k, v)| (Cow::Borrowed(*k), Cow::Borrowed(*v)))
                .collect(),
        )
    }

    #[test]
    fn query_parameters_are_decoded_and_the_last_of_a_key_counts() {
        let uri: Uri = "/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fvault.azure.net\
                        &client_id=a&client_id=b&empty=&plus=a+b"
            .parse()
            .unwrap();
        let params = Params::of(&uri);
        assert_eq!(params.get("resource"), Some("https://vault.azure.net"));
        assert_eq!(params.get("client_id"), Some("b"));
        assert_eq!(params.get("empty"), Some(""));
        assert_eq!(params.get("plus"), Some("a b"));
        assert_eq!(params.get("object_id"), None);
        assert!(Params::of(&"/msi/token".parse().unwrap()).0.is_empty());
    }

    #[test]
    fn selectors_name_a_client_id_or_an_identity() {
        let s = selector(&params(&[(
            "client_id",
            "3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6c",
        )]))
        .unwrap();
        assert_eq!(
            s.client_id.as_deref(),
            Some("3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6c")
        );
        let s = selector(&params(&[(
            "mi_res_id",
            "/subscriptions/x/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/payments",
        )]))
        .unwrap();
        assert_eq!(s.identity.as_deref(), Some("payments"));
        assert_eq!(
            selector(&params(&[("object_id", "deploy")]))
                .unwrap()
                .identity
                .as_deref(),
            Some("deploy")
        );
        assert_eq!(selector(&params(&[])).unwrap(), Selector::default());
        assert!(selector(&params(&[("client_id", "a"), ("object_id", "b")])).is_err());
        assert_eq!(
            selector(&params(&[("clientid", "3f1c2a9e")]))
                .unwrap()
                .client_id
                .as_deref(),
            Some("3f1c2a9e")
        );
        assert!(selector(&params(&[("clientid", "a"), ("client_id", "b")])).is_err());
        let s = selector(&params(&[(
            "msi_res_id",
            "/subscriptions/x/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/payments",
        )]))
        .unwrap();
        assert_eq!(s.identity.as_deref(), Some("payments"));
    }

    #[test]
    fn api_versions_are_checked() {
        assert!(
            api_version(
                &params(&[("api-version", "2019-08-01")]),
                APP_SERVICE_VERSIONS
            )
            .is_ok()
        );
        assert!(
            api_version(
                &params(&[("api-version", "2017-09-01")]),
                APP_SERVICE_VERSIONS
            )
            .is_ok()
        );
        assert!(
            api_version(
                &params(&[("api-version", "2018-02-01")]),
                APP_SERVICE_VERSIONS
            )
            .is_err()
        );
        assert!(api_version(&params(&[]), IMDS_VERSIONS).is_err());
    }
}
