//! `wif-scale`: the scale budget of docs/PERFORMANCE.md — with 100,000 registered credentials, match
//! p99 < 20 µs, broker RSS < 256 MiB, start < 2 s, and an admin create p99 < 20 ms.
//!
//! The credentials are declared (as a config file holds them): identities of 20
//! credentials each over 10 issuers, mostly exact subjects and a share of
//! claims-matching expressions (a repository-wide pattern). The broker starts in this
//! process on an in-memory store; matching is timed call by call on the registry the
//! exchange path uses, for tokens that hit an exact subject, hit an expression, or match
//! nothing. Then admin writes are timed over HTTP: credentials created on and deleted from
//! an API-registered identity, each acknowledged after the store committed it and this
//! replica's registry took it, with the store an SQLite file in WAL mode (as deployed) or
//! `--store URL`. Figures are reported, never asserted.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use wif_broker::server::RunningBroker;
use wif_broker::token::VerifiedToken;
use wif_config::{BrokerConfig, FederatedCredentialConfig, IdentityConfig};

const USAGE: &str = "\
wif-scale: start time, resident memory and match latency with many credentials.

USAGE:
    cargo run --release -p wif-tests --bin wif-scale -- [OPTIONS]

OPTIONS:
    --credentials N     registered credentials (default 100000)
    --expressions PCT   share of claims-matching expressions, in percent (default 10)
    --lookups N         timed matches (default 200000)
    --writes N          timed admin creates, then as many deletes (default 300)
    --store URL         the store for the writes (default: an SQLite file in a temporary
                        directory); e.g. postgres://postgres@127.0.0.1:5432/test?schema=scale
    --json              print one JSON object instead of text
    -h, --help          print this help
";

const ISSUERS: usize = 10;
const PER_IDENTITY: usize = 20;
const AUDIENCE: &str = "api://AzureADTokenExchange";

fn issuer(i: usize) -> String {
    format!("https://issuer{i}.example.com")
}

/// Credential `j` of identity `k`: an exact subject, or (for the last `expr` of each
/// identity) an expression over a repository's branches.
fn credential(k: usize, j: usize, expr: usize) -> FederatedCredentialConfig {
    let expression = j >= PER_IDENTITY - expr;
    FederatedCredentialConfig {
        name: format!("cred-{j}"),
        issuer: issuer((k + j) % ISSUERS),
        subject: (!expression).then(|| format!("repo:org{k}/repo{j}:ref:refs/heads/main")),
        claims_matching_expression: expression
            .then(|| format!("claims['sub'] matches 'repo:org{k}/svc{j}:ref:refs/heads/*'")),
        ..Default::default()
    }
}

fn config(
    credentials: usize,
    expression_pct: usize,
    store: String,
) -> anyhow::Result<BrokerConfig> {
    let identities = credentials.div_ceil(PER_IDENTITY);
    let expr = (PER_IDENTITY * expression_pct)
        .div_ceil(100)
        .min(PER_IDENTITY);
    let mut cfg = BrokerConfig::default();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.store.url = store;
    cfg.server.drain_secs = 0;
    cfg.identities = (0..identities)
        .map(|k| {
            Ok(IdentityConfig {
                name: format!("id{k}"),
                tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".parse()?,
                client_id: format!("{k:08x}-0000-4000-8000-{k:012x}").parse()?,
                federated_credentials: (0..PER_IDENTITY).map(|j| credential(k, j, expr)).collect(),
                ..Default::default()
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(cfg)
}

fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")
}

fn token(iss: String, sub: String) -> VerifiedToken {
    VerifiedToken {
        iss,
        claims: json!({ "sub": sub, "aud": AUDIENCE }),
        sub: Some(sub),
        aud: vec![AUDIENCE.to_owned()],
        exp: u64::MAX,
        iat: Some(0),
        jti: None,
        sha256: String::new(),
        signed_sha256: String::new(),
    }
}

/// A cheap deterministic generator, so every run looks up the same tokens.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

const ADMIN_TOKEN: &str = "wif-scale-admin-token";

/// p50, p99 and max of `times`, in milliseconds.
fn millis(mut times: Vec<Duration>) -> serde_json::Value {
    times.sort_unstable();
    json!({
        "p50": percentile(&times, 0.50) / 1e3,
        "p99": percentile(&times, 0.99) / 1e3,
        "max": percentile(&times, 1.0) / 1e3,
    })
}

/// Times `n` admin creates and `n` deletes of credentials on an API-registered identity,
/// each over HTTP and acknowledged once the registry in use holds the change.
async fn time_writes(
    broker: &RunningBroker,
    n: usize,
) -> anyhow::Result<(serde_json::Value, serde_json::Value)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = format!("http://{}/v1/identities/scale-writes", broker.addr);
    let send = |request: reqwest::RequestBuilder| async move {
        let answer = request.bearer_auth(ADMIN_TOKEN).send().await?;
        let status = answer.status();
        if !status.is_success() {
            bail!("admin write answered {status}: {}", answer.text().await?);
        }
        Ok(())
    };
    send(http.put(&base).json(&json!({
        "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "clientId": "5ca1ab1e-0000-4000-8000-000000000001",
    })))
    .await?;
    let mut create = Vec::with_capacity(n);
    for i in 0..n {
        let body = json!({
            "name": format!("write-{i}"),
            "issuer": issuer(i % ISSUERS),
            "subject": format!("repo:writes/repo{i}:ref:refs/heads/main"),
        });
        let t = Instant::now();
        send(
            http.post(format!("{base}/federatedIdentityCredentials"))
                .json(&body),
        )
        .await?;
        create.push(t.elapsed());
    }
    let mut delete = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        send(http.delete(format!("{base}/federatedIdentityCredentials/write-{i}"))).await?;
        delete.push(t.elapsed());
    }
    send(http.delete(&base)).await?;
    Ok((millis(create), millis(delete)))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return Ok(());
    }
    let (mut credentials, mut expression_pct, mut lookups, mut writes, mut as_json) =
        (100_000, 10, 200_000, 300, false);
    let mut store = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut number = || -> anyhow::Result<usize> {
            it.next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{arg} takes a whole number"))
        };
        match arg.as_str() {
            "--credentials" => credentials = number()?.max(PER_IDENTITY),
            "--expressions" => expression_pct = number()?.min(100),
            "--lookups" => lookups = number()?.max(1),
            "--writes" => writes = number()?.max(1),
            "--store" => store = Some(it.next().context("--store takes a URL")?.clone()),
            "--json" => as_json = true,
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }

    wif_broker::crypto::install_provider();
    let dir = tempfile::tempdir()?;
    let store =
        store.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("wif.db").display()));
    let mut cfg = config(credentials, expression_pct, store)?;
    let tokens_file = dir.path().join("admin-tokens");
    std::fs::write(
        &tokens_file,
        format!(
            "admin scale {}\n",
            wif_broker::api::admin::auth::token_hash(ADMIN_TOKEN)
        ),
    )?;
    cfg.admin.tokens_file = Some(tokens_file);
    let identities = cfg.identities.len();
    let expr = (PER_IDENTITY * expression_pct)
        .div_ceil(100)
        .min(PER_IDENTITY);
    let rss_before = rss_kib()?;
    let started = Instant::now();
    let broker = RunningBroker::start(&cfg, wif_broker::clock::system()).await?;
    let start_secs = started.elapsed().as_secs_f64();
    drop(cfg);
    let rss_after = rss_kib()?;
    let registry = broker.broker.registry();
    let registered = registry.credential_count();

    // 80% exact hits, 10% expression hits (when there are expressions), 10% misses.
    let mut rng = Lcg(7);
    let tokens: Vec<(VerifiedToken, bool)> = (0..lookups.min(100_000))
        .map(|_| {
            let k = rng.next(identities);
            let roll = rng.next(10);
            if roll < 8 || expr == 0 {
                let j = rng.next(PER_IDENTITY - expr);
                let sub = format!("repo:org{k}/repo{j}:ref:refs/heads/main");
                (token(issuer((k + j) % ISSUERS), sub), true)
            } else if roll == 8 {
                let j = PER_IDENTITY - 1 - rng.next(expr);
                let sub = format!(
                    "repo:org{k}/svc{j}:ref:refs/heads/feature-{}",
                    rng.next(1000)
                );
                (token(issuer((k + j) % ISSUERS), sub), true)
            } else {
                let sub = format!("repo:org{k}/unknown:ref:refs/heads/main");
                (token(issuer(rng.next(ISSUERS)), sub), false)
            }
        })
        .collect();
    let mut times = Vec::with_capacity(lookups);
    let mut wrong = 0usize;
    for i in 0..lookups {
        let (token, should_match) = &tokens[i % tokens.len()];
        let t = Instant::now();
        let result = std::hint::black_box(registry.matching(std::hint::black_box(token)));
        times.push(t.elapsed());
        if result.is_ok() != *should_match {
            wrong += 1;
        }
    }
    times.sort_unstable();
    let (p50, p99, max) = (
        percentile(&times, 0.50),
        percentile(&times, 0.99),
        percentile(&times, 1.0),
    );
    drop(registry);
    let (create, delete) = time_writes(&broker, writes).await?;
    let rss_mib = rss_after as f64 / 1024.0;
    let report = json!({
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "credentials": registered,
        "identities": identities,
        "issuers": ISSUERS,
        "expressions_per_identity": expr,
        "start_secs": start_secs,
        "rss_mib": rss_mib,
        "rss_added_mib": rss_after.saturating_sub(rss_before) as f64 / 1024.0,
        "lookups": lookups,
        "match_us": {"p50": p50, "p99": p99, "max": max},
        "wrong_answers": wrong,
        "store": broker.broker.store().map(|s| s.kind()),
        "writes": writes,
        "create_ms": create,
        "delete_ms": delete,
        "budgets": {
            "create_p99_under_20ms": create["p99"].as_f64().unwrap_or(f64::MAX) < 20.0,
            "match_p99_under_20us": p99 < 20.0,
            "rss_under_256mib": rss_mib < 256.0,
            "start_under_2s": start_secs < 2.0,
        },
    });
    broker.shutdown().await?;
    if wrong > 0 {
        bail!("{wrong} lookups matched when they should not have, or the reverse: {report}");
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{registered} credentials ({identities} identities, {ISSUERS} issuers, {expr} of 20 \
             per identity are expressions), {} build\n\
             start      {start_secs:.2} s      (budget < 2 s)\n\
             RSS        {rss_mib:.0} MiB     (budget < 256 MiB; {:.0} MiB added by the broker)\n\
             match      p50 {p50:.2} µs, p99 {p99:.2} µs, max {max:.1} µs over {lookups} lookups (budget p99 < 20 µs)\n\
             create     p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms over {writes} admin creates ({} store; budget p99 < 20 ms)\n\
             delete     p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            report["build"].as_str().unwrap_or_default(),
            report["rss_added_mib"].as_f64().unwrap_or_default(),
            create["p50"].as_f64().unwrap_or_default(),
            create["p99"].as_f64().unwrap_or_default(),
            create["max"].as_f64().unwrap_or_default(),
            report["store"].as_str().unwrap_or_default(),
            delete["p50"].as_f64().unwrap_or_default(),
            delete["p99"].as_f64().unwrap_or_default(),
            delete["max"].as_f64().unwrap_or_default(),
        );
    }
    Ok(())
}
