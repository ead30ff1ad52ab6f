//! Rate limiting (docs/admin.md, "Rate limits"): a token bucket per identity and one per
//! caller (issuer and subject), held in this replica's memory. With N replicas behind a
//! load balancer a caller may get up to N times the rate; the buckets are not shared.

use std::sync::{Arc, Mutex};

use wif_config::{RateLimit, RateLimitsConfig};

use crate::clock::SharedClock;
use crate::metrics::Metrics;

/// Which bucket refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Identity,
    Subject,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Identity => "identity",
            Limit::Subject => "subject",
        }
    }
}

/// An exchange over its rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "too many exchanges for this {}: the limit is {per_minute} a minute (bursts of {burst}) on each broker replica; retry in {retry_after} s",
    .limit.as_str()
)]
pub struct Limited {
    pub limit: Limit,
    pub per_minute: u32,
    pub burst: u32,
    /// Seconds until one exchange is allowed again.
    pub retry_after: u64,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens left, in thousandths (so refills of a fraction of a token add up).
    milli_tokens: u64,
    /// Epoch seconds of the last refill.
    at: u64,
}

impl Bucket {
    fn refill(&mut self, limit: RateLimit, now: u64) {
        let elapsed = now.saturating_sub(self.at);
        let capacity = u64::from(limit.burst) * 1000;
        let added = elapsed.saturating_mul(u64::from(limit.per_minute) * 1000) / 60;
        self.milli_tokens = self.milli_tokens.saturating_add(added).min(capacity);
        self.at = now.max(self.at);
    }

    /// Seconds until a whole token is there again.
    fn wait(&self, limit: RateLimit) -> u64 {
        let missing = 1000u64.saturating_sub(self.milli_tokens);
        let per_minute = u64::from(limit.per_minute.max(1));
        // Tokens come at per_minute/60 a second: missing/1000 of one takes that long.
        (missing * 60).div_ceil(per_minute * 1000).max(1)
    }
}

/// The buckets of one replica. Idle buckets are forgotten (a full bucket is the same as
/// none), so memory follows the callers of the last minutes, bounded in number.
pub struct RateLimiter {
    defaults: RateLimitsConfig,
    buckets: moka::sync::Cache<(Limit, String), Arc<Mutex<Bucket>>>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").finish_non_exhaustive()
    }
}

/// Most buckets kept; beyond it the least recently used are forgotten (refilled).
const MAX_BUCKETS: u64 = 200_000;

impl RateLimiter {
    pub fn new(defaults: &RateLimitsConfig, clock: SharedClock, metrics: Arc<Metrics>) -> Self {
        Self {
            defaults: defaults.clone(),
            buckets: moka::sync::Cache::builder()
                .max_capacity(MAX_BUCKETS)
                .time_to_idle(std::time::Duration::from_secs(3600))
                .build(),
            clock,
            metrics,
        }
    }

    /// Takes one exchange from the identity's bucket and the caller's, or from neither
    /// when either is empty. `identity_limit` and `subject_limit` replace the defaults.
    pub fn take(
        &self,
        identity: (&str, Option<RateLimit>),
        subject: (&str, Option<RateLimit>),
    ) -> Result<(), Limited> {
        let now = self.clock.now();
        let wanted = [
            (
                Limit::Subject,
                subject.0,
                subject.1.or(self.defaults.subject()),
            ),
            (
                Limit::Identity,
                identity.0,
                identity.1.or(self.defaults.identity()),
            ),
        ];
        let buckets: Vec<(Limit, RateLimit, Arc<Mutex<Bucket>>)> = wanted
            .into_iter()
            .filter_map(|(kind, key, limit)| {
                let limit = limit?;
                let bucket = self.buckets.get_with((kind, key.to_owned()), || {
                    Arc::new(Mutex::new(Bucket {
                        milli_tokens: u64::from(limit.burst) * 1000,
                        at: now,
                    }))
                });
                Some((kind, limit, bucket))
            })
            .collect();
        // Always subject before identity, so two exchanges never wait on each other.
        let mut guards = Vec::with_capacity(buckets.len());
        for (kind, limit, bucket) in &buckets {
            let Ok(mut guard) = bucket.lock() else {
                continue;
            };
            guard.refill(*limit, now);
            if guard.milli_tokens < 1000 {
                self.metrics.rate_limited(kind.as_str());
                return Err(Limited {
                    limit: *kind,
                    per_minute: limit.per_minute,
                    burst: limit.burst,
                    retry_after: guard.wait(*limit),
                });
            }
            guards.push(guard);
        }
        for mut guard in guards {
            guard.milli_tokens -= 1000;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::OffsetClock;

    #[test]
    fn a_bucket_empties_refuses_and_refills() {
        let clock = OffsetClock::new();
        let limiter = RateLimiter::new(
            &RateLimitsConfig {
                subject_per_minute: 6,
                subject_burst: 2,
                ..Default::default()
            },
            clock.clone(),
            Metrics::new(),
        );
        let take = || limiter.take(("id", None), ("iss\nsub", None));
        take().unwrap();
        take().unwrap();
        let refused = take().unwrap_err();
        assert_eq!(refused.limit, Limit::Subject);
        assert_eq!(refused.retry_after, 10);
        clock.advance(10);
        take().unwrap();
        assert!(take().is_err());
        // Another caller has its own bucket; the identity has none (no default).
        limiter.take(("id", None), ("iss\nother", None)).unwrap();
    }

    #[test]
    fn the_identity_bucket_is_shared_by_its_callers_and_refuses_without_spending() {
        let clock = OffsetClock::new();
        let limiter = RateLimiter::new(&RateLimitsConfig::default(), clock.clone(), Metrics::new());
        let own = RateLimit::new(1, 1);
        limiter.take(("id", own), ("a", None)).unwrap();
        let refused = limiter.take(("id", own), ("b", None)).unwrap_err();
        assert_eq!(refused.limit, Limit::Identity);
        assert_eq!(refused.retry_after, 60);
        // A refusal by the identity's bucket does not spend the caller's.
        let caller = RateLimit::new(1, 1);
        assert!(limiter.take(("id", own), ("c", caller)).is_err());
        limiter.take(("other", None), ("c", caller)).unwrap();
    }
}
