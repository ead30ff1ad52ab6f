//! Issuers and their signing keys.
//!
//! The [`KeyStore`] holds each trusted issuer's keys: from OIDC discovery, an explicit
//! `jwks_uri`, a file or inline JSON. It is only ever asked about issuers the registry
//! already trusts (named by a credential or by `[[issuers]]`); it never fetches a URL
//! taken from a token. Keys are cached and refreshed in the background; an unknown `kid`
//! triggers at most one refetch per cooldown; when the issuer stops answering, the last
//! good keys keep serving until `max_stale_secs`.

pub mod jwks;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use url::Url;
use wif_config::{IssuerConfig, JwksConfig};

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::outbound::{self, OutboundError};
pub use jwks::VerifyingKey;

/// Why no key could be produced for a token.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum KeyError {
    #[error("the issuer publishes no signing key with kid {kid:?}")]
    UnknownKey { kid: Option<String> },
    #[error("the issuer's signing keys are unavailable: {reason}")]
    Unavailable { reason: String },
}

/// A problem with an `[[issuers]]` entry found at start-up.
#[derive(Debug, thiserror::Error)]
pub enum IssuerSetupError {
    #[error("cannot build the HTTP client for issuers: {0}")]
    Client(String),
    #[error("issuers[{index}] ({url}): {reason}")]
    Invalid {
        index: usize,
        url: String,
        reason: String,
    },
}

#[derive(Clone)]
enum Source {
    /// `{iss}/.well-known/openid-configuration` → `jwks_uri`, or a configured `jwks_uri`.
    Remote {
        client: reqwest::Client,
        jwks_uri: Option<Url>,
    },
    /// A file re-read on each refresh (a mounted ConfigMap may change).
    File(PathBuf),
    /// Keys given inline; never refetched.
    Inline(Arc<Vec<Arc<VerifyingKey>>>),
}

struct Snapshot {
    keys: Arc<Vec<Arc<VerifyingKey>>>,
    fetched_at: u64,
}

/// After a failed fetch, callers get the failure at once for this long instead of each
/// waiting on another fetch from an issuer that is down (and a down issuer is not hammered).
pub const RETRY_AFTER_FAILURE_SECS: u64 = 5;

/// One issuer's key state. Everything a background refresh needs lives here.
struct IssuerKeys {
    issuer: String,
    source: Source,
    snapshot: ArcSwapOption<Snapshot>,
    fetch_lock: tokio::sync::Mutex<()>,
    /// When an unknown `kid` last caused a refetch (0: never).
    last_kid_refetch: AtomicU64,
    refreshing: AtomicBool,
    /// When the last fetch failed and why; cleared by a successful fetch.
    last_failure: Mutex<Option<(u64, String)>>,
    settings: Settings,
}

#[derive(Clone)]
struct Settings {
    cfg: JwksConfig,
    allow_loopback_http: bool,
    clock: SharedClock,
    metrics: Arc<Metrics>,
}

/// Signing keys of trusted issuers.
pub struct KeyStore {
    explicit: HashMap<String, Source>,
    default_client: reqwest::Client,
    settings: Settings,
    issuers: RwLock<HashMap<String, Arc<IssuerKeys>>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").finish_non_exhaustive()
    }
}

impl KeyStore {
    pub fn new(
        cfg: &JwksConfig,
        issuers: &[IssuerConfig],
        allow_loopback_http: bool,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<Self, IssuerSetupError> {
        let timeout = Duration::from_secs(cfg.timeout_secs);
        let invalid = |index: usize, url: &str, reason: String| IssuerSetupError::Invalid {
            index,
            url: url.to_owned(),
            reason,
        };
        let default_client =
            outbound::client(timeout, None).map_err(|e| IssuerSetupError::Client(e.to_string()))?;
        let mut explicit = HashMap::new();
        for (index, issuer) in issuers.iter().enumerate() {
            let err = |reason: String| invalid(index, &issuer.url, reason);
            let source = if let Some(inline) = &issuer.jwks_inline {
                let doc: serde_json::Value =
                    serde_json::from_str(inline).map_err(|e| err(format!("jwks_inline: {e}")))?;
                let keys = jwks::parse(&doc, cfg.max_keys)
                    .map_err(|e| err(format!("jwks_inline: {e}")))?;
                Source::Inline(Arc::new(keys))
            } else if let Some(path) = &issuer.jwks_file {
                Source::File(path.clone())
            } else {
                let client = match &issuer.ca_file {
                    Some(ca) => {
                        outbound::client(timeout, Some(ca)).map_err(|e| err(e.to_string()))?
                    }
                    None => default_client.clone(),
                };
                let jwks_uri = match &issuer.jwks_uri {
                    Some(uri) => Some(
                        outbound::check_url(uri, allow_loopback_http)
                            .map_err(|e| err(format!("jwks_uri: {e}")))?,
                    ),
                    None => None,
                };
                Source::Remote { client, jwks_uri }
            };
            explicit.insert(issuer.url.clone(), source);
        }
        Ok(Self {
            explicit,
            default_client,
            settings: Settings {
                cfg: cfg.clone(),
                allow_loopback_http,
                clock,
                metrics,
            },
            issuers: RwLock::new(HashMap::new()),
        })
    }

    /// Issuers with explicit settings (trusted even without a credential naming them).
    pub fn explicit_issuers(&self) -> impl Iterator<Item = &str> {
        self.explicit.keys().map(String::as_str)
    }

    /// The issuer's current keys, provided one has the token's `kid` (refetching once per
    /// cooldown if none has). The caller must already know `iss` is trusted.
    pub async fn keys_for(
        &self,
        iss: &str,
        kid: Option<&str>,
    ) -> Result<Arc<Vec<Arc<VerifyingKey>>>, KeyError> {
        let entry = self.entry(iss);
        entry.keys_for(kid).await
    }

    fn entry(&self, iss: &str) -> Arc<IssuerKeys> {
        if let Ok(map) = self.issuers.read()
            && let Some(entry) = map.get(iss)
        {
            return entry.clone();
        }
        let source = self.explicit.get(iss).cloned().unwrap_or(Source::Remote {
            client: self.default_client.clone(),
            jwks_uri: None,
        });
        let fresh = Arc::new(IssuerKeys {
            issuer: iss.to_owned(),
            source,
            snapshot: ArcSwapOption::empty(),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_kid_refetch: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
            last_failure: Mutex::new(None),
            settings: self.settings.clone(),
        });
        match self.issuers.write() {
            Ok(mut map) => map.entry(iss.to_owned()).or_insert(fresh).clone(),
            // A poisoned lock only means another thread panicked mid-insert; the fresh
            // entry still works, it just isn't shared.
            Err(_) => fresh,
        }
    }
}

impl IssuerKeys {
    async fn keys_for(
        self: &Arc<Self>,
        kid: Option<&str>,
    ) -> Result<Arc<Vec<Arc<VerifyingKey>>>, KeyError> {
        let cfg = &self.settings.cfg;
        let now = self.settings.clock.now();
        if let Some(snap) = self.snapshot.load_full() {
            let age = now.saturating_sub(snap.fetched_at);
            if age <= cfg.max_stale_secs {
                if age >= cfg.refresh_secs && !matches!(self.source, Source::Inline(_)) {
                    self.refresh_in_background();
                }
                if let Some(found) = select(&snap.keys, kid) {
                    return Ok(found);
                }
                return self.refetch_for_unknown_kid(kid, now).await;
            }
        }
        if let Some(reason) = self.recent_failure(now) {
            return Err(KeyError::Unavailable { reason });
        }
        let snap = self
            .refresh()
            .await
            .map_err(|reason| KeyError::Unavailable { reason })?;
        select(&snap.keys, kid).ok_or(KeyError::UnknownKey {
            kid: kid.map(str::to_owned),
        })
    }

    /// An unknown `kid` may mean the issuer rotated: refetch, but at most once per cooldown
    /// so a stream of forged `kid`s cannot turn the broker against the issuer.
    async fn refetch_for_unknown_kid(
        &self,
        kid: Option<&str>,
        now: u64,
    ) -> Result<Arc<Vec<Arc<VerifyingKey>>>, KeyError> {
        let unknown = || KeyError::UnknownKey {
            kid: kid.map(str::to_owned),
        };
        if matches!(self.source, Source::Inline(_)) {
            return Err(unknown());
        }
        let last = self.last_kid_refetch.load(Ordering::SeqCst);
        let cooled =
            last == 0 || now.saturating_sub(last) >= self.settings.cfg.refetch_cooldown_secs;
        if !cooled
            || self
                .last_kid_refetch
                .compare_exchange(last, now.max(1), Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            // Another caller is refetching right now; it will have the new keys shortly.
            let _wait = self.fetch_lock.lock().await;
            let snap = self.snapshot.load_full().ok_or_else(unknown)?;
            return select(&snap.keys, kid).ok_or_else(unknown);
        }
        match self.refresh().await {
            Ok(snap) => select(&snap.keys, kid).ok_or_else(unknown),
            Err(_) => Err(unknown()),
        }
    }

    /// The reason of a fetch that failed less than [`RETRY_AFTER_FAILURE_SECS`] ago.
    fn recent_failure(&self, now: u64) -> Option<String> {
        let guard = self.last_failure.lock().ok()?;
        match guard.as_ref() {
            Some((at, reason)) if now.saturating_sub(*at) < RETRY_AFTER_FAILURE_SECS => {
                Some(reason.clone())
            }
            _ => None,
        }
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if self.recent_failure(self.settings.clock.now()).is_some()
            || self.refreshing.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _ = this.refresh().await;
            this.refreshing.store(false, Ordering::SeqCst);
        });
    }

    /// Fetches keys once however many callers ask at the same moment. On failure the
    /// previous snapshot stays in place.
    async fn refresh(&self) -> Result<Arc<Snapshot>, String> {
        let started = self.settings.clock.now();
        let before = self.snapshot.load_full();
        let _guard = self.fetch_lock.lock().await;
        if let Some(current) = self.snapshot.load_full() {
            let replaced = match &before {
                Some(b) => !Arc::ptr_eq(b, &current),
                None => true,
            };
            if replaced && current.fetched_at >= started {
                return Ok(current);
            }
        }
        let metrics = &self.settings.metrics;
        match self.fetch().await {
            Ok(keys) => {
                metrics.jwks_fetch(&self.issuer, "ok");
                let snap = Arc::new(Snapshot {
                    keys: Arc::new(keys),
                    fetched_at: self.settings.clock.now(),
                });
                self.snapshot.store(Some(snap.clone()));
                if let Ok(mut failure) = self.last_failure.lock() {
                    *failure = None;
                }
                Ok(snap)
            }
            Err(reason) => {
                metrics.jwks_fetch(&self.issuer, "error");
                tracing::warn!(issuer = %self.issuer, %reason, "fetching signing keys failed");
                if let Ok(mut failure) = self.last_failure.lock() {
                    *failure = Some((self.settings.clock.now(), reason.clone()));
                }
                Err(reason)
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Arc<VerifyingKey>>, String> {
        let cfg = &self.settings.cfg;
        let doc = match &self.source {
            Source::Inline(keys) => return Ok(keys.as_ref().clone()),
            Source::File(path) => read_capped(path, cfg.max_response_bytes).await?,
            Source::Remote { client, jwks_uri } => {
                let jwks_uri = match jwks_uri {
                    Some(uri) => uri.clone(),
                    None => self.discover(client).await?,
                };
                outbound::get_json(client, &jwks_uri, cfg.max_response_bytes)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        jwks::parse(&doc, cfg.max_keys).map_err(|e| e.to_string())
    }

    async fn discover(&self, client: &reqwest::Client) -> Result<Url, String> {
        let allow = self.settings.allow_loopback_http;
        let base = outbound::check_url(&self.issuer, allow).map_err(|e| e.to_string())?;
        let url = format!(
            "{}/.well-known/openid-configuration",
            base.as_str().trim_end_matches('/')
        );
        let url = outbound::check_url(&url, allow).map_err(|e| e.to_string())?;
        let doc = outbound::get_json(client, &url, self.settings.cfg.max_response_bytes)
            .await
            .map_err(|e: OutboundError| e.to_string())?;
        let issuer = doc
            .get("issuer")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if issuer != self.issuer {
            return Err(format!(
                "discovery document names issuer {issuer:?}, expected {:?}",
                self.issuer
            ));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or("discovery document has no jwks_uri")?;
        outbound::check_url(jwks_uri, allow).map_err(|e| format!("jwks_uri: {e}"))
    }
}

/// The whole key set when it can verify a token with header `kid` (any set when the
/// header names none); the verifier picks the key. Nothing is copied on this hot path.
fn select(
    keys: &Arc<Vec<Arc<VerifyingKey>>>,
    kid: Option<&str>,
) -> Option<Arc<Vec<Arc<VerifyingKey>>>> {
    let usable = match kid {
        None => true,
        Some(kid) => keys.iter().any(|k| k.kid.as_deref() == Some(kid)),
    };
    usable.then(|| keys.clone())
}

async fn read_capped(path: &std::path::Path, limit: usize) -> Result<serde_json::Value, String> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() > limit {
        return Err(format!("{} is larger than {limit} bytes", path.display()));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}
