//! A local OIDC issuer on 127.0.0.1: discovery, a JWKS, and minting of tokens that look
//! like GitHub Actions, Kubernetes or Azure DevOps tokens. It stands in for a CI platform
//! in `wif-broker dev` and in tests; key rotation and outages are driven by the caller.
//!
//! The dev stack's issuer also mints over HTTP (`POST /dev/token`, see docs/cli.md), so
//! `wif-broker dev token` can make a token for any subject and claims.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::DevError;
use super::jwt::{self, KeyKind, SigningKey};
use super::server::{self, Gate, ServerHandle};
use crate::clock::SharedClock;

/// The audience Entra expects by default in an assertion.
pub const DEFAULT_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Lifetime of a minted token unless the claims say otherwise.
const DEFAULT_LIFETIME_SECS: u64 = 300;

pub use super::MINT_PATH;

/// Largest claims document `POST /dev/token` reads.
const MAX_MINT_BODY_BYTES: usize = 64 * 1024;

/// How the issuer looks.
#[derive(Debug, Clone)]
pub struct IssuerOptions {
    /// Appended to `http://127.0.0.1:PORT` to form `iss`: `""` (GitHub style) or, for
    /// example, `"/tenant/uuid/"` (AKS style, with the trailing '/').
    pub path: String,
    /// Kind of the signing keys (the first one and those made by rotation).
    pub key_kind: KeyKind,
}

impl Default for IssuerOptions {
    fn default() -> Self {
        Self {
            path: String::new(),
            key_kind: KeyKind::Rsa2048,
        }
    }
}

/// A running local issuer. Clones share the server; dropping the last one stops it.
#[derive(Clone)]
pub struct LocalIssuer {
    state: Arc<IssuerState>,
    server: Arc<ServerHandle>,
}

impl std::fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIssuer")
            .field("url", &self.state.url)
            .finish_non_exhaustive()
    }
}

struct Keys {
    /// Published in this order; only the first 100 count for Entra.
    published: Vec<SigningKey>,
    current: SigningKey,
}

struct IssuerState {
    clock: SharedClock,
    addr: SocketAddr,
    /// Exactly the `iss` value.
    url: String,
    /// `iss` without one trailing '/': discovery and the JWKS live under it.
    base: String,
    /// The path part of `base` ("" for an issuer at the root).
    prefix: String,
    jwks_uri: String,
    kind: KeyKind,
    keys: RwLock<Keys>,
    available: AtomicBool,
    requests: AtomicU64,
    /// Whether `POST /dev/token` mints (the dev stack's issuer only).
    minting: bool,
}

impl LocalIssuer {
    /// Starts an issuer at `http://127.0.0.1:PORT` with an RSA key.
    pub async fn start(clock: SharedClock) -> Result<Self, DevError> {
        Self::start_with(clock, IssuerOptions::default()).await
    }

    pub async fn start_with(clock: SharedClock, opts: IssuerOptions) -> Result<Self, DevError> {
        Self::start_inner(clock, opts, false).await
    }

    /// Starts the dev stack's issuer: as [`LocalIssuer::start`], and it also mints tokens
    /// for any claims on `POST {iss}/dev/token` (loopback only, like every route here).
    pub async fn start_minting(clock: SharedClock) -> Result<Self, DevError> {
        Self::start_inner(clock, IssuerOptions::default(), true).await
    }

    async fn start_inner(
        clock: SharedClock,
        opts: IssuerOptions,
        minting: bool,
    ) -> Result<Self, DevError> {
        crate::crypto::install_provider();
        let first = SigningKey::generate(opts.key_kind, &new_kid())?;
        let (listener, addr) = server::bind().await?;

        let path = match opts.path.as_str() {
            "" => String::new(),
            p if p.starts_with('/') => p.to_owned(),
            p => format!("/{p}"),
        };
        let url = format!("http://{addr}{path}");
        let base = url.strip_suffix('/').unwrap_or(&url).to_owned();
        let prefix = path.strip_suffix('/').unwrap_or(&path).to_owned();
        // Kubernetes-style issuers (trailing '/') publish their keys where Kubernetes does.
        let jwks_uri = if path.ends_with('/') {
            format!("{base}/openid/v1/jwks")
        } else {
            format!("{base}/.well-known/jwks")
        };

        let state = Arc::new(IssuerState {
            clock,
            addr,
            url,
            base,
            prefix,
            jwks_uri,
            kind: opts.key_kind,
            keys: RwLock::new(Keys {
                published: vec![first.clone()],
                current: first,
            }),
            available: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            minting,
        });

        let router = Router::new().fallback(serve).with_state(Arc::clone(&state));
        let gate_state = Arc::clone(&state);
        let gate: Gate = Arc::new(move || {
            gate_state.requests.fetch_add(1, Ordering::SeqCst);
            if gate_state.available.load(Ordering::SeqCst) {
                None
            } else {
                Some(
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::RETRY_AFTER, "1")],
                        "issuer unavailable",
                    )
                        .into_response(),
                )
            }
        });
        let server = ServerHandle::spawn(listener, router, Some(gate));
        Ok(Self {
            state,
            server: Arc::new(server),
        })
    }

    /// Exactly the `iss` of minted tokens: `http://127.0.0.1:PORT` + path.
    pub fn url(&self) -> String {
        self.state.url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// Where discovery is served: `{iss without trailing '/'}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.state.base)
    }

    /// The `jwks_uri` announced by discovery.
    pub fn jwks_uri(&self) -> String {
        self.state.jwks_uri.clone()
    }

    /// The key `mint` signs with.
    pub fn current_key(&self) -> SigningKey {
        self.state.read_keys(|keys| keys.current.clone())
    }

    /// Every key in the JWKS, in published order.
    pub fn published_keys(&self) -> Vec<SigningKey> {
        self.state.read_keys(|keys| keys.published.clone())
    }

    /// The JWKS document as served.
    pub fn jwks(&self) -> Value {
        self.state.jwks()
    }

    /// The claims `mint` would sign: defaults (`iss`, `aud`, `iat`, `nbf`, `exp` = now + 300,
    /// `jti`) overlaid with `claims`; a claim set to `null` in `claims` is removed.
    pub fn claims(&self, claims: Value) -> Result<Value, DevError> {
        self.state.overlay(claims)
    }

    /// Signs [`LocalIssuer::claims`] with the current key.
    pub fn mint(&self, claims: Value) -> Result<String, DevError> {
        self.mint_with_key(&self.current_key(), claims)
    }

    /// Signs [`LocalIssuer::claims`] with any key, published or not.
    pub fn mint_with_key(&self, key: &SigningKey, claims: Value) -> Result<String, DevError> {
        Ok(key.sign(&self.claims(claims)?)?)
    }

    /// Makes a new key (new `kid`) current and publishes it after the others; older keys
    /// stay published until [`LocalIssuer::retire_old_keys`].
    pub fn rotate_key(&self) -> SigningKey {
        let kid = new_kid();
        let key = match SigningKey::generate(self.state.kind, &kid) {
            Ok(key) => key,
            // Key generation does not fail in practice; if it ever does, a new kid on the
            // same material still exercises rotation.
            Err(_) => self.current_key().with_kid(&kid),
        };
        self.state.write_keys(|keys| {
            keys.published.push(key.clone());
            keys.current = key.clone();
        });
        key
    }

    /// Publishes an extra key (not used by `mint`) after the others.
    pub fn publish_key(&self, key: SigningKey) {
        self.state.write_keys(|keys| keys.published.push(key));
    }

    /// Publishes only the current key.
    pub fn retire_old_keys(&self) {
        self.state
            .write_keys(|keys| keys.published = vec![keys.current.clone()]);
    }

    /// When `false`, every request is answered 503.
    pub fn set_available(&self, up: bool) {
        self.state.available.store(up, Ordering::SeqCst);
    }

    /// HTTP requests received, whatever the route or answer.
    pub fn request_count(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub async fn shutdown(&self) {
        self.server.shutdown().await;
    }
}

impl IssuerState {
    fn read_keys<T>(&self, f: impl FnOnce(&Keys) -> T) -> T {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        f(&keys)
    }

    fn write_keys(&self, f: impl FnOnce(&mut Keys)) {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        f(&mut keys);
    }

    fn overlay(&self, claims: Value) -> Result<Value, DevError> {
        let overlay = match claims {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            _ => return Err(DevError::ClaimsNotObject),
        };
        let now = self.clock.now();
        let mut merged = Map::new();
        merged.insert("iss".into(), Value::from(self.url.as_str()));
        merged.insert("aud".into(), Value::from(DEFAULT_AUDIENCE));
        merged.insert("iat".into(), Value::from(now));
        merged.insert("nbf".into(), Value::from(now));
        merged.insert("exp".into(), Value::from(now + DEFAULT_LIFETIME_SECS));
        merged.insert("jti".into(), Value::from(uuid::Uuid::new_v4().to_string()));
        for (name, value) in overlay {
            if value.is_null() {
                merged.remove(&name);
            } else {
                merged.insert(name, value);
            }
        }
        Ok(Value::Object(merged))
    }

    fn jwks(&self) -> Value {
        self.read_keys(|keys| jwt::jwks(&keys.published))
    }

    fn discovery(&self) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.kind.alg()],
            "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf"],
        })
    }
}

async fn serve(State(state): State<Arc<IssuerState>>, request: Request) -> Response {
    let path = request.uri().path().strip_prefix(state.prefix.as_str());
    if state.minting && path == Some(MINT_PATH) {
        return mint_endpoint(&state, request).await;
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let document = match path {
        Some("/.well-known/openid-configuration") => state.discovery(),
        Some("/.well-known/jwks" | "/openid/v1/jwks") => state.jwks(),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "max-age=60")
        .body(Body::from(document.to_string()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `POST /dev/token` with a JSON object of claims: `{"token": JWT, "claims": {...}}`,
/// the claims overlaid on the defaults as [`LocalIssuer::claims`] does. Only JSON is read,
/// so a web page cannot mint through the browser without a CORS preflight, which this
/// server never grants.
async fn mint_endpoint(state: &IssuerState, request: Request) -> Response {
    let refuse = |status: StatusCode, description: String| {
        let body = json!({
            "error": "invalid_request",
            "error_description": description,
            "request_id": uuid::Uuid::new_v4().to_string(),
        });
        (status, axum::Json(body)).into_response()
    };
    if request.method() != Method::POST {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{MINT_PATH} takes POST with a JSON object of claims"),
        );
    }
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be a JSON object of claims (Content-Type: application/json)".into(),
        );
    }
    let Ok(body) = axum::body::to_bytes(request.into_body(), MAX_MINT_BODY_BYTES).await else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the claims must be at most {MAX_MINT_BODY_BYTES} bytes"),
        );
    };
    let claims = match serde_json::from_slice::<Value>(&body) {
        Ok(claims @ Value::Object(_)) => claims,
        Ok(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "claims must be a JSON object".into(),
            );
        }
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not JSON: {}",
                    crate::redact::untrusted(&e.to_string())
                ),
            );
        }
    };
    let key = state.read_keys(|keys| keys.current.clone());
    let claims = match state.overlay(claims) {
        Ok(claims) => claims,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match key.sign(&claims) {
        Ok(token) => axum::Json(json!({ "token": token, "claims": claims })).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn new_kid() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id.chars().take(16).collect()
}

fn random_hex(len: usize) -> String {
    let mut out = String::new();
    while out.len() < len {
        out.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    out.truncate(len);
    out
}

fn random_digits(len: usize) -> String {
    uuid::Uuid::new_v4()
        .as_u128()
        .to_string()
        .chars()
        .take(len)
        .collect()
}

fn owner_of(repo: &str) -> &str {
    repo.split_once('/').map(|(owner, _)| owner).unwrap_or(repo)
}

/// Claims of a GitHub Actions job on a push to `git_ref` (`"refs/heads/main"`,
/// `"refs/tags/v1"`, or a bare branch name) of `repo` (`"ORG/REPO"`).
pub fn github_claims(repo: &str, git_ref: &str) -> Value {
    let git_ref = if git_ref.starts_with("refs/") {
        git_ref.to_owned()
    } else {
        format!("refs/heads/{git_ref}")
    };
    let ref_type = if git_ref.starts_with("refs/tags/") {
        "tag"
    } else {
        "branch"
    };
    let workflow_ref = format!("{repo}/.github/workflows/ci.yml@{git_ref}");
    json!({
        "sub": format!("repo:{repo}:ref:{git_ref}"),
        "repository": repo,
        "repository_id": random_digits(9),
        "repository_owner": owner_of(repo),
        "repository_owner_id": random_digits(8),
        "repository_visibility": "private",
        "ref": git_ref,
        "ref_type": ref_type,
        "ref_protected": "false",
        "sha": random_hex(40),
        "workflow": "CI",
        "workflow_ref": workflow_ref,
        "job_workflow_ref": workflow_ref,
        "actor": "octocat",
        "actor_id": "583231",
        "run_id": random_digits(10),
        "run_number": "1",
        "run_attempt": "1",
        "event_name": "push",
        "head_ref": "",
        "base_ref": "",
        "runner_environment": "github-hosted",
    })
}

/// Claims of a GitHub Actions job on a pull request to `repo`.
pub fn github_pull_request_claims(repo: &str) -> Value {
    let mut claims = github_claims(repo, "refs/pull/42/merge");
    if let Value::Object(map) = &mut claims {
        map.insert(
            "sub".into(),
            Value::from(format!("repo:{repo}:pull_request")),
        );
        map.insert("event_name".into(), Value::from("pull_request"));
        map.insert("head_ref".into(), Value::from("feature"));
        map.insert("base_ref".into(), Value::from("main"));
    }
    claims
}

/// Claims of a Kubernetes projected service-account token.
pub fn kubernetes_claims(namespace: &str, service_account: &str) -> Value {
    json!({
        "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {
                "name": service_account,
                "uid": uuid::Uuid::new_v4().to_string(),
            },
            "pod": {
                "name": format!("{service_account}-{}", random_hex(5)),
                "uid": uuid::Uuid::new_v4().to_string(),
            },
            "node": {
                "name": "aks-nodepool1-0",
                "uid": uuid::Uuid::new_v4().to_string(),
            },
        },
    })
}

/// Claims of an Azure DevOps service-connection token.
pub fn azure_devops_claims(org: &str, project: &str, connection: &str) -> Value {
    json!({ "sub": format!("sc://{org}/{project}/{connection}") })
}
