//! `wif-replicas`: how long an admin write at one replica takes to reach the others
//! (docs/PERFORMANCE.md, "Replicas"). Budget: every replica sharing the PostgreSQL store
//! serves a write within 1 s at p99.
//!
//! Starts 2, then 3 brokers in this process, each with its own connection pool and change
//! listener on one PostgreSQL schema, as replicas in separate pods would have. Replica 0
//! creates a credential, then deletes it, `--writes` times; after each acknowledged write
//! the others are read over HTTP (`GET` of the credential, answered from each replica's
//! registry) until they show it. Figures are reported, never asserted.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use wif_broker::server::RunningBroker;
use wif_config::BrokerConfig;

const USAGE: &str = "\
wif-replicas: propagation of admin writes between replicas sharing PostgreSQL.

USAGE:
    cargo run --release -p wif-tests --bin wif-replicas -- [OPTIONS]

OPTIONS:
    --store URL     PostgreSQL (default postgres://postgres@127.0.0.1:5432/test); the
                    brokers use a fresh schema in it, dropped at the end
    --writes N      creates, and as many deletes, per replica count (default 100)
    --json          print one JSON object instead of text
    -h, --help      print this help
";

const ADMIN_TOKEN: &str = "wif-replicas-admin-token";

fn millis(mut times: Vec<Duration>) -> serde_json::Value {
    times.sort_unstable();
    let at = |p: f64| {
        let i = ((times.len() as f64 - 1.0) * p).round() as usize;
        times.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    json!({ "p50": at(0.5), "p99": at(0.99), "max": at(1.0), "samples": times.len() })
}

/// Waits until `url` answers `want` at every replica but the first; each replica's delay.
async fn seen(
    http: &reqwest::Client,
    replicas: &[RunningBroker],
    path: &str,
    want: reqwest::StatusCode,
    since: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::new();
    for replica in &replicas[1..] {
        let url = format!("http://{}{path}", replica.addr);
        loop {
            let status = http
                .get(&url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await?
                .status();
            if status == want {
                out.push(since.elapsed());
                break;
            }
            if since.elapsed() > Duration::from_secs(30) {
                bail!("{url} still answers {status} 30 s after the write");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(out)
}

async fn round(
    store: &str,
    tokens_file: &std::path::Path,
    count: usize,
    writes: usize,
) -> anyhow::Result<serde_json::Value> {
    let mut replicas = Vec::new();
    for _ in 0..count {
        let mut cfg = BrokerConfig::default();
        cfg.server.listen = "127.0.0.1:0".into();
        cfg.server.drain_secs = 0;
        cfg.store.url = store.to_owned();
        cfg.admin.tokens_file = Some(tokens_file.to_owned());
        replicas.push(RunningBroker::start(&cfg, wif_broker::clock::system()).await?);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let writer = format!("http://{}/v1/identities/replicas", replicas[0].addr);
    let send = |request: reqwest::RequestBuilder| async move {
        let answer = request.bearer_auth(ADMIN_TOKEN).send().await?;
        if !answer.status().is_success() {
            bail!(
                "admin write answered {}: {}",
                answer.status(),
                answer.text().await?
            );
        }
        anyhow::Ok(())
    };
    send(http.put(&writer).json(&json!({
        "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "clientId": "5ca1ab1e-0000-4000-8000-000000000002",
    })))
    .await?;
    let (mut created, mut deleted) = (Vec::new(), Vec::new());
    for i in 0..writes {
        let name = format!("write-{i}");
        let path = format!("/v1/identities/replicas/federatedIdentityCredentials/{name}");
        let body = json!({
            "name": name,
            "issuer": "https://token.actions.githubusercontent.com",
            "subject": format!("repo:contoso/app{i}:ref:refs/heads/main"),
        });
        send(
            http.post(format!("{writer}/federatedIdentityCredentials"))
                .json(&body),
        )
        .await?;
        let t = Instant::now();
        created.extend(seen(&http, &replicas, &path, reqwest::StatusCode::OK, t).await?);
        send(http.delete(format!("http://{}{path}", replicas[0].addr))).await?;
        let t = Instant::now();
        deleted.extend(seen(&http, &replicas, &path, reqwest::StatusCode::NOT_FOUND, t).await?);
    }
    send(http.delete(&writer)).await?;
    for replica in replicas {
        replica.shutdown().await?;
    }
    Ok(json!({ "replicas": count, "create_ms": millis(created), "delete_ms": millis(deleted) }))
}

async fn drop_schema(url: &str, schema: &str) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(url).await {
        let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&mut conn)
            .await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return Ok(());
    }
    let (mut url, mut writes, mut as_json) = (
        "postgres://postgres@127.0.0.1:5432/test".to_owned(),
        100,
        false,
    );
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--store" => url = it.next().context("--store takes a URL")?.clone(),
            "--writes" => {
                writes = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .context("--writes takes a whole number")?
            }
            "--json" => as_json = true,
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    wif_broker::crypto::install_provider();
    let schema = format!("wif_replicas_{}", std::process::id());
    // Creates the schema and its tables; the brokers then find them through search_path.
    let setup = wif_broker::store::postgres::PgStore::open_in_schema(&url, &schema)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open {url}: {e}"))?;
    let separator = if url.contains('?') { '&' } else { '?' };
    let store = format!("{url}{separator}options=-c%20search_path%3D{schema}");
    let dir = tempfile::tempdir()?;
    let tokens_file = dir.path().join("admin-tokens");
    std::fs::write(
        &tokens_file,
        format!(
            "admin bench {}\n",
            wif_broker::api::admin::auth::token_hash(ADMIN_TOKEN)
        ),
    )?;
    let mut rounds = Vec::new();
    for count in [2, 3] {
        rounds.push(round(&store, &tokens_file, count, writes).await);
    }
    setup.close().await;
    drop_schema(&url, &schema).await;
    let rounds = rounds.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let report = json!({
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "writes": writes,
        "rounds": rounds,
        "budget": "every replica serves a write within 1 s at p99",
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{writes} creates and {writes} deletes at replica 0, {} build",
        report["build"].as_str().unwrap_or_default()
    );
    for r in &rounds {
        for (what, key) in [("create", "create_ms"), ("delete", "delete_ms")] {
            let f = |p: &str| r[key][p].as_f64().unwrap_or_default();
            let ok = if f("p99") < 1000.0 { "within" } else { "OVER" };
            println!(
                "{} replicas, {what}: seen by the others after p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({ok} the 1 s budget)",
                r["replicas"],
                f("p50"),
                f("p99"),
                f("max")
            );
        }
    }
    Ok(())
}
