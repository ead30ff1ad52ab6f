//! The broker's own managed-identity token as a client assertion (`assertion =
//! "managed_identity"`, Entra's "managed identity as federated credential"): fetched from
//! the host's IMDS or App Service endpoint for the `api://AzureADTokenExchange` audience,
//! cached, and fetched again before it has too little life left for Entra to accept it.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use wif_config::{ManagedIdentityConfig, ManagedIdentityProtocol};

use crate::clock::SharedClock;
use crate::entra::Secret;

/// IMDS's fixed address.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// A cached token is fetched again once it has less than this left: Entra must still
/// accept it when it arrives, and the broker may retry for a while.
const REFRESH_BEFORE_SECS: u64 = 600;

/// Largest response read from the endpoint.
const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ManagedIdentityError {
    #[error("the managed-identity endpoint {endpoint} cannot be reached: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("the managed-identity endpoint answered {status}: {detail}")]
    Refused { status: u16, detail: String },
    #[error("the managed-identity endpoint answered something unexpected: {0}")]
    Protocol(String),
    #[error(
        "[managed_identity] protocol is app_service but no identity header is set (IDENTITY_HEADER)"
    )]
    NoHeader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Imds,
    AppService,
}

/// The host's managed identity.
pub struct ManagedIdentity {
    http: reqwest::Client,
    endpoint: String,
    protocol: Protocol,
    header: Option<Secret>,
    client_id: Option<String>,
    clock: SharedClock,
    /// Token and `expires_on` by audience. Held across a fetch so concurrent misses make
    /// one request.
    cache: tokio::sync::Mutex<HashMap<String, (Secret, u64)>>,
}

impl std::fmt::Debug for ManagedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedIdentity")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_on: Option<serde_json::Value>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

fn epoch(value: &Option<serde_json::Value>) -> Option<u64> {
    match value.as_ref()? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl ManagedIdentity {
    /// `env` looks up the process environment (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`),
    /// which App Service, Container Apps and Functions set for the managed identity.
    pub fn from_config(
        cfg: &ManagedIdentityConfig,
        env: impl Fn(&str) -> Option<String>,
        clock: SharedClock,
    ) -> Result<Self, crate::outbound::OutboundError> {
        let env_endpoint = env("IDENTITY_ENDPOINT").filter(|v| !v.is_empty());
        let header = cfg
            .identity_header
            .clone()
            .or_else(|| env("IDENTITY_HEADER"))
            .filter(|v| !v.is_empty())
            .map(Secret::new);
        let protocol = match cfg.protocol {
            ManagedIdentityProtocol::Imds => Protocol::Imds,
            ManagedIdentityProtocol::AppService => Protocol::AppService,
            ManagedIdentityProtocol::Auto if env_endpoint.is_some() && header.is_some() => {
                Protocol::AppService
            }
            ManagedIdentityProtocol::Auto => Protocol::Imds,
        };
        let endpoint = cfg.endpoint.clone().unwrap_or_else(|| match protocol {
            Protocol::AppService => env_endpoint.unwrap_or_default(),
            Protocol::Imds => IMDS_ENDPOINT.to_owned(),
        });
        let http = crate::outbound::client(Duration::from_secs(cfg.timeout_secs), None)?;
        Ok(Self {
            http,
            endpoint,
            protocol,
            header,
            client_id: cfg.client_id.clone(),
            clock,
            cache: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// A managed-identity token for `audience` with at least ten minutes left.
    pub async fn token(&self, audience: &str) -> Result<Secret, ManagedIdentityError> {
        let mut cache = self.cache.lock().await;
        let now = self.clock.now();
        if let Some((token, expires_on)) = cache.get(audience)
            && *expires_on > now + REFRESH_BEFORE_SECS
        {
            return Ok(token.clone());
        }
        let (token, expires_on) = self.fetch(audience, now).await?;
        cache.insert(audience.to_owned(), (token.clone(), expires_on));
        Ok(token)
    }

    async fn fetch(&self, audience: &str, now: u64) -> Result<(Secret, u64), ManagedIdentityError> {
        let (api_version, request) = match self.protocol {
            Protocol::Imds => (
                "2018-02-01",
                self.http.get(&self.endpoint).header("Metadata", "true"),
            ),
            Protocol::AppService => {
                let header = self.header.as_ref().ok_or(ManagedIdentityError::NoHeader)?;
                (
                    "2019-08-01",
                    self.http
                        .get(&self.endpoint)
                        .header("X-IDENTITY-HEADER", header.expose()),
                )
            }
        };
        let mut query = vec![("api-version", api_version), ("resource", audience)];
        if let Some(client_id) = &self.client_id {
            query.push(("client_id", client_id));
        }
        let unreachable = |e: reqwest::Error| ManagedIdentityError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason: crate::outbound::describe(&e),
        };
        let mut response = request.query(&query).send().await.map_err(unreachable)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err(ManagedIdentityError::Protocol(format!(
                    "the response is larger than {MAX_RESPONSE} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            // Error bodies are `{error, error_description}`; they carry no token.
            let detail = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    let error = v.get("error")?.as_str()?.to_owned();
                    let description = v
                        .get("error_description")
                        .and_then(|d| d.as_str())
                        .unwrap_or("");
                    Some(format!("{error}: {description}"))
                })
                .unwrap_or_else(|| "no error description".into());
            return Err(ManagedIdentityError::Refused {
                status: status.as_u16(),
                detail: detail.chars().take(300).collect(),
            });
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| ManagedIdentityError::Protocol(format!("not a token response ({e})")))?;
        let expires_on = epoch(&parsed.expires_on)
            .or_else(|| epoch(&parsed.expires_in).map(|s| now + s))
            .ok_or_else(|| {
                ManagedIdentityError::Protocol("neither expires_on nor expires_in".into())
            })?;
        Ok((Secret::new(parsed.access_token), expires_on))
    }
}
