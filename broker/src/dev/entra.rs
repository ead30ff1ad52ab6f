//! An emulator of Entra's token endpoint (docs/api.md, Entra errors) on 127.0.0.1.
//!
//! It checks a federated client assertion the way Entra does, in Entra's order, and
//! answers with Entra's error shape and AADSTS codes, so the broker's Entra client and the
//! end-to-end tests can be exercised without a tenant. It also serves the metadata MSAL
//! fetches (tenant discovery, instance discovery, keys). Faults (throttling, outages,
//! delays, dropped connections) are queued by the test. It is a test double: it fetches
//! issuer metadata over plain http and keeps no caches, so every exchange costs the
//! issuer one discovery and one JWKS request.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::DevError;
use super::jwt::{self, KeyKind, SigningKey};
use super::server::{self, DropConnection, ServerHandle};
use crate::clock::SharedClock;

/// `client_assertion_type` of a JWT assertion (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Default `expires_in` of issued tokens, as Entra commonly answers.
const DEFAULT_TOKEN_LIFETIME: u64 = 3599;
/// Entra reads only this many keys of an issuer's JWKS.
const MAX_JWKS_KEYS: usize = 100;
/// Entra refuses assertions whose `exp - iat` is longer than this.
const MAX_ASSERTION_LIFETIME: i64 = 25 * 3600;

/// An identity (app registration or user-assigned managed identity) in a tenant.
#[derive(Debug, Clone)]
pub struct AppRegistration {
    pub tenant_id: String,
    pub client_id: String,
    pub object_id: String,
    pub federated_credentials: Vec<EmulatedFic>,
    /// Certificates uploaded to the app ("Certificates & secrets").
    pub certificates: Vec<EmulatedCertificate>,
}

/// A certificate credential as Entra keeps it: thumbprints and public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatedCertificate {
    /// SHA-1 thumbprint, base64url (the `x5t` header).
    pub x5t: String,
    /// SHA-256 thumbprint, base64url (the `x5t#S256` header).
    pub x5t_s256: String,
    /// PKCS#1 `RSAPublicKey` DER.
    pub public_key: Vec<u8>,
}

impl EmulatedCertificate {
    /// From a DER certificate with an RSA key; `None` otherwise (Entra accepts only RSA
    /// certificates for client assertions).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let public_key = crate::entra::assertion::certificate::rsa_public_key(der)?.to_vec();
        let (x5t, x5t_s256) = crate::entra::assertion::certificate::thumbprints(der);
        Some(Self {
            x5t,
            x5t_s256,
            public_key,
        })
    }
}

impl AppRegistration {
    /// An identity with a random object id and no federated credentials.
    pub fn new(tenant_id: &str, client_id: &str) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            client_id: client_id.to_owned(),
            object_id: uuid::Uuid::new_v4().to_string(),
            federated_credentials: Vec::new(),
            certificates: Vec::new(),
        }
    }

    pub fn with_certificate(mut self, certificate: EmulatedCertificate) -> Self {
        self.certificates.push(certificate);
        self
    }

    pub fn with_fic(mut self, fic: EmulatedFic) -> Self {
        self.federated_credentials.push(fic);
        self
    }
}

/// A federated identity credential as Entra stores it (subject form only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatedFic {
    pub name: String,
    pub issuer: String,
    pub subject: String,
    pub audience: String,
}

impl EmulatedFic {
    /// A credential with Entra's default audience `api://AzureADTokenExchange`.
    pub fn new(name: &str, issuer: &str, subject: &str) -> Self {
        Self {
            name: name.to_owned(),
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            audience: super::issuer::DEFAULT_AUDIENCE.to_owned(),
        }
    }
}

/// A failure the next token request suffers, before anything else is looked at.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer `status` with an Entra-style error body; `Retry-After` when given; `aadsts`
    /// replaces the default code (429: 50196, 5xx: 90033).
    Status {
        status: u16,
        retry_after: Option<u64>,
        aadsts: Option<u32>,
    },
    /// Wait, then process the request normally.
    Delay(Duration),
    /// Close the connection without answering.
    Unreachable,
}

/// A running Entra emulator. Clones share the server; dropping the last one stops it.
#[derive(Clone)]
pub struct EntraEmulator {
    state: Arc<EntraState>,
    server: Arc<ServerHandle>,
}

impl std::fmt::Debug for EntraEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraEmulator")
            .field("url", &self.state.url)
            .finish_non_exhaustive()
    }
}

struct EntraState {
    clock: SharedClock,
    addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, the authority host.
    url: String,
    key: SigningKey,
    apps: RwLock<Vec<AppRegistration>>,
    token_lifetime: AtomicU64,
    nbf_leeway: AtomicU64,
    faults: Mutex<VecDeque<Fault>>,
    down: AtomicBool,
    token_requests: AtomicU64,
    issued: AtomicU64,
    last_assertion: Mutex<Option<Value>>,
    last_assertion_token: Mutex<Option<String>>,
    http: reqwest::Client,
}

impl EntraEmulator {
    pub async fn start(clock: SharedClock) -> Result<Self, DevError> {
        crate::crypto::install_provider();
        let key = SigningKey::generate(KeyKind::Rsa2048, &new_kid())?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(DevError::HttpClient)?;
        let (listener, addr) = server::bind().await?;
        let state = Arc::new(EntraState {
            clock,
            addr,
            url: format!("http://{addr}"),
            key,
            apps: RwLock::new(Vec::new()),
            token_lifetime: AtomicU64::new(DEFAULT_TOKEN_LIFETIME),
            nbf_leeway: AtomicU64::new(0),
            faults: Mutex::new(VecDeque::new()),
            down: AtomicBool::new(false),
            token_requests: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            last_assertion: Mutex::new(None),
            last_assertion_token: Mutex::new(None),
            http,
        });
        let router = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route(
                "/{tenant}/v2.0/.well-known/openid-configuration",
                get(tenant_discovery),
            )
            .route("/{tenant}/discovery/v2.0/keys", get(keys))
            .route("/{tenant}/discovery/keys", get(keys))
            .route("/{tenant}/discovery/instance", get(instance_discovery))
            .with_state(Arc::clone(&state));
        let server = ServerHandle::spawn(listener, router, None);
        Ok(Self {
            state,
            server: Arc::new(server),
        })
    }

    /// The authority host, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.state.url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// `{url}/{tenant}/oauth2/v2.0/token`.
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.state.url)
    }

    /// The `iss` of access tokens issued for `tenant`: `https://sts.windows.net/{tenant}/`.
    pub fn access_token_issuer(tenant: &str) -> String {
        format!("https://sts.windows.net/{tenant}/")
    }

    /// Adds an identity, replacing one with the same tenant and client id.
    pub fn register_app(&self, app: AppRegistration) {
        let mut apps = self.state.apps.write().unwrap_or_else(|p| p.into_inner());
        apps.retain(|a| !same_app(a, &app.tenant_id, &app.client_id));
        apps.push(app);
    }

    /// Adds a credential to an identity, registering the identity (random object id) if
    /// it does not exist yet. Takes effect at once: no propagation delay.
    pub fn add_fic(&self, tenant: &str, client_id: &str, fic: EmulatedFic) {
        let mut apps = self.state.apps.write().unwrap_or_else(|p| p.into_inner());
        match apps.iter_mut().find(|a| same_app(a, tenant, client_id)) {
            Some(app) => app.federated_credentials.push(fic),
            None => apps.push(AppRegistration::new(tenant, client_id).with_fic(fic)),
        }
    }

    /// Uploads a certificate to an identity, registering the identity if needed.
    pub fn add_certificate(&self, tenant: &str, client_id: &str, certificate: EmulatedCertificate) {
        let mut apps = self.state.apps.write().unwrap_or_else(|p| p.into_inner());
        match apps.iter_mut().find(|a| same_app(a, tenant, client_id)) {
            Some(app) => app.certificates.push(certificate),
            None => {
                apps.push(AppRegistration::new(tenant, client_id).with_certificate(certificate))
            }
        }
    }

    /// Removes the credential called `name`; `false` if there was none.
    pub fn remove_fic(&self, tenant: &str, client_id: &str, name: &str) -> bool {
        let mut apps = self.state.apps.write().unwrap_or_else(|p| p.into_inner());
        let Some(app) = apps.iter_mut().find(|a| same_app(a, tenant, client_id)) else {
            return false;
        };
        let before = app.federated_credentials.len();
        app.federated_credentials.retain(|f| f.name != name);
        app.federated_credentials.len() != before
    }

    /// A registered identity, if any.
    pub fn app(&self, tenant: &str, client_id: &str) -> Option<AppRegistration> {
        let apps = self.state.apps.read().unwrap_or_else(|p| p.into_inner());
        apps.iter()
            .find(|a| same_app(a, tenant, client_id))
            .cloned()
    }

    /// `expires_in` (and `exp - iat`) of issued tokens; default 3599.
    pub fn set_token_lifetime(&self, secs: u64) {
        self.state.token_lifetime.store(secs, Ordering::SeqCst);
    }

    /// Tolerance for an assertion's `nbf` in the future; default 0 so tests are exact.
    /// (`exp` is always checked without tolerance.)
    pub fn set_nbf_leeway(&self, secs: u64) {
        self.state.nbf_leeway.store(secs, Ordering::SeqCst);
    }

    /// Queues a fault; each token request consumes one, first in first out.
    pub fn push_fault(&self, fault: Fault) {
        self.state
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(fault);
    }

    /// Faults still queued.
    pub fn pending_faults(&self) -> usize {
        self.state
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// While `true`, every token request (after queued faults) is answered 503 with
    /// `Retry-After: 1`.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// POSTs received by the token endpoint, faulted ones included.
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Access tokens issued.
    pub fn issued_tokens(&self) -> u64 {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// Claims of the last assertion that parsed as a JWT (whether or not it was accepted).
    pub fn last_assertion_claims(&self) -> Option<Value> {
        self.state
            .last_assertion
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The last assertion that parsed as a JWT, as it arrived (tests replay it).
    pub fn last_assertion(&self) -> Option<String> {
        self.state
            .last_assertion_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The issuer of Entra's v2.0 tokens for `tenant`, which managed-identity tokens
    /// carry and a managed-identity-as-FIC credential names.
    pub fn v2_issuer(tenant: &str) -> String {
        format!("https://login.microsoftonline.com/{tenant}/v2.0")
    }

    /// The JWKS that verifies issued access tokens.
    pub fn jwks(&self) -> Value {
        jwt::jwks(std::slice::from_ref(&self.state.key))
    }

    /// The key issued access tokens are signed with.
    pub fn signing_key(&self) -> SigningKey {
        self.state.key.clone()
    }

    pub async fn shutdown(&self) {
        self.server.shutdown().await;
    }
}

fn same_app(app: &AppRegistration, tenant: &str, client_id: &str) -> bool {
    app.tenant_id.eq_ignore_ascii_case(tenant) && app.client_id.eq_ignore_ascii_case(client_id)
}

fn new_kid() -> String {
    URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}

// ---------------------------------------------------------------------------------------
// Errors, shaped like Entra's.

/// One Entra error: HTTP status, OAuth `error`, AADSTS code and message (shared with
/// the benchmark's fixed Entra).
#[derive(Debug)]
pub struct AadError {
    status: StatusCode,
    error: &'static str,
    code: u32,
    message: String,
    retry_after: Option<u64>,
}

impl AadError {
    pub fn new(
        status: StatusCode,
        error: &'static str,
        code: u32,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid_request(code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", code, message)
    }

    fn invalid_client(code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", code, message)
    }

    pub fn missing_parameter(name: &str) -> Self {
        Self::invalid_request(
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    }

    fn malformed(detail: &str) -> Self {
        Self::invalid_request(
            50027,
            format!("JWT token is invalid or malformed. {detail}"),
        )
    }

    fn no_match(code: u32, what: &str, value: &str) -> Self {
        Self::invalid_request(
            code,
            format!(
                "No matching federated identity record found for presented assertion {what} \
                 '{value}'. Please check your federated identity credential Subject, Audience \
                 and Issuer against the presented assertion. \
                 https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
            ),
        )
    }

    fn discovery_failed(url: &str, why: &str) -> Self {
        Self::invalid_client(
            50027,
            format!(
                "JWT token is invalid or malformed. Unable to retrieve the issuer's OpenID \
                 Connect discovery document or signing keys from '{url}': {why}."
            ),
        )
    }

    /// The error a queued [`Fault::Status`] produces.
    fn fault(status: u16, retry_after: Option<u64>, aadsts: Option<u32>) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (error, default_code) = match status.as_u16() {
            429 => ("temporarily_unavailable", 50196),
            500..=599 => ("server_error", 90033),
            401 => ("invalid_client", 70021),
            403 => ("unauthorized_client", 70021),
            _ => ("invalid_request", 70021),
        };
        let code = aadsts.unwrap_or(default_code);
        let mut err = Self::new(status, error, code, canonical_message(code));
        err.retry_after = retry_after;
        err
    }

    /// The HTTP status the error is answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Entra's error body, as its token endpoint writes it: `error`, `error_description`
    /// (`AADSTS<code>: <message>` then the trace id, correlation id and time on lines of
    /// their own), `error_codes`, `timestamp`, `trace_id` and `correlation_id`.
    pub fn body(&self, trace_id: &str, correlation: &str, now: u64) -> serde_json::Value {
        let timestamp = entra_timestamp(now);
        let (code, message) = (self.code, &self.message);
        json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{code}: {message}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation}\r\nTimestamp: {timestamp}"
            ),
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation,
        })
    }

    fn into_response(self, clock: &SharedClock, url: &str, correlation: &str) -> Response {
        let trace_id = uuid::Uuid::new_v4().to_string();
        let code = self.code;
        let mut body = self.body(&trace_id, correlation, clock.now());
        body["error_uri"] = json!(format!("{url}/error?code={code}"));
        let mut response = json_response(self.status, &body, &trace_id, correlation);
        if let Some(secs) = self.retry_after
            && let Ok(value) = header::HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// Entra's wording for codes a [`Fault`] may name.
fn canonical_message(code: u32) -> &'static str {
    match code {
        50196 => {
            "The server terminated an operation because it encountered a client request loop. \
             Please contact your app vendor."
        }
        90033 => "A transient error has occurred. Please try again.",
        70021 => "No matching federated identity record found for presented assertion.",
        700211 => "No matching federated identity record found for presented assertion issuer.",
        700212 => "No matching federated identity record found for presented assertion audience.",
        700213 => "No matching federated identity record found for presented assertion subject.",
        700024 => "Client assertion is not within its valid time range.",
        50027 => "JWT token is invalid or malformed.",
        700016 => "Application with identifier was not found in the directory.",
        90002 => "Tenant not found.",
        _ => "Emulated failure.",
    }
}

fn json_response(status: StatusCode, body: &Value, trace_id: &str, correlation: &str) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store, no-cache")
        .header("x-ms-request-id", trace_id)
        .header("client-request-id", correlation)
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

use crate::entra::entra_timestamp;

/// `YYYY-MM-DDTHH:MM:SS.0000000Z`, as Entra writes times inside messages.
fn entra_instant(epoch: i64) -> String {
    crate::clock::rfc3339(epoch.max(0) as u64).replacen('Z', ".0000000Z", 1)
}

// ---------------------------------------------------------------------------------------
// Token endpoint.

fn correlation_id(headers: &HeaderMap) -> String {
    headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| uuid::Uuid::parse_str(v).ok())
        .unwrap_or_else(uuid::Uuid::new_v4)
        .to_string()
}

async fn token(
    State(state): State<Arc<EntraState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let correlation = correlation_id(&headers);

    let fault = state
        .faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop_front();
    match fault {
        Some(Fault::Status {
            status,
            retry_after,
            aadsts,
        }) => {
            return AadError::fault(status, retry_after, aadsts).into_response(
                &state.clock,
                &state.url,
                &correlation,
            );
        }
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::Unreachable) => {
            let mut response = StatusCode::SERVICE_UNAVAILABLE.into_response();
            response.extensions_mut().insert(DropConnection);
            return response;
        }
        None => {}
    }
    if state.down.load(Ordering::SeqCst) {
        return AadError::fault(503, Some(1), None).into_response(
            &state.clock,
            &state.url,
            &correlation,
        );
    }

    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    match state.exchange(&tenant, &form).await {
        Ok(body) => {
            state.issued.fetch_add(1, Ordering::SeqCst);
            let trace_id = uuid::Uuid::new_v4().to_string();
            json_response(StatusCode::OK, &body, &trace_id, &correlation)
        }
        Err(err) => err.into_response(&state.clock, &state.url, &correlation),
    }
}

/// A compact JWT taken apart, nothing trusted yet.
struct Assertion<'a> {
    signing_input: &'a str,
    signature: Vec<u8>,
    header: Value,
    claims: Value,
}

fn parse_assertion(token: &str) -> Option<Assertion<'_>> {
    let (signing_input, signature) = token.rsplit_once('.')?;
    let (header, payload) = signing_input.split_once('.')?;
    let header = jwt::decode_segment(header).filter(Value::is_object)?;
    let claims = jwt::decode_segment(payload).filter(Value::is_object)?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    Some(Assertion {
        signing_input,
        signature,
        header,
        claims,
    })
}

/// A numeric date claim; fractions are truncated.
fn numeric_claim(claims: &Value, name: &str) -> Option<i64> {
    let value = claims.get(name)?;
    value.as_i64().or_else(|| value.as_f64().map(|f| f as i64))
}

fn audiences(claims: &Value) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn is_entra_issuer(iss: &str) -> bool {
    iss.starts_with("https://sts.windows.net/")
        || iss.starts_with("https://login.microsoftonline.com/")
        || iss.starts_with("https://login.microsoftonline.us/")
        || iss.starts_with("https://login.chinacloudapi.cn/")
}

impl EntraState {
    /// The checks, in Entra's order. `Ok` is the success body.
    async fn exchange(
        &self,
        tenant: &str,
        form: &HashMap<String, String>,
    ) -> Result<Value, AadError> {
        let param = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());

        let grant_type =
            param("grant_type").ok_or_else(|| AadError::missing_parameter("grant_type"))?;
        if grant_type != "client_credentials" {
            return Err(AadError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                format!("The app requested an unsupported grant type '{grant_type}'."),
            ));
        }
        let Some(assertion) = param("client_assertion") else {
            return Err(AadError::invalid_client(
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or \
                 'client_secret'.",
            ));
        };
        let assertion_type = param("client_assertion_type")
            .ok_or_else(|| AadError::missing_parameter("client_assertion_type"))?;
        if assertion_type != JWT_BEARER {
            return Err(AadError::invalid_request(
                90011,
                format!("Unexpected client assertion type '{assertion_type}'."),
            ));
        }

        let app = {
            let apps = self.apps.read().unwrap_or_else(|p| p.into_inner());
            if !apps
                .iter()
                .any(|a| a.tenant_id.eq_ignore_ascii_case(tenant))
            {
                return Err(AadError::invalid_request(
                    90002,
                    format!(
                        "Tenant '{tenant}' not found. Check to make sure you have the correct \
                         tenant ID and are signing into the correct cloud. Check with your \
                         subscription administrator, this may happen if there are no active \
                         subscriptions for the tenant."
                    ),
                ));
            }
            let client_id =
                param("client_id").ok_or_else(|| AadError::missing_parameter("client_id"))?;
            let Some(app) = apps
                .iter()
                .find(|a| same_app(a, tenant, client_id))
                .cloned()
            else {
                return Err(AadError::new(
                    StatusCode::BAD_REQUEST,
                    "unauthorized_client",
                    700016,
                    format!(
                        "Application with identifier '{client_id}' was not found in the \
                         directory '{tenant}'. This can happen if the application has not been \
                         installed by the administrator of the tenant or consented to by any \
                         user in the tenant. You may have sent your authentication request to \
                         the wrong tenant."
                    ),
                ));
            };
            app
        };

        let scope = param("scope").ok_or_else(|| AadError::missing_parameter("scope"))?;
        if scope.split_whitespace().count() > 1 {
            return Err(AadError::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                28000,
                format!(
                    "Provided value for the input parameter scope is not valid because it \
                     contains more than one resource. Scope {scope} is not valid."
                ),
            ));
        }
        let resource = scope
            .strip_suffix("/.default")
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                AadError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    1002012,
                    format!(
                        "The provided value for scope {scope} is not valid. Client credential \
                         flows must have a scope value with /.default suffixed to the resource \
                         identifier (application ID URI)."
                    ),
                )
            })?;

        let raw = assertion;
        let assertion = parse_assertion(assertion)
            .ok_or_else(|| AadError::malformed("The assertion is not a compact JWS."))?;
        *self
            .last_assertion
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(assertion.claims.clone());
        *self
            .last_assertion_token
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(raw.to_owned());
        let alg = assertion
            .header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or("");
        if alg != "RS256" {
            return Err(AadError::malformed(&format!(
                "'{alg}' is not a supported signature algorithm for a federated assertion; \
                 use 'RS256'."
            )));
        }
        let claims = &assertion.claims;
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
        let auds = audiences(claims);
        let aud_text = auds.join(",");

        // A client assertion the app signed itself (certificate credential), not a
        // federated one: `iss` and `sub` are the client id.
        if iss.eq_ignore_ascii_case(&app.client_id) && sub.eq_ignore_ascii_case(&app.client_id) {
            self.check_certificate_assertion(&app, tenant, &assertion, &auds)?;
            self.check_times(claims)?;
            return self.issue(&app, resource);
        }

        let fics = &app.federated_credentials;
        let with_issuer: Vec<&EmulatedFic> = fics.iter().filter(|f| f.issuer == iss).collect();
        if with_issuer.is_empty() {
            if is_entra_issuer(iss) {
                return Err(AadError::invalid_request(
                    700222,
                    "AAD-issued tokens may not be used for federated identity flows.",
                ));
            }
            let trimmed = iss.trim_end_matches('/');
            if !iss.is_empty()
                && fics
                    .iter()
                    .any(|f| f.issuer.trim_end_matches('/') == trimmed)
            {
                return Err(AadError::invalid_request(
                    70021,
                    format!(
                        "No matching federated identity record found for presented assertion. \
                         Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion \
                         Audience: '{aud_text}'. \
                         https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
                    ),
                ));
            }
            return Err(AadError::no_match(700211, "issuer", iss));
        }

        let jwks = if is_entra_issuer(iss) {
            // Managed identity as a federated credential: Entra knows its own keys, and
            // accepts only tokens of the app's own tenant.
            let same_tenant = iss
                .trim_end_matches('/')
                .trim_end_matches("/v2.0")
                .rsplit('/')
                .next()
                .is_some_and(|t| t.eq_ignore_ascii_case(&app.tenant_id));
            if !same_tenant {
                return Err(AadError::invalid_request(
                    700222,
                    "AAD-issued tokens may be used as federated credentials only within the \
                     same tenant.",
                ));
            }
            vec![self.key.public_jwk()]
        } else {
            self.fetch_jwks(iss).await?
        };
        let kid = assertion
            .header
            .get("kid")
            .and_then(Value::as_str)
            .unwrap_or("");
        let key = jwks
            .iter()
            .take(MAX_JWKS_KEYS)
            .find(|k| !kid.is_empty() && k.get("kid").and_then(Value::as_str) == Some(kid))
            .ok_or_else(|| {
                AadError::invalid_client(
                    7000272,
                    format!(
                        "The key '{kid}' used to sign the client assertion was not found in \
                         the keys of issuer '{iss}' (only the first {MAX_JWKS_KEYS} keys are \
                         considered)."
                    ),
                )
            })?;
        if !rs256_verifies(key, assertion.signing_input, &assertion.signature) {
            return Err(AadError::invalid_client(
                50027,
                "JWT token is invalid or malformed. The client assertion failed signature \
                 validation.",
            ));
        }

        self.check_times(claims)?;

        let with_audience: Vec<&EmulatedFic> = with_issuer
            .into_iter()
            .filter(|f| auds.contains(&f.audience))
            .collect();
        if with_audience.is_empty() {
            return Err(AadError::no_match(700212, "audience", &aud_text));
        }
        if !with_audience.iter().any(|f| f.subject == sub) {
            let lowered = sub.to_lowercase();
            if !sub.is_empty()
                && with_audience
                    .iter()
                    .any(|f| f.subject.to_lowercase() == lowered)
            {
                return Err(AadError::invalid_request(
                    7002138,
                    format!(
                        "No matching federated identity record found for presented assertion \
                         subject '{sub}'. A federated identity credential matches the subject \
                         only if case is ignored; subjects are case-sensitive."
                    ),
                ));
            }
            return Err(AadError::no_match(700213, "subject", sub));
        }

        self.issue(&app, resource)
    }

    /// `exp`, `iat`, `nbf` and the 25-hour lifetime cap, as Entra checks them.
    fn check_times(&self, claims: &Value) -> Result<(), AadError> {
        let now = self.clock.now() as i64;
        let exp = numeric_claim(claims, "exp")
            .ok_or_else(|| AadError::malformed("The assertion has no 'exp' claim."))?;
        let Some(iat) = numeric_claim(claims, "iat") else {
            return Err(AadError::invalid_request(
                70023,
                "The client assertion has no 'iat' claim.",
            ));
        };
        if exp - iat > MAX_ASSERTION_LIFETIME {
            return Err(AadError::invalid_request(
                70023,
                format!(
                    "The client assertion's lifetime ({}s between 'iat' and 'exp') is longer \
                     than the maximum of 25 hours.",
                    exp - iat
                ),
            ));
        }
        let nbf = numeric_claim(claims, "nbf");
        let leeway = self.nbf_leeway.load(Ordering::SeqCst) as i64;
        if now >= exp || nbf.is_some_and(|nbf| now + leeway < nbf) {
            return Err(AadError::invalid_request(
                700024,
                format!(
                    "Client assertion is not within its valid time range. Current time: {}, \
                     assertion valid from {}, expiry time of assertion {}. Review the \
                     documentation at \
                     https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                    entra_instant(now),
                    entra_instant(nbf.unwrap_or(iat)),
                    entra_instant(exp),
                ),
            ));
        }
        Ok(())
    }

    /// A certificate credential: the thumbprint names a certificate on the app, its key
    /// signed the assertion, and the audience is this token endpoint.
    fn check_certificate_assertion(
        &self,
        app: &AppRegistration,
        tenant: &str,
        assertion: &Assertion<'_>,
        auds: &[String],
    ) -> Result<(), AadError> {
        let header = |name: &str| assertion.header.get(name).and_then(Value::as_str);
        let (thumbprint, by_sha256) = match (header("x5t#S256"), header("x5t")) {
            (Some(t), _) => (t, true),
            (None, Some(t)) => (t, false),
            (None, None) => {
                return Err(AadError::invalid_client(
                    700027,
                    "Client assertion failed signature validation. [Reason - The key was not \
                     found.] The assertion header has neither 'x5t#S256' nor 'x5t'.",
                ));
            }
        };
        let certificate = app.certificates.iter().find(|c| {
            if by_sha256 {
                c.x5t_s256 == thumbprint
            } else {
                c.x5t == thumbprint
            }
        });
        let Some(certificate) = certificate else {
            return Err(AadError::invalid_client(
                700027,
                format!(
                    "Client assertion failed signature validation. [Reason - The key was not \
                     found., Thumbprint of key used by client: '{thumbprint}', Please visit \
                     the Azure Portal, Graph Explorer or directly use MS Graph to see \
                     configured keys for app Id '{}'.]",
                    app.client_id
                ),
            ));
        };
        let verified = aws_lc_rs::signature::UnparsedPublicKey::new(
            &RSA_PKCS1_2048_8192_SHA256,
            &certificate.public_key,
        )
        .verify(assertion.signing_input.as_bytes(), &assertion.signature)
        .is_ok();
        if !verified {
            return Err(AadError::invalid_client(
                700027,
                "Client assertion failed signature validation. [Reason - The provided \
                 signature value did not match the expected signature value.]",
            ));
        }
        let endpoint = format!("{}/{tenant}/oauth2/v2.0/token", self.url);
        let accepted = |aud: &String| {
            aud == &endpoint
                || aud.eq_ignore_ascii_case(&format!(
                    "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
                ))
        };
        if !auds.iter().any(accepted) {
            return Err(AadError::invalid_client(
                50027,
                format!(
                    "JWT token is invalid. The audience of the client assertion must be the token endpoint \
                     '{endpoint}'; it was '{}'.",
                    auds.join(",")
                ),
            ));
        }
        Ok(())
    }

    /// Discovery, then the JWKS's `keys`.
    async fn fetch_jwks(&self, iss: &str) -> Result<Vec<Value>, AadError> {
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            iss.strip_suffix('/').unwrap_or(iss)
        );
        let discovery = self.get_json(&discovery_url).await?;
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| AadError::discovery_failed(&discovery_url, "no jwks_uri"))?;
        let jwks = self.get_json(jwks_uri).await?;
        match jwks.get("keys") {
            Some(Value::Array(keys)) => Ok(keys.clone()),
            _ => Err(AadError::discovery_failed(jwks_uri, "no 'keys' array")),
        }
    }

    async fn get_json(&self, url: &str) -> Result<Value, AadError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| AadError::discovery_failed(url, &e.to_string()))?;
        if !response.status().is_success() {
            return Err(AadError::discovery_failed(
                url,
                &format!("HTTP {}", response.status().as_u16()),
            ));
        }
        response
            .json::<Value>()
            .await
            .map_err(|e| AadError::discovery_failed(url, &format!("not JSON ({e})")))
    }

    fn issue(&self, app: &AppRegistration, resource: &str) -> Result<Value, AadError> {
        let lifetime = self.token_lifetime.load(Ordering::SeqCst);
        let now = self.clock.now();
        let audience = resource.strip_suffix('/').unwrap_or(resource);
        let issuer = EntraEmulator::access_token_issuer(&app.tenant_id);
        let claims = json!({
            "aud": audience,
            "iss": issuer,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "appid": app.client_id,
            "appidacr": "2",
            "azp": app.client_id,
            "idp": issuer,
            "idtyp": "app",
            "oid": app.object_id,
            "sub": app.object_id,
            "tid": app.tenant_id,
            "uti": URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes()),
            "ver": "1.0",
        });
        let access_token = self.key.sign(&claims).map_err(|_| {
            AadError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                90033,
                "A transient error has occurred. Please try again.",
            )
        })?;
        Ok(json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
        }))
    }
}

/// Whether `signature` is a valid RS256 signature of `message` by the RSA JWK `key`.
fn rs256_verifies(key: &Value, message: &str, signature: &[u8]) -> bool {
    if key.get("kty").and_then(Value::as_str) != Some("RSA") {
        return false;
    }
    let component = |name: &str| {
        key.get(name)
            .and_then(Value::as_str)
            .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
    };
    let (Some(n), Some(e)) = (component("n"), component("e")) else {
        return false;
    };
    RsaPublicKeyComponents { n, e }
        .verify(&RSA_PKCS1_2048_8192_SHA256, message.as_bytes(), signature)
        .is_ok()
}

// ---------------------------------------------------------------------------------------
// Metadata MSAL reads.

fn is_meta_tenant(tenant: &str) -> bool {
    matches!(
        tenant.to_ascii_lowercase().as_str(),
        "common" | "organizations" | "consumers"
    )
}

async fn tenant_discovery(
    State(state): State<Arc<EntraState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let known = {
        let apps = state.apps.read().unwrap_or_else(|p| p.into_inner());
        apps.iter()
            .any(|a| a.tenant_id.eq_ignore_ascii_case(&tenant))
    };
    let correlation = correlation_id(&headers);
    if !known && !is_meta_tenant(&tenant) {
        return AadError::invalid_request(
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID \
                 and are signing into the correct cloud."
            ),
        )
        .into_response(&state.clock, &state.url, &correlation);
    }
    let base = format!("{}/{tenant}", state.url);
    let document = json!({
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": format!("{base}/openid/userinfo"),
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid"],
        "kerberos_endpoint": format!("{base}/kerberos"),
        "tenant_region_scope": "WW",
        "cloud_instance_name": state.addr.to_string(),
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    });
    json_response(
        StatusCode::OK,
        &document,
        &uuid::Uuid::new_v4().to_string(),
        &correlation,
    )
}

async fn keys(State(state): State<Arc<EntraState>>) -> Response {
    let body = jwt::jwks(std::slice::from_ref(&state.key));
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

/// Answers like `https://login.microsoftonline.com/common/discovery/instance`, vouching
/// for this host only.
async fn instance_discovery(
    State(state): State<Arc<EntraState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let tenant = query
        .get("authorization_endpoint")
        .and_then(|endpoint| url::Url::parse(endpoint).ok())
        .and_then(|endpoint| {
            endpoint
                .path_segments()
                .and_then(|mut segments| segments.next().map(str::to_owned))
        })
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "common".to_owned());
    let host = state.addr.to_string();
    let document = json!({
        "tenant_discovery_endpoint": format!(
            "{}/{tenant}/v2.0/.well-known/openid-configuration",
            state.url
        ),
        "api-version": "1.1",
        "metadata": [{
            "preferred_network": host,
            "preferred_cache": host,
            "aliases": [host],
        }],
    });
    json_response(
        StatusCode::OK,
        &document,
        &uuid::Uuid::new_v4().to_string(),
        &correlation_id(&headers),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_entra_shaped() {
        assert_eq!(entra_timestamp(0), "1970-01-01 00:00:00Z");
        assert_eq!(entra_timestamp(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(entra_timestamp(1_700_000_000), "2023-11-14 22:13:20Z");
        assert_eq!(entra_instant(1_700_000_000), "2023-11-14T22:13:20.0000000Z");
    }

    #[test]
    fn faults_use_entra_codes() {
        let e = AadError::fault(429, Some(3), None);
        assert_eq!(
            (e.error, e.code, e.retry_after),
            ("temporarily_unavailable", 50196, Some(3))
        );
        let e = AadError::fault(502, None, None);
        assert_eq!((e.error, e.code), ("server_error", 90033));
        let e = AadError::fault(400, None, Some(70021));
        assert_eq!((e.error, e.code), ("invalid_request", 70021));
    }
}
