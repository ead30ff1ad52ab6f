//! The report: one serialisable value, printed as a table, Markdown or JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::Measured;
use crate::measure::{
    AgainstLimit, AgentFootprint, AuditTally, Breakdown, Coalescing, ColdPath, Memory, TlsRows,
    VerifiedRows,
};

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub note: &'static str,
    /// `release` or `debug`; debug figures say nothing about the broker's speed.
    pub build: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub concurrency: usize,
    pub per_round: String,
    pub warmup_per_round: String,
    pub rounds: usize,
    pub order: &'static str,
    pub quick: bool,
    pub logging: &'static str,
    /// Whether the broker remembered verified tokens (its default).
    pub verified_cache: bool,
    /// Size of the job token sent as the bearer.
    pub token_bytes: usize,
    /// Size of the broker's answer body (the bare handlers answer about 35 bytes).
    pub broker_answer_bytes: usize,
    /// Distinct job tokens minted before the rounds; the every-request-verified rows take
    /// the next one on every request (`--distinct`).
    pub distinct_tokens: usize,
    /// How long minting them took, on every core.
    pub distinct_mint_secs: f64,
    /// The sections run (`--only`), in order.
    pub sections: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Budget {
    /// Median over rounds of broker requests/s ÷ the limit's requests/s in the same round.
    pub ratio: f64,
    pub budget: f64,
    pub pass: bool,
    pub verdict: &'static str,
    /// Broker ÷ limit requests/s, round by round.
    pub round_ratios: Vec<f64>,
    /// Limit CPU per request / broker CPU per request: the throughput ratio both would
    /// reach with the cores to themselves. A cross-check on a noisy machine, not the budget.
    pub cpu_ratio: f64,
}

/// The plain rows measured in one set of interleaved rounds, and the in-process breakdown.
#[derive(Debug, Clone, Serialize)]
pub struct PlainRows {
    pub floor: Measured,
    pub limit: Measured,
    /// Only with `--split`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_logic: Option<Measured>,
    pub broker_cache_hit: Measured,
    pub cache_hit_vs_limit: Budget,
    pub agent_floor: Measured,
    pub agent_cache_hit: Measured,
    /// The agent's cache hit against the `GET` floor.
    pub agent_vs_floor: Budget,
    pub breakdown: Breakdown,
}

/// Every section is there unless `--only` left it out.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date_utc: String,
    pub machine: Machine,
    pub settings: Settings,
    #[serde(flatten)]
    pub plain: Option<PlainRows>,
    /// The plain every-request-verified row and the limit of its rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every_request_verified: Option<VerifiedRows>,
    /// The cache-hit rows with the broker and the limit serving TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsRows>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coalescing: Option<Coalescing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_path: Option<ColdPath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_footprint: Option<AgentFootprint>,
    pub memory: Memory,
}

impl Report {
    /// The load-generator targets in the order they ran.
    pub fn measured(&self) -> Vec<&Measured> {
        let mut out = Vec::new();
        if let Some(p) = &self.plain {
            out.extend([&p.floor, &p.limit]);
            out.extend(&p.broker_logic);
            out.extend([&p.broker_cache_hit, &p.agent_floor, &p.agent_cache_hit]);
        }
        if let Some(v) = &self.every_request_verified {
            out.extend([&v.limit, &v.broker_every_request_verified.broker]);
        }
        if let Some(t) = &self.tls {
            out.push(&t.limit);
            out.extend(t.broker_cache_hit.as_ref().map(|row| &row.broker));
            out.push(&t.broker_every_request_verified.broker);
        }
        if let Some(c) = &self.cold_path {
            out.extend([&c.entra_alone, &c.broker]);
        }
        out
    }

    /// The broker rows measured against a limit of their own rounds (every request
    /// verified, plain; the TLS rows), with the name of that limit.
    pub fn against_limit_rows(&self) -> Vec<(&'static str, &AgainstLimit)> {
        let mut out = Vec::new();
        if let Some(v) = &self.every_request_verified {
            out.push(("limit", &v.broker_every_request_verified));
        }
        if let Some(t) = &self.tls {
            out.extend(t.broker_cache_hit.iter().map(|row| ("TLS limit", row)));
            out.push(("TLS limit", &t.broker_every_request_verified));
        }
        out
    }
}

/// The audit line of a broker row: events stored against requests answered, dropped.
pub fn audit(a: &AuditTally) -> String {
    format!(
        "audit events stored {} of {} answered, {} dropped{}",
        a.events_stored,
        a.requests_answered,
        a.events_dropped,
        if a.complete { "" } else { " (INCOMPLETE)" }
    )
}

fn ratios(b: &Budget) -> String {
    b.round_ratios
        .iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn bytes(n: Option<u64>) -> String {
    n.map_or_else(
        || "not measured".to_owned(),
        |n| format!("{n} bytes ({:.1} MiB)", n as f64 / (1024.0 * 1024.0)),
    )
}

/// The cold path's verdict line.
fn cold_result(c: &ColdPath) -> String {
    let mut line = format!(
        "added p50 {} / p99 {} (Entra asked directly: {} / {}): {}; CPU per cold exchange {} (this process), {} of it the broker's",
        latency(c.added_p50_us),
        latency(c.added_p99_us),
        latency(c.entra_alone_added_p50_us),
        latency(c.entra_alone_added_p99_us),
        c.verdict,
        latency(c.cpu_us_per_cold_exchange),
        latency(c.broker_cpu_us_per_cold_exchange),
    );
    if let Some(entra) = c.entra_process_cpu_us_per_request {
        line.push_str(&format!(
            "; Entra's own process {} per token request",
            latency(entra)
        ));
    }
    line
}

/// The agent's footprint line.
fn footprint(f: &AgentFootprint) -> String {
    let mut line = format!(
        "stripped {}, idle RSS {}",
        bytes(f.stripped_bytes),
        f.idle_rss_kib
            .map_or_else(|| "not measured".to_owned(), |k| format!("{k} kB")),
    );
    if f.idle_rss_kib.is_some() {
        let _ = write!(
            line,
            " (median of {}, after {} ms)",
            f.idle_rss_samples_kib.len(),
            f.settle_ms
        );
    }
    if let Some(note) = &f.note {
        let _ = write!(line, "; {note}");
    }
    line
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `YYYY-MM-DD HH:MM` in UTC from Unix seconds.
pub fn utc_timestamp(secs: u64) -> String {
    wif_broker::clock::rfc3339(secs)[..16].replacen('T', " ", 1)
}

pub fn trim_float(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

pub fn latency(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "BELOW BUDGET" }
}

pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "WIF Broker benchmark, {} UTC, {} cores ({}), loopback, one process",
        r.date_utc, r.machine.cores, r.machine.cpu
    );
    let _ = writeln!(out, "Note: {}.", r.machine.note);
    if r.machine.build != "release" {
        let _ = writeln!(
            out,
            "Warning: {} build; the figures only show that the harness works (use --release).",
            r.machine.build
        );
    }
    let _ = writeln!(
        out,
        "Settings: concurrency {}, {} per round after {} warm-up, {} round(s) interleaved ({}), medians reported; logging {}; sections: {}.",
        r.settings.concurrency,
        r.settings.per_round,
        r.settings.warmup_per_round,
        r.settings.rounds,
        r.settings.order,
        r.settings.logging,
        r.settings.sections.join(", "),
    );
    if r.plain.is_some() {
        let _ = writeln!(
            out,
            "Request: a {}-byte job token as bearer, the same on every request; the broker answers {} bytes; its verified-token cache is {}.",
            r.settings.token_bytes,
            r.settings.broker_answer_bytes,
            if r.settings.verified_cache {
                "on (the default: a repeated token is not verified again)"
            } else {
                "off (every request verifies the signature, like a new token each time)"
            }
        );
    }
    if r.settings.distinct_tokens > 0 {
        let _ = writeln!(
            out,
            "Every-request-verified rows: verified-token cache off, each request with the next of {} distinct job tokens (minted in {:.1} s).",
            r.settings.distinct_tokens, r.settings.distinct_mint_secs
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<66} {:>11} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "measurement", "requests/s", "p50", "p99", "CPU/req", "requests", "errors"
    );
    for m in r.measured() {
        let _ = writeln!(
            out,
            "{:<66} {:>11.0} {:>9} {:>9} {:>9} {:>9} {:>6}",
            m.what,
            m.requests_per_sec,
            latency(m.p50_us),
            latency(m.p99_us),
            latency(m.cpu_us_per_request),
            m.requests,
            m.errors
        );
    }
    let _ = writeln!(out);
    if let Some(p) = &r.plain {
        let b = &p.cache_hit_vs_limit;
        let _ = writeln!(
            out,
            "ratio broker / limit: {:.3} (budget >= {:.2}): {}  [per round: {}]",
            b.ratio,
            b.budget,
            b.verdict,
            ratios(b)
        );
        let _ = writeln!(
            out,
            "cross-check from CPU time per request (limit / broker): {:.3}",
            b.cpu_ratio
        );
        let a = &p.agent_vs_floor;
        let _ = writeln!(
            out,
            "ratio agent / GET floor: {:.3} (budget >= {:.2}): {}  [per round: {}]; CPU cross-check {:.3}",
            a.ratio,
            a.budget,
            a.verdict,
            ratios(a),
            a.cpu_ratio
        );
    }
    for (limit, row) in r.against_limit_rows() {
        let b = &row.vs_limit;
        let _ = writeln!(
            out,
            "ratio {} / {limit}: {:.3} (budget >= {:.2}): {}  [per round: {}]; CPU cross-check {:.3}; {}",
            row.broker.what,
            b.ratio,
            b.budget,
            b.verdict,
            ratios(b),
            b.cpu_ratio,
            audit(&row.audit),
        );
    }
    if let Some(c) = &r.coalescing {
        let _ = writeln!(
            out,
            "coalescing: {} cold requests, Entra delayed {} ms -> entra token calls: {} (target exactly {}): {}",
            c.cold_requests,
            c.entra_delay_ms,
            c.entra_token_calls,
            c.target_entra_calls,
            if c.pass { "PASS" } else { "FAIL" },
        );
        let _ = writeln!(
            out,
            "            {} ok, {} failed, {} distinct access token(s), {} callers coalesced on the miss, {:.0} ms wall; broker max_connections {} ({} connection(s) beyond it)",
            c.ok,
            c.failed,
            c.distinct_access_tokens,
            c.cache_misses,
            c.wall_ms,
            c.broker_max_connections,
            c.broker_connections_over_limit
        );
    }
    if let Some(cold) = &r.cold_path {
        let _ = writeln!(
            out,
            "cold path: {} distinct (identity, scope) keys ({} identities x {} scopes), concurrency {}, Entra answers after {} ms: {} (budget: added p99 <= {})",
            cold.keys,
            cold.identities,
            cold.scopes_per_identity,
            cold.concurrency,
            cold.entra_delay_ms,
            cold.entra,
            latency(cold.budget_added_p99_us),
        );
        let _ = writeln!(
            out,
            "           {}; {:.2} Entra call(s) per cold exchange{}",
            cold_result(cold),
            cold.entra_calls_per_cold_exchange,
            cold.entra_connections_per_cold_exchange
                .map(|c| format!(", {c:.2} new Entra connection(s) per cold exchange"))
                .unwrap_or_default()
        );
    }
    if let Some(f) = &r.agent_footprint {
        let _ = writeln!(out, "agent footprint ({}): {}", f.binary, footprint(f));
    }
    if let Some(p) = &r.plain {
        let d = &p.breakdown;
        let _ = writeln!(
            out,
            "in-process cache-hit path, one task, no HTTP (µs per call, {} iterations): parse {:.1}, RS256 verify {:.1}, cache hit {:.1}, metrics {:.1}, audit JSON {:.1}; whole exchange {:.1}",
            d.iterations,
            d.parse_us,
            d.rs256_verify_us,
            d.cache_hit_us,
            d.metrics_us,
            d.audit_json_us,
            d.exchange_cache_hit_us
        );
    }
    let _ = writeln!(
        out,
        "RSS after the run: {} (peak {}) for the {}",
        mib(r.memory.vm_rss_kib),
        mib(r.memory.vm_hwm_kib),
        r.memory.scope
    );
    for m in r.measured() {
        if let Some(e) = m.first_error() {
            let _ = writeln!(out, "first error ({}): {e}", m.what);
        }
    }
    if let Some(e) = r.coalescing.as_ref().and_then(|c| c.first_error.as_ref()) {
        let _ = writeln!(out, "first error (coalescing): {e}");
    }
    out
}

pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Run {} UTC on {} cores ({}), shared machine; load generator and servers in one process on one tokio runtime, sharing the cores. Concurrency {}, {} per round after {} warm-up, {} interleaved round(s), medians.",
        r.date_utc,
        r.machine.cores,
        r.machine.cpu,
        r.settings.concurrency,
        r.settings.per_round,
        r.settings.warmup_per_round,
        r.settings.rounds
    );
    if r.machine.build != "release" {
        let _ = writeln!(
            out,
            "\n**{} build: these figures only show that the harness works.**",
            r.machine.build
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| Measurement | Requests/s | p50 | p99 | CPU/req | Budget | Result |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---|---|");
    let row = |out: &mut String, m: &Measured, budget: &str, result: &str| {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {} | {budget} | {result} |",
            m.what,
            m.requests_per_sec,
            latency(m.p50_us),
            latency(m.p99_us),
            latency(m.cpu_us_per_request)
        );
    };
    if let Some(p) = &r.plain {
        row(&mut out, &p.floor, "(context)", "");
        row(&mut out, &p.limit, "(the limit)", "");
        if let Some(logic) = &p.broker_logic {
            row(&mut out, logic, "(context)", "");
        }
        let b = &p.cache_hit_vs_limit;
        row(
            &mut out,
            &p.broker_cache_hit,
            "≥ 0.80 × limit",
            &format!(
                "{:.3} × limit: {} (CPU cross-check {:.3})",
                b.ratio, b.verdict, b.cpu_ratio
            ),
        );
    }
    let budget_row = |out: &mut String, limit: &str, tls: &AgainstLimit| {
        let b = &tls.vs_limit;
        row(
            out,
            &tls.broker,
            &format!("≥ {:.2} × {limit}, 0 audit events dropped", b.budget),
            &format!(
                "{:.3} × {limit}: {} (CPU cross-check {:.3}); {}",
                b.ratio,
                b.verdict,
                b.cpu_ratio,
                audit(&tls.audit)
            ),
        );
    };
    if let Some(v) = &r.every_request_verified {
        row(&mut out, &v.limit, "(the limit of these rounds)", "");
        budget_row(&mut out, "limit", &v.broker_every_request_verified);
    }
    if let Some(p) = &r.plain {
        row(&mut out, &p.agent_floor, "(context)", "");
        let a = &p.agent_vs_floor;
        row(
            &mut out,
            &p.agent_cache_hit,
            &format!("≥ {:.2} × GET floor", a.budget),
            &format!(
                "{:.3} × floor: {} (CPU cross-check {:.3})",
                a.ratio, a.verdict, a.cpu_ratio
            ),
        );
    }
    if let Some(t) = &r.tls {
        row(&mut out, &t.limit, "(the TLS limit)", "");
        if let Some(repeated) = &t.broker_cache_hit {
            let b = &repeated.vs_limit;
            row(
                &mut out,
                &repeated.broker,
                &format!("≥ {:.2} × TLS limit", b.budget),
                &format!(
                    "{:.3} × TLS limit: {} (CPU cross-check {:.3})",
                    b.ratio, b.verdict, b.cpu_ratio
                ),
            );
        }
        budget_row(&mut out, "TLS limit", &t.broker_every_request_verified);
    }
    if let Some(cold) = &r.cold_path {
        row(
            &mut out,
            &cold.entra_alone,
            &format!(
                "(context: Entra answers after {} ms; {})",
                cold.entra_delay_ms, cold.entra
            ),
            "",
        );
        row(
            &mut out,
            &cold.broker,
            &format!(
                "{} keys at concurrency {}: added p99 ≤ {}",
                cold.keys,
                cold.concurrency,
                latency(cold.budget_added_p99_us)
            ),
            &cold_result(cold),
        );
    }
    if let Some(f) = &r.agent_footprint {
        let _ = writeln!(
            out,
            "| Agent binary, stripped, and idle RSS | | | | | (informative) | {} |",
            footprint(f)
        );
    }
    if let Some(c) = &r.coalescing {
        let _ = writeln!(
            out,
            "| Coalescing: {} concurrent cold requests, Entra delayed {} ms (broker max_connections {}) | | | | | exactly {} Entra call, every caller answered | {} Entra call(s), {} of {} callers answered: {} |",
            c.cold_requests,
            c.entra_delay_ms,
            c.broker_max_connections,
            c.target_entra_calls,
            c.entra_token_calls,
            c.ok,
            c.cold_requests,
            if c.pass { "PASS" } else { "FAIL" }
        );
    }
    let _ = writeln!(
        out,
        "| RSS after the run, whole benchmark process | | | | | (informative) | {} (peak {}) |",
        mib(r.memory.vm_rss_kib),
        mib(r.memory.vm_hwm_kib)
    );
    if let Some(p) = &r.plain {
        let d = &p.breakdown;
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "In-process cache-hit path, one task, no HTTP (µs per call): parse {:.1}, RS256 verify {:.1}, cache hit {:.1}, metrics {:.1}, audit JSON {:.1}; whole `Broker::exchange` {:.1}.",
            d.parse_us,
            d.rs256_verify_us,
            d.cache_hit_us,
            d.metrics_us,
            d.audit_json_us,
            d.exchange_cache_hit_us
        );
    }
    out
}
