//! Tokens per (identity selector, resource). A hit answers at once; inside the refresh
//! window one background refresh runs; a token with less than the floor left is never
//! handed out. When the broker cannot be reached, cached tokens keep flowing until they
//! reach the floor. When a refresh is refused because the identity or credential was
//! disabled or deleted, the cached token is dropped at once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;

use moka::Expiry;
use moka::future::Cache;
use wif_proto::clock::SharedClock;

use crate::broker::{BrokerError, BrokerToken, Selector};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub selector: Selector,
    pub resource: String,
}

/// A cached token, with the App Service answer for its key written once, on the first hit
/// that needs it: every field of that answer is the token's or the key's (the resource), so
/// later hits send the same bytes without building or serialising anything.
#[derive(Debug)]
pub struct Cached {
    pub token: BrokerToken,
    pub app_service_answer: OnceLock<Bytes>,
}

impl Cached {
    fn new(token: BrokerToken) -> Arc<Self> {
        Arc::new(Self {
            token,
            app_service_answer: OnceLock::new(),
        })
    }
}

impl std::ops::Deref for Cached {
    type Target = BrokerToken;

    fn deref(&self) -> &BrokerToken {
        &self.token
    }
}

struct Floor {
    clock: SharedClock,
    min_remaining: u64,
}

impl Expiry<Key, Arc<Cached>> for Floor {
    fn expire_after_create(&self, _: &Key, token: &Arc<Cached>, _: Instant) -> Option<Duration> {
        let usable_until = token.expires_on.saturating_sub(self.min_remaining);
        Some(Duration::from_secs(
            usable_until.saturating_sub(self.clock.now()),
        ))
    }
    fn expire_after_update(
        &self,
        key: &Key,
        token: &Arc<Cached>,
        at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, token, at)
    }
}

/// After a failed background refresh, the next waits this long.
pub const REFRESH_RETRY_SECS: u64 = 30;

pub struct TokenCache {
    tokens: Cache<Key, Arc<Cached>>,
    refreshing: Arc<Mutex<HashSet<Key>>>,
    clock: SharedClock,
    min_remaining: u64,
    refresh_before: u64,
}

/// How a lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
}

impl TokenCache {
    pub fn new(clock: SharedClock, min_remaining: u64, refresh_before: u64) -> Self {
        Self {
            tokens: Cache::builder()
                .max_capacity(10_000)
                .expire_after(Floor {
                    clock: clock.clone(),
                    min_remaining,
                })
                .build(),
            refreshing: Arc::new(Mutex::new(HashSet::new())),
            clock,
            min_remaining,
            refresh_before,
        }
    }

    /// The token for `key`, from the cache or from the fetch `make` builds (one call per
    /// key at a time). `make` runs only on a miss or in the refresh window, so a plain hit
    /// allocates nothing for it.
    pub async fn get<M, F, Fut>(
        &self,
        key: Key,
        make: M,
    ) -> Result<(Arc<Cached>, Outcome), Arc<BrokerError>>
    where
        M: FnOnce() -> F,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<BrokerToken, BrokerError>> + Send + 'static,
    {
        let now = self.clock.now();
        if let Some(token) = self.tokens.get(&key).await {
            let remaining = token.expires_on.saturating_sub(now);
            if remaining > self.min_remaining {
                if remaining <= self.refresh_before {
                    self.refresh(key, make());
                }
                return Ok((token, Outcome::Hit));
            }
            self.tokens.invalidate(&key).await;
        }
        let fetch = make();
        let token = self
            .tokens
            .try_get_with(key, async move { fetch().await.map(Cached::new) })
            .await?;
        if token.expires_on.saturating_sub(self.clock.now()) <= self.min_remaining {
            return Err(Arc::new(BrokerError::Unavailable(
                "the broker answered a token that expires within the floor".into(),
            )));
        }
        Ok((token, Outcome::Miss))
    }

    fn refresh<F, Fut>(&self, key: Key, fetch: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<BrokerToken, BrokerError>> + Send + 'static,
    {
        let started = self
            .refreshing
            .lock()
            .map(|mut running| running.insert(key.clone()));
        if !matches!(started, Ok(true)) {
            return;
        }
        let tokens = self.tokens.clone();
        let refreshing = self.refreshing.clone();
        tokio::spawn(async move {
            match fetch().await {
                Ok(token) => tokens.insert(key.clone(), Cached::new(token)).await,
                // The identity or credential was disabled or deleted: the cached token is
                // not handed out again (docs/security.md, "Revocation").
                Err(e) if e.revokes() => {
                    tracing::warn!(error = %e, "the broker revoked this identity; dropped its cached token");
                    tokens.invalidate(&key).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "background refresh failed; the cached token keeps serving");
                    // Not again for a while: a down broker is not asked on every request.
                    tokio::time::sleep(Duration::from_secs(REFRESH_RETRY_SECS)).await;
                }
            }
            if let Ok(mut running) = refreshing.lock() {
                running.remove(&key);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    type Answer = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<BrokerToken, BrokerError>> + Send>,
    >;
    type Fetch = Box<dyn Fn() -> Answer + Send + Sync>;

    /// A fetch that always answers `result`, as `get` wants it.
    fn answer(result: Result<BrokerToken, BrokerError>) -> impl FnOnce() -> Fetch {
        move || {
            Box::new(move || {
                let result = result.clone();
                Box::pin(async move { result })
            })
        }
    }

    #[tokio::test]
    async fn a_revoking_refusal_of_a_refresh_drops_the_cached_token() {
        let clock = wif_proto::clock::system();
        // Every hit is inside the refresh window, so every hit asks the broker again.
        let cache = TokenCache::new(clock.clone(), 300, 1_000_000);
        let key = Key {
            selector: Selector::default(),
            resource: "https://management.azure.com".into(),
        };
        let token = BrokerToken {
            access_token: "cached".into(),
            expires_on: clock.now() + 3600,
            client_id: "c".into(),
            tenant_id: "t".into(),
        };
        let (_, outcome) = cache
            .get(key.clone(), answer(Ok(token.clone())))
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Miss);
        let disabled = BrokerError::Refused {
            status: 403,
            code: "identity_disabled".into(),
            description: "identity \"app\" is disabled".into(),
            broker: "http://127.0.0.1:8080".into(),
            request_id: "r-1".into(),
        };
        assert!(disabled.revokes());
        assert!(!BrokerError::Unavailable("down".into()).revokes());
        // The hit that starts the refused refresh is still answered from the cache...
        let (served, _) = cache
            .get(key.clone(), answer(Err(disabled.clone())))
            .await
            .unwrap();
        assert_eq!(served.access_token, "cached");
        // ...and then the token is gone: the next request meets the refusal.
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.tokens.get(&key).await.is_some() {
            assert!(
                Instant::now() < deadline,
                "the revoked token is still cached"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let refused = cache
            .get(key.clone(), answer(Err(disabled.clone())))
            .await
            .unwrap_err();
        assert_eq!(*refused, disabled);
    }
}
