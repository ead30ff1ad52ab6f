//! Keeping this replica's registry in step with the store, and the store tidy.
//!
//! Every `[store] poll_interval_ms`, and at once when PostgreSQL notifies a registry write
//! (LISTEN/NOTIFY), the store's registry version is read; when another replica changed
//! it, the changed entries are read and applied. A store that cannot be reached leaves the
//! current registry serving (exchanges go on; admin writes answer 503). Once an hour,
//! audit events past their retention and expired used-token records are deleted, and
//! registry changes beyond the newest 10,000.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::exchange::Broker;

/// How often expired audit events and used-token records are purged.
const MAINTENANCE_SECS: u64 = 3600;
/// Registry changes kept for replicas that are behind (one row each, a few dozen bytes);
/// a replica further behind reads the whole registry.
const KEEP_CHANGES: u64 = 10_000;
/// How often the store's size is read for `wif_store_size_bytes`.
const SIZE_SECS: u64 = 60;

pub fn spawn(broker: Arc<Broker>, poll: Duration, retention_days: u64) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(poll);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A broker that started without its store has said so already.
        let mut healthy = broker.store_reachable();
        let mut last_maintenance = 0u64;
        let mut last_size = 0u64;
        let mut notices = None;
        loop {
            // A notice from the store wakes the loop early; the poll stays the fallback.
            if notices.is_none() {
                notices = broker.store().and_then(|s| s.registry_notices());
            }
            match notices.as_mut() {
                Some(rx) => {
                    tokio::select! {
                        _ = interval.tick() => {}
                        changed = rx.changed() => if changed.is_err() { notices = None },
                    }
                }
                None => {
                    interval.tick().await;
                }
            }
            broker.auditor().flush_due(broker.clock().now());
            match broker.reload("poll", false).await {
                Ok(changed) => {
                    if !healthy {
                        tracing::info!("the store is reachable again");
                        healthy = true;
                    }
                    if changed {
                        tracing::debug!("registry reloaded after a change in the store");
                    }
                }
                Err(e) => {
                    if healthy {
                        tracing::warn!(error = %e, "cannot reach the store; serving the last registry");
                        healthy = false;
                    }
                    continue;
                }
            }
            let now = broker.clock().now();
            if now.saturating_sub(last_size) >= SIZE_SECS {
                last_size = now;
                if let Some(store) = broker.store() {
                    match store.size().await {
                        Ok(size) => broker.metrics().store_size(size),
                        Err(e) => tracing::debug!(error = %e, "cannot read the store's size"),
                    }
                }
            }
            if now.saturating_sub(last_maintenance) >= MAINTENANCE_SECS {
                last_maintenance = now;
                maintain(&broker, now, retention_days).await;
            }
        }
    })
}

async fn maintain(broker: &Broker, now: u64, retention_days: u64) {
    let Some(store) = broker.store() else { return };
    if retention_days > 0 {
        let before = now.saturating_sub(retention_days.saturating_mul(86_400));
        match store.purge_audit(before).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "purged audit events past retention"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot purge audit events"),
        }
    }
    if let Err(e) = store.purge_used_tokens(now).await {
        tracing::warn!(error = %e, "cannot purge used-token records");
    }
    if let Err(e) = store.purge_changes(KEEP_CHANGES).await {
        tracing::warn!(error = %e, "cannot purge recorded registry changes");
    }
}
