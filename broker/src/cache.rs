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
