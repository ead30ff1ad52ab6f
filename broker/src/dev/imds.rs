//! An emulator of a host's managed-identity endpoints (docs/agent.md): IMDS at
//! `/metadata/identity/oauth2/token` (`Metadata: true`) and App Service at `/msi/token`
//! (`X-IDENTITY-HEADER`). Tokens are signed with the Entra emulator's key and carry
//! Entra's v2.0 issuer, so the emulator accepts them as managed-identity-as-FIC
//! assertions, as Entra does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::DevError;
use super::entra::EntraEmulator;
use super::jwt::SigningKey;
use super::server::{self, ServerHandle};
use crate::clock::SharedClock;

/// Managed-identity tokens last a day, like Entra's.
const LIFETIME: u64 = 86_400;

/// A user-assigned (or system-assigned) identity attached to the emulated host.
#[derive(Debug, Clone)]
pub struct HostIdentity {
    pub tenant_id: String,
    pub client_id: String,
    /// The principal (object) id: the `sub` of its tokens.
    pub principal_id: String,
}

struct ImdsState {
    clock: SharedClock,
    key: SigningKey,
    identities: RwLock<Vec<HostIdentity>>,
    /// The App Service secret.
    header: String,
    requests: AtomicU64,
}

/// A running managed-identity endpoint. Dropping the last clone stops it.
#[derive(Clone)]
pub struct ManagedIdentityHost {
    state: Arc<ImdsState>,
    addr: SocketAddr,
    _server: Arc<ServerHandle>,
}

impl std::fmt::Debug for ManagedIdentityHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedIdentityHost")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ManagedIdentityHost {
    pub async fn start(entra: &EntraEmulator, clock: SharedClock) -> Result<Self, DevError> {
        let (listener, addr) = server::bind().await?;
        let state = Arc::new(ImdsState {
            clock,
            key: entra.signing_key(),
            identities: RwLock::new(Vec::new()),
            header: uuid::Uuid::new_v4().simple().to_string(),
            requests: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/metadata/identity/oauth2/token", get(imds))
            .route("/msi/token", get(app_service))
            .with_state(Arc::clone(&state));
        let server = ServerHandle::spawn(listener, router, None);
        Ok(Self {
            state,
            addr,
            _server: Arc::new(server),
        })
    }

    /// Attaches an identity to the host.
    pub fn attach(&self, identity: HostIdentity) {
        self.state
            .identities
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(identity);
    }

    /// `http://127.0.0.1:PORT/metadata/identity/oauth2/token`.
    pub fn imds_endpoint(&self) -> String {
        format!("http://{}/metadata/identity/oauth2/token", self.addr)
    }

    /// `http://127.0.0.1:PORT/msi/token` (`IDENTITY_ENDPOINT`).
    pub fn app_service_endpoint(&self) -> String {
        format!("http://{}/msi/token", self.addr)
    }

    /// The App Service secret (`IDENTITY_HEADER`).
    pub fn identity_header(&self) -> String {
        self.state.header.clone()
    }

    /// Token requests received, refused ones included.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
}

fn error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

async fn imds(
    State(state): State<Arc<ImdsState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    token(&state, &query, true)
}

async fn app_service(
    State(state): State<Arc<ImdsState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let given = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok());
    if given != Some(state.header.as_str()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "The X-IDENTITY-HEADER header is missing or wrong",
        );
    }
    token(&state, &query, false)
}

fn token(state: &ImdsState, query: &HashMap<String, String>, imds: bool) -> Response {
    let Some(resource) = query.get("resource").filter(|r| !r.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'resource' is missing",
        );
    };
    if query.get("api-version").is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    }
    let identities = state
        .identities
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let chosen: Vec<&HostIdentity> = match query.get("client_id") {
        Some(id) => identities
            .iter()
            .filter(|i| i.client_id.eq_ignore_ascii_case(id))
            .collect(),
        None => identities.iter().collect(),
    };
    let identity = match chosen.as_slice() {
        [one] => *one,
        [] => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Identity not found",
            );
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Multiple user assigned identities exist, please specify the clientId / \
                 resourceId of the identity in the token request",
            );
        }
    };
    let now = state.clock.now();
    let issuer = EntraEmulator::v2_issuer(&identity.tenant_id);
    let claims = json!({
        "aud": resource,
        "iss": issuer,
        "iat": now,
        "nbf": now,
        "exp": now + LIFETIME,
        "azp": identity.client_id,
        "appid": identity.client_id,
        "oid": identity.principal_id,
        "sub": identity.principal_id,
        "tid": identity.tenant_id,
        "ver": "2.0",
    });
    let Ok(access_token) = state.key.sign(&claims) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "cannot sign",
        );
    };
    let expires_on = (now + LIFETIME).to_string();
    let mut body = json!({
        "access_token": access_token,
        "expires_on": expires_on,
        "resource": resource,
        "token_type": "Bearer",
        "client_id": identity.client_id,
    });
    if imds && let Value::Object(map) = &mut body {
        map.insert("expires_in".into(), Value::from(LIFETIME.to_string()));
        map.insert("ext_expires_in".into(), Value::from(LIFETIME.to_string()));
        map.insert("not_before".into(), Value::from(now.to_string()));
    }
    axum::Json(body).into_response()
}
