//! Activity: the audit trail with filters (outcome, identity, kind, time window), each
//! denial with its reason, and charts of exchanges over time by outcome (granted, denied,
//! upstream error) and by identity, drawn as inline SVG on the server.
//!
//! Outcomes are grouped as the people reading them think of them: `ok` is *granted*;
//! a refusal because of Entra or an issuer the broker depends on (`entra_*`,
//! `issuer_unavailable`) is an *upstream error*; every other refusal is *denied*.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;

use super::Console;
use super::html::{self, Nav, esc};
use super::session::Signed;
use crate::store::{AuditQuery, AuditRecord, MAX_AUDIT_PAGE, Store, StoreError};

/// The most audit rows one page reads from the store, newest first, whether the outcome
/// filter keeps them or not (then it says the view is truncated).
const MAX_SCANNED: usize = 20_000;
/// The most events listed in the table (newest first).
const MAX_LISTED: usize = 200;
/// Bars per chart.
const BUCKETS: usize = 24;

/// How an exchange ended, for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Granted,
    Denied,
    Upstream,
}

impl Class {
    pub fn of(outcome: &str) -> Class {
        if outcome == "ok" {
            Class::Granted
        } else if outcome.starts_with("entra_") || outcome == "issuer_unavailable" {
            Class::Upstream
        } else {
            Class::Denied
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Class::Granted => "granted",
            Class::Denied => "denied",
            Class::Upstream => "upstream",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Class::Granted => "granted",
            Class::Denied => "denied",
            Class::Upstream => "upstream error",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Class::Granted => "#2e7d32",
            Class::Denied => "#c62828",
            Class::Upstream => "#6a1b9a",
        }
    }

    const ALL: [Class; 3] = [Class::Granted, Class::Denied, Class::Upstream];
}

const IDENTITY_COLORS: [&str; 7] = [
    "#1565c0", "#ef6c00", "#00838f", "#ad1457", "#558b2f", "#5d4037", "#757575",
];

#[derive(Debug, Default, Deserialize)]
pub struct ActivityQuery {
    window: Option<String>,
    kind: Option<String>,
    outcome: Option<String>,
    identity: Option<String>,
}

/// Time windows offered, with their length in seconds.
const WINDOWS: [(&str, &str, u64); 5] = [
    ("1h", "last hour", 3_600),
    ("6h", "last 6 hours", 6 * 3_600),
    ("24h", "last 24 hours", 24 * 3_600),
    ("7d", "last 7 days", 7 * 86_400),
    ("30d", "last 30 days", 30 * 86_400),
];

/// One series of a stacked bar chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub counts: Vec<u64>,
}

/// A label for a bucket start: `HH:MM` within two days, else `MM-DD`.
fn time_label(epoch: u64, window: u64) -> String {
    let text = crate::clock::rfc3339(epoch);
    if window <= 2 * 86_400 {
        text.get(11..16).unwrap_or_default().to_owned()
    } else {
        text.get(5..10).unwrap_or_default().to_owned()
    }
}

/// A stacked bar chart as inline SVG: one bar per bucket, one segment per series.
pub fn stacked_bars(
    testid: &str,
    title: &str,
    series: &[Series],
    start: u64,
    bucket_secs: u64,
) -> String {
    const W: u64 = 760;
    const H: u64 = 220;
    const LEFT: u64 = 44;
    const RIGHT: u64 = 8;
    const TOP: u64 = 10;
    const BOTTOM: u64 = 28;
    let n = series.first().map(|s| s.counts.len()).unwrap_or(0).max(1) as u64;
    let totals: Vec<u64> = (0..n as usize)
        .map(|i| {
            series
                .iter()
                .map(|s| s.counts.get(i).copied().unwrap_or(0))
                .sum()
        })
        .collect();
    let max = totals.iter().copied().max().unwrap_or(0).max(1);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let slot = plot_w as f64 / n as f64;
    let bar = (slot * 0.8).max(1.0);
    let window = bucket_secs * n;
    let mut out = format!(
        "<svg class=\"chart\" data-testid=\"{testid}\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{}\">",
        esc(title)
    );
    // Axes and the top grid line, labelled with the largest bar.
    let _ = write!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{}\" y2=\"{TOP}\" stroke=\"#ddd\"/>\
         <line x1=\"{LEFT}\" y1=\"{y0}\" x2=\"{}\" y2=\"{y0}\" stroke=\"#888\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"11\" fill=\"#555\">{max}</text>\
         <text x=\"{}\" y=\"{y0}\" text-anchor=\"end\" font-size=\"11\" fill=\"#555\">0</text>",
        W - RIGHT,
        W - RIGHT,
        LEFT - 4,
        TOP + 4,
        LEFT - 4,
        y0 = TOP + plot_h,
    );
    for i in 0..n as usize {
        let x = LEFT as f64 + slot * i as f64 + (slot - bar) / 2.0;
        let mut y = (TOP + plot_h) as f64;
        let from = start + bucket_secs * i as u64;
        for s in series {
            let count = s.counts.get(i).copied().unwrap_or(0);
            if count == 0 {
                continue;
            }
            let h = plot_h as f64 * count as f64 / max as f64;
            y -= h;
            let _ = write!(
                out,
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{}: {count} ({} to {})</title></rect>",
                s.color,
                esc(&s.label),
                esc(&crate::clock::rfc3339(from)),
                esc(&crate::clock::rfc3339(from + bucket_secs)),
            );
        }
        if i % 6 == 0 {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" fill=\"#555\">{}</text>",
                LEFT as f64 + slot * i as f64,
                H - 10,
                esc(&time_label(from, window))
            );
        }
    }
    out.push_str("</svg>");
    out.push_str("<ul class=\"legend\">");
    for s in series {
        let total: u64 = s.counts.iter().sum();
        let _ = write!(
            out,
            "<li><svg width=\"12\" height=\"12\" aria-hidden=\"true\"><rect width=\"12\" height=\"12\" fill=\"{}\"/></svg> {} ({total})</li>",
            s.color,
            esc(&s.label)
        );
    }
    out.push_str("</ul>");
    out
}

/// Counts per bucket for events at `times`.
fn bucket(times: impl Iterator<Item = u64>, start: u64, bucket_secs: u64) -> Vec<u64> {
    let mut counts = vec![0u64; BUCKETS];
    for t in times {
        let i = (t.saturating_sub(start) / bucket_secs.max(1)) as usize;
        if let Some(c) = counts.get_mut(i.min(BUCKETS - 1)) {
            *c += 1;
        }
    }
    counts
}

/// An event read back from the store, keeping only what the page shows: what the charts
/// count for every event, and the table's text for the newest [`MAX_LISTED`].
struct Event {
    time: u64,
    kind: String,
    outcome: String,
    identity: Option<String>,
    /// The table's columns; `None` past the first [`MAX_LISTED`] events kept.
    shown: Option<Shown>,
}

/// The table's text of one event.
#[derive(Default)]
struct Shown {
    subject: String,
    actor: String,
    role: String,
    scope: String,
    credential: String,
    cache: String,
    action: String,
    reason: String,
    upstream_correlation_id: String,
}

impl Shown {
    fn of(record: &AuditRecord) -> Shown {
        let json: Value = serde_json::from_str(&record.event).unwrap_or(Value::Null);
        let text = |key: &str| {
            json.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Shown {
            subject: record.subject.clone().unwrap_or_default(),
            actor: record.actor.clone().unwrap_or_default(),
            role: text("role"),
            scope: text("scope"),
            credential: text("credential"),
            cache: text("cache"),
            action: text("action"),
            reason: text("reason"),
            upstream_correlation_id: text("upstream_correlation_id"),
        }
    }
}

/// What the page asks the store for.
struct Filters<'a> {
    since: u64,
    kind: &'a str,
    identity: &'a str,
    outcome: &'a str,
}

/// The events kept, newest first, and whether the scan stopped before the oldest.
struct Scan {
    events: Vec<Event>,
    truncated: bool,
}

/// Reads matching events newest first, a page at a time, until the window's start or
/// `max_scanned` rows read (kept or skipped by the outcome filter), whichever is first.
async fn scan(
    store: &dyn Store,
    filters: &Filters<'_>,
    max_scanned: usize,
) -> Result<Scan, StoreError> {
    let class_filter = Class::ALL.into_iter().find(|c| c.key() == filters.outcome);
    let exact_outcome =
        (filters.outcome != "all" && class_filter.is_none() && !filters.outcome.is_empty())
            .then(|| filters.outcome.to_owned());
    let mut events: Vec<Event> = Vec::new();
    let mut before = None;
    let mut scanned = 0usize;
    loop {
        let room = max_scanned.saturating_sub(scanned);
        let limit = room.min(MAX_AUDIT_PAGE as usize);
        if limit == 0 {
            // Out of budget: say so only if something older remains.
            let more = store
                .query_audit(&AuditQuery {
                    since: Some(filters.since),
                    kind: (filters.kind != "all").then(|| filters.kind.to_owned()),
                    identity: (!filters.identity.is_empty()).then(|| filters.identity.to_owned()),
                    outcome: exact_outcome.clone(),
                    before_id: before,
                    newest_first: true,
                    limit: 1,
                    ..Default::default()
                })
                .await?;
            return Ok(Scan {
                events,
                truncated: !more.is_empty(),
            });
        }
        let page = store
            .query_audit(&AuditQuery {
                since: Some(filters.since),
                kind: (filters.kind != "all").then(|| filters.kind.to_owned()),
                identity: (!filters.identity.is_empty()).then(|| filters.identity.to_owned()),
                outcome: exact_outcome.clone(),
                before_id: before,
                newest_first: true,
                limit: limit as u32,
                ..Default::default()
            })
            .await?;
        let full = page.len() == limit;
        scanned += page.len();
        before = page.last().map(|r| r.id);
        for record in page {
            let class = Class::of(&record.outcome);
            if class_filter.is_some_and(|c| c != class || record.kind != "exchange") {
                continue;
            }
            let shown = (events.len() < MAX_LISTED).then(|| Shown::of(&record));
            events.push(Event {
                time: record.time,
                kind: record.kind,
                outcome: record.outcome,
                identity: record.identity,
                shown,
            });
        }
        if !full {
            return Ok(Scan {
                events,
                truncated: false,
            });
        }
    }
}

fn option(value: &str, label: &str, current: &str) -> String {
    format!(
        "<option value=\"{}\"{}>{}</option>",
        esc(value),
        if value == current { " selected" } else { "" },
        esc(label)
    )
}

/// `GET /ui/activity`
pub async fn page(
    State(console): State<Console>,
    Signed(session): Signed,
    Query(query): Query<ActivityQuery>,
) -> Response {
    let window_key = query.window.as_deref().unwrap_or("24h");
    let (window_key, window_label, window) = WINDOWS
        .iter()
        .find(|(k, _, _)| *k == window_key)
        .copied()
        .unwrap_or(WINDOWS[2]);
    let kind = query.kind.as_deref().unwrap_or("exchange");
    let kind = if ["exchange", "admin", "all"].contains(&kind) {
        kind
    } else {
        "exchange"
    };
    let outcome = query.outcome.as_deref().map(str::trim).unwrap_or("all");
    let identity = query.identity.as_deref().map(str::trim).unwrap_or_default();
    let now = console.app.broker.clock().now();
    let bucket_secs = (window / BUCKETS as u64).max(1);
    let start = now.saturating_sub(bucket_secs * BUCKETS as u64);

    let Some(store) = console.app.broker.store() else {
        return html::error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&session),
            "No store",
            "No store is configured, so audit events are only in the log.",
        );
    };
    let class_filter = Class::ALL.into_iter().find(|c| c.key() == outcome);
    let filters = Filters {
        since: start,
        kind,
        identity,
        outcome,
    };
    let Scan { events, truncated } = match scan(store.as_ref(), &filters, MAX_SCANNED).await {
        Ok(s) => s,
        Err(e) => {
            return html::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(&session),
                "Store unavailable",
                &crate::api::error::store_failure(&e),
            );
        }
    };

    // Charts: exchanges only.
    let exchanges: Vec<&Event> = events.iter().filter(|e| e.kind == "exchange").collect();
    let by_outcome: Vec<Series> = Class::ALL
        .into_iter()
        .map(|c| Series {
            label: c.label().to_owned(),
            color: c.color(),
            counts: bucket(
                exchanges
                    .iter()
                    .filter(|e| Class::of(&e.outcome) == c)
                    .map(|e| e.time),
                start,
                bucket_secs,
            ),
        })
        .collect();
    let mut per_identity: HashMap<&str, u64> = HashMap::new();
    for e in &exchanges {
        *per_identity
            .entry(e.identity.as_deref().unwrap_or(""))
            .or_default() += 1;
    }
    let mut ranked: Vec<(&str, u64)> = per_identity.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let top: Vec<&str> = ranked
        .iter()
        .take(IDENTITY_COLORS.len() - 1)
        .map(|(n, _)| *n)
        .collect();
    let mut by_identity: Vec<Series> = top
        .iter()
        .enumerate()
        .map(|(i, name)| Series {
            label: if name.is_empty() {
                "(no identity: refused before one was chosen)".to_owned()
            } else {
                (*name).to_owned()
            },
            color: IDENTITY_COLORS[i],
            counts: bucket(
                exchanges
                    .iter()
                    .filter(|e| e.identity.as_deref().unwrap_or("") == *name)
                    .map(|e| e.time),
                start,
                bucket_secs,
            ),
        })
        .collect();
    if ranked.len() > top.len() {
        by_identity.push(Series {
            label: "other identities".to_owned(),
            color: IDENTITY_COLORS[IDENTITY_COLORS.len() - 1],
            counts: bucket(
                exchanges
                    .iter()
                    .filter(|e| !top.contains(&e.identity.as_deref().unwrap_or("")))
                    .map(|e| e.time),
                start,
                bucket_secs,
            ),
        });
    }
    let totals: Vec<u64> = by_outcome.iter().map(|s| s.counts.iter().sum()).collect();
    let charts = if exchanges.is_empty() {
        format!(
            "<p class=\"muted\" data-testid=\"no-exchanges\">No exchanges match in the {}.</p>",
            esc(window_label)
        )
    } else {
        format!(
            "<div class=\"summary\" data-testid=\"summary\"><span class=\"badge outcome-granted\">{} granted</span> \
             <span class=\"badge outcome-denied\">{} denied</span> <span class=\"badge outcome-upstream\">{} upstream errors</span></div>\
             <h2>Exchanges over time, by outcome</h2>{}<h2>Exchanges over time, by identity</h2>{}",
            totals.first().copied().unwrap_or(0),
            totals.get(1).copied().unwrap_or(0),
            totals.get(2).copied().unwrap_or(0),
            stacked_bars(
                "chart-outcome",
                "Exchanges over time by outcome",
                &by_outcome,
                start,
                bucket_secs
            ),
            stacked_bars(
                "chart-identity",
                "Exchanges over time by identity",
                &by_identity,
                start,
                bucket_secs
            ),
        )
    };

    // The table: newest first.
    let mut rows = String::new();
    for r in events.iter().take(MAX_LISTED) {
        let Some(e) = r.shown.as_ref() else {
            break;
        };
        let (class_key, class_label) = if r.kind == "exchange" {
            let c = Class::of(&r.outcome);
            (c.key(), c.label())
        } else if r.outcome == "ok" {
            ("granted", "ok")
        } else {
            ("denied", "refused")
        };
        let who = if r.kind == "exchange" && e.subject.is_empty() {
            "<span class=\"muted\" data-testid=\"no-subject\">(no subject: refused before the token was read)</span>"
                .to_owned()
        } else if r.kind == "exchange" {
            format!("<code>{}</code>", esc(&e.subject))
        } else {
            format!(
                "{} <span class=\"muted\">{}</span>",
                esc(&e.actor),
                esc(&e.role)
            )
        };
        let what = if r.kind == "exchange" {
            let mut w = esc(&e.scope).to_string();
            if !e.credential.is_empty() {
                let _ = write!(
                    w,
                    " <span class=\"muted\">via {}</span>",
                    esc(&e.credential)
                );
            }
            if !e.cache.is_empty() {
                let _ = write!(w, " <span class=\"muted\">cache {}</span>", esc(&e.cache));
            }
            w
        } else {
            let mut w = esc(&e.action).to_string();
            if !e.credential.is_empty() {
                let _ = write!(w, " {}", esc(&e.credential));
            }
            w
        };
        let reason = if r.outcome == "ok" {
            String::new()
        } else {
            let mut text = format!("<code>{}</code> {}", esc(&r.outcome), esc(&e.reason));
            if !e.upstream_correlation_id.is_empty() {
                let _ = write!(
                    text,
                    " <span class=\"muted\">(Entra correlation id {})</span>",
                    esc(&e.upstream_correlation_id)
                );
            }
            text
        };
        let _ = write!(
            rows,
            "<tr class=\"event\" data-kind=\"{kind}\" data-class=\"{class_key}\"><td class=\"time\">{time}</td><td>{kind}</td>\
             <td><span class=\"badge outcome-{class_key}\">{class_label}</span></td><td>{identity}</td><td>{who}</td><td>{what}</td><td class=\"reason\">{reason}</td></tr>",
            kind = esc(&r.kind),
            time = esc(&crate::clock::rfc3339(r.time)),
            identity = esc(r.identity.as_deref().unwrap_or_default()),
        );
    }
    if rows.is_empty() {
        rows = "<tr><td colspan=\"7\" class=\"muted\">No events match.</td></tr>".to_owned();
    }

    let registry = console.app.broker.registry();
    let mut identity_options = option("", "(all)", identity);
    for i in registry.identities() {
        identity_options.push_str(&option(&i.name, &i.name, identity));
    }
    if !identity.is_empty() && registry.identity(identity).is_none() {
        identity_options.push_str(&option(identity, identity, identity));
    }
    let mut window_options = String::new();
    for (k, label, _) in WINDOWS {
        window_options.push_str(&option(k, label, window_key));
    }
    let mut outcome_options = option("all", "(all)", outcome);
    for c in Class::ALL {
        outcome_options.push_str(&option(c.key(), c.label(), outcome));
    }
    if class_filter.is_none() && outcome != "all" && !outcome.is_empty() {
        outcome_options.push_str(&option(outcome, outcome, outcome));
    }
    let body = format!(
        "<h1>Activity</h1>\
         <form method=\"get\" action=\"/ui/activity\" class=\"filters\" data-testid=\"filters\">\
         <label>Time <select name=\"window\">{window_options}</select></label>\
         <label>Kind <select name=\"kind\">{k1}{k2}{k3}</select></label>\
         <label>Outcome <select name=\"outcome\">{outcome_options}</select></label>\
         <label>Identity <select name=\"identity\">{identity_options}</select></label>\
         <button type=\"submit\">Filter</button></form>\
         <p class=\"muted\">An outcome filter may also be an exact error code: <code>?outcome=no_matching_credential</code>. \
         Granted is <code>ok</code>; upstream errors are Entra's refusals and unreachable issuers; everything else is denied.</p>\
         {truncated}{charts}\
         <h2>Events <span class=\"muted\">(newest first, at most {MAX_LISTED})</span></h2>\
         <table class=\"list events\" data-testid=\"events\"><thead><tr><th>Time (UTC)</th><th>Kind</th><th>Outcome</th><th>Identity</th>\
         <th>Subject / actor</th><th>Scope / action</th><th>Reason</th></tr></thead><tbody>{rows}</tbody></table>",
        k1 = option("exchange", "exchanges", kind),
        k2 = option("admin", "admin changes", kind),
        k3 = option("all", "all", kind),
        truncated = if truncated {
            format!(
                "<p class=\"error\">The page read its limit of {MAX_SCANNED} events and older ones remain; the charts and the list cover only the newest events read. Narrow the filters.</p>"
            )
        } else {
            String::new()
        },
    );
    html::html(
        StatusCode::OK,
        html::page("Activity", Some(&session), Nav::Activity, &body),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AuditStore;
    use crate::store::sqlite::SqliteStore;

    fn record(time: u64, identity: &str, outcome: &str) -> AuditRecord {
        AuditRecord {
            id: 0,
            time,
            kind: "exchange".to_owned(),
            request_id: format!("r{time}"),
            actor: Some("repo:contoso/app:ref:refs/heads/main".to_owned()),
            identity: (!identity.is_empty()).then(|| identity.to_owned()),
            subject: Some("repo:contoso/app:ref:refs/heads/main".to_owned()),
            outcome: outcome.to_owned(),
            event: format!(r#"{{"scope":"s","reason":"because {time}"}}"#),
        }
    }

    fn filters(outcome: &str) -> Filters<'_> {
        Filters {
            since: 0,
            kind: "exchange",
            identity: "",
            outcome,
        }
    }

    /// A flood of old junk denials must not hide what happened since: the scan reads
    /// newest first, and its budget counts every row read, kept or not.
    #[tokio::test]
    async fn a_flood_of_old_denials_does_not_hide_recent_events() {
        let store = SqliteStore::open("sqlite::memory:").await.unwrap();
        let junk: Vec<_> = (0..50)
            .map(|i| record(1_000 + i, "", "token_invalid"))
            .collect();
        store.append_audit(&junk).await.unwrap();
        let recent: Vec<_> = (0..3).map(|i| record(2_000 + i, "deploy", "ok")).collect();
        store.append_audit(&recent).await.unwrap();

        let all = scan(&store, &filters("all"), 20).await.unwrap();
        assert!(all.truncated);
        assert_eq!(all.events.len(), 20);
        let times: Vec<u64> = all.events.iter().take(3).map(|e| e.time).collect();
        assert_eq!(times, [2_002, 2_001, 2_000], "newest first");
        assert_eq!(all.events[0].shown.as_ref().unwrap().reason, "because 2002");

        // Filtering for granted exchanges still scans at most the budget.
        let granted = scan(&store, &filters("granted"), 20).await.unwrap();
        assert!(granted.truncated, "skipped rows count toward the budget");
        assert_eq!(granted.events.len(), 3);

        // Within budget, the whole window is read and nothing is truncated.
        let whole = scan(&store, &filters("all"), 1_000).await.unwrap();
        assert!(!whole.truncated);
        assert_eq!(whole.events.len(), 53);
        // Exactly the budget: nothing older remains, so not truncated.
        let exact = scan(&store, &filters("all"), 53).await.unwrap();
        assert!(!exact.truncated);
        assert_eq!(exact.events.len(), 53);
    }

    #[test]
    fn outcomes_are_grouped_for_people() {
        assert_eq!(Class::of("ok"), Class::Granted);
        assert_eq!(Class::of("no_matching_credential"), Class::Denied);
        assert_eq!(Class::of("token_expired"), Class::Denied);
        assert_eq!(
            Class::of("entra_no_matching_federated_credential"),
            Class::Upstream
        );
        assert_eq!(Class::of("entra_unavailable"), Class::Upstream);
        assert_eq!(Class::of("issuer_unavailable"), Class::Upstream);
    }

    #[test]
    fn events_fall_into_their_buckets() {
        let counts = bucket([100, 109, 110, 339, 400, 5].into_iter(), 100, 10);
        assert_eq!(counts.len(), BUCKETS);
        assert_eq!(counts[0], 3, "before the start counts in the first bucket");
        assert_eq!(counts[1], 1);
        assert_eq!(
            counts[23], 2,
            "the last bucket takes what is at or after its start"
        );
    }

    #[test]
    fn the_chart_has_a_bar_segment_per_nonzero_count_and_escapes_labels() {
        let mut counts = vec![0; BUCKETS];
        counts[3] = 2;
        counts[4] = 1;
        let series = [
            Series {
                label: "<b>granted</b>".into(),
                color: "#2e7d32",
                counts: counts.clone(),
            },
            Series {
                label: "denied".into(),
                color: "#c62828",
                counts: vec![0; BUCKETS],
            },
        ];
        let svg = stacked_bars("chart", "t", &series, 0, 3600);
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 2);
        assert!(svg.contains("&lt;b&gt;granted&lt;/b&gt;: 2"), "{svg}");
        assert!(!svg.contains("<b>granted"));
        assert!(
            svg.contains(">2</text>"),
            "the axis is labelled with the largest bar"
        );
    }

    #[test]
    fn time_labels_follow_the_window() {
        assert_eq!(time_label(1_795_406_154, 86_400), "03:55");
        assert_eq!(time_label(1_795_406_154, 7 * 86_400), "11-23");
    }
}
