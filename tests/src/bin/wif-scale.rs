//! `wif-scale`: the scale budgets of docs/PERFORMANCE.md — with 100,000 credentials, match
//! p99 < 5 µs, start < 1 s and under 100 MiB of RSS added by the broker; with 1,000,000,
//! match p99 < 5 µs, start < 10 s and under 1 GiB added.
//!
//! The credentials are identities of 20 credentials each over 10 issuers, mostly exact
//! subjects and a share of claims-matching expressions (a repository-wide pattern), loaded
//! one of two ways (`--load`): declared in a config file (`[[identities]]` with their
//! `[[identities.federated_credentials]]`, read and validated as `wif-broker serve` does),
//! or stored (rows in the SQLite or PostgreSQL store, written before the broker starts, as
//! the admin API leaves them). The broker starts in this process; start time, resident
//! memory before and after (and the peak, `VmHWM`) are read around the start. Matching is
//! timed call by call on the registry the exchange path uses, for tokens that hit an exact
//! subject, hit an expression, or match nothing. Then admin writes are timed over HTTP:
//! credentials created on and deleted from an API-registered identity, each acknowledged
//! after the store committed it and this replica's registry took it. Figures are
//! reported, never asserted.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use wif_broker::server::RunningBroker;
use wif_broker::token::VerifiedToken;
use wif_config::BrokerConfig;

const USAGE: &str = "\
wif-scale: start time, resident memory, match and admin-write latency with many credentials.

USAGE:
    cargo run --release -p wif-tests --bin wif-scale -- [OPTIONS]

OPTIONS:
    --credentials N     registered credentials (default 100000)
    --load declared|stored
                        where they come from: a config file the broker reads at start
                        (default), or rows in the store (written before the broker starts)
    --expressions PCT   share of claims-matching expressions, in percent (default 10)
    --lookups N         timed matches (default 200000)
    --writes N          timed admin creates, then as many deletes (default 300)
    --store URL         the store (default: an SQLite file in WAL mode in a temporary
                        directory); `postgres` for a fresh schema of its own in the test
                        database (WIF_TEST_POSTGRES_URL, else
                        postgres://postgres@127.0.0.1:5432/test), dropped at the end
    --json              print one JSON object instead of text
    -h, --help          print this help
";

const ISSUERS: usize = 10;
const PER_IDENTITY: usize = 20;
const AUDIENCE: &str = "api://AzureADTokenExchange";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

fn issuer(i: usize) -> String {
    format!("https://issuer{i}.example.com")
}

fn client_id(k: usize) -> String {
    format!("{k:08x}-0000-4000-8000-{k:012x}")
}

/// Credential `j` of identity `k`: its issuer, and an exact subject or (for the last
/// `expr` of each identity) an expression over a repository's branches.
fn credential(k: usize, j: usize, expr: usize) -> (String, Result<String, String>) {
    let rule = if j >= PER_IDENTITY - expr {
        Err(format!(
            "claims['sub'] matches 'repo:org{k}/svc{j}:ref:refs/heads/*'"
        ))
    } else {
        Ok(format!("repo:org{k}/repo{j}:ref:refs/heads/main"))
    };
    (issuer((k + j) % ISSUERS), rule)
}

/// The config file `wif-broker serve` would read, written line by line (a million
/// credentials are about 150 MB of TOML) so the harness's own memory stays small.
fn write_config(
    path: &std::path::Path,
    store: &str,
    tokens_file: &std::path::Path,
    identities: usize,
    expr: usize,
    declared: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
    writeln!(
        out,
        "[server]\nlisten = \"127.0.0.1:0\"\ndrain_secs = 0\n\n[store]\nurl = {}\n\n[admin]\ntokens_file = {}\n",
        quoted(store),
        quoted(&tokens_file.display().to_string())
    )?;
    for k in (0..identities).filter(|_| declared) {
        writeln!(
            out,
            "[[identities]]\nname = \"id{k}\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{}\"\n",
            client_id(k)
        )?;
        for j in 0..PER_IDENTITY {
            let (iss, rule) = credential(k, j, expr);
            let rule = match rule {
                Ok(subject) => format!("subject = {}", quoted(&subject)),
                Err(expression) => {
                    format!("claims_matching_expression = {}", quoted(&expression))
                }
            };
            writeln!(
                out,
                "[[identities.federated_credentials]]\nname = \"cred-{j}\"\nissuer = \"{iss}\"\n{rule}\n"
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Writes the identities and credentials into the store as rows, the way the admin API
/// leaves them, in batches of multi-row inserts (the store's schema created first by
/// opening it as the broker does).
async fn populate(url: &str, identities: usize, expr: usize) -> anyhow::Result<()> {
    drop(wif_broker::store::open(url).await?);
    const BATCH: usize = 1000;
    macro_rules! fill {
        ($db:ty, $pool:expr) => {{
            let pool = $pool;
            let mut tx = pool.begin().await?;
            for first in (0..identities).step_by(BATCH) {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO identities (name, tenant_id, client_id, assertion, created_at, updated_at) ",
                );
                q.push_values(first..(first + BATCH).min(identities), |mut row, k| {
                    row.push_bind(format!("id{k}"))
                        .push_bind(TENANT)
                        .push_bind(client_id(k))
                        .push_bind("passthrough")
                        .push_bind(1_700_000_000i64)
                        .push_bind(1_700_000_000i64);
                });
                q.build().execute(&mut *tx).await?;
            }
            let total = identities * PER_IDENTITY;
            for first in (0..total).step_by(BATCH) {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO federated_credentials (id, identity, name, issuer, subject, \
                     claims_matching_expression, audiences, one_time_use, created_at, updated_at) ",
                );
                q.push_values(first..(first + BATCH).min(total), |mut row, n| {
                    let (k, j) = (n / PER_IDENTITY, n % PER_IDENTITY);
                    let (iss, rule) = credential(k, j, expr);
                    let (subject, expression) = match rule {
                        Ok(s) => (Some(s), None),
                        Err(e) => (None, Some(e)),
                    };
                    row.push_bind(format!("00000000-0000-4000-8000-{n:012x}"))
                        .push_bind(format!("id{k}"))
                        .push_bind(format!("cred-{j}"))
                        .push_bind(iss)
                        .push_bind(subject)
                        .push_bind(expression)
                        .push_bind(format!("[{}]", serde_json::to_string(AUDIENCE).unwrap_or_default()))
                        .push_bind(false)
                        .push_bind(1_700_000_000i64)
                        .push_bind(1_700_000_000i64);
                });
                q.build().execute(&mut *tx).await?;
            }
            sqlx::query("UPDATE registry_version SET version = version + 1")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            pool
        }};
    }
    if url.starts_with("postgres") {
        let pool = fill!(sqlx::Postgres, sqlx::PgPool::connect(url).await?);
        pool.close().await;
    } else {
        let pool = fill!(sqlx::Sqlite, sqlx::SqlitePool::connect(url).await?);
        // The rows went to the write-ahead log; move them into the database file now, as
        // a store in service would have long done, so the broker's first writes do not
        // pay for it.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&pool)
            .await?;
        pool.close().await;
    }
    Ok(())
}

/// `VmRSS` and `VmHWM` (the peak since the last reset) of this process, in KiB.
fn memory_kib() -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/self/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time of this process so far (every thread, user and system), in seconds: on a
/// machine shared with other work, the start's CPU time moves less than its wall time.
/// `/proc/self/stat` counts it in clock ticks of 1/100 s (`USER_HZ`).
fn cpu_secs() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // After the command name (in parentheses, which may hold spaces): state is field 3,
    // utime and stime fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/self/stat")?
            .parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Resets `VmHWM` to the current RSS (Linux 4.0+), so the peak read after the start is
/// the start's own.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn token(iss: String, sub: String) -> VerifiedToken {
    VerifiedToken {
        iss,
        claims: json!({ "sub": sub, "aud": AUDIENCE }).into(),
        sub: Some(sub),
        aud: vec![AUDIENCE.to_owned()],
        exp: u64::MAX,
        iat: Some(0),
        jti: None,
        sha256: String::new(),
        replay_id: String::new(),
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

/// p50, p99 and max of `times`, in microseconds.
fn micros(mut times: Vec<Duration>) -> serde_json::Value {
    times.sort_unstable();
    json!({
        "p50": percentile(&times, 0.50),
        "p99": percentile(&times, 0.99),
        "max": percentile(&times, 1.0),
        "count": times.len(),
    })
}

/// The budgets of docs/PERFORMANCE.md for a registry of `credentials`: the 100,000 row up
/// to 100,000, the 1,000,000 row above.
fn budgets(credentials: usize) -> (f64, f64, f64) {
    // (start seconds, RSS added MiB, match p99 µs)
    if credentials <= 100_000 {
        (1.0, 100.0, 5.0)
    } else {
        (10.0, 1024.0, 5.0)
    }
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
    let mut declared = true;
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
            "--load" => {
                declared = match it.next().map(String::as_str) {
                    Some("declared") => true,
                    Some("stored") => false,
                    _ => bail!("--load takes declared or stored"),
                }
            }
            "--json" => as_json = true,
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }

    wif_broker::crypto::install_provider();
    let dir = tempfile::tempdir()?;
    // A schema of its own, dropped at the end (with everything written into it).
    let mut schema = None;
    let store = match store.as_deref() {
        Some("postgres") => {
            let s = wif_tests::pg::Schema::create("wif_scale")
                .await
                .context("PostgreSQL is not reachable")?;
            let url = s.url();
            schema = Some(s);
            url
        }
        Some(url) => url.to_owned(),
        None => format!("sqlite://{}", dir.path().join("wif.db").display()),
    };
    let tokens_file = dir.path().join("admin-tokens");
    std::fs::write(
        &tokens_file,
        format!(
            "admin scale {}\n",
            wif_broker::api::admin::auth::token_hash(ADMIN_TOKEN)
        ),
    )?;
    let identities = credentials.div_ceil(PER_IDENTITY);
    let expr = (PER_IDENTITY * expression_pct)
        .div_ceil(100)
        .min(PER_IDENTITY);
    let config_file = dir.path().join("broker.toml");
    write_config(
        &config_file,
        &store,
        &tokens_file,
        identities,
        expr,
        declared,
    )?;
    let populate_secs = if declared {
        None
    } else {
        let t = Instant::now();
        populate(&store, identities, expr).await?;
        Some(t.elapsed().as_secs_f64())
    };

    reset_peak();
    let (rss_before, _) = memory_kib()?;
    let cpu_before = cpu_secs()?;
    let started = Instant::now();
    let cfg = BrokerConfig::load_checked(&config_file)?;
    let parse_secs = started.elapsed().as_secs_f64();
    let (rss_config, peak_config) = memory_kib()?;
    let broker = RunningBroker::start_checked(cfg, wif_broker::clock::system()).await?;
    let start_secs = started.elapsed().as_secs_f64();
    let start_cpu_secs = cpu_secs()? - cpu_before;
    let (rss_after, rss_peak) = memory_kib()?;
    let registry = broker.broker.registry();
    let registered = registry.credential_count();

    // 80% exact hits, 10% expression hits (when there are expressions), 10% misses.
    let mut rng = Lcg(7);
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Exact,
        Expression,
        Miss,
    }
    let tokens: Vec<(VerifiedToken, Kind)> = (0..lookups.min(100_000))
        .map(|_| {
            let k = rng.next(identities);
            let roll = rng.next(10);
            if roll < 8 || expr == 0 {
                let j = rng.next(PER_IDENTITY - expr);
                let sub = format!("repo:org{k}/repo{j}:ref:refs/heads/main");
                (token(issuer((k + j) % ISSUERS), sub), Kind::Exact)
            } else if roll == 8 {
                let j = PER_IDENTITY - 1 - rng.next(expr);
                let sub = format!(
                    "repo:org{k}/svc{j}:ref:refs/heads/feature-{}",
                    rng.next(1000)
                );
                (token(issuer((k + j) % ISSUERS), sub), Kind::Expression)
            } else {
                let sub = format!("repo:org{k}/unknown:ref:refs/heads/main");
                (token(issuer(rng.next(ISSUERS)), sub), Kind::Miss)
            }
        })
        .collect();
    let mut times = Vec::with_capacity(lookups);
    let (mut exact, mut expression, mut miss) = (Vec::new(), Vec::new(), Vec::new());
    let mut wrong = 0usize;
    for i in 0..lookups {
        let (token, kind) = &tokens[i % tokens.len()];
        let t = Instant::now();
        let result = std::hint::black_box(registry.matching(std::hint::black_box(token)));
        let took = t.elapsed();
        times.push(took);
        match kind {
            Kind::Exact => exact.push(took),
            Kind::Expression => expression.push(took),
            Kind::Miss => miss.push(took),
        }
        if result.is_ok() != (*kind != Kind::Miss) {
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
    let (start_budget, rss_budget, match_budget) = budgets(credentials);
    let rss_added_mib = rss_after.saturating_sub(rss_before) as f64 / 1024.0;
    let peak_added_mib = rss_peak.saturating_sub(rss_before) as f64 / 1024.0;
    let create_p99 = create["p99"].as_f64().unwrap_or(f64::MAX);
    let verdict = |value: f64, budget: f64| if value < budget { "met" } else { "missed" };
    let report = json!({
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "load": if declared { "declared" } else { "stored" },
        "credentials": registered,
        "identities": identities,
        "issuers": ISSUERS,
        "expressions_per_identity": expr,
        "populate_secs": populate_secs,
        "parse_secs": parse_secs,
        "start_secs": start_secs,
        "start_cpu_secs": start_cpu_secs,
        "config_rss_added_mib": rss_config.saturating_sub(rss_before) as f64 / 1024.0,
        "config_peak_added_mib": peak_config.saturating_sub(rss_before) as f64 / 1024.0,
        "rss_mib": rss_after as f64 / 1024.0,
        "rss_added_mib": rss_added_mib,
        "peak_added_mib": peak_added_mib,
        "bytes_per_credential": (rss_after.saturating_sub(rss_before) * 1024) as f64 / registered.max(1) as f64,
        "lookups": lookups,
        "match_us": {"p50": p50, "p99": p99, "max": max},
        "match_exact_us": micros(exact),
        "match_expression_us": micros(expression),
        "match_miss_us": micros(miss),
        "wrong_answers": wrong,
        "store": broker.broker.store().map(|s| s.kind()),
        "writes": writes,
        "create_ms": create,
        "delete_ms": delete,
        "budgets": [
            {"figure": "start_secs", "budget": start_budget, "value": start_secs, "verdict": verdict(start_secs, start_budget)},
            {"figure": "rss_added_mib", "budget": rss_budget, "value": rss_added_mib, "verdict": verdict(rss_added_mib, rss_budget)},
            {"figure": "match_p99_us", "budget": match_budget, "value": p99, "verdict": verdict(p99, match_budget)},
            {"figure": "create_p99_ms", "budget": 20.0, "value": create_p99, "verdict": verdict(create_p99, 20.0)},
        ],
    });
    broker.shutdown().await?;
    drop(schema);
    if wrong > 0 {
        bail!("{wrong} lookups matched when they should not have, or the reverse: {report}");
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let ms = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or_default();
    let us = |k: &str, q: &str| report[k][q].as_f64().unwrap_or_default();
    println!(
        "{registered} credentials, {} ({identities} identities, {ISSUERS} issuers, {expr} of 20 \
         per identity are expressions), {} store, {} build",
        report["load"].as_str().unwrap_or_default(),
        report["store"].as_str().unwrap_or_default(),
        report["build"].as_str().unwrap_or_default(),
    );
    if let Some(secs) = populate_secs {
        println!("(rows written to the store beforehand in {secs:.1} s, not counted)");
    }
    println!(
        "start      {start_secs:.2} s (config read and validated in {parse_secs:.2} s; CPU {start_cpu_secs:.2} s)   budget < {start_budget} s: {}\n\
         RSS added  {rss_added_mib:.0} MiB after start, peak {peak_added_mib:.0} MiB ({:.0} bytes per credential; process {:.0} MiB)   budget < {rss_budget} MiB: {}\n\
         \x20          after the config was read {:.0} MiB, peak {:.0} MiB until then\n\
         match      p50 {p50:.2} µs, p99 {p99:.2} µs, max {max:.1} µs over {lookups} lookups   budget p99 < {match_budget} µs: {}\n\
         \x20          exact p50/p99 {:.2}/{:.2} µs, expression {:.2}/{:.2} µs, no match {:.2}/{:.2} µs\n\
         create     p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms over {writes} admin creates   budget p99 < 20 ms: {}\n\
         delete     p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        verdict(start_secs, start_budget),
        report["bytes_per_credential"].as_f64().unwrap_or_default(),
        report["rss_mib"].as_f64().unwrap_or_default(),
        verdict(rss_added_mib, rss_budget),
        report["config_rss_added_mib"].as_f64().unwrap_or_default(),
        report["config_peak_added_mib"].as_f64().unwrap_or_default(),
        verdict(p99, match_budget),
        us("match_exact_us", "p50"),
        us("match_exact_us", "p99"),
        us("match_expression_us", "p50"),
        us("match_expression_us", "p99"),
        us("match_miss_us", "p50"),
        us("match_miss_us", "p99"),
        ms(&create, "p50"),
        create_p99,
        ms(&create, "max"),
        verdict(create_p99, 20.0),
        ms(&delete, "p50"),
        ms(&delete, "p99"),
        ms(&delete, "max"),
    );
    Ok(())
}
