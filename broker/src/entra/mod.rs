//! Entra's token endpoint (README, "How an exchange works", step 7): build the client assertion from the
//! identity's source, POST the client-credentials request with a timeout, retry 429 and
//! 5xx with backoff honouring `Retry-After`, and turn AADSTS codes into errors a caller
//! can act on. Never logs an assertion or an access token.

pub mod assertion;
pub mod scope;

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use tokio::time::Instant;

use serde::Deserialize;
use wif_config::EntraConfig;

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::outbound::{self, OutboundError};

/// `YYYY-MM-DD HH:MM:SSZ`, as Entra writes `timestamp` in its error bodies (the
/// Entra-compatible endpoint and the Entra emulator both answer in this form).
pub(crate) fn entra_timestamp(epoch: u64) -> String {
    crate::clock::rfc3339(epoch).replacen('T', " ", 1)
}
use crate::policy::Identity;

/// A string that must never be printed (shared with the store and the CLI).
pub use wif_proto::secret::Secret;

/// An access token from Entra.
#[derive(Debug, Clone)]
pub struct EntraToken {
    pub access_token: Secret,
    /// Epoch seconds.
    pub expires_on: u64,
}

/// What Entra said, or why it could not be asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EntraError {
    /// Entra answered with an error (4xx), e.g. AADSTS700213.
    #[error("Entra refused the request: {description}")]
    Rejected {
        status: u16,
        error: String,
        aadsts: Option<u32>,
        description: String,
        correlation_id: Option<String>,
    },
    /// 429, 5xx or no answer after the retries allowed.
    #[error("Entra is unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Option<u64>,
        correlation_id: Option<String>,
    },
    /// An answer that is not Entra's protocol.
    #[error("Entra answered unexpectedly: {0}")]
    Protocol(String),
    /// No client assertion could be built, so Entra was not asked.
    #[error("no client assertion: {0}")]
    Assertion(#[from] assertion::AssertionError),
}

impl EntraError {
    pub fn correlation_id(&self) -> Option<&str> {
        match self {
            EntraError::Rejected { correlation_id, .. }
            | EntraError::Unavailable { correlation_id, .. } => correlation_id.as_deref(),
            EntraError::Protocol(_) | EntraError::Assertion(_) => None,
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(deserialize_with = "int_or_string")]
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u32>,
    #[serde(default)]
    correlation_id: Option<String>,
}

fn int_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Str(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(n),
        Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// Largest token-endpoint response read.
const MAX_RESPONSE: usize = 256 * 1024;

/// Client for Entra's token endpoint.
pub struct EntraClient {
    http: reqwest::Client,
    cfg: EntraConfig,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    assertions: assertion::Assertions,
}

impl std::fmt::Debug for EntraClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraClient").finish_non_exhaustive()
    }
}

impl EntraClient {
    pub fn new(
        cfg: &EntraConfig,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        assertions: assertion::Assertions,
    ) -> Result<Self, OutboundError> {
        let http = outbound::client(
            Duration::from_secs(cfg.timeout_secs),
            cfg.ca_file.as_deref(),
        )?;
        Ok(Self {
            http,
            cfg: cfg.clone(),
            clock,
            metrics,
            assertions,
        })
    }

    pub fn assertions(&self) -> &assertion::Assertions {
        &self.assertions
    }

    /// Builds `identity`'s client assertion (from `caller_token` for `passthrough`) and
    /// requests a token for `scope` with it.
    pub async fn token_for(
        &self,
        identity: &Identity,
        caller_token: &Secret,
        scope: &str,
        request_id: &str,
    ) -> Result<EntraToken, EntraError> {
        let deadline = Instant::now() + Duration::from_secs(self.cfg.deadline_secs);
        // `build` refuses an identity whose authority host the operator did not allow,
        // before anything is signed: the host the request goes to is checked once, here.
        let assertion =
            tokio::time::timeout_at(deadline, self.assertions.build(identity, caller_token))
                .await
                .map_err(|_| self.past_deadline("making the client assertion", None))??;
        self.send_token_request(identity, assertion.expose(), scope, request_id, deadline)
            .await
    }

    /// The error for work cut short by `[entra] deadline_secs`.
    fn past_deadline(&self, what: &str, correlation_id: Option<String>) -> EntraError {
        EntraError::Unavailable {
            reason: format!(
                "{what} took longer than the exchange deadline ([entra] deadline_secs = {})",
                self.cfg.deadline_secs
            ),
            retry_after: Some(1),
            correlation_id,
        }
    }

    /// Requests a token for `scope` (already a `/.default` scope) as `identity`, within
    /// `[entra] deadline_secs`.
    pub async fn request_token(
        &self,
        identity: &Identity,
        assertion: &str,
        scope: &str,
        request_id: &str,
    ) -> Result<EntraToken, EntraError> {
        // The same allow-list as when an assertion is built, for callers that built it
        // themselves: no token request goes to a host the operator did not allow.
        self.assertions.authority_hosts().check(identity)?;
        let deadline = Instant::now() + Duration::from_secs(self.cfg.deadline_secs);
        self.send_token_request(identity, assertion, scope, request_id, deadline)
            .await
    }

    /// Attempts until one answers for good, the retries run out, or the next attempt could
    /// not finish before `deadline`. `identity`'s authority host is already checked.
    async fn send_token_request(
        &self,
        identity: &Identity,
        assertion: &str,
        scope: &str,
        request_id: &str,
        deadline: Instant,
    ) -> Result<EntraToken, EntraError> {
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            identity.authority_host.trim_end_matches('/'),
            identity.tenant_id
        );
        let form = token_form(&identity.client_id, assertion, scope);
        let mut attempt: u32 = 0;
        loop {
            let outcome = match tokio::time::timeout_at(
                deadline,
                self.attempt(&url, form.clone(), request_id),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(_) => {
                    self.metrics.entra_error("deadline");
                    tracing::warn!(
                        attempts = attempt + 1,
                        "Entra did not answer within the exchange deadline"
                    );
                    return Err(self.past_deadline("Entra's answer", None));
                }
            };
            let (reason, retry_after, correlation_id) = match outcome {
                Attempt::Done(result) => return result,
                Attempt::Retryable {
                    reason,
                    retry_after,
                    correlation_id,
                } => (reason, retry_after, correlation_id),
            };
            let delay = self.backoff(attempt, retry_after);
            // A retry that would start after the deadline cannot help the caller.
            let give_up = attempt >= self.cfg.max_retries
                || retry_after.is_some_and(|s| s.saturating_mul(1000) > self.cfg.max_backoff_ms)
                || Instant::now() + delay >= deadline;
            if give_up {
                tracing::warn!(%reason, attempts = attempt + 1, "Entra unavailable");
                return Err(EntraError::Unavailable {
                    reason,
                    retry_after: Some(retry_after.unwrap_or_else(|| delay.as_secs().max(1))),
                    correlation_id,
                });
            }
            self.metrics.entra_request("retry");
            tracing::info!(%reason, attempt, delay_ms = delay.as_millis() as u64, "retrying Entra");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn attempt(&self, url: &str, form: Bytes, request_id: &str) -> Attempt {
        let response = self
            .http
            .post(url)
            .header("client-request-id", request_id)
            .header("return-client-request-id", "true")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                self.metrics.entra_error("unreachable");
                return Attempt::Retryable {
                    reason: outbound::describe(&e),
                    retry_after: None,
                    correlation_id: None,
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = match outbound::read_body(response, MAX_RESPONSE).await {
            Ok(b) => b,
            Err(e) => {
                self.metrics.entra_error("unreadable");
                return Attempt::Retryable {
                    reason: e.to_string(),
                    retry_after: None,
                    correlation_id: None,
                };
            }
        };
        if status == 200 {
            self.metrics.entra_request("ok");
            return Attempt::Done(match serde_json::from_slice::<TokenResponse>(&body) {
                Ok(t) => Ok(EntraToken {
                    access_token: Secret::new(t.access_token),
                    expires_on: self.clock.now().saturating_add(t.expires_in),
                }),
                Err(e) => Err(EntraError::Protocol(format!("token response: {e}"))),
            });
        }
        self.metrics.entra_request("error");
        let parsed: ErrorResponse = serde_json::from_slice(&body).unwrap_or_default();
        let aadsts = parsed
            .error_codes
            .first()
            .copied()
            .or_else(|| aadsts_of(&parsed.error_description));
        self.metrics.entra_error(
            &aadsts.map_or_else(|| format!("http_{status}"), |c| format!("AADSTS{c}")),
        );
        if status == 429 || status >= 500 {
            return Attempt::Retryable {
                reason: format!(
                    "HTTP {status}{}",
                    first_line(&parsed.error_description, " ")
                ),
                retry_after,
                correlation_id: parsed.correlation_id,
            };
        }
        Attempt::Done(Err(EntraError::Rejected {
            status,
            error: if parsed.error.is_empty() {
                format!("http_{status}")
            } else {
                parsed.error
            },
            aadsts,
            description: if parsed.error_description.is_empty() {
                format!("HTTP {status} without an error description")
            } else {
                first_line(&parsed.error_description, "")
            },
            correlation_id: parsed.correlation_id,
        }))
    }

    /// Exponential backoff with jitter, or the server's `Retry-After`, capped.
    fn backoff(&self, attempt: u32, retry_after: Option<u64>) -> Duration {
        let cap = self.cfg.max_backoff_ms;
        let ms = match retry_after {
            Some(secs) => secs.saturating_mul(1000),
            None => {
                let base = self
                    .cfg
                    .initial_backoff_ms
                    .saturating_mul(1u64 << attempt.min(16));
                base / 2 + jitter(base / 2 + 1)
            }
        };
        Duration::from_millis(ms.min(cap))
    }
}

enum Attempt {
    Done(Result<EntraToken, EntraError>),
    Retryable {
        reason: String,
        retry_after: Option<u64>,
        correlation_id: Option<String>,
    },
}

/// The client-credentials form with a client assertion (RFC 7523), encoded once per token
/// request (its retries send the same bytes). A JWT is base64url and dots, which the
/// form encoding leaves as they are, so it is copied rather than encoded byte by byte.
fn token_form(client_id: &str, assertion: &str, scope: &str) -> Bytes {
    const JWT_BEARER: &str = "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer";
    let mut form = String::with_capacity(assertion.len() + scope.len() + 200);
    form.push_str("client_id=");
    form.extend(url::form_urlencoded::byte_serialize(client_id.as_bytes()));
    form.push_str("&grant_type=client_credentials&client_assertion_type=");
    form.push_str(JWT_BEARER);
    form.push_str("&client_assertion=");
    if assertion
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        form.push_str(assertion);
    } else {
        form.extend(url::form_urlencoded::byte_serialize(assertion.as_bytes()));
    }
    form.push_str("&scope=");
    form.extend(url::form_urlencoded::byte_serialize(scope.as_bytes()));
    Bytes::from(form)
}

fn jitter(bound: u64) -> u64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0;
    }
    u64::from_le_bytes(bytes) % bound.max(1)
}

/// `AADSTS700213: No matching ...` → 700213.
fn aadsts_of(description: &str) -> Option<u32> {
    let rest = description.strip_prefix("AADSTS")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Entra descriptions carry trace and correlation ids on later lines; keep the first.
fn first_line(text: &str, prefix: &str) -> String {
    match text.lines().next() {
        Some(line) if !line.trim().is_empty() => format!("{prefix}{}", line.trim()),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aadsts_codes_are_read_from_descriptions() {
        assert_eq!(
            aadsts_of("AADSTS700213: No matching federated identity record found"),
            Some(700213)
        );
        assert_eq!(aadsts_of("something else"), None);
        assert_eq!(first_line("AADSTS1: x\r\nTrace ID: y", ""), "AADSTS1: x");
    }

    #[test]
    fn the_token_form_is_what_a_form_encoder_writes() {
        let encoded = |client_id: &str, assertion: &str, scope: &str| {
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("client_id", client_id)
                .append_pair("grant_type", "client_credentials")
                .append_pair(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                )
                .append_pair("client_assertion", assertion)
                .append_pair("scope", scope)
                .finish()
        };
        for (client_id, assertion, scope) in [
            (
                "3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6c",
                "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_bmF0dXJl",
                "https://management.azure.com/.default",
            ),
            // Not a JWT's alphabet: encoded byte by byte, as before.
            ("client id&x", "a+b/c=d e.é", "api://x y/.default"),
            ("", "", ""),
        ] {
            assert_eq!(
                token_form(client_id, assertion, scope),
                encoded(client_id, assertion, scope).as_bytes(),
                "{assertion}"
            );
        }
    }
}
