//! CI platforms' OIDC token endpoints, faithful to what docs/agent.md describes, for driving
//! `wif-agent token` and `exec` as a job would:
//! - [`GitHubActionsEmulator`]: `GET {request_url}&audience=A` with the request bearer →
//!   `{"value": jwt}`; 401 on a wrong bearer, 400 without `api-version` or `audience`.
//! - [`AzurePipelinesEmulator`]: `POST {request_uri}?api-version=7.1&serviceConnectionId=ID`
//!   with `SYSTEM_ACCESSTOKEN` as bearer and `Content-Type: application/json` →
//!   `{"oidcToken": jwt}`; 401 on a wrong bearer, 400 without `api-version` or
//!   `serviceConnectionId`, 404 for an unknown service connection, 415 without JSON.
//!
//! Each request mints a fresh token from a [`LocalIssuer`] with the configured lifetime, and
//! is counted, so tests can see that a long job asked again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use wif_broker::dev::issuer::{LocalIssuer, azure_devops_claims, github_claims};

/// The request bearer the emulators expect.
pub const GITHUB_REQUEST_TOKEN: &str = "gh-request-token-for-tests";
pub const ADO_ACCESS_TOKEN: &str = "ado-system-accesstoken-for-tests";
/// The service connection id the Azure Pipelines emulator knows (`contoso/web/prod-connection`).
pub const ADO_SERVICE_CONNECTION_ID: &str = "6c8e3f2a-1b4d-4e5f-9a0b-7c6d5e4f3a2b";

struct Shared {
    issuer: LocalIssuer,
    lifetime_secs: u64,
    bearer: String,
    requests: AtomicU64,
    /// The job's claims (one job: the same run, sha and subject every time).
    claims: Value,
}

impl Shared {
    /// A fresh token living `lifetime_secs` from now (by the issuer's clock).
    fn mint(&self, overlay: Value) -> Result<String, wif_broker::dev::DevError> {
        let mut claims = self.issuer.claims(overlay)?;
        let iat = claims["iat"].as_u64().unwrap_or(0);
        claims["exp"] = Value::from(iat + self.lifetime_secs);
        self.issuer.mint(claims)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|b| b == self.bearer)
    }
}

struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(app: Router, shared: Arc<Shared>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    Server {
        addr,
        shared,
        _stop: stop,
    }
}

fn bad(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

/// GitHub Actions' ID-token endpoint for one job.
pub struct GitHubActionsEmulator {
    server: Server,
}

impl GitHubActionsEmulator {
    /// Tokens for a job on `git_ref` of `repo`, living `lifetime_secs`.
    pub async fn start(
        issuer: &LocalIssuer,
        repo: &str,
        git_ref: &str,
        lifetime_secs: u64,
    ) -> Self {
        let shared = Arc::new(Shared {
            issuer: issuer.clone(),
            lifetime_secs,
            bearer: GITHUB_REQUEST_TOKEN.to_owned(),
            requests: AtomicU64::new(0),
            claims: github_claims(repo, git_ref),
        });
        let app = Router::new()
            .route("/_apis/pipelines/1/runs/7/idtoken", get(github))
            .with_state(shared.clone());
        Self {
            server: serve(app, shared).await,
        }
    }

    /// `ACTIONS_ID_TOKEN_REQUEST_URL`: like GitHub's, it already has a query string.
    pub fn request_url(&self) -> String {
        format!(
            "http://{}/_apis/pipelines/1/runs/7/idtoken?api-version=2.0",
            self.server.addr
        )
    }

    /// The variables a job with `permissions: id-token: write` sees.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("GITHUB_ACTIONS".into(), "true".into()),
            ("ACTIONS_ID_TOKEN_REQUEST_URL".into(), self.request_url()),
            (
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN".into(),
                GITHUB_REQUEST_TOKEN.into(),
            ),
        ]
    }

    /// Requests answered with a token.
    pub fn tokens_issued(&self) -> u64 {
        self.server.shared.requests.load(Ordering::SeqCst)
    }
}

async fn github(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !shared.authorized(&headers) {
        return bad(StatusCode::UNAUTHORIZED, "Bad credentials");
    }
    if params.get("api-version").is_none_or(|v| v.is_empty()) {
        return bad(StatusCode::BAD_REQUEST, "api-version is required");
    }
    let Some(audience) = params.get("audience").filter(|a| !a.is_empty()) else {
        return bad(StatusCode::BAD_REQUEST, "audience is required");
    };
    let mut claims = shared.claims.clone();
    claims["aud"] = Value::from(audience.as_str());
    match shared.mint(claims) {
        Ok(jwt) => {
            shared.requests.fetch_add(1, Ordering::SeqCst);
            Json(json!({ "count": 1, "value": jwt })).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Azure Pipelines' OIDC token endpoint for one job, knowing one service connection.
pub struct AzurePipelinesEmulator {
    server: Server,
}

impl AzurePipelinesEmulator {
    /// Tokens for `sc://contoso/web/prod-connection` (id [`ADO_SERVICE_CONNECTION_ID`]).
    pub async fn start(issuer: &LocalIssuer, lifetime_secs: u64) -> Self {
        let shared = Arc::new(Shared {
            issuer: issuer.clone(),
            lifetime_secs,
            bearer: ADO_ACCESS_TOKEN.to_owned(),
            requests: AtomicU64::new(0),
            claims: azure_devops_claims("contoso", "web", "prod-connection"),
        });
        let app = Router::new()
            .route(
                "/contoso/web/_apis/distributedtask/hubs/build/plans/p1/jobs/j1/oidctoken",
                post(azure_pipelines),
            )
            .with_state(shared.clone());
        Self {
            server: serve(app, shared).await,
        }
    }

    /// `SYSTEM_OIDCREQUESTURI` (no query string).
    pub fn request_uri(&self) -> String {
        format!(
            "http://{}/contoso/web/_apis/distributedtask/hubs/build/plans/p1/jobs/j1/oidctoken",
            self.server.addr
        )
    }

    /// The variables a step with `SYSTEM_ACCESSTOKEN: $(System.AccessToken)` mapped sees,
    /// plus the service connection id.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("TF_BUILD".into(), "True".into()),
            ("SYSTEM_OIDCREQUESTURI".into(), self.request_uri()),
            ("SYSTEM_ACCESSTOKEN".into(), ADO_ACCESS_TOKEN.into()),
            (
                "AZURE_SERVICE_CONNECTION_ID".into(),
                ADO_SERVICE_CONNECTION_ID.into(),
            ),
        ]
    }

    pub fn tokens_issued(&self) -> u64 {
        self.server.shared.requests.load(Ordering::SeqCst)
    }
}

async fn azure_pipelines(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !shared.authorized(&headers) {
        return bad(StatusCode::UNAUTHORIZED, "Access denied");
    }
    if params.get("api-version").is_none_or(|v| v.is_empty()) {
        return bad(StatusCode::BAD_REQUEST, "api-version is required");
    }
    let Some(connection) = params.get("serviceConnectionId").filter(|c| !c.is_empty()) else {
        return bad(StatusCode::BAD_REQUEST, "serviceConnectionId is required");
    };
    if connection != ADO_SERVICE_CONNECTION_ID {
        return bad(StatusCode::NOT_FOUND, "service connection not found");
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return bad(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
    }
    match shared.mint(shared.claims.clone()) {
        Ok(jwt) => {
            shared.requests.fetch_add(1, Ordering::SeqCst);
            Json(json!({ "oidcToken": jwt })).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
