//! Issuers and their signing keys.
//!
//! The [`KeyStore`] holds each trusted issuer's keys: from OIDC discovery, an explicit
//! `jwks_uri`, a file or inline JSON. It is only ever asked about issuers the registry
//! already trusts (named by a credential or by `[[issuers]]`); it never fetches a URL
//! taken from a token. Keys are cached and refreshed in the background; an unknown `kid`
//! triggers at most one refetch per cooldown; when the issuer stops answering, the last
//! good keys keep serving until `max_stale_secs`.
//!
//! One fetch runs at a time per issuer, and every caller waiting on it gets its outcome,
//! success or failure. A failed fetch makes callers get `issuer_unavailable` at once for
//! [`RETRY_AFTER_FAILURE_SECS`]; it never uses up the unknown-`kid` cooldown, so a key the
//! issuer publishes once it is back is accepted within that back-off. The reason of a
//! failure goes to the log, never to the caller. Discovery's `jwks_uri` must be on the
//! issuer's own origin unless `[[issuers]] allow_cross_origin_jwks_uri` says otherwise
//! (docs/configuration.md, `[[issuers]]`).

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
use crate::redact::{Untrusted, untrusted};
pub use jwks::VerifyingKey;

/// Why no key could be produced for a token.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum KeyError {
    #[error("the issuer publishes no signing key with kid {kid:?}")]
    UnknownKey { kid: Option<Untrusted> },
    /// `reason` is for the log only: it names URLs, statuses and limits of the issuer's
    /// endpoints, which are none of an anonymous caller's business.
    #[error("the issuer's signing keys cannot be fetched right now; retry later")]
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

/// Where one issuer's keys come from: one method, so a test (or an embedder) can serve
/// fixed keys. The broker's own sources (discovery, `jwks_uri`, a file, inline keys) are
/// built from `[[issuers]]`; see [`KeyStore::set_source`].
#[async_trait::async_trait]
pub trait KeySource: Send + Sync + 'static {
    /// The issuer's whole key set now; `Err` carries a reason for the log.
    async fn fetch(&self) -> Result<Vec<Arc<VerifyingKey>>, String>;
}

#[derive(Clone)]
enum Source {
    /// `{iss}/.well-known/openid-configuration` → `jwks_uri`, or a configured `jwks_uri`.
    Remote {
        client: reqwest::Client,
        jwks_uri: Option<Url>,
        /// Discovery may name a `jwks_uri` on another origin than the issuer's.
        cross_origin_jwks_uri: bool,
    },
    /// A file re-read on each refresh (a mounted ConfigMap may change).
    File(PathBuf),
    /// Keys given inline; never refetched.
    Inline(Arc<Vec<Arc<VerifyingKey>>>),
    /// Keys from elsewhere, cached and refreshed like fetched ones.
    Custom(Arc<dyn KeySource>),
}

struct Snapshot {
    keys: Arc<Vec<Arc<VerifyingKey>>>,
    fetched_at: u64,
}

/// After a failed fetch, callers get the failure at once for this long instead of each
/// waiting on another fetch from an issuer that is down (and a down issuer is not hammered).
pub const RETRY_AFTER_FAILURE_SECS: u64 = 5;

/// Longest `jwks_uri` accepted from a discovery document.
const MAX_JWKS_URI_BYTES: usize = 2048;

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
    /// Fetches completed (either way). A caller that waited on `fetch_lock` while this
    /// moved takes that fetch's outcome instead of fetching again.
    fetches: AtomicU64,
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
                Source::Remote {
                    client,
                    jwks_uri,
                    cross_origin_jwks_uri: issuer.allow_cross_origin_jwks_uri,
                }
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

    /// Serves `iss`'s keys from `source`, cached, refreshed and refetched for an unknown
    /// `kid` like keys fetched over HTTP. For issuers not asked about yet.
    pub fn set_source(&mut self, iss: &str, source: Arc<dyn KeySource>) {
        self.explicit.insert(iss.to_owned(), Source::Custom(source));
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
            cross_origin_jwks_uri: false,
        });
        let fresh = Arc::new(IssuerKeys {
            issuer: iss.to_owned(),
            source,
            snapshot: ArcSwapOption::empty(),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_kid_refetch: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
            last_failure: Mutex::new(None),
            fetches: AtomicU64::new(0),
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
            kid: kid.map(Untrusted::new),
        })
    }

    /// An unknown `kid` may mean the issuer rotated: refetch, but at most once per cooldown
    /// so a stream of forged `kid`s cannot turn the broker against the issuer. A fetch that
    /// fails answers `Unavailable` and gives the cooldown back: the issuer being down says
    /// nothing about the `kid`, and the failure back-off already protects the issuer.
    async fn refetch_for_unknown_kid(
        &self,
        kid: Option<&str>,
        now: u64,
    ) -> Result<Arc<Vec<Arc<VerifyingKey>>>, KeyError> {
        let unknown = || KeyError::UnknownKey {
            kid: kid.map(Untrusted::new),
        };
        if matches!(self.source, Source::Inline(_)) {
            return Err(unknown());
        }
        if let Some(reason) = self.recent_failure(now) {
            return Err(KeyError::Unavailable { reason });
        }
        let last = self.last_kid_refetch.load(Ordering::SeqCst);
        let cooled =
            last == 0 || now.saturating_sub(last) >= self.settings.cfg.refetch_cooldown_secs;
        let stamp = now.max(1);
        if !cooled
            || self
                .last_kid_refetch
                .compare_exchange(last, stamp, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            // Another caller may be refetching right now; it will have the new keys shortly.
            let _wait = self.fetch_lock.lock().await;
            let found = self
                .snapshot
                .load_full()
                .and_then(|snap| select(&snap.keys, kid));
            return match (found, self.recent_failure(self.settings.clock.now())) {
                (Some(keys), _) => Ok(keys),
                (None, Some(reason)) => Err(KeyError::Unavailable { reason }),
                (None, None) => Err(unknown()),
            };
        }
        match self.refresh().await {
            Ok(snap) => select(&snap.keys, kid).ok_or_else(unknown),
            Err(reason) => {
                // Only if no other caller has taken the cooldown since.
                let _ = self.last_kid_refetch.compare_exchange(
                    stamp,
                    last,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                Err(KeyError::Unavailable { reason })
            }
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

    /// Fetches keys once however many callers ask at the same moment: a caller that waited
    /// while another fetch completed gets that fetch's outcome, success or failure, without
    /// fetching again. On failure the previous snapshot stays in place.
    async fn refresh(&self) -> Result<Arc<Snapshot>, String> {
        let seen = self.fetches.load(Ordering::SeqCst);
        let _guard = self.fetch_lock.lock().await;
        if self.fetches.load(Ordering::SeqCst) != seen {
            return self.last_outcome();
        }
        let metrics = &self.settings.metrics;
        let outcome = match self.fetch().await {
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
        };
        self.fetches.fetch_add(1, Ordering::SeqCst);
        outcome
    }

    /// The outcome of the last completed fetch (call with `fetch_lock` held).
    fn last_outcome(&self) -> Result<Arc<Snapshot>, String> {
        let failure = self
            .last_failure
            .lock()
            .ok()
            .and_then(|f| f.as_ref().map(|(_, reason)| reason.clone()));
        match (failure, self.snapshot.load_full()) {
            (None, Some(snap)) => Ok(snap),
            (Some(reason), _) => Err(reason),
            (None, None) => Err("the concurrent fetch left no keys".into()),
        }
    }

    async fn fetch(&self) -> Result<Vec<Arc<VerifyingKey>>, String> {
        let cfg = &self.settings.cfg;
        let doc = match &self.source {
            Source::Inline(keys) => return Ok(keys.as_ref().clone()),
            Source::Custom(source) => return source.fetch().await,
            Source::File(path) => read_capped(path, cfg.max_response_bytes).await?,
            Source::Remote {
                client,
                jwks_uri,
                cross_origin_jwks_uri,
            } => {
                let jwks_uri = match jwks_uri {
                    Some(uri) => uri.clone(),
                    None => self.discover(client, *cross_origin_jwks_uri).await?,
                };
                outbound::get_json(client, &jwks_uri, cfg.max_response_bytes)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        jwks::parse(&doc, cfg.max_keys).map_err(|e| e.to_string())
    }

    async fn discover(
        &self,
        client: &reqwest::Client,
        cross_origin_jwks_uri: bool,
    ) -> Result<Url, String> {
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
                "discovery document names issuer \"{}\", expected {:?}",
                untrusted(issuer),
                self.issuer
            ));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or("discovery document has no jwks_uri")?;
        // Bounded, so the URL in every later fetch error (and log line) is too.
        if jwks_uri.len() > MAX_JWKS_URI_BYTES {
            return Err(format!(
                "discovery names a jwks_uri of {} bytes (at most {MAX_JWKS_URI_BYTES}): \"{}\"",
                jwks_uri.len(),
                untrusted(jwks_uri)
            ));
        }
        let jwks_url = outbound::check_url(jwks_uri, allow)
            .map_err(|_| format!("jwks_uri \"{}\" is not an allowed URL", untrusted(jwks_uri)))?;
        if !cross_origin_jwks_uri && jwks_url.origin() != base.origin() {
            return Err(format!(
                "discovery names jwks_uri \"{}\", not on the issuer's origin {}; set \
                 allow_cross_origin_jwks_uri or jwks_uri in this issuer's [[issuers]] entry \
                 if that is intended",
                untrusted(jwks_uri),
                base.origin().ascii_serialization()
            ));
        }
        Ok(jwks_url)
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

/// Key refresh under a clock the tests move: the unknown-`kid` cooldown, the failure
/// hold-off, serving stale keys up to `max_stale_secs`, background refresh and single
/// flight, against fixed committed keys (`testdata/`).
#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::clock::Clock;

    const ISS: &str = "https://issuer.example";

    /// Time stands still until a test moves it.
    struct ManualClock(AtomicU64);
    impl Clock for ManualClock {
        fn now(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn committed(kids: &[&str]) -> Vec<Arc<VerifyingKey>> {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("testdata/jwks.json")).unwrap();
        jwks::parse(&doc, 100)
            .unwrap()
            .into_iter()
            .filter(|k| kids.contains(&k.kid.as_deref().unwrap_or_default()))
            .collect()
    }

    /// An issuer the test controls: which keys it publishes, whether it answers, and how
    /// long a fetch takes.
    #[derive(Default)]
    struct Issuer {
        keys: Mutex<Vec<Arc<VerifyingKey>>>,
        down: AtomicBool,
        fetches: AtomicUsize,
        slow: AtomicBool,
    }

    impl Issuer {
        fn publish(&self, kids: &[&str]) {
            *self.keys.lock().unwrap() = committed(kids);
        }
        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl KeySource for Issuer {
        async fn fetch(&self) -> Result<Vec<Arc<VerifyingKey>>, String> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            if self.slow.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if self.down.load(Ordering::SeqCst) {
                return Err("connection refused".into());
            }
            Ok(self.keys.lock().unwrap().clone())
        }
    }

    struct Fixture {
        keys: KeyStore,
        issuer: Arc<Issuer>,
        clock: Arc<ManualClock>,
    }

    impl Fixture {
        fn new(kids: &[&str]) -> Self {
            let clock = Arc::new(ManualClock(AtomicU64::new(1_800_000_000)));
            let cfg = JwksConfig {
                refresh_secs: 3600,
                refetch_cooldown_secs: 60,
                max_stale_secs: 86_400,
                ..JwksConfig::default()
            };
            let mut keys = KeyStore::new(&cfg, &[], false, clock.clone(), Metrics::new()).unwrap();
            let issuer = Arc::new(Issuer::default());
            issuer.publish(kids);
            keys.set_source(ISS, issuer.clone());
            Self {
                keys,
                issuer,
                clock,
            }
        }
        fn advance(&self, secs: u64) {
            self.clock.0.fetch_add(secs, Ordering::SeqCst);
        }
        async fn kids(&self, kid: &str) -> Result<Vec<String>, KeyError> {
            let keys = self.keys.keys_for(ISS, Some(kid)).await?;
            Ok(keys.iter().filter_map(|k| k.kid.clone()).collect())
        }
    }

    fn unknown(result: Result<Vec<String>, KeyError>) -> bool {
        matches!(result, Err(KeyError::UnknownKey { .. }))
    }
    fn unavailable(result: Result<Vec<String>, KeyError>) -> bool {
        matches!(result, Err(KeyError::Unavailable { .. }))
    }

    #[tokio::test]
    async fn keys_are_fetched_once_and_served_from_cache() {
        let f = Fixture::new(&["2026-a", "2026-b"]);
        assert_eq!(f.kids("2026-a").await.unwrap(), ["2026-a", "2026-b"]);
        f.advance(3599);
        f.kids("2026-b").await.unwrap();
        assert_eq!(f.issuer.fetches(), 1);
    }

    #[tokio::test]
    async fn an_unknown_kid_refetches_at_most_once_per_cooldown() {
        let f = Fixture::new(&["2026-a"]);
        f.kids("2026-a").await.unwrap();
        // A forged kid: one refetch, then none until the cooldown is over.
        assert!(unknown(f.kids("forged-1").await));
        assert_eq!(f.issuer.fetches(), 2);
        for i in 0..20 {
            assert!(unknown(f.kids(&format!("forged-{i}")).await));
        }
        assert_eq!(f.issuer.fetches(), 2);
        // The issuer rotates within the cooldown: the new kid waits for it to end...
        f.issuer.publish(&["2026-a", "2026-b"]);
        f.advance(59);
        assert!(unknown(f.kids("2026-b").await));
        assert_eq!(f.issuer.fetches(), 2);
        // ...and is accepted at the first request after it.
        f.advance(1);
        assert_eq!(f.kids("2026-b").await.unwrap(), ["2026-a", "2026-b"]);
        assert_eq!(f.issuer.fetches(), 3);
    }

    #[tokio::test]
    async fn a_failed_fetch_holds_callers_off_briefly_and_never_uses_up_the_kid_cooldown() {
        let f = Fixture::new(&["2026-a"]);
        f.kids("2026-a").await.unwrap();
        // The issuer goes down and rotates: a new kid is an outage, not a bad token.
        f.issuer.down.store(true, Ordering::SeqCst);
        f.issuer.publish(&["2026-a", "2026-b"]);
        assert!(unavailable(f.kids("2026-b").await));
        assert_eq!(f.issuer.fetches(), 2);
        // Within the hold-off nobody fetches again, and known keys keep working.
        assert!(unavailable(f.kids("2026-b").await));
        assert_eq!(f.kids("2026-a").await.unwrap(), ["2026-a"]);
        assert_eq!(f.issuer.fetches(), 2);
        // The issuer returns: after the hold-off (not the 60 s cooldown) the key works.
        f.issuer.down.store(false, Ordering::SeqCst);
        f.advance(RETRY_AFTER_FAILURE_SECS);
        assert_eq!(f.kids("2026-b").await.unwrap(), ["2026-a", "2026-b"]);
        assert_eq!(f.issuer.fetches(), 3);
    }

    #[tokio::test]
    async fn stale_keys_serve_while_the_issuer_is_down_until_max_stale() {
        let f = Fixture::new(&["2026-a"]);
        f.kids("2026-a").await.unwrap();
        f.issuer.down.store(true, Ordering::SeqCst);
        // Past the refresh interval a background refresh fails; the keys still serve.
        f.advance(86_400);
        assert_eq!(f.kids("2026-a").await.unwrap(), ["2026-a"]);
        // One second past max_stale they do not: the caller is told to retry later.
        f.advance(1);
        assert!(unavailable(f.kids("2026-a").await));
        // Back up: fresh keys again.
        f.issuer.down.store(false, Ordering::SeqCst);
        f.advance(RETRY_AFTER_FAILURE_SECS);
        assert_eq!(f.kids("2026-a").await.unwrap(), ["2026-a"]);
    }

    #[tokio::test]
    async fn keys_past_the_refresh_interval_are_refreshed_in_the_background() {
        let f = Fixture::new(&["2026-a"]);
        f.kids("2026-a").await.unwrap();
        f.issuer.publish(&["2026-c"]);
        f.advance(3600);
        // The caller is answered from the cache at once...
        assert_eq!(f.kids("2026-a").await.unwrap(), ["2026-a"]);
        // ...while the refresh runs; afterwards the rotated set serves.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while f.kids("2026-c").await.is_err() {
            assert!(std::time::Instant::now() < deadline, "never refreshed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(f.issuer.fetches(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_fetch_and_its_outcome() {
        let f = Arc::new(Fixture::new(&["2026-a"]));
        f.issuer.slow.store(true, Ordering::SeqCst);
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let f = f.clone();
                tokio::spawn(async move { f.kids("2026-a").await })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap().unwrap(), ["2026-a"]);
        }
        assert_eq!(f.issuer.fetches(), 1);
        // A failing fetch is shared the same way: one attempt, every caller told.
        f.issuer.down.store(true, Ordering::SeqCst);
        f.advance(86_401);
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let f = f.clone();
                tokio::spawn(async move { f.kids("2026-a").await })
            })
            .collect();
        for caller in callers {
            assert!(unavailable(caller.await.unwrap()));
        }
        assert_eq!(f.issuer.fetches(), 2);
    }

    #[tokio::test]
    async fn a_token_without_kid_gets_the_whole_set() {
        let f = Fixture::new(&["2026-a", "2026-rsa"]);
        let keys = f.keys.keys_for(ISS, None).await.unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(f.issuer.fetches(), 1);
    }
}
