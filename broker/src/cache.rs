//! The Entra token cache (README, "How an exchange works", step 6), keyed by (identity, scope).
//!
//! - A miss makes one upstream call however many callers wait for the same key (moka
//!   coalesces them).
//! - A hit inside the refresh window answers at once and starts one background refresh.
//! - A token with less than `min_remaining_secs` left is never handed out: moka expires it
//!   at that point, and every hit is re-checked against the broker's clock.
//! - A failed background refresh keeps the old token, so an Entra outage degrades to
//!   cached tokens until they run out.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::Op;
use wif_config::CacheConfig;

use crate::clock::SharedClock;
use crate::entra::{EntraError, EntraToken};
use crate::metrics::Metrics;

/// What a cached token is for. The identity is named by where it lives in Entra, so a
/// redefined identity never inherits another's tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub authority_host: String,
    pub tenant_id: String,
    pub client_id: String,
    pub scope: String,
}

/// How a lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    /// A hit in the refresh window; a background refresh was started or is running.
    HitRefreshing,
    Miss,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::HitRefreshing => "hit_refreshing",
            CacheOutcome::Miss => "miss",
        }
    }
}

/// Why no token came out of the cache.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Entra(Arc<EntraError>),
    #[error("Entra issued a token that expires in {remaining} s, under the {min} s minimum")]
    ShortLived { remaining: u64, min: u64 },
}

struct ExpireEarly {
    clock: SharedClock,
    min_remaining: u64,
}

impl ExpireEarly {
    fn ttl(&self, token: &EntraToken) -> Duration {
        let usable_until = token.expires_on.saturating_sub(self.min_remaining);
        Duration::from_secs(usable_until.saturating_sub(self.clock.now()))
    }
}

impl Expiry<CacheKey, Arc<EntraToken>> for ExpireEarly {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        value: &Arc<EntraToken>,
        _: Instant,
    ) -> Option<Duration> {
        Some(self.ttl(value))
    }
    fn expire_after_update(
        &self,
        _: &CacheKey,
        value: &Arc<EntraToken>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.ttl(value))
    }
}

/// A background refresh that failed is not retried for this long, so an Entra outage
/// sees one attempt per key per interval rather than one per request.
pub const REFRESH_RETRY_SECS: u64 = 30;

#[derive(Debug, Clone, Copy)]
enum Refresh {
    Running,
    FailedAt(u64),
}

pub struct TokenCache {
    tokens: Cache<CacheKey, Arc<EntraToken>>,
    refreshing: Arc<Mutex<HashMap<CacheKey, Refresh>>>,
    clock: SharedClock,
    min_remaining: u64,
    refresh_before: u64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.tokens.entry_count())
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    pub fn new(cfg: &CacheConfig, clock: SharedClock, metrics: Arc<Metrics>) -> Self {
        let tokens = Cache::builder()
            .max_capacity(cfg.max_entries)
            .expire_after(ExpireEarly {
                clock: clock.clone(),
                min_remaining: cfg.min_remaining_secs,
            })
            .support_invalidation_closures()
            .build();
        Self {
            tokens,
            refreshing: Arc::new(Mutex::new(HashMap::new())),
            clock,
            min_remaining: cfg.min_remaining_secs,
            refresh_before: cfg.refresh_before_secs,
            metrics,
        }
    }

    /// The token for `key`, from the cache or from the fetch `make` builds. `make` runs
    /// only on a miss or in the refresh window, so a plain hit copies nothing; the fetch
    /// runs at most once per key at a time and is `'static` for background refreshes.
    pub async fn get<M, F, Fut>(
        &self,
        key: CacheKey,
        make: M,
    ) -> Result<(Arc<EntraToken>, CacheOutcome), CacheError>
    where
        M: FnOnce() -> F,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<EntraToken, EntraError>> + Send + 'static,
    {
        let now = self.clock.now();
        if let Some(token) = self.tokens.get(&key).await {
            let remaining = token.expires_on.saturating_sub(now);
            if remaining > self.min_remaining {
                self.metrics.cache_hit();
                if remaining <= self.refresh_before {
                    self.refresh_in_background(key, make());
                    return Ok((token, CacheOutcome::HitRefreshing));
                }
                return Ok((token, CacheOutcome::Hit));
            }
            self.evict_if_stale(&key).await;
        }
        self.metrics.cache_miss();
        let fetch = make();
        let token = self
            .tokens
            .try_get_with(key, async move { fetch().await.map(Arc::new) })
            .await
            .map_err(CacheError::Entra)?;
        let remaining = token.expires_on.saturating_sub(self.clock.now());
        if remaining <= self.min_remaining {
            return Err(CacheError::ShortLived {
                remaining,
                min: self.min_remaining,
            });
        }
        Ok((token, CacheOutcome::Miss))
    }

    /// Removes the entry for `key` only if it is still too old to hand out (another caller
    /// may have put a fresh one there meanwhile).
    async fn evict_if_stale(&self, key: &CacheKey) {
        let (clock, min) = (self.clock.clone(), self.min_remaining);
        self.tokens
            .entry_by_ref(key)
            .and_compute_with(|entry| {
                let stale =
                    entry.is_some_and(|e| e.value().expires_on.saturating_sub(clock.now()) <= min);
                std::future::ready(if stale { Op::Remove } else { Op::Nop })
            })
            .await;
    }

    fn refresh_in_background<F, Fut>(&self, key: CacheKey, fetch: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<EntraToken, EntraError>> + Send + 'static,
    {
        {
            let Ok(mut refreshing) = self.refreshing.lock() else {
                return;
            };
            let now = self.clock.now();
            match refreshing.get(&key) {
                Some(Refresh::Running) => return,
                Some(Refresh::FailedAt(at)) if now.saturating_sub(*at) < REFRESH_RETRY_SECS => {
                    return;
                }
                _ => {}
            }
            refreshing.insert(key.clone(), Refresh::Running);
        }
        let tokens = self.tokens.clone();
        let refreshing = self.refreshing.clone();
        let metrics = self.metrics.clone();
        let clock = self.clock.clone();
        tokio::spawn(async move {
            let outcome = match fetch().await {
                Ok(token) => {
                    tokens.insert(key.clone(), Arc::new(token)).await;
                    metrics.cache_refresh("ok");
                    None
                }
                Err(e) => {
                    metrics.cache_refresh("error");
                    tracing::warn!(error = %e, scope = %key.scope, client_id = %key.client_id,
                        "background token refresh failed; the cached token keeps serving"
                    );
                    Some(Refresh::FailedAt(clock.now()))
                }
            };
            if let Ok(mut refreshing) = refreshing.lock() {
                match outcome {
                    Some(failed) => refreshing.insert(key, failed),
                    None => refreshing.remove(&key),
                };
            }
        });
    }

    /// Drops every cached token of one identity (disabled or deleted: docs/security.md).
    pub fn evict_identity(&self, authority_host: &str, tenant_id: &str, client_id: &str) {
        let (host, tenant, client) = (
            authority_host.to_owned(),
            tenant_id.to_owned(),
            client_id.to_ascii_lowercase(),
        );
        let dropped = self.tokens.invalidate_entries_if(move |key, _| {
            key.authority_host == host
                && key.tenant_id == tenant
                && key.client_id.to_ascii_lowercase() == client
        });
        if let Err(e) = dropped {
            tracing::warn!(error = %e, "could not drop a revoked identity's cached tokens");
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.tokens.entry_count()
    }
}

/// The cache under a clock the tests move: hits, the refresh window, the floor, failed
/// refreshes, single flight and eviction.
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use super::*;
    use crate::clock::Clock;
    use crate::entra::Secret;

    struct ManualClock(AtomicU64);
    impl Clock for ManualClock {
        fn now(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    const T0: u64 = 1_800_000_000;

    /// An Entra the test controls: each token it issues lives `lifetime` seconds from the
    /// test's clock and is named by its serial number.
    struct Entra {
        clock: Arc<ManualClock>,
        issued: AtomicUsize,
        lifetime: AtomicU64,
        down: std::sync::atomic::AtomicBool,
    }

    struct Fixture {
        cache: TokenCache,
        entra: Arc<Entra>,
    }

    fn key(client: &str, scope: &str) -> CacheKey {
        CacheKey {
            authority_host: "https://login.microsoftonline.com".into(),
            tenant_id: "t".into(),
            client_id: client.into(),
            scope: scope.into(),
        }
    }

    impl Fixture {
        fn new() -> Self {
            let clock = Arc::new(ManualClock(AtomicU64::new(T0)));
            let cfg = CacheConfig {
                refresh_before_secs: 900,
                min_remaining_secs: 300,
                ..CacheConfig::default()
            };
            let cache = TokenCache::new(&cfg, clock.clone(), Metrics::new());
            let entra = Arc::new(Entra {
                clock,
                issued: AtomicUsize::new(0),
                lifetime: AtomicU64::new(3600),
                down: false.into(),
            });
            Self { cache, entra }
        }

        fn advance(&self, secs: u64) {
            self.entra.clock.0.fetch_add(secs, Ordering::SeqCst);
        }

        fn issued(&self) -> usize {
            self.entra.issued.load(Ordering::SeqCst)
        }

        /// The serial of the token served, and how.
        async fn get(&self, key: CacheKey) -> Result<(String, CacheOutcome), CacheError> {
            let entra = self.entra.clone();
            let (token, outcome) = self
                .cache
                .get(key, move || {
                    move || async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if entra.down.load(Ordering::SeqCst) {
                            return Err(EntraError::Unavailable {
                                reason: "503".into(),
                                retry_after: None,
                                correlation_id: None,
                            });
                        }
                        let serial = entra.issued.fetch_add(1, Ordering::SeqCst) + 1;
                        Ok(EntraToken {
                            access_token: Secret::new(format!("token-{serial}")),
                            expires_on: entra.clock.now() + entra.lifetime.load(Ordering::SeqCst),
                        })
                    }
                })
                .await?;
            Ok((token.access_token.expose().to_owned(), outcome))
        }

        /// Waits for a background refresh to land (a new serial served).
        async fn served_after_refresh(&self, key: CacheKey, old: &str) -> String {
            for _ in 0..200 {
                let (token, _) = self.get(key.clone()).await.unwrap();
                if token != old {
                    return token;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the background refresh never landed");
        }
    }

    #[tokio::test]
    async fn a_miss_fetches_once_and_hits_are_served_from_the_cache() {
        let f = Fixture::new();
        let k = key("a", "s");
        assert_eq!(
            f.get(k.clone()).await.unwrap(),
            ("token-1".into(), CacheOutcome::Miss)
        );
        f.advance(3600 - 901);
        assert_eq!(
            f.get(k.clone()).await.unwrap(),
            ("token-1".into(), CacheOutcome::Hit)
        );
        // Another scope or identity is another entry.
        assert_eq!(f.get(key("a", "other")).await.unwrap().0, "token-2");
        assert_eq!(f.get(key("b", "s")).await.unwrap().0, "token-3");
        assert_eq!(f.issued(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_for_one_key_make_one_call() {
        let f = Arc::new(Fixture::new());
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let f = f.clone();
                tokio::spawn(async move { f.get(key("a", "s")).await.unwrap().0 })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), "token-1");
        }
        assert_eq!(f.issued(), 1);
    }

    #[tokio::test]
    async fn in_the_refresh_window_the_old_token_serves_while_one_refresh_runs() {
        let f = Fixture::new();
        let k = key("a", "s");
        f.get(k.clone()).await.unwrap();
        // 900 s left: inside the window. Every caller is answered at once...
        f.advance(3600 - 900);
        for _ in 0..10 {
            assert_eq!(
                f.get(k.clone()).await.unwrap(),
                ("token-1".into(), CacheOutcome::HitRefreshing)
            );
        }
        // ...and exactly one refresh replaces the token.
        assert_eq!(
            f.served_after_refresh(k.clone(), "token-1").await,
            "token-2"
        );
        assert_eq!(f.issued(), 2);
        assert_eq!(f.get(k).await.unwrap().1, CacheOutcome::Hit);
    }

    #[tokio::test]
    async fn a_token_at_the_floor_is_never_handed_out() {
        let f = Fixture::new();
        let k = key("a", "s");
        f.get(k.clone()).await.unwrap();
        // 300 s left: the floor. The next caller waits for a fresh token instead.
        f.advance(3600 - 300);
        assert_eq!(
            f.get(k.clone()).await.unwrap(),
            ("token-2".into(), CacheOutcome::Miss)
        );
        // Entra issuing a token already under the floor is an error, not a cache entry.
        f.entra.lifetime.store(300, Ordering::SeqCst);
        assert!(matches!(
            f.get(key("b", "s")).await,
            Err(CacheError::ShortLived {
                remaining: 300,
                min: 300
            })
        ));
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_token_and_waits_before_trying_again() {
        let f = Fixture::new();
        let k = key("a", "s");
        f.get(k.clone()).await.unwrap();
        f.entra.down.store(true, Ordering::SeqCst);
        f.advance(3600 - 900);
        assert_eq!(f.get(k.clone()).await.unwrap().0, "token-1");
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Within the retry interval, no second attempt: still the old token.
        f.entra.down.store(false, Ordering::SeqCst);
        f.advance(REFRESH_RETRY_SECS - 1);
        assert_eq!(f.get(k.clone()).await.unwrap().0, "token-1");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(f.issued(), 1);
        // After it, the refresh runs again and lands.
        f.advance(1);
        assert_eq!(f.served_after_refresh(k, "token-1").await, "token-2");
    }

    #[tokio::test]
    async fn evicting_an_identity_drops_its_tokens_only() {
        let f = Fixture::new();
        for k in [key("a", "s1"), key("A", "s2"), key("b", "s1")] {
            f.get(k).await.unwrap();
        }
        f.cache
            .evict_identity("https://login.microsoftonline.com", "t", "a");
        assert_eq!(
            f.get(key("a", "s1")).await.unwrap(),
            ("token-4".into(), CacheOutcome::Miss)
        );
        assert_eq!(
            f.get(key("A", "s2")).await.unwrap(),
            ("token-5".into(), CacheOutcome::Miss)
        );
        assert_eq!(
            f.get(key("b", "s1")).await.unwrap(),
            ("token-3".into(), CacheOutcome::Hit)
        );
    }
}
