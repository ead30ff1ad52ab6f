//! One audit event per decision (docs/admin.md "Audit") and per admin write.
//!
//! Each event is written as a JSON line on the `wif_audit` log target at once, and queued
//! for the store, where a writer task appends events in batches. Exchanges never wait for
//! the store: when the queue is full (the store is down or slow), events are dropped from
//! the store's copy, counted in `wif_audit_dropped_total`, and still logged. Events carry
//! the token's SHA-256 and `jti`, never the token.
//!
//! Two bounds keep an anonymous caller from filling the disk or the log through this
//! module (docs/security.md): every field of an event is capped in length before it is
//! logged or stored, and refusals of unauthenticated requests (a token that never
//! verified, an admin call without a valid admin token) are recorded one by one only up to
//! `[audit] samples_per_window` per kind, endpoint, issuer and outcome and window; the rest
//! are counted into one summary event per window (`count`) and in `wif_audit_sampled_total`.
//!
//! On shutdown the writer drains the queue within the deadline; what the store still
//! refuses then is written to `[audit] spill_file` and replayed at the next start, or, with
//! no spill file, counted in `wif_audit_dropped_total` and logged.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use wif_config::AuditConfig;

use crate::metrics::Metrics;
use crate::store::{AuditRecord, Store};

/// Longest text kept of one field of an event (a `reason` may be longer: it carries
/// Entra's own error text).
const MAX_FIELD_CHARS: usize = 256;
const MAX_REASON_CHARS: usize = 1024;

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
    /// Exchanges: the client's address as the broker judged it (`source_networks`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
    /// A summary event: how many refusals like it (same kind, endpoint, issuer and
    /// outcome) were counted instead of recorded one by one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The request was not authenticated: its token never verified, or an admin call
    /// carried no valid admin token. Such refusals are sampled.
    #[serde(skip)]
    pub unauthenticated: bool,
}

impl AuditEvent {
    /// Whether every field is within its cap already.
    fn within_caps(&self) -> bool {
        let short = |v: &str, max: usize| v.len() <= max;
        let short_opt = |v: &Option<String>| v.as_deref().is_none_or(|v| short(v, MAX_FIELD_CHARS));
        short(&self.request_id, MAX_FIELD_CHARS)
            && short(&self.outcome, MAX_FIELD_CHARS)
            && self
                .reason
                .as_deref()
                .is_none_or(|v| short(v, MAX_REASON_CHARS))
            && [
                &self.actor,
                &self.issuer,
                &self.subject,
                &self.token_sha256,
                &self.jti,
                &self.credential,
                &self.identity,
                &self.scope,
                &self.upstream_correlation_id,
            ]
            .into_iter()
            .all(short_opt)
    }

    /// The same event with every field cut to a bounded length, so one event's size does
    /// not depend on what a caller sent.
    fn bounded(&self) -> AuditEvent {
        let cap = |v: &Option<String>| v.as_deref().map(|s| cap_chars(s, MAX_FIELD_CHARS));
        AuditEvent {
            request_id: cap_chars(&self.request_id, MAX_FIELD_CHARS),
            actor: cap(&self.actor),
            issuer: cap(&self.issuer),
            subject: cap(&self.subject),
            token_sha256: cap(&self.token_sha256),
            jti: cap(&self.jti),
            credential: cap(&self.credential),
            identity: cap(&self.identity),
            scope: cap(&self.scope),
            outcome: cap_chars(&self.outcome, MAX_FIELD_CHARS),
            reason: self
                .reason
                .as_deref()
                .map(|s| cap_chars(s, MAX_REASON_CHARS)),
            upstream_correlation_id: cap(&self.upstream_correlation_id),
            ..self.clone()
        }
    }

    /// The stored row. The event's JSON leaves out what the row's columns hold (time,
    /// kind, request id, identity, subject, outcome); [`AuditRecord::to_json`] puts them
    /// back when the event is read. Written straight to text from borrowed fields: this
    /// runs on every exchange, and building a `serde_json::Value` first cost more than
    /// the rest of recording (docs/PERFORMANCE.md, "Where the time goes").
    fn to_record(&self) -> AuditRecord {
        // Every field named (no `..`): a field added to the event must be placed here,
        // in a column or in the JSON, or this does not compile.
        let AuditEvent {
            kind,
            time,
            request_id,
            endpoint,
            actor,
            role,
            action,
            issuer,
            subject,
            token_sha256,
            jti,
            credential,
            identity,
            scope,
            outcome,
            reason,
            cache,
            upstream_correlation_id,
            source_address,
            count,
            unauthenticated: _,
        } = self;
        let body = StoredEvent {
            endpoint,
            actor: actor.as_deref(),
            role: *role,
            action: *action,
            issuer: issuer.as_deref(),
            token_sha256: token_sha256.as_deref(),
            jti: jti.as_deref(),
            credential: credential.as_deref(),
            scope: scope.as_deref(),
            reason: reason.as_deref(),
            cache: *cache,
            upstream_correlation_id: upstream_correlation_id.as_deref(),
            source_address: source_address.as_deref(),
            count: *count,
        };
        AuditRecord {
            id: 0,
            time: *time,
            kind: (*kind).to_owned(),
            request_id: request_id.clone(),
            actor: actor.clone().or_else(|| subject.clone()),
            identity: identity.clone(),
            subject: subject.clone(),
            outcome: outcome.clone(),
            // Serialising borrowed strings and numbers cannot fail.
            event: serde_json::to_string(&body).unwrap_or_else(|_| "{}".to_owned()),
        }
    }
}

/// The part of an [`AuditEvent`] stored as the row's JSON: everything but the columns
/// ([`AuditRecord::COLUMNS`]), in the event's field order and with its names.
#[derive(Serialize)]
struct StoredEvent<'a> {
    endpoint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
}

/// `s` cut to at most `max` characters, with a marker saying how much was cut.
fn cap_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((at, _)) => format!("{}…[{} bytes cut]", &s[..at], s.len() - at),
    }
}

/// Most events written to the store in one batch.
const BATCH: usize = 1024;

/// How long the writer lets events gather after the first of a batch arrives. Each batch
/// is one transaction, and with `synchronous = FULL` each commit waits for the disk, so a
/// writer that committed every event as it came would spend most of its time (and the
/// exchanges' CPU, in wake-ups and commits) on commits of one or two rows. Gathering for
/// this long makes a commit carry every event of the moment (hundreds under load); an
/// event reaches the store at most this much later, and shutdown does not wait for it
/// (docs/PERFORMANCE.md, "Every request verified").
const GATHER: Duration = Duration::from_millis(20);

/// Most distinct sampling keys tracked at once; beyond it, new keys share one bucket per
/// kind and outcome, so the map stays bounded whatever callers send.
const MAX_SAMPLE_KEYS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SampleKey {
    kind: &'static str,
    endpoint: &'static str,
    action: Option<&'static str>,
    issuer: Option<String>,
    outcome: String,
}

struct Bucket {
    window_start: u64,
    recorded: u64,
    counted: u64,
    /// The first counted event, the template of the summary.
    template: Option<AuditEvent>,
}

/// Decides which refusals of unauthenticated requests are recorded in full.
struct Sampler {
    window_secs: u64,
    per_window: u64,
    buckets: Mutex<HashMap<SampleKey, Bucket>>,
    /// The earliest time a window with counted events ends (u64::MAX: none), so that
    /// checking for due summaries costs one atomic load.
    next_due: AtomicU64,
}

enum Admit {
    Record,
    Count,
}

impl Sampler {
    fn new(cfg: &AuditConfig) -> Self {
        Self {
            window_secs: cfg.sample_window_secs.max(1),
            per_window: cfg.samples_per_window,
            buckets: Mutex::new(HashMap::new()),
            next_due: AtomicU64::new(u64::MAX),
        }
    }

    /// Whether `event` (already bounded) is recorded or counted; may also hand back the
    /// summary of a window that ended.
    fn admit(&self, event: &AuditEvent, summaries: &mut Vec<AuditEvent>) -> Admit {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Admit::Record;
        };
        let mut key = SampleKey {
            kind: event.kind,
            endpoint: event.endpoint,
            action: event.action,
            issuer: event.issuer.clone(),
            outcome: event.outcome.clone(),
        };
        if buckets.len() >= MAX_SAMPLE_KEYS && !buckets.contains_key(&key) {
            key.issuer = None;
            key.action = None;
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            window_start: event.time,
            recorded: 0,
            counted: 0,
            template: None,
        });
        if event.time >= bucket.window_start.saturating_add(self.window_secs) {
            summaries.extend(self.summary(bucket, event.time));
            *bucket = Bucket {
                window_start: event.time,
                recorded: 0,
                counted: 0,
                template: None,
            };
        }
        if bucket.recorded < self.per_window {
            bucket.recorded += 1;
            return Admit::Record;
        }
        bucket.counted += 1;
        if bucket.template.is_none() {
            bucket.template = Some(event.clone());
            let due = bucket.window_start.saturating_add(self.window_secs);
            self.next_due.fetch_min(due, Ordering::SeqCst);
        }
        Admit::Count
    }

    /// Summaries of every window that ended by `now` (all windows when `all`), whose
    /// buckets are then forgotten.
    fn due(&self, now: u64, all: bool) -> Vec<AuditEvent> {
        if !all && now < self.next_due.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut next_due = u64::MAX;
        buckets.retain(|_, bucket| {
            let end = bucket.window_start.saturating_add(self.window_secs);
            if all || now >= end {
                out.extend(self.summary(bucket, now));
                false
            } else {
                if bucket.template.is_some() {
                    next_due = next_due.min(end);
                }
                true
            }
        });
        self.next_due.store(next_due, Ordering::SeqCst);
        out
    }

    fn summary(&self, bucket: &Bucket, now: u64) -> Option<AuditEvent> {
        let template = bucket.template.as_ref()?;
        Some(AuditEvent {
            time: now,
            request_id: String::new(),
            count: Some(bucket.counted),
            reason: Some(format!(
                "{} more refusals like this one (unauthenticated, same endpoint, issuer and \
                 outcome) from {} to {now} were counted, not recorded one by one; the first \
                 {} of the window were recorded in full",
                bucket.counted, bucket.window_start, self.per_window
            )),
            subject: None,
            token_sha256: None,
            jti: None,
            scope: None,
            credential: None,
            identity: None,
            upstream_correlation_id: None,
            actor: template.actor.clone(),
            ..template.clone()
        })
    }
}

/// Records events to the log and, when there is a store, to the store.
pub struct Auditor {
    queue: Option<mpsc::Sender<AuditRecord>>,
    metrics: Arc<Metrics>,
    sampler: Sampler,
    writer: Mutex<Option<Writer>>,
}

struct Writer {
    stop: watch::Sender<Option<Instant>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor").finish_non_exhaustive()
    }
}

impl Auditor {
    /// Log only (no store): `check-config` and tests of parts.
    pub fn log_only(cfg: &AuditConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            queue: None,
            metrics,
            sampler: Sampler::new(cfg),
            writer: Mutex::new(None),
        }
    }

    /// Starts the writer task for `store`, which first writes what an earlier shutdown
    /// left in `[audit] spill_file`. Must run inside a Tokio runtime.
    pub fn with_store(store: Arc<dyn Store>, cfg: &AuditConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(cfg.queue_size.max(1));
        let (stop, stopped) = watch::channel(None);
        let task = tokio::spawn(write_batches(
            store,
            rx,
            stopped,
            Limits {
                spill: cfg.spill_file.clone(),
                max_events: cfg.max_events,
            },
            metrics.clone(),
        ));
        Self {
            queue: Some(tx),
            metrics,
            sampler: Sampler::new(cfg),
            writer: Mutex::new(Some(Writer { stop, task })),
        }
    }

    pub fn record(&self, event: &AuditEvent) {
        // Copied only when some field is over its cap (never for an ordinary exchange).
        let capped;
        let event = if event.within_caps() {
            event
        } else {
            capped = event.bounded();
            &capped
        };
        let mut summaries = self.sampler.due(event.time, false);
        let admit = if event.unauthenticated && event.count.is_none() {
            self.sampler.admit(event, &mut summaries)
        } else {
            Admit::Record
        };
        for summary in &summaries {
            self.emit(summary);
        }
        match admit {
            Admit::Record => self.emit(event),
            Admit::Count => self.metrics.audit_sampled(event.kind, &event.outcome),
        }
    }

    /// Records the summaries of sampling windows that ended by `now` (called periodically,
    /// so a burst that stopped is still summarised).
    pub fn flush_due(&self, now: u64) {
        for summary in self.sampler.due(now, false) {
            self.emit(&summary);
        }
    }

    fn emit(&self, event: &AuditEvent) {
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

    /// Summarises open sampling windows, then lets the writer drain the queue into the
    /// store until `deadline`; what is left then goes to the spill file (or is counted as
    /// dropped and logged). Events recorded after this are only logged and counted.
    pub async fn close(&self, now: u64, deadline: Duration) {
        for summary in self.sampler.due(now, true) {
            self.emit(&summary);
        }
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        let Some(Writer { stop, task }) = writer else {
            return;
        };
        let _ = stop.send(Some(Instant::now() + deadline));
        // The writer stops by itself at the deadline; the margin covers writing the
        // spill file.
        if tokio::time::timeout(deadline + Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::error!("the audit writer did not stop in time; queued events may be lost");
        }
    }
}

/// What the writer keeps within bounds.
struct Limits {
    /// `[audit] spill_file`.
    spill: Option<PathBuf>,
    /// `[audit] max_events` (0: no limit).
    max_events: u64,
}

impl Limits {
    /// How many events are written between two trims: 1% of the limit, so the store holds
    /// at most 1% more than `max_events`, and a trim is a small delete.
    fn trim_every(&self) -> u64 {
        (self.max_events / 100).max(1)
    }
}

async fn write_batches(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<AuditRecord>,
    mut stop: watch::Receiver<Option<Instant>>,
    limits: Limits,
    metrics: Arc<Metrics>,
) {
    let spill = limits.spill.clone();
    let mut batch = Vec::with_capacity(BATCH);
    if let Some(path) = &spill {
        replay_spill(&store, path, &mut stop, &metrics).await;
    }
    // Trim after the first write, in case the limit was lowered while the broker was down.
    let mut since_trim = limits.trim_every();
    // False once the auditor is gone without a shutdown (then only the queue ends us).
    let mut watching = true;
    loop {
        let stopping = stop.borrow().is_some();
        if stopping {
            // Shutting down: take what is queued, accept nothing more.
            rx.close();
        }
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            changed = stop.wait_for(Option::is_some), if watching && !stopping => {
                watching = changed.is_ok();
                drop(changed);
                continue;
            }
        };
        if received == 0 {
            return;
        }
        if batch.len() < BATCH && !stopping {
            // Not listening meanwhile: a waiting receiver would be woken by every event.
            tokio::select! {
                () = tokio::time::sleep(GATHER) => {}
                changed = stop.wait_for(Option::is_some), if watching => {
                    watching = changed.is_ok();
                }
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
        }
        // Keep the batch until the store takes it; meanwhile the queue absorbs new events
        // and, once full, `record` counts what it has to drop.
        let mut delay = Duration::from_millis(100);
        while let Err(e) = store.append_audit(&batch).await {
            metrics.store_error();
            tracing::warn!(error = %e, events = batch.len(), "cannot write audit events; retrying");
            let deadline = *stop.borrow();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                rx.close();
                while let Ok(record) = rx.try_recv() {
                    batch.push(record);
                }
                give_up(std::mem::take(&mut batch), spill.as_deref(), &metrics);
                return;
            }
            pause(&mut stop, delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        since_trim += batch.len() as u64;
        batch.clear();
        if limits.max_events > 0 && since_trim >= limits.trim_every() {
            since_trim = 0;
            match store.trim_audit(limits.max_events).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(
                    deleted = n,
                    "trimmed audit events beyond [audit] max_events"
                ),
                Err(e) => {
                    metrics.store_error();
                    tracing::warn!(error = %e, "cannot trim audit events beyond [audit] max_events");
                }
            }
        }
    }
}

/// Waits `delay` before the next try of a failed store write; when shutdown begins
/// meanwhile, returns at once, and during shutdown never sleeps past the deadline.
async fn pause(stop: &mut watch::Receiver<Option<Instant>>, delay: Duration) {
    let deadline = *stop.borrow();
    if let Some(deadline) = deadline {
        // Shutting down: try again until the deadline, never sleeping past it.
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(delay.min(left)).await;
        return;
    }
    let gone = matches!(
        tokio::time::timeout(delay, stop.wait_for(Option::is_some)).await,
        Ok(Err(_))
    );
    if gone {
        // The auditor is gone: no shutdown will come to wake us.
        tokio::time::sleep(delay).await;
    }
}

/// The store could not take `events` before the shutdown deadline: keep them in the
/// spill file, or count and log their loss.
fn give_up(events: Vec<AuditRecord>, spill: Option<&Path>, metrics: &Metrics) {
    let n = events.len();
    if let Some(path) = spill {
        match append_spill(path, &events) {
            Ok(()) => {
                tracing::warn!(
                    events = n,
                    file = %path.display(),
                    "the store is unreachable at shutdown; audit events kept in the spill file for the next start"
                );
                return;
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot write the audit spill file")
            }
        }
    }
    for _ in 0..n {
        metrics.audit_dropped();
    }
    tracing::error!(
        events = n,
        "the store is unreachable at shutdown; audit events lost from the store (they were logged)"
    );
}

fn append_spill(path: &Path, events: &[AuditRecord]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    let mut text = String::new();
    for event in events {
        text.push_str(&serde_json::to_string(event).map_err(std::io::Error::other)?);
        text.push('\n');
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Writes what an earlier shutdown spilled, then removes the file. A line that does not
/// parse (a torn last write) is skipped and logged. Until the store takes them, the file
/// stays; a shutdown meanwhile leaves it for the next start.
async fn replay_spill(
    store: &Arc<dyn Store>,
    path: &Path,
    stop: &mut watch::Receiver<Option<Instant>>,
    metrics: &Metrics,
) {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot read the audit spill file");
            return;
        }
    };
    let mut events = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str::<AuditRecord>(line) {
            Ok(record) => events.push(AuditRecord { id: 0, ..record }),
            Err(e) => {
                tracing::error!(file = %path.display(), line = n + 1, error = %e, "skipping an unreadable line of the audit spill file")
            }
        }
    }
    let mut delay = Duration::from_millis(100);
    for chunk in events.chunks(BATCH) {
        while let Err(e) = store.append_audit(chunk).await {
            metrics.store_error();
            tracing::warn!(error = %e, "cannot write spilled audit events yet; retrying");
            if stop.borrow().is_some() {
                // Shutting down again: the file keeps everything (some events may be
                // written twice at the next start; they keep their request ids).
                return;
            }
            pause(stop, delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
    match tokio::fs::remove_file(path).await {
        Ok(()) => tracing::info!(
            events = events.len(),
            file = %path.display(),
            "wrote the audit events spilled at the last shutdown"
        ),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot remove the audit spill file")
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn refusal(time: u64, issuer: &str, outcome: &str) -> AuditEvent {
        AuditEvent {
            kind: "exchange",
            time,
            endpoint: "/v1/token",
            issuer: Some(issuer.to_owned()),
            outcome: outcome.to_owned(),
            unauthenticated: true,
            ..Default::default()
        }
    }

    /// The stored JSON is the whole event minus its columns, and reading the row gives
    /// back the whole event.
    #[test]
    fn a_stored_row_holds_every_field_once() {
        let event = AuditEvent {
            kind: "admin",
            time: 1_700_000_000,
            request_id: "req-1".into(),
            endpoint: "/v1/token",
            actor: Some("alice".into()),
            role: Some("admin"),
            action: Some("identity.put"),
            issuer: Some("https://issuer".into()),
            subject: Some("repo:o/r:ref:refs/heads/main".into()),
            token_sha256: Some("ab".repeat(32)),
            jti: Some("jti-1".into()),
            credential: Some("cred".into()),
            identity: Some("deploy".into()),
            scope: Some("https://management.azure.com/.default".into()),
            outcome: "forbidden".into(),
            reason: Some("a \"quoted\" reason".into()),
            cache: Some("hit"),
            upstream_correlation_id: Some("corr".into()),
            source_address: Some("10.0.0.1".into()),
            count: Some(7),
            unauthenticated: true,
        };
        let record = event.to_record();
        let mut expected = serde_json::to_value(&event).unwrap();
        for column in AuditRecord::COLUMNS {
            expected.as_object_mut().unwrap().remove(column);
        }
        let stored: serde_json::Value = serde_json::from_str(&record.event).unwrap();
        assert_eq!(stored, expected);
        let mut whole = serde_json::to_value(&event).unwrap();
        whole.as_object_mut().unwrap().insert("id".into(), 0.into());
        assert_eq!(record.to_json(), whole);
        assert_eq!(record.actor.as_deref(), Some("alice"));

        let anonymous = AuditEvent {
            actor: None,
            ..event
        };
        assert_eq!(
            anonymous.to_record().actor.as_deref(),
            Some("repo:o/r:ref:refs/heads/main")
        );
    }

    fn sampler(per_window: u64) -> Sampler {
        Sampler::new(&AuditConfig {
            sample_window_secs: 60,
            samples_per_window: per_window,
            ..AuditConfig::default()
        })
    }

    #[test]
    fn a_flood_of_forged_tokens_records_the_first_few_and_one_summary() {
        let s = sampler(3);
        let mut summaries = Vec::new();
        let recorded = (0..1000)
            .filter(|i| {
                matches!(
                    s.admit(
                        &refusal(100 + i / 100, "https://i", "invalid_signature"),
                        &mut summaries
                    ),
                    Admit::Record
                )
            })
            .count();
        assert_eq!(recorded, 3);
        assert!(summaries.is_empty());
        assert!(s.due(159, false).is_empty(), "the window is still open");
        let due = s.due(160, false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, Some(997));
        assert_eq!(due[0].outcome, "invalid_signature");
        assert!(s.due(161, false).is_empty(), "summarised once");
    }

    #[test]
    fn each_issuer_and_outcome_is_sampled_on_its_own() {
        let s = sampler(1);
        let mut summaries = Vec::new();
        for (iss, outcome) in [("a", "x"), ("b", "x"), ("a", "y")] {
            assert!(matches!(
                s.admit(&refusal(0, iss, outcome), &mut summaries),
                Admit::Record
            ));
        }
        assert!(matches!(
            s.admit(&refusal(0, "a", "x"), &mut summaries),
            Admit::Count
        ));
    }

    #[test]
    fn a_new_window_hands_back_the_last_ones_summary() {
        let s = sampler(1);
        let mut summaries = Vec::new();
        s.admit(&refusal(0, "a", "x"), &mut summaries);
        s.admit(&refusal(1, "a", "x"), &mut summaries);
        s.admit(&refusal(2, "a", "x"), &mut summaries);
        assert!(matches!(
            s.admit(&refusal(70, "a", "x"), &mut summaries),
            Admit::Record
        ));
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].count, Some(2));
    }

    #[test]
    fn sampling_keys_are_bounded_whatever_callers_send() {
        let s = sampler(1);
        let mut summaries = Vec::new();
        for i in 0..(MAX_SAMPLE_KEYS + 500) {
            s.admit(&refusal(0, &format!("iss-{i}"), "x"), &mut summaries);
        }
        assert!(s.buckets.lock().unwrap().len() <= MAX_SAMPLE_KEYS + 1);
    }

    #[test]
    fn every_field_is_capped() {
        assert!(refusal(0, "https://issuer", "invalid_signature").within_caps());
        let long = "k".repeat(20_000);
        let over = AuditEvent {
            jti: Some(long.clone()),
            ..refusal(0, "https://issuer", "invalid_signature")
        };
        assert!(!over.within_caps());
        let event = AuditEvent {
            issuer: Some(long.clone()),
            subject: Some(long.clone()),
            reason: Some(long.clone()),
            request_id: long.clone(),
            outcome: long,
            ..Default::default()
        }
        .bounded();
        let json = serde_json::to_string(&event).unwrap();
        assert!(
            json.len() < 4 * MAX_FIELD_CHARS + MAX_REASON_CHARS + 600,
            "{}",
            json.len()
        );
        assert!(event.issuer.unwrap().ends_with("[19744 bytes cut]"));
    }
}
