//! Talking to the broker: `POST /v1/token` with the external token as bearer, over HTTP
//! or HTTPS (rustls, optional CA file and client certificate), with a timeout and retries
//! when the broker is unreachable or answers 5xx/429.

use std::path::Path;
use std::time::Duration;

use wif_config::BrokerUrl;
use wif_proto::error::{ErrorBody, code};
use wif_proto::exchange::TokenResponse;

/// An access token from the broker.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerToken {
    pub access_token: String,
    /// Epoch seconds.
    pub expires_on: u64,
    pub client_id: String,
    pub tenant_id: String,
}

impl std::fmt::Debug for BrokerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerToken")
            .field("expires_on", &self.expires_on)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// What went wrong with an exchange. Both name the broker, and a refusal carries the
/// broker's `request_id`, so an operator can find the decision in the broker's audit.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BrokerError {
    /// No answer, or 5xx/429 after the retries: callers should retry later.
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
    /// The broker refused (4xx): retrying will not help.
    #[error("the broker at {broker} refused: {description} ({code}, request {request_id})")]
    Refused {
        status: u16,
        code: String,
        description: String,
        /// The broker's base URL.
        broker: String,
        /// The broker's `request_id`, or `-` when its answer had none.
        request_id: String,
    },
}

/// The broker's refusals that mean the identity may no longer be acted as through this
/// token: disabled, deleted, or out of its credential's validity or scopes.
const REVOKED: &[&str] = &[
    code::IDENTITY_DISABLED,
    code::CREDENTIAL_DISABLED,
    code::CREDENTIAL_EXPIRED,
    code::NO_MATCHING_CREDENTIAL,
    code::IDENTITY_NOT_ALLOWED,
    code::UNKNOWN_ISSUER,
    code::SCOPE_NOT_ALLOWED,
];

impl BrokerError {
    /// Whether the broker refused because access was revoked (docs/security.md,
    /// "Revocation"): a token cached for the same request must not be served again.
    pub fn revokes(&self) -> bool {
        matches!(self, BrokerError::Refused { code, .. } if REVOKED.contains(&code.as_str()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// [`BrokerUrl`]'s refusal.
    #[error(transparent)]
    Url(#[from] wif_config::InvalidValue),
}

/// Which identity to ask for, as the SDK named it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    /// `client_id`: the broker matches it against identities' client ids.
    pub client_id: Option<String>,
    /// An identity name: from `object_id`/`principal_id`, the last segment of `mi_res_id`,
    /// or the agent's configured default.
    pub identity: Option<String>,
}

pub struct BrokerClient {
    http: reqwest::Client,
    /// The base URL, as configured.
    base: String,
    url: String,
    retries: u32,
}

impl std::fmt::Debug for BrokerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerClient")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ClientSetupError> {
    std::fs::read(path).map_err(|e| ClientSetupError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

impl BrokerClient {
    /// A client of the broker at `base` (parsed as `--broker` is: [`BrokerUrl`]).
    pub fn new(
        base: &str,
        timeout: Duration,
        retries: u32,
        ca_file: Option<&Path>,
        client_identity: Option<(&Path, &Path)>,
    ) -> Result<Self, ClientSetupError> {
        let base = base.parse::<BrokerUrl>()?;
        Self::with_roots(&base, timeout, retries, ca_file, None, client_identity)
    }

    /// Like [`BrokerClient::new`], also trusting the PEM roots in `ca_pem` (given inline,
    /// as the admission webhook hands a sidecar the broker's CA).
    pub fn with_roots(
        base: &BrokerUrl,
        timeout: Duration,
        retries: u32,
        ca_file: Option<&Path>,
        ca_pem: Option<&str>,
        client_identity: Option<(&Path, &Path)>,
    ) -> Result<Self, ClientSetupError> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("wif-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = ca_file {
            let certs = reqwest::Certificate::from_pem_bundle(&read(ca)?)
                .map_err(|e| ClientSetupError::Client(e.to_string()))?;
            builder = builder.tls_certs_merge(certs);
        }
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| ClientSetupError::Client(format!("WIF_AGENT_CA_PEM: {e}")))?;
            builder = builder.tls_certs_merge(certs);
        }
        if let Some((cert, key)) = client_identity {
            let mut pem = read(cert)?;
            pem.extend_from_slice(b"\n");
            pem.extend(read(key)?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| ClientSetupError::Client(e.to_string()))?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| ClientSetupError::Client(e.to_string()))?;
        Ok(Self {
            http,
            base: base.to_string(),
            url: format!("{base}/v1/token"),
            retries,
        })
    }

    /// The broker's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Exchanges `token` for an access token to `resource`.
    pub async fn exchange(
        &self,
        token: &str,
        resource: &str,
        selector: &Selector,
    ) -> Result<BrokerToken, BrokerError> {
        let mut form = vec![("resource", resource)];
        if let Some(c) = &selector.client_id {
            form.push(("client_id", c));
        } else if let Some(i) = &selector.identity {
            form.push(("identity", i));
        }
        let mut attempt = 0;
        loop {
            let reason = match self
                .http
                .post(&self.url)
                .bearer_auth(token)
                .form(&form)
                .send()
                .await
            {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = response.bytes().await.unwrap_or_default();
                    if status == 200 {
                        return serde_json::from_slice::<TokenResponse>(&body)
                            .map(|a| BrokerToken {
                                access_token: a.access_token,
                                expires_on: a.expires_on,
                                client_id: a.identity.client_id,
                                tenant_id: a.identity.tenant_id,
                            })
                            .map_err(|e| {
                                BrokerError::Unavailable(format!(
                                    "{} gave an unexpected answer: {e}",
                                    self.base
                                ))
                            });
                    }
                    let error: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
                    let untrusted =
                        |s: &str| wif_proto::redact::untrusted(if s.is_empty() { "-" } else { s });
                    if status != 429 && status < 500 {
                        return Err(BrokerError::Refused {
                            status,
                            code: untrusted(&error.error),
                            description: untrusted(&error.error_description),
                            broker: self.base.clone(),
                            request_id: untrusted(&error.request_id),
                        });
                    }
                    format!(
                        "{} answered HTTP {status} {} (request {})",
                        self.base,
                        untrusted(&error.error),
                        untrusted(&error.request_id)
                    )
                }
                Err(e) if e.is_timeout() => format!("{} timed out", self.base),
                Err(e) if e.is_connect() => format!("cannot connect to {}", self.base),
                Err(e) => format!("{}: {e}", self.base),
            };
            if attempt >= self.retries {
                return Err(BrokerError::Unavailable(reason));
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
    }
}
