//! The report: one serialisable value, printed as a table, Markdown or JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::Measured;
use crate::measure::{
    AgainstLimit, AgentFootprint, Breakdown, Coalescing, ColdPath, Memory, TlsRows,
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

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date_utc: String,
    pub machine: Machine,
    pub settings: Settings,
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
    /// The cache-hit rows with the broker and the limit serving TLS.
    pub tls: TlsRows,
    pub coalescing: Coalescing,
    pub cold_path: ColdPath,
    pub agent_footprint: AgentFootprint,
    pub breakdown: Breakdown,
    pub memory: Memory,
}

impl Report {
    /// The load-generator targets in the order they ran.
    pub fn measured(&self) -> impl Iterator<Item = &Measured> {
        [&self.floor, &self.limit]
            .into_iter()
            .chain(&self.broker_logic)
            .chain([
                &self.broker_cache_hit,
                &self.agent_floor,
                &self.agent_cache_hit,
                &self.tls.limit,
            ])
            .chain(self.tls.broker_cache_hit.as_ref().map(|row| &row.broker))
            .chain([
                &self.tls.broker_every_request_verified.broker,
                &self.cold_path.entra_alone,
                &self.cold_path.broker,
            ])
    }

    /// The TLS broker rows with their budgets.
    pub fn tls_rows(&self) -> impl Iterator<Item = &AgainstLimit> {
        self.tls
            .broker_cache_hit
            .iter()
            .chain([&self.tls.broker_every_request_verified])
    }
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
    format!(
        "added p50 {} / p99 {} (Entra asked directly: {} / {}): {}; CPU per cold exchange {} (whole process), {} of it the broker's",
        latency(c.added_p50_us),
        latency(c.added_p99_us),
        latency(c.entra_alone_added_p50_us),
        latency(c.entra_alone_added_p99_us),
        c.verdict,
        latency(c.cpu_us_per_cold_exchange),
        latency(c.broker_cpu_us_per_cold_exchange),
    )
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
        "Settings: concurrency {}, {} per round after {} warm-up, {} round(s) interleaved ({}), medians reported; logging {}.",
        r.settings.concurrency,
        r.settings.per_round,
        r.settings.warmup_per_round,
        r.settings.rounds,
        r.settings.order,
        r.settings.logging,
    );
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
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<64} {:>11} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "measurement", "requests/s", "p50", "p99", "CPU/req", "requests", "errors"
    );
    for m in r.measured() {
        let _ = writeln!(
            out,
            "{:<64} {:>11.0} {:>9} {:>9} {:>9} {:>9} {:>6}",
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
    let b = &r.cache_hit_vs_limit;
    let _ = writeln!(
        out,
        "ratio broker / limit: {:.3} (budget >= {:.2}): {}  [per round: {}]",
        b.ratio,
        b.budget,
        b.verdict,
        b.round_ratios
            .iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "cross-check from CPU time per request (limit / broker): {:.3}",
        b.cpu_ratio
    );
    let a = &r.agent_vs_floor;
    let _ = writeln!(
        out,
        "ratio agent / GET floor: {:.3} (budget >= {:.2}): {}  [per round: {}]; CPU cross-check {:.3}",
        a.ratio,
        a.budget,
        a.verdict,
        ratios(a),
        a.cpu_ratio
    );
    for row in r.tls_rows() {
        let b = &row.vs_limit;
        let _ = writeln!(
            out,
            "ratio {} / TLS limit: {:.3} (budget >= {:.2}): {}  [per round: {}]; CPU cross-check {:.3}",
            row.broker.what,
            b.ratio,
            b.budget,
            b.verdict,
            ratios(b),
            b.cpu_ratio
        );
    }
    let c = &r.coalescing;
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
        "            {} ok, {} failed, {} distinct access token(s), {} callers coalesced on the miss, {:.0} ms wall",
        c.ok, c.failed, c.distinct_access_tokens, c.cache_misses, c.wall_ms
    );
    let cold = &r.cold_path;
    let _ = writeln!(
        out,
        "cold path: {} distinct (identity, scope) keys ({} identities x {} scopes), concurrency {}, Entra answers after {} ms (budget: added p99 <= {})",
        cold.keys,
        cold.identities,
        cold.scopes_per_identity,
        cold.concurrency,
        cold.entra_delay_ms,
        latency(cold.budget_added_p99_us),
    );
    let _ = writeln!(
        out,
        "           {}; {:.2} Entra call(s) per cold exchange",
        cold_result(cold),
        cold.entra_calls_per_cold_exchange
    );
    let _ = writeln!(
        out,
        "agent footprint ({}): {}",
        r.agent_footprint.binary,
        footprint(&r.agent_footprint)
    );
    let d = &r.breakdown;
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
    if let Some(e) = &c.first_error {
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
    row(&mut out, &r.floor, "(context)", "");
    row(&mut out, &r.limit, "(the limit)", "");
    if let Some(logic) = &r.broker_logic {
        row(&mut out, logic, "(context)", "");
    }
    let b = &r.cache_hit_vs_limit;
    row(
        &mut out,
        &r.broker_cache_hit,
        "≥ 0.80 × limit",
        &format!(
            "{:.3} × limit: {} (CPU cross-check {:.3})",
            b.ratio, b.verdict, b.cpu_ratio
        ),
    );
    row(&mut out, &r.agent_floor, "(context)", "");
    let a = &r.agent_vs_floor;
    row(
        &mut out,
        &r.agent_cache_hit,
        &format!("≥ {:.2} × GET floor", a.budget),
        &format!(
            "{:.3} × floor: {} (CPU cross-check {:.3})",
            a.ratio, a.verdict, a.cpu_ratio
        ),
    );
    row(&mut out, &r.tls.limit, "(the TLS limit)", "");
    for tls in r.tls_rows() {
        let b = &tls.vs_limit;
        row(
            &mut out,
            &tls.broker,
            &format!("≥ {:.2} × TLS limit", b.budget),
            &format!(
                "{:.3} × TLS limit: {} (CPU cross-check {:.3})",
                b.ratio, b.verdict, b.cpu_ratio
            ),
        );
    }
    let cold = &r.cold_path;
    row(
        &mut out,
        &cold.entra_alone,
        &format!("(context: Entra answers after {} ms)", cold.entra_delay_ms),
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
    let _ = writeln!(
        out,
        "| Agent binary, stripped, and idle RSS | | | | | (informative) | {} |",
        footprint(&r.agent_footprint)
    );
    let c = &r.coalescing;
    let _ = writeln!(
        out,
        "| Coalescing: {} concurrent cold requests, Entra delayed {} ms | | | | | exactly {} Entra call | {} Entra call(s): {} |",
        c.cold_requests,
        c.entra_delay_ms,
        c.target_entra_calls,
        c.entra_token_calls,
        if c.pass { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(
        out,
        "| RSS after the run, whole benchmark process | | | | | (informative) | {} (peak {}) |",
        mib(r.memory.vm_rss_kib),
        mib(r.memory.vm_hwm_kib)
    );
    let d = &r.breakdown;
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
    out
}
