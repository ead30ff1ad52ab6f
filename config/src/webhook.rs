//! `[webhook]`: the sidecar-injecting admission webhook the broker serves at
//! `POST /mutate/v1/pods` on its own TLS listener, never on the API port (see
//! docs/kubernetes.md). Off unless `enabled = true`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Settings of the pod-mutating admission webhook and of the sidecar it injects.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Serve `POST /mutate/v1/pods` on the webhook's own listener. Off by default: no
    /// webhook listener is opened (the API port never serves the webhook).
    pub enabled: bool,
    /// Address of the webhook's own TLS listener, e.g. `0.0.0.0:9443`: the Kubernetes API
    /// server calls it, nothing else should reach it. Must differ from `server.listen`.
    /// Required when enabled.
    pub listen: String,
    /// PEM certificate chain of the webhook listener (the API server calls webhooks over
    /// https only). Required when enabled; may be the same file as `server.tls_cert`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the webhook listener. Required when enabled.
    pub tls_key: Option<PathBuf>,
    /// The broker's base URL as the injected sidecars reach it, e.g.
    /// `https://wif-broker.wif-system.svc:8443`. Required when enabled.
    pub broker_url: String,
    /// PEM roots the sidecars trust for `broker_url` (a private CA). Read at start-up and
    /// handed to each sidecar in `WIF_AGENT_CA_PEM`, so pods in any namespace can verify
    /// the broker without a copy of the CA in their namespace.
    pub broker_ca_file: Option<PathBuf>,
    /// The image holding `wif-agent` (the broker's own image has both binaries).
    /// Required when enabled.
    pub agent_image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub agent_image_pull_policy: String,
    /// Loopback port the sidecar listens on, unless the pod names one with the
    /// `wif-broker.io/agent-port` annotation (required for `hostNetwork` pods).
    pub agent_port: u16,
    /// The sidecar's CPU request (a Kubernetes quantity).
    pub agent_cpu_request: String,
    /// The sidecar's memory request.
    pub agent_memory_request: String,
    /// The sidecar's memory limit.
    pub agent_memory_limit: String,
    /// Audience of the projected service-account token the sidecar presents.
    pub token_audience: String,
    /// Lifetime of the projected token (Kubernetes: at least 600; kubelet rotates it at 80%).
    pub token_expiration_secs: u64,
    /// Directory the projected token is mounted at, in the sidecar only.
    pub token_mount_path: String,
    /// Pod annotation listing containers (comma- or semicolon-separated) that get no
    /// environment variables. `azure.workload.identity/skip-containers` is honoured too.
    pub skip_containers_annotation: String,
    /// `AZURE_TENANT_ID` for pods whose annotations name no tenant.
    pub default_tenant_id: Option<String>,
    /// The Kubernetes API, to read service-account annotations. Default: in-cluster
    /// (`KUBERNETES_SERVICE_HOST`/`_PORT`); without either no lookup is made.
    pub kube_api_url: Option<String>,
    /// Bearer token for the Kubernetes API, re-read for every call (it rotates).
    pub kube_token_file: PathBuf,
    /// PEM roots for the Kubernetes API.
    pub kube_ca_file: PathBuf,
    /// Largest accepted AdmissionReview body.
    pub max_body_bytes: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: String::new(),
            tls_cert: None,
            tls_key: None,
            broker_url: String::new(),
            broker_ca_file: None,
            agent_image: String::new(),
            agent_image_pull_policy: "IfNotPresent".into(),
            agent_port: 8181,
            agent_cpu_request: "10m".into(),
            agent_memory_request: "16Mi".into(),
            agent_memory_limit: "64Mi".into(),
            token_audience: "api://AzureADTokenExchange".into(),
            token_expiration_secs: 3600,
            token_mount_path: "/var/run/secrets/wif-broker.io/serviceaccount".into(),
            skip_containers_annotation: "wif-broker.io/skip-containers".into(),
            default_tenant_id: None,
            kube_api_url: None,
            kube_token_file: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
            kube_ca_file: "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into(),
            max_body_bytes: 3 * 1024 * 1024,
        }
    }
}

/// Image pull policies Kubernetes knows.
pub const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
