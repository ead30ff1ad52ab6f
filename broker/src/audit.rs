//! One audit event per decision (DESIGN.md step 8) and per admin write.
//!
//! Each event is written as a JSON line on the `wif_audit` log target at once, and queued
//! for the store, where a writer task appends events in batches. Exchanges never wait for
//! the store: when the queue is full (the store is down or slow), events are dropped from
//! the store's copy, counted in `wif_audit_dropped_total`, and still logged. Events carry
//! the token's SHA-256 and `jti`, never the token.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::store::{AuditRecord, Store};

/// What happened to one request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditEvent {
    /// `exchange` or `admin`.
    pub kind: &'static str,
    pub time: u64,
    pub request_id: String,
    pub endpoint: &'static str,
    /// Admin events: who acted (`anonymous` when unauthenticated) and with which role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// Admin events: `identity.put`, `credential.create`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `ok` or the error code answered.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_correlation_id: Option<String>,
}

impl AuditEvent {
    fn to_record(&self) -> AuditRecord {
        AuditRecord {
            id: 0,
            time: self.time,
            kind: self.kind.to_owned(),
            request_id: self.request_id.clone(),
            actor: self.actor.clone().or_else(|| self.subject.clone()),
            identity: self.identity.clone(),
            subject: self.subject.clone(),
            outcome: self.outcome.clone(),
            event: serde_json::to_string(self).unwrap_or_else(|_| "{}".into()),
        }
    }
}

/// Most events written to the store in one batch.
const BATCH: usize = 256;

/// Records events to the log and, when there is a store, to the store.
pub struct Auditor {
    queue: Option<mpsc::Sender<AuditRecord>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor").finish_non_exhaustive()
    }
}

impl Auditor {
    /// Log only (no store): `check-config` and tests of parts.
    pub fn log_only(metrics: Arc<Metrics>) -> Self {
        Self {
            queue: None,
            metrics,
        }
    }

    /// Starts the writer task for `store`. Must run inside a Tokio runtime.
    pub fn with_store(store: Arc<dyn Store>, queue_size: usize, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(queue_size.max(1));
        tokio::spawn(write_batches(store, rx, metrics.clone()));
        Self {
            queue: Some(tx),
            metrics,
        }
    }

    pub fn record(&self, event: &AuditEvent) {
        if tracing::enabled!(target: "wif_audit", tracing::Level::INFO) {
            match serde_json::to_string(event) {
                Ok(line) => tracing::info!(target: "wif_audit", "{line}"),
                Err(e) => {
                    tracing::error!(target: "wif_audit", error = %e, "cannot serialise audit event")
                }
            }
        }
        if let Some(queue) = &self.queue
            && queue.try_send(event.to_record()).is_err()
        {
            self.metrics.audit_dropped();
        }
    }
}

async fn write_batches(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<AuditRecord>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // Keep the batch until the store takes it; meanwhile the queue absorbs new events
        // and, once full, `record` counts what it has to drop.
        let mut delay = Duration::from_millis(100);
        while let Err(e) = store.append_audit(&batch).await {
            metrics.store_error();
            tracing::warn!(error = %e, events = batch.len(), "cannot write audit events; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        batch.clear();
    }
}
