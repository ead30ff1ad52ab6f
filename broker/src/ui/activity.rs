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
use crate::store::{AuditQuery, AuditRecord, MAX_AUDIT_PAGE};

/// The most events one page reads from the store (then it says the view is truncated).
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

/// An event read back from the store, with its JSON.
struct Event {
    record: AuditRecord,
    json: Value,
}

impl Event {
    fn text(&self, key: &str) -> &str {
        self.json
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
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
    let mut events: Vec<Event> = Vec::new();
    let mut after = None;
    let mut truncated = false;
    loop {
        let page = store
            .query_audit(&AuditQuery {
                since: Some(start),
                until: None,
                kind: (kind != "all").then(|| kind.to_owned()),
                identity: (!identity.is_empty()).then(|| identity.to_owned()),
                subject: None,
                outcome: (outcome != "all" && class_filter.is_none() && !outcome.is_empty())
                    .then(|| outcome.to_owned()),
                after_id: after,
                limit: MAX_AUDIT_PAGE,
            })
            .await;
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                return html::error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some(&session),
                    "Store unavailable",
                    &e.to_string(),
                );
            }
        };
        let full = page.len() == MAX_AUDIT_PAGE as usize;
        after = page.last().map(|r| r.id);
        for record in page {
            let class = Class::of(&record.outcome);
            if class_filter.is_some_and(|c| c != class || record.kind != "exchange") {
                continue;
            }
            let json = serde_json::from_str(&record.event).unwrap_or(Value::Null);
            events.push(Event { record, json });
        }
        if !full {
            break;
        }
        if events.len() >= MAX_SCANNED {
            truncated = true;
            break;
        }
    }

    // Charts: exchanges only.
    let exchanges: Vec<&Event> = events
        .iter()
        .filter(|e| e.record.kind == "exchange")
        .collect();
    let by_outcome: Vec<Series> = Class::ALL
        .into_iter()
        .map(|c| Series {
            label: c.label().to_owned(),
            color: c.color(),
            counts: bucket(
                exchanges
                    .iter()
                    .filter(|e| Class::of(&e.record.outcome) == c)
                    .map(|e| e.record.time),
                start,
                bucket_secs,
            ),
        })
        .collect();
    let mut per_identity: HashMap<&str, u64> = HashMap::new();
    for e in &exchanges {
        *per_identity
            .entry(e.record.identity.as_deref().unwrap_or(""))
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
                    .filter(|e| e.record.identity.as_deref().unwrap_or("") == *name)
                    .map(|e| e.record.time),
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
                    .filter(|e| !top.contains(&e.record.identity.as_deref().unwrap_or("")))
                    .map(|e| e.record.time),
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
    for e in events.iter().rev().take(MAX_LISTED) {
        let r = &e.record;
        let (class_key, class_label) = if r.kind == "exchange" {
            let c = Class::of(&r.outcome);
            (c.key(), c.label())
        } else if r.outcome == "ok" {
            ("granted", "ok")
        } else {
            ("denied", "refused")
        };
        let who = if r.kind == "exchange" {
            format!(
                "<code>{}</code>",
                esc(r.subject.as_deref().unwrap_or_default())
            )
        } else {
            format!(
                "{} <span class=\"muted\">{}</span>",
                esc(r.actor.as_deref().unwrap_or_default()),
                esc(e.text("role"))
            )
        };
        let what = if r.kind == "exchange" {
            let mut w = esc(e.text("scope")).to_string();
            if !e.text("credential").is_empty() {
                let _ = write!(
                    w,
                    " <span class=\"muted\">via {}</span>",
                    esc(e.text("credential"))
                );
            }
            if !e.text("cache").is_empty() {
                let _ = write!(
                    w,
                    " <span class=\"muted\">cache {}</span>",
                    esc(e.text("cache"))
                );
            }
            w
        } else {
            let mut w = esc(e.text("action")).to_string();
            if !e.text("credential").is_empty() {
                let _ = write!(w, " {}", esc(e.text("credential")));
            }
            w
        };
        let reason = if r.outcome == "ok" {
            String::new()
        } else {
            let mut text = format!("<code>{}</code> {}", esc(&r.outcome), esc(e.text("reason")));
            if !e.text("upstream_correlation_id").is_empty() {
                let _ = write!(
                    text,
                    " <span class=\"muted\">(Entra correlation id {})</span>",
                    esc(e.text("upstream_correlation_id"))
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
                "<p class=\"error\">More than {MAX_SCANNED} events match; the charts and the list show the oldest {MAX_SCANNED}. Narrow the filters.</p>"
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
