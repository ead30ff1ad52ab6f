//! `POST /mutate/v1/pods`: the sidecar-injecting admission webhook (AdmissionReview v1 in,
//! AdmissionReview v1 with a JSON Patch out). The Kubernetes API server calls it over TLS
//! on the webhook's own listener (`[webhook] listen`, see docs/kubernetes.md), never on the
//! API port: its answers carry service accounts' client and tenant ids, which are nobody
//! else's business. It needs no admin credential; it is only served when
//! `[webhook] enabled = true`.
//!
//! The handler only translates the wire format: what happens to the pod is decided in
//! [`crate::inject`]. A body that is not a JSON AdmissionReview for a Pod is a 4xx in the
//! broker's error shape; a pod the webhook refuses to mutate (a `hostNetwork` pod without
//! a port, say) is an AdmissionReview with `allowed: false` and the reason, which `kubectl`
//! shows the user.

use crate::error::ErrorCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::body::Capped;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wif_config::BrokerConfig;

use super::{ApiError, AppState};
use crate::inject::kube::{KubeClient, KubeError};
use crate::inject::{self, InjectError, ServiceAccountFacts, Settings};
use crate::redact::untrusted;

/// The webhook's state, built once at start-up.
#[derive(Debug)]
pub struct Webhook {
    settings: Settings,
    kube: Option<KubeClient>,
    pub(super) max_body_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookSetupError {
    #[error("cannot read webhook.broker_ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(
        "webhook.tls_cert and webhook.tls_key are required: the API server calls webhooks over https only"
    )]
    NoTls,
    #[error("webhook TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot listen on webhook.listen {addr}: {error}")]
    Bind { addr: String, error: std::io::Error },
}

impl Webhook {
    /// The webhook `config` describes, or `None` when it is not enabled.
    pub fn from_config(config: &BrokerConfig) -> Result<Option<Arc<Self>>, WebhookSetupError> {
        let w = &config.webhook;
        if !w.enabled {
            return Ok(None);
        }
        let ca = match &w.broker_ca_file {
            Some(path) => {
                let pem = std::fs::read_to_string(path).map_err(|e| WebhookSetupError::CaFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(WebhookSetupError::CaFile {
                        path: path.display().to_string(),
                        reason: "no PEM certificate in it".into(),
                    });
                }
                Some(pem)
            }
            None => None,
        };
        let kube = KubeClient::from_config(w, config.outbound.allow_loopback_http, |name| {
            std::env::var(name).ok()
        })?;
        if kube.is_none() {
            tracing::warn!(
                "webhook: no Kubernetes API configured or found; service-account annotations \
                 (azure.workload.identity/client-id, ...) will not be read"
            );
        }
        Ok(Some(Arc::new(Self {
            settings: Settings::from_config(w, ca),
            kube,
            max_body_bytes: w.max_body_bytes,
        })))
    }
}

/// The webhook's own TLS listener (`[webhook] listen`), serving
/// [`super::webhook_router`] until [`WebhookServer::stop`].
#[derive(Debug)]
pub struct WebhookServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl WebhookServer {
    /// Binds `listen` (`[webhook] listen`, as `wif-config` parsed it) and serves the webhook
    /// there over TLS with `state` (whose `webhook` is set); `None` when the webhook is not
    /// enabled. In-flight reviews get `server.shutdown_timeout_secs` to finish once stopped.
    pub async fn start(
        cfg: &BrokerConfig,
        listen: Option<SocketAddr>,
        state: AppState,
    ) -> Result<Option<Self>, WebhookSetupError> {
        let (Some(listen), Some(_)) = (listen, &state.webhook) else {
            return Ok(None);
        };
        let w = &cfg.webhook;
        let (Some(cert), Some(key)) = (&w.tls_cert, &w.tls_key) else {
            return Err(WebhookSetupError::NoTls);
        };
        let tls = crate::tls::server_config(
            cert.clone(),
            key.clone(),
            Duration::from_secs(cfg.server.tls_reload_secs),
        )?;
        let bind = |error| WebhookSetupError::Bind {
            addr: listen.to_string(),
            error,
        };
        let listener = TcpListener::bind(listen).await.map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let metrics = state.broker.metrics().connections();
        let task = tokio::spawn(super::serve::serve_counted(
            listener,
            super::webhook_router(state),
            Some(tls),
            async move {
                let _ = stopped.await;
            },
            super::serve::Limits::from_config(&cfg.server),
            metrics,
        ));
        tracing::info!(%addr, "admission webhook listening (TLS)");
        Ok(Some(Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }))
    }

    /// `https://addr`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stops accepting and waits for in-flight reviews (bounded by the shutdown deadline).
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            None => Ok(()),
        }
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The API server sends `Content-Type: application/json`; nothing else is a review.
fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if media_type.is_some_and(|m| m.eq_ignore_ascii_case("application/json")) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the webhook accepts only an AdmissionReview as application/json",
        ))
    }
}

fn invalid(description: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidAdmissionReview, description)
}

/// 32 random bytes, hex: a pod's `IDENTITY_HEADER`.
fn header_secret() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| {
        ApiError::new(ErrorCode::Unavailable, "cannot draw random bytes").with_retry_after(1)
    })?;
    Ok(hex::encode(bytes))
}

fn review(response: Value) -> Response {
    Json(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
    .into_response()
}

/// Mutate a pod: inject the wif-agent sidecar (Kubernetes admission webhook).
///
/// Pods labelled `wif-broker.io/inject: "true"` or `azure.workload.identity/use: "true"`
/// get the agent as a native sidecar, a projected service-account token and the Azure SDK
/// variables; other pods are allowed unchanged. See docs/kubernetes.md.
pub async fn pods(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Capped, ApiError>,
) -> Result<Response, ApiError> {
    let Some(webhook) = state.webhook.clone() else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "the admission webhook is not enabled ([webhook] enabled = true)",
        ));
    };
    json_content_type(&headers)?;
    // Read within `[webhook] max_body_bytes`, the limit `webhook_router` sets.
    let bytes = body?.bytes;
    let review_in: Value = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
    if review_in["apiVersion"] != "admission.k8s.io/v1" || review_in["kind"] != "AdmissionReview" {
        return Err(invalid(
            "expected an AdmissionReview with apiVersion admission.k8s.io/v1",
        ));
    }
    let request = &review_in["request"];
    let Some(uid) = request["uid"].as_str().filter(|u| !u.is_empty()) else {
        return Err(invalid("the AdmissionReview has no request.uid"));
    };
    let kind = &request["kind"];
    if kind["kind"] != "Pod" || kind["group"].as_str().is_some_and(|g| !g.is_empty()) {
        return Err(ApiError::new(
            ErrorCode::NotAPod,
            format!(
                "this webhook mutates Pods only, not {}; check the MutatingWebhookConfiguration's rules",
                untrusted(kind["kind"].as_str().unwrap_or("an unnamed kind"))
            ),
        ));
    }
    let allowed = json!({"uid": uid, "allowed": true});
    let pod = &request["object"];
    if request["operation"] != "CREATE" || pod.is_null() || request["subResource"].is_string() {
        return Ok(review(allowed));
    }
    let Some(trigger) = inject::trigger(pod) else {
        // Validate the shape even when nothing is injected, so a broken request shows.
        inject::mutate(
            pod,
            &webhook.settings,
            &ServiceAccountFacts::default(),
            String::new,
        )
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
        return Ok(review(allowed));
    };
    let namespace = request["namespace"]
        .as_str()
        .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str))
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    let pod_name = pod
        .pointer("/metadata/name")
        .or_else(|| pod.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let account = inject::service_account(pod);
    let mut warnings = Vec::new();
    let facts = match &webhook.kube {
        Some(kube) => match kube.service_account(namespace, account).await {
            Ok(facts) => facts,
            Err(e) => {
                tracing::warn!(namespace = %untrusted(namespace),
                    service_account = %untrusted(account), error = %e,
                    "webhook: cannot read the service account");
                warnings.push(format!(
                    "wif-broker could not read service account {:?} ({e}); \
                     AZURE_CLIENT_ID and AZURE_TENANT_ID come from pod annotations only",
                    untrusted(account)
                ));
                ServiceAccountFacts::default()
            }
        },
        None => ServiceAccountFacts::default(),
    };
    let secret = header_secret()?;
    match inject::mutate(pod, &webhook.settings, &facts, move || secret) {
        Ok(mutation) => {
            warnings.extend(mutation.warnings);
            tracing::info!(
                namespace = %untrusted(namespace),
                pod = %untrusted(pod_name),
                ?trigger,
                operations = mutation.patch.len(),
                "webhook: pod admitted"
            );
            let mut response = allowed;
            if !mutation.patch.is_empty() {
                let patch = serde_json::to_vec(&mutation.patch)
                    .map_err(|e| ApiError::new(ErrorCode::InvalidAdmissionReview, e.to_string()))?;
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
            }
            if !warnings.is_empty() {
                response["warnings"] = json!(warnings);
            }
            Ok(review(response))
        }
        Err(InjectError::NotAPod(why)) => Err(ApiError::new(
            ErrorCode::NotAPod,
            format!("request.object is not a Pod: {why}"),
        )),
        Err(refused) => {
            tracing::info!(
                namespace = %untrusted(namespace),
                pod = %untrusted(pod_name),
                reason = %refused.code(),
                "webhook: pod refused"
            );
            Ok(review(json!({
                "uid": uid,
                "allowed": false,
                "status": {
                    "code": 400,
                    "reason": "BadRequest",
                    "message": format!("wif-broker: {refused}"),
                },
            })))
        }
    }
}
