//! Reading a pod's service account from the Kubernetes API, for the annotations that name
//! its Entra identity (`azure.workload.identity/client-id`, `.../tenant-id`, and the
//! `wif-broker.io/` equivalents). An AdmissionReview carries only the pod, so this is the
//! one call the webhook makes; answers are cached for [`CACHE_SECS`].
//!
//! The API is found as in any pod (`KUBERNETES_SERVICE_HOST`/`_PORT`, the mounted
//! service-account token and CA) unless `[webhook] kube_api_url` says otherwise. The token
//! is re-read for every call because kubelet rotates it. Never logged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use wif_config::WebhookConfig;

use super::ServiceAccountFacts;
use crate::outbound;

/// How long a service account's annotations are remembered.
pub const CACHE_SECS: u64 = 30;
/// Timeout of one call (the API server gives the whole webhook 10 s by default).
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot set up the Kubernetes API client: {0}")]
    Setup(String),
    #[error("{0:?} is not a valid Kubernetes name")]
    Name(String),
    #[error("the Kubernetes API did not answer: {0}")]
    Unavailable(String),
    #[error("the Kubernetes API answered HTTP {0} for the service account")]
    Status(u16),
}

#[derive(Deserialize)]
struct ServiceAccount {
    #[serde(default)]
    metadata: Metadata,
}

#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// A client for `GET /api/v1/namespaces/{ns}/serviceaccounts/{name}`.
pub struct KubeClient {
    http: reqwest::Client,
    base: String,
    token_file: PathBuf,
    cache: moka::future::Cache<(String, String), ServiceAccountFacts>,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// `host:port` as a URL authority (IPv6 literals in brackets).
fn authority(host: &str, port: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A DNS label or subdomain, as namespaces and service-account names are.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl KubeClient {
    /// The client `config` describes, or `None` when no API is configured and the process
    /// is not in a cluster. `env` is the process environment (passed in for tests).
    pub fn from_config(
        config: &WebhookConfig,
        allow_loopback_http: bool,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, KubeError> {
        let base = match &config.kube_api_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => match (
                env("KUBERNETES_SERVICE_HOST"),
                env("KUBERNETES_SERVICE_PORT"),
            ) {
                (Some(host), Some(port)) if !host.is_empty() && !port.is_empty() => {
                    format!("https://{}", authority(&host, &port))
                }
                _ => return Ok(None),
            },
        };
        outbound::check_url(&base, allow_loopback_http)
            .map_err(|e| KubeError::Setup(e.to_string()))?;
        let ca = config
            .kube_ca_file
            .exists()
            .then_some(config.kube_ca_file.as_path());
        let http = outbound::client(TIMEOUT, ca).map_err(|e| KubeError::Setup(e.to_string()))?;
        Ok(Some(Self {
            http,
            base,
            token_file: config.kube_token_file.clone(),
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(CACHE_SECS))
                .build(),
        }))
    }

    /// The annotations of service account `name` in `namespace`. A service account that
    /// does not exist has none.
    pub async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<ServiceAccountFacts, KubeError> {
        for n in [namespace, name] {
            if !valid_name(n) {
                return Err(KubeError::Name(n.chars().take(64).collect()));
            }
        }
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(hit) = self.cache.get(&key).await {
            return Ok(hit);
        }
        let url = format!(
            "{}/api/v1/namespaces/{namespace}/serviceaccounts/{name}",
            self.base
        );
        let mut request = self.http.get(&url).header("accept", "application/json");
        if let Ok(token) = std::fs::read_to_string(&self.token_file) {
            request = request.bearer_auth(token.trim());
        }
        let response = request
            .send()
            .await
            .map_err(|e| KubeError::Unavailable(e.without_url().to_string()))?;
        let facts = match response.status().as_u16() {
            200 => {
                // A service account is small; its annotations are all the webhook reads.
                let body = outbound::read_body(response, 256 * 1024)
                    .await
                    .map_err(|e| KubeError::Unavailable(e.to_string()))?;
                let sa: ServiceAccount = serde_json::from_slice(&body)
                    .map_err(|e| KubeError::Unavailable(format!("unexpected answer: {e}")))?;
                ServiceAccountFacts {
                    annotations: sa.metadata.annotations,
                }
            }
            404 => ServiceAccountFacts::default(),
            status => return Err(KubeError::Status(status)),
        };
        self.cache.insert(key, facts.clone()).await;
        Ok(facts)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn in_cluster_api_comes_from_the_environment() {
        let config = WebhookConfig::default();
        assert!(
            KubeClient::from_config(&config, false, |_| None)
                .unwrap()
                .is_none()
        );
        let client = KubeClient::from_config(&config, false, |k| match k {
            "KUBERNETES_SERVICE_HOST" => Some("fd00::1".into()),
            "KUBERNETES_SERVICE_PORT" => Some("443".into()),
            _ => None,
        })
        .unwrap()
        .unwrap();
        assert_eq!(client.base, "https://[fd00::1]:443");
    }

    #[test]
    fn plain_http_needs_loopback_and_the_switch() {
        let config = WebhookConfig {
            kube_api_url: Some("http://127.0.0.1:6443".into()),
            ..Default::default()
        };
        assert!(KubeClient::from_config(&config, false, |_| None).is_err());
        assert!(KubeClient::from_config(&config, true, |_| None).is_ok());
    }

    #[test]
    fn names_are_checked_before_any_call() {
        assert!(valid_name("payments"));
        assert!(valid_name("api.v2"));
        assert!(!valid_name("../secrets"));
        assert!(!valid_name("Api"));
        assert!(!valid_name(""));
    }
}
