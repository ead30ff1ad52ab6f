//! `POST /mutate/v1/pods`: the sidecar-injecting admission webhook (AdmissionReview v1 in,
//! AdmissionReview v1 with a JSON Patch out). The Kubernetes API server calls it over TLS;
//! it needs no admin credential, and answers 404 unless `[webhook] enabled = true`.
//!
//! The handler only translates the wire format: what happens to the pod is decided in
//! [`crate::inject`]. A body that is not an AdmissionReview for a Pod is a 400 in the
//! broker's error shape; a pod the webhook refuses to mutate (a `hostNetwork` pod without a
//! port, say) is an AdmissionReview with `allowed: false` and the reason, which `kubectl`
//! shows the user.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use wif_config::BrokerConfig;

use super::{ApiError, AppState};
use crate::inject::kube::{KubeClient, KubeError};
use crate::inject::{self, InjectError, ServiceAccountFacts, Settings};

/// The webhook's state, built once at start-up.
#[derive(Debug)]
pub struct Webhook {
    settings: Settings,
    kube: Option<KubeClient>,
    max_body_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookSetupError {
    #[error("cannot read webhook.broker_ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error(transparent)]
    Kube(#[from] KubeError),
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

fn invalid(description: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_admission_review", description)
}

/// 32 random bytes, hex: a pod's `IDENTITY_HEADER`.
fn header_secret() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "cannot draw random bytes",
        )
        .with_retry_after(1)
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
#[utoipa::path(
    post,
    path = "/mutate/v1/pods",
    tag = "webhook",
    request_body(content = Object, content_type = "application/json", description = "An AdmissionReview (admission.k8s.io/v1) for a Pod"),
    responses(
        (status = 200, description = "The AdmissionReview with `response`: `uid`, `allowed`, and a base64 JSON Patch (`patchType: JSONPatch`) when the pod changes", body = Object),
        (status = 400, body = super::error::ErrorBody, description = "not an AdmissionReview v1 for a Pod"),
        (status = 404, body = super::error::ErrorBody, description = "the webhook is not enabled"),
        (status = 413, body = super::error::ErrorBody),
    )
)]
pub async fn pods(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let Some(webhook) = state.webhook.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the admission webhook is not enabled ([webhook] enabled = true)",
        ));
    };
    let limit = webhook.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    })?;
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
        return Err(ApiError::bad_request(
            "not_a_pod",
            format!(
                "this webhook mutates Pods only, not {}; check the MutatingWebhookConfiguration's rules",
                kind["kind"].as_str().unwrap_or("an unnamed kind")
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
        .map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
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
                tracing::warn!(namespace, service_account = account, error = %e,
                    "webhook: cannot read the service account");
                warnings.push(format!(
                    "wif-broker could not read service account {account:?} ({e}); \
                     AZURE_CLIENT_ID and AZURE_TENANT_ID come from pod annotations only"
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
                namespace,
                pod = pod_name,
                ?trigger,
                operations = mutation.patch.len(),
                "webhook: pod admitted"
            );
            let mut response = allowed;
            if !mutation.patch.is_empty() {
                let patch = serde_json::to_vec(&mutation.patch).map_err(|e| {
                    ApiError::bad_request("invalid_admission_review", e.to_string())
                })?;
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
            }
            if !warnings.is_empty() {
                response["warnings"] = json!(warnings);
            }
            Ok(review(response))
        }
        Err(InjectError::NotAPod(why)) => Err(ApiError::bad_request(
            "not_a_pod",
            format!("request.object is not a Pod: {why}"),
        )),
        Err(refused) => {
            tracing::info!(
                namespace,
                pod = pod_name,
                reason = refused.code(),
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
