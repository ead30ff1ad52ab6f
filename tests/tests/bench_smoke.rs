//! The benchmark harness must keep working: `wif-bench --quick` runs every measurement
//! with tiny counts, exits 0 and reports every figure as a number. Speed is never
//! asserted here; the machine running the tests may be arbitrarily slow or busy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

fn wif_bench(args: &[&str]) -> Output {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_wif-bench"))
        .args(args)
        .output()
        .expect("wif-bench runs");
    assert!(
        output.status.success(),
        "wif-bench {args:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    // Generous: --quick takes about a second; this only catches a harness that hangs.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "wif-bench --quick took {:?}",
        started.elapsed()
    );
    output
}

fn number(report: &Value, path: &str) -> f64 {
    let value = report
        .pointer(path)
        .unwrap_or_else(|| panic!("no {path} in the report: {report:#}"));
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {value}"))
}

#[test]
fn the_quick_benchmark_reports_every_figure_as_json() {
    let output = wif_bench(&["--quick", "--split", "--json"]);
    let report: Value = serde_json::from_slice(&output.stdout).expect("stdout is one JSON object");

    for target in ["floor", "limit", "broker_logic", "broker_cache_hit"] {
        for figure in ["requests_per_sec", "p50_us", "p99_us", "cpu_us_per_request"] {
            let value = number(&report, &format!("/{target}/{figure}"));
            assert!(value > 0.0, "{target}.{figure} = {value}");
        }
        assert!(number(&report, &format!("/{target}/requests")) > 0.0);
        assert_eq!(
            number(&report, &format!("/{target}/errors")),
            0.0,
            "{target} had errors: {:#}",
            report[target]
        );
    }

    let ratio = number(&report, "/cache_hit_vs_limit/ratio");
    assert!(ratio > 0.0, "ratio {ratio}");
    assert_eq!(number(&report, "/cache_hit_vs_limit/budget"), 0.80);
    assert!(number(&report, "/cache_hit_vs_limit/cpu_ratio") > 0.0);
    let verdict = report["cache_hit_vs_limit"]["verdict"].as_str().unwrap();
    assert!(["PASS", "BELOW BUDGET"].contains(&verdict), "{verdict}");

    assert_eq!(number(&report, "/agent_vs_floor/budget"), 0.90);

    // TLS: the limit and both broker rows, each against the TLS limit of its round.
    // The every-request-verified rows (plain and TLS): a pool of distinct tokens, every
    // exchange's audit event counted in the store.
    assert_eq!(number(&report, "/settings/distinct_tokens"), 20.0);
    for row in [
        "/every_request_verified/broker_every_request_verified",
        "/tls/broker_every_request_verified",
    ] {
        assert_eq!(number(&report, &format!("{row}/vs_limit/budget")), 0.80);
        assert!(
            number(&report, &format!("{row}/vs_limit/ratio")) > 0.0,
            "{row}"
        );
        assert!(
            number(&report, &format!("{row}/vs_limit/cpu_ratio")) > 0.0,
            "{row}"
        );
        let answered = number(&report, &format!("{row}/audit/requests_answered"));
        assert!(answered > 0.0, "{row}");
        assert!(
            number(&report, &format!("{row}/audit/events_stored")) >= 0.0,
            "{row}"
        );
        assert!(
            number(&report, &format!("{row}/audit/events_dropped")) >= 0.0,
            "{row}"
        );
        let audit = report.pointer(&format!("{row}/audit")).unwrap();
        assert!(audit["complete"].is_boolean(), "{audit:#}");
        assert_eq!(audit["rounds"].as_array().unwrap().len(), 1, "{audit:#}");
    }
    assert!(number(&report, "/every_request_verified/limit/requests") > 0.0);
    assert_eq!(
        number(
            &report,
            "/every_request_verified/broker_every_request_verified/broker/errors"
        ),
        0.0,
        "{:#}",
        report["every_request_verified"]
    );

    let mut tls_targets = vec![("/tls/limit".to_owned(), &report["tls"]["limit"])];
    for row in ["broker_cache_hit", "broker_every_request_verified"] {
        let path = format!("/tls/{row}/vs_limit");
        assert_eq!(number(&report, &format!("{path}/budget")), 0.80, "{row}");
        assert!(number(&report, &format!("{path}/ratio")) > 0.0, "{row}");
        let verdict = report.pointer(&format!("{path}/verdict")).unwrap();
        assert!(
            verdict == "PASS" || verdict == "BELOW BUDGET",
            "{row}: {verdict}"
        );
        tls_targets.push((format!("/tls/{row}/broker"), &report["tls"][row]["broker"]));
    }
    let tls_names: Vec<&str> = tls_targets
        .iter()
        .map(|(_, m)| m["what"].as_str().unwrap())
        .collect();
    assert!(
        tls_names.iter().all(|n| n.contains("(TLS)")),
        "{tls_names:?}"
    );
    // The cold path: every distinct key asked for once, each one exactly one Entra call.
    let cold = &report["cold_path"];
    let cold_keys = number(&report, "/cold_path/keys");
    assert_eq!(cold_keys, 20.0, "{cold:#}");
    assert_eq!(number(&report, "/cold_path/entra_delay_ms"), 20.0);
    assert_eq!(number(&report, "/cold_path/budget_added_p99_us"), 2000.0);
    assert_eq!(
        number(&report, "/cold_path/entra_calls_per_cold_exchange"),
        1.0,
        "{cold:#}"
    );
    for (path, measured) in tls_targets.iter().map(|(p, m)| (p.as_str(), *m)).chain([
        ("/cold_path/broker", &cold["broker"]),
        ("/cold_path/entra_alone", &cold["entra_alone"]),
    ]) {
        for figure in ["requests_per_sec", "p50_us", "p99_us", "cpu_us_per_request"] {
            assert!(
                number(&report, &format!("{path}/{figure}")) > 0.0,
                "{path}/{figure}"
            );
        }
        assert_eq!(measured["errors"], 0, "{path}: {measured:#}");
    }
    // Each key once per round (one round in --quick): nothing retried, nothing lost.
    assert_eq!(number(&report, "/cold_path/broker/requests"), cold_keys);
    assert_eq!(
        number(&report, "/cold_path/entra_alone/requests"),
        cold_keys
    );
    // The whole run's Entra delay is in every cold latency.
    assert!(
        number(&report, "/cold_path/broker/p50_us") >= 20_000.0,
        "{cold:#}"
    );
    let verdict = cold["verdict"].as_str().unwrap();
    assert!(["PASS", "BELOW BUDGET"].contains(&verdict), "{verdict}");
    // By default the budget's Entra: the fixed one, in a process of its own, whose CPU
    // and new connections are reported beside the broker's.
    assert!(
        cold["entra"]
            .as_str()
            .unwrap()
            .starts_with("fixed Entra in its own process"),
        "{cold:#}"
    );
    assert!(
        number(&report, "/cold_path/entra_process_cpu_us_per_request") > 0.0,
        "{cold:#}"
    );
    assert!(
        number(&report, "/cold_path/entra_connections_per_cold_exchange") >= 0.0,
        "{cold:#}"
    );

    // The agent's footprint: measured when its binary was built beside wif-bench (as the
    // workspace's tests build it), otherwise the report says how to get it.
    let footprint = &report["agent_footprint"];
    let agent = std::path::Path::new(env!("CARGO_BIN_EXE_wif-bench")).with_file_name("wif-agent");
    if agent.is_file() {
        assert!(
            number(&report, "/agent_footprint/idle_rss_kib") > 0.0,
            "{footprint:#}"
        );
        let stripped = number(&report, "/agent_footprint/stripped_bytes");
        assert!(stripped > 0.0, "{footprint:#}");
        assert!(
            stripped <= number(&report, "/agent_footprint/binary_bytes"),
            "{footprint:#}"
        );
    } else {
        assert!(
            footprint["note"]
                .as_str()
                .unwrap()
                .contains("cargo build --release -p wif-agent"),
            "{footprint:#}"
        );
    }

    // Coalescing is a count, not a speed: the quick run must see it too.
    let cold = number(&report, "/coalescing/cold_requests");
    assert!(cold > 0.0);
    assert_eq!(
        number(&report, "/coalescing/ok"),
        cold,
        "{:#}",
        report["coalescing"]
    );
    assert_eq!(number(&report, "/coalescing/entra_token_calls"), 1.0);
    assert!(number(&report, "/coalescing/broker_max_connections") >= cold);
    assert_eq!(number(&report, "/coalescing/distinct_access_tokens"), 1.0);

    for step in [
        "parse_us",
        "rs256_verify_us",
        "cache_hit_us",
        "metrics_us",
        "audit_json_us",
        "exchange_cache_hit_us",
    ] {
        assert!(
            number(&report, &format!("/breakdown/{step}")) > 0.0,
            "{step}"
        );
    }
    assert!(number(&report, "/memory/vm_rss_kib") > 0.0);
    assert!(number(&report, "/machine/cores") >= 1.0);
}

#[test]
fn the_quick_benchmark_prints_a_table_and_markdown() {
    let table = String::from_utf8(wif_bench(&["--quick"]).stdout).unwrap();
    for line_start in [
        "bare axum handler, fixed JSON (HTTP floor)",
        "limit: bare axum handler, one RS256 verify",
        "broker: POST /v1/token, cache hit",
        "broker: POST /v1/token, cache hit, every request verified",
        "limit (TLS): bare axum handler, one RS256 verify",
        "broker (TLS): POST /v1/token, cache hit, repeated token",
        "broker (TLS): POST /v1/token, cache hit, every request verified",
        "Entra emulator asked directly (cold path's floor)",
        "broker: POST /v1/token, cold (cache miss)",
    ] {
        let line = table
            .lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start:?} row in:\n{table}"));
        let requests_per_sec: f64 = line[line_start.len()..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no requests/s in {line:?}"));
        assert!(requests_per_sec > 0.0, "{line}");
    }
    assert!(
        table.contains("ratio broker / limit: ") && table.contains("(budget >= 0.80)"),
        "{table}"
    );
    assert!(
        table.contains("entra token calls: 1 (target exactly 1): PASS"),
        "{table}"
    );
    assert!(table.contains("share these cores"), "{table}");
    assert!(table.contains("RSS after the run: "), "{table}");
    assert!(
        table.contains("ratio agent / GET floor: ") && table.contains("(budget >= 0.90)"),
        "{table}"
    );
    assert!(
        table.contains("/ TLS limit: ") && table.contains("cold path: 20 distinct"),
        "{table}"
    );
    assert!(table.contains("(budget: added p99 <= 2.00 ms)"), "{table}");

    let markdown = String::from_utf8(
        wif_bench(&[
            "--quick",
            "--markdown",
            "--agent-bin",
            "/nonexistent/wif-agent",
        ])
        .stdout,
    )
    .unwrap();
    assert!(
        markdown.contains("| broker (TLS): POST /v1/token, cache hit, repeated token | ")
            && markdown.contains("≥ 0.80 × TLS limit"),
        "{markdown}"
    );
    assert!(
        markdown.contains("| broker: POST /v1/token, cold (cache miss) | ")
            && markdown.contains("added p99 ≤ 2.00 ms"),
        "{markdown}"
    );
    assert!(
        markdown.contains("| Agent binary, stripped, and idle RSS | ")
            && markdown.contains("no wif-agent binary"),
        "{markdown}"
    );
    assert!(
        markdown.contains("| Measurement | Requests/s | p50 | p99 | CPU/req | Budget | Result |"),
        "{markdown}"
    );
    assert!(
        markdown.contains("| broker: POST /v1/token, cache hit | "),
        "{markdown}"
    );
    assert!(
        markdown.contains("| broker: POST /v1/token, cache hit, every request verified | ")
            && markdown.contains("0 audit events dropped")
            && markdown.contains("audit events stored "),
        "{markdown}"
    );
}

#[test]
fn only_the_chosen_sections_run() {
    let output = wif_bench(&["--quick", "--only", "verified", "--json"]);
    let report: Value = serde_json::from_slice(&output.stdout).expect("stdout is one JSON object");
    for absent in [
        "floor",
        "broker_cache_hit",
        "tls",
        "coalescing",
        "cold_path",
    ] {
        assert!(report.get(absent).is_none(), "{absent} ran: {report:#}");
    }
    let row = "/every_request_verified/broker_every_request_verified";
    assert!(number(&report, &format!("{row}/broker/requests")) > 0.0);
    assert!(number(&report, &format!("{row}/audit/requests_answered")) > 0.0);
    assert_eq!(
        report["settings"]["sections"],
        serde_json::json!(["verified"])
    );

    let refused = Command::new(env!("CARGO_BIN_EXE_wif-bench"))
        .args(["--quick", "--only", "everything"])
        .output()
        .expect("wif-bench runs");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no section \"everything\""),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn help_and_bad_arguments() {
    let help = String::from_utf8(wif_bench(&["--help"]).stdout).unwrap();
    assert!(
        help.contains("--quick") && help.contains("--json"),
        "{help}"
    );

    let bad = Command::new(env!("CARGO_BIN_EXE_wif-bench"))
        .arg("--concurrency")
        .arg("zero")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("--concurrency takes a positive whole number"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn the_scale_harness_reports_every_figure_and_checks_every_answer() {
    let output = Command::new(env!("CARGO_BIN_EXE_wif-scale"))
        .args([
            "--credentials",
            "2000",
            "--lookups",
            "2000",
            "--writes",
            "20",
            "--json",
        ])
        .output()
        .expect("wif-scale runs");
    assert!(
        output.status.success(),
        "wif-scale failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["credentials"], 2000);
    assert_eq!(report["wrong_answers"], 0);
    for path in [
        "/start_secs",
        "/rss_mib",
        "/match_us/p50",
        "/match_us/p99",
        "/match_us/max",
        "/create_ms/p50",
        "/create_ms/p99",
        "/delete_ms/max",
    ] {
        assert!(number(&report, path) >= 0.0, "{path}");
    }
    assert_eq!(report["writes"], 20);
    assert_eq!(report["store"], "sqlite");
}

/// Against the machine's PostgreSQL, as CI provides it.
#[test]
fn the_replica_harness_reports_propagation_for_two_and_three_replicas() {
    let output = Command::new(env!("CARGO_BIN_EXE_wif-replicas"))
        .args(["--writes", "5", "--json"])
        .output()
        .expect("wif-replicas runs");
    assert!(
        output.status.success(),
        "wif-replicas failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    for (round, replicas) in rounds.iter().zip([2, 3]) {
        assert_eq!(round["replicas"], replicas);
        // Each write is seen by every other replica, once.
        assert_eq!(round["create_ms"]["samples"], 5 * (replicas - 1));
        assert_eq!(round["delete_ms"]["samples"], 5 * (replicas - 1));
        assert!(number(round, "/create_ms/p99") >= 0.0);
    }
}

/// `wif-scale` loads its credentials from a config file or from the store, and reports
/// every figure of the scale budgets with the budget and a verdict (never asserted).
#[test]
fn the_scale_harness_loads_declared_and_stored_credentials_and_gives_verdicts() {
    for load in ["declared", "stored"] {
        let output = Command::new(env!("CARGO_BIN_EXE_wif-scale"))
            .args([
                "--credentials",
                "1000",
                "--lookups",
                "1000",
                "--writes",
                "5",
                "--load",
                load,
                "--json",
            ])
            .output()
            .expect("wif-scale runs");
        assert!(
            output.status.success(),
            "wif-scale --load {load} failed with {}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["load"], load);
        assert_eq!(report["credentials"], 1000, "{load}: {report:#}");
        assert_eq!(report["wrong_answers"], 0);
        for path in [
            "/parse_secs",
            "/start_secs",
            "/rss_added_mib",
            "/peak_added_mib",
            "/match_exact_us/p99",
            "/match_expression_us/p99",
            "/match_miss_us/p99",
            "/create_ms/p99",
            "/delete_ms/p99",
        ] {
            assert!(number(&report, path) >= 0.0, "{load}: {path}");
        }
        assert!(number(&report, "/match_exact_us/count") > 0.0);
        assert!(number(&report, "/match_expression_us/count") > 0.0);
        assert_eq!(report["populate_secs"].is_number(), load == "stored");
        let budgets = report["budgets"].as_array().expect("a list of budgets");
        let figures: Vec<&str> = budgets
            .iter()
            .map(|b| b["figure"].as_str().unwrap())
            .collect();
        assert_eq!(
            figures,
            [
                "start_secs",
                "rss_added_mib",
                "match_p99_us",
                "create_p99_ms"
            ]
        );
        for b in budgets {
            assert!(b["budget"].as_f64().unwrap() > 0.0, "{b}");
            assert!(b["value"].as_f64().unwrap() >= 0.0, "{b}");
            assert!(
                ["met", "missed"].contains(&b["verdict"].as_str().unwrap()),
                "{b}"
            );
        }
    }
}
