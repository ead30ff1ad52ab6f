//! The measurements: throughput of floor, limit and broker in interleaved rounds;
//! coalescing of cold requests; the in-process breakdown of a cache hit; memory.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use axum::body::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinSet;
use wif_broker::audit::AuditEvent;
use wif_broker::cache::{CacheKey, TokenCache};
use wif_broker::dev::entra::Fault;
use wif_broker::dev::issuer::LocalIssuer;
use wif_broker::entra::{EntraToken, Secret};
use wif_broker::exchange::ExchangeRequest;
use wif_broker::metrics::Metrics;
use wif_broker::token::UnverifiedToken;
use wif_config::CacheConfig;
use wif_tests::pki::Pki;
use wif_tests::{ARM, DEPLOY_CLIENT, MAIN_SUBJECT, TENANT, metric_value};

use crate::Options;
use crate::fixed_entra::{ColdEntra, FixedEntra, JWT_BEARER};
use crate::load::{Measured, Round, Target, TokenPool, drive, drive_each, load_client, median};
use crate::report::{Budget, verdict};
use crate::servers::{BenchStack, LimitServer, StackOptions, mint_pool};

/// docs/PERFORMANCE.md: 1,000 concurrent cold requests → exactly 1 Entra call.
const COALESCING_TARGET: u64 = 1;

pub struct Throughput {
    pub floor: Measured,
    pub limit: Measured,
    /// Only with `--split`.
    pub broker_logic: Option<Measured>,
    pub broker: Measured,
    pub ratio: f64,
    pub round_ratios: Vec<f64>,
    pub cpu_ratio: f64,
    pub broker_answer_bytes: usize,
    /// The agent's budget: its cache hit against a bare handler answering `GET` with
    /// fixed JSON, measured in the same rounds.
    pub floor_get: Measured,
    pub agent: Measured,
    pub agent_ratio: f64,
    pub agent_round_ratios: Vec<f64>,
    pub agent_cpu_ratio: f64,
}

/// An in-process `wif-agent` in front of the bench's broker, reading the job token from a
/// file, as a sidecar does.
async fn start_agent(
    stack: &BenchStack,
    dir: &tempfile::TempDir,
) -> anyhow::Result<(wif_agent::serve::RunningAgent, String)> {
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &stack.token)?;
    let client = wif_agent::broker::BrokerClient::new(
        &stack.broker.url(),
        std::time::Duration::from_secs(10),
        1,
        None,
        None,
    )?;
    let agent = wif_agent::serve::Agent::new(
        wif_agent::serve::AgentSettings {
            client,
            source: Arc::new(wif_agent::source::FileSource(token_file)),
            header_secret: Some(AGENT_SECRET.into()),
            default_identity: None,
            min_remaining_secs: 300,
            refresh_before_secs: 600,
            imds: true,
        },
        wif_broker::clock::system(),
    );
    let running = wif_agent::serve::RunningAgent::start(agent, "127.0.0.1:0", None).await?;
    let url = running.url().context("the agent has no TCP listener")?;
    Ok((running, url))
}

const AGENT_SECRET: &str = "wif-bench-identity-header-secret";

/// Floor, limit (and with `--split` the broker's logic behind a bare handler) and broker
/// cache hit, interleaved round by round.
pub async fn throughput(opts: &Options, stack: &BenchStack) -> anyhow::Result<Throughput> {
    let client = load_client(opts.concurrency)?;
    let broker_target = Arc::new(stack.target()?);
    // Warm the cache with one exchange (the only Entra call of this stack).
    let answer = broker_target
        .send(&client)
        .await
        .context("the warm-up exchange failed")?;
    let broker_answer_bytes = answer.len();
    let first: Value = serde_json::from_slice(&answer)?;
    if first["access_token"].as_str().is_none_or(str::is_empty) {
        bail!("the warm-up exchange returned no access token: {first}");
    }

    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(stack.issuer.current_key().public_jwk())?;
    let limit_server = LimitServer::start(
        DecodingKey::from_jwk(&jwk)?,
        stack.broker.broker.clone(),
        answer,
        None,
    )
    .await?;
    let floor_target = Arc::new(Target::new(
        &format!("{}/fixed", limit_server.url),
        &stack.token,
    )?);
    let limit_target = Arc::new(Target::new(
        &format!("{}/verify", limit_server.url),
        &stack.token,
    )?);
    let logic_target = Arc::new(Target::new(
        &format!("{}/exchange", limit_server.url),
        &stack.token,
    )?);
    limit_target
        .send(&client)
        .await
        .context("the limit server did not verify the token")?;
    logic_target
        .send(&client)
        .await
        .context("the in-process exchange failed")?;

    let agent_dir = tempfile::tempdir()?;
    let (agent, agent_url) = start_agent(stack, &agent_dir).await?;
    let floor_get_target = Arc::new(Target::get(&format!("{}/fixed", limit_server.url), &[])?);
    let agent_target = Arc::new(Target::get(
        &format!(
            "{agent_url}/msi/token?api-version=2019-08-01&resource=https://management.azure.com"
        ),
        &[("x-identity-header", AGENT_SECRET)],
    )?);
    // Warm the agent's cache (its one exchange at the broker).
    agent_target
        .send(&client)
        .await
        .context("the agent did not answer a token")?;

    let mut targets = vec![&floor_target, &limit_target];
    if opts.split {
        targets.push(&logic_target);
    }
    targets.push(&broker_target);
    targets.push(&floor_get_target);
    targets.push(&agent_target);
    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); targets.len()];
    for _ in 0..opts.rounds {
        for (target, rounds) in targets.iter().zip(rounds.iter_mut()) {
            drive(&client, target, opts.concurrency, opts.warmup).await?;
            rounds.push(drive(&client, target, opts.concurrency, opts.stop).await?);
        }
    }
    drop(client);
    agent.shutdown().await;
    limit_server.shutdown().await;

    let mut rounds = rounds.into_iter();
    let mut next = || rounds.next().context("a target without rounds");
    let floor = next()?;
    let limit = next()?;
    let logic = if opts.split { Some(next()?) } else { None };
    let broker = next()?;
    let floor_get = next()?;
    let agent = next()?;
    let agent_round_ratios: Vec<f64> = floor_get
        .iter()
        .zip(&agent)
        .map(|(f, a)| ratio(a.requests_per_sec, f.requests_per_sec))
        .collect();
    let floor_get = Measured::new(
        "bare axum handler, GET, fixed JSON (agent floor)",
        floor_get,
    );
    let agent = Measured::new("agent: GET /msi/token, cache hit", agent);
    // Each round's broker figure is divided by the limit measured just before it, so slow
    // drift in the machine's load cancels out; the headline is the median of these.
    let round_ratios: Vec<f64> = limit
        .iter()
        .zip(&broker)
        .map(|(l, b)| ratio(b.requests_per_sec, l.requests_per_sec))
        .collect();
    let floor = Measured::new("bare axum handler, fixed JSON (HTTP floor)", floor);
    let limit = Measured::new("limit: bare axum handler, one RS256 verify", limit);
    let broker = Measured::new("broker: POST /v1/token, cache hit", broker);
    let broker_logic =
        logic.map(|rounds| Measured::new("broker logic in a bare handler (no HTTP edge)", rounds));
    Ok(Throughput {
        agent_ratio: median(agent_round_ratios.iter().copied()),
        agent_round_ratios,
        agent_cpu_ratio: ratio(floor_get.cpu_us_per_request, agent.cpu_us_per_request),
        floor_get,
        agent,
        broker_logic,
        broker_answer_bytes,
        ratio: median(round_ratios.iter().copied()),
        round_ratios,
        cpu_ratio: ratio(limit.cpu_us_per_request, broker.cpu_us_per_request),
        floor,
        limit,
        broker,
    })
}

/// One broker configuration measured against the limit in the same rounds.
#[derive(Debug, Clone, Serialize)]
pub struct AgainstLimit {
    pub broker: Measured,
    pub vs_limit: Budget,
    /// Every answered exchange's audit event against what the store holds.
    pub audit: AuditTally,
}

/// The audit events of one broker's rounds (warm-ups included): every exchange answered
/// must have its event in the store, none dropped (docs/PERFORMANCE.md).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditTally {
    /// Requests the broker answered (200 or not), warm-ups included.
    pub requests_answered: u64,
    /// Audit events the store gained meanwhile (read once the writer caught up).
    pub events_stored: u64,
    /// `wif_audit_dropped_total` gained meanwhile: events the store never got.
    pub events_dropped: u64,
    /// Whether every answered request's event is stored and none was dropped.
    pub complete: bool,
    pub rounds: Vec<AuditRound>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct AuditRound {
    pub requests_answered: u64,
    pub events_stored: u64,
    pub events_dropped: u64,
}

impl AuditTally {
    fn new(rounds: Vec<AuditRound>) -> Self {
        let answered = rounds.iter().map(|r| r.requests_answered).sum();
        let stored = rounds.iter().map(|r| r.events_stored).sum();
        let dropped = rounds.iter().map(|r| r.events_dropped).sum();
        Self {
            requests_answered: answered,
            events_stored: stored,
            events_dropped: dropped,
            complete: dropped == 0 && stored >= answered,
            rounds,
        }
    }
}

/// The audit events in `stack`'s store and its dropped-event counter.
async fn audit_counts(stack: &BenchStack) -> anyhow::Result<(u64, u64)> {
    let broker = &stack.broker.broker;
    let store = broker.store().context("the bench broker has no store")?;
    let stored = store.size().await?.audit_events;
    let dropped = metric_value(&broker.metrics().render(), "wif_audit_dropped_total", &[]) as u64;
    Ok((stored, dropped))
}

/// Once `answered` more exchanges than at `before`: waits (up to 30 s) for the audit
/// writer to store their events, then reads what it stored and dropped.
async fn audit_round(
    stack: &BenchStack,
    before: (u64, u64),
    answered: u64,
) -> anyhow::Result<AuditRound> {
    let waiting = Instant::now();
    let mut last = audit_counts(stack).await?;
    while last.0 < before.0 + answered.saturating_sub(last.1 - before.1)
        && waiting.elapsed() < std::time::Duration::from_secs(30)
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        last = audit_counts(stack).await?;
    }
    Ok(AuditRound {
        requests_answered: answered,
        events_stored: last.0 - before.0,
        events_dropped: last.1 - before.1,
    })
}

/// The TLS rows: the limit and the broker's cache hit, both serving TLS.
#[derive(Debug, Clone, Serialize)]
pub struct TlsRows {
    /// The limit handler behind the same rustls configuration as the broker.
    pub limit: Measured,
    /// The repeated token (verified-token cache on, as deployed), unless
    /// `--no-verified-cache`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_cache_hit: Option<AgainstLimit>,
    /// Every request's signature verified (verified-token cache off), a distinct token
    /// per request from the pool.
    pub broker_every_request_verified: AgainstLimit,
}

/// The plain every-request-verified row: the broker with its verified-token cache off,
/// each request with the next token of the pool, against the limit of the same rounds.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedRows {
    pub limit: Measured,
    pub broker_every_request_verified: AgainstLimit,
}

/// The issuer the rows of [`cache_hit_rows`] trust, and its pool of distinct job tokens.
pub struct DistinctTokens {
    pub issuer: LocalIssuer,
    pub tokens: Vec<String>,
    pub mint_secs: f64,
}

impl DistinctTokens {
    /// Starts an issuer and mints `n` distinct tokens on every core.
    pub async fn mint(n: usize) -> anyhow::Result<Self> {
        wif_broker::crypto::install_provider();
        let issuer = LocalIssuer::start(wif_broker::clock::system()).await?;
        let started = Instant::now();
        let tokens = mint_pool(&issuer, n).await?;
        Ok(Self {
            issuer,
            tokens,
            mint_secs: started.elapsed().as_secs_f64(),
        })
    }

    pub async fn shutdown(self) {
        self.issuer.shutdown().await;
    }
}

/// The cache-hit rows served over TLS (`tls: true`) or plain HTTP: the limit handler
/// and, in the same interleaved rounds, one broker per verified-token setting in
/// `verified_caches` (`true`: the same token again, remembered; `false`: every request
/// verified, each with the next token of `distinct`'s pool). Each broker is divided by
/// the limit of its own round, as in [`throughput`]. Every broker's audit events are
/// counted round by round.
pub async fn cache_hit_rows(
    opts: &Options,
    tls: bool,
    verified_caches: &[bool],
    distinct: &DistinctTokens,
) -> anyhow::Result<(Measured, Vec<(bool, AgainstLimit)>)> {
    let pki = tls.then(|| Pki::new("wif-bench"));
    let mut stacks = Vec::with_capacity(verified_caches.len());
    for &verified_cache in verified_caches {
        stacks.push(
            BenchStack::start_configured(StackOptions {
                no_verified_cache: !verified_cache,
                tls: pki.as_ref(),
                issuer: Some(distinct.issuer.clone()),
                ..Default::default()
            })
            .await?,
        );
    }
    let first = stacks.first().context("no broker to measure")?;
    let client = first.client(opts.concurrency)?;
    let mut targets = Vec::with_capacity(stacks.len() + 1);
    let mut answer = Bytes::new();
    for (stack, &verified_cache) in stacks.iter().zip(verified_caches) {
        let target = if verified_cache {
            Arc::new(stack.target()?)
        } else {
            Arc::new(Target::with_pool(
                &format!("{}/v1/token", stack.broker.url()),
                TokenPool::new(&distinct.tokens)?,
            )?)
        };
        // Fill the token cache (the stack's one Entra call) and open a connection.
        answer = target
            .send(&client)
            .await
            .context("the warm-up exchange failed")?;
        targets.push(target);
    }
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(first.issuer.current_key().public_jwk())?;
    let limit_server = LimitServer::start(
        DecodingKey::from_jwk(&jwk)?,
        first.broker.broker.clone(),
        answer,
        first.tls_files(),
    )
    .await?;
    let limit_target = Arc::new(Target::new(
        &format!("{}/verify", limit_server.url),
        &first.token,
    )?);
    limit_target
        .send(&client)
        .await
        .context("the limit server did not verify the token")?;

    let mut limit_rounds = Vec::new();
    let mut broker_rounds: Vec<Vec<Round>> = vec![Vec::new(); targets.len()];
    let mut audit_rounds: Vec<Vec<AuditRound>> = vec![Vec::new(); targets.len()];
    for _ in 0..opts.rounds {
        drive(&client, &limit_target, opts.concurrency, opts.warmup).await?;
        limit_rounds.push(drive(&client, &limit_target, opts.concurrency, opts.stop).await?);
        for (i, (target, stack)) in targets.iter().zip(&stacks).enumerate() {
            let before = audit_counts(stack).await?;
            let warm = drive(&client, target, opts.concurrency, opts.warmup).await?;
            let round = drive(&client, target, opts.concurrency, opts.stop).await?;
            let answered = warm.requests + warm.errors + round.requests + round.errors;
            audit_rounds[i].push(audit_round(stack, before, answered).await?);
            broker_rounds[i].push(round);
        }
    }
    drop(client);
    limit_server.shutdown().await;
    for stack in stacks {
        stack.shutdown().await;
    }

    let limit = limit_rounds;
    let mut brokers = Vec::with_capacity(verified_caches.len());
    for ((&verified_cache, broker), audit) in
        verified_caches.iter().zip(broker_rounds).zip(audit_rounds)
    {
        let round_ratios: Vec<f64> = limit
            .iter()
            .zip(&broker)
            .map(|(l, b)| ratio(b.requests_per_sec, l.requests_per_sec))
            .collect();
        let what = match (tls, verified_cache) {
            (true, true) => "broker (TLS): POST /v1/token, cache hit, repeated token",
            (true, false) => "broker (TLS): POST /v1/token, cache hit, every request verified",
            (false, true) => "broker: POST /v1/token, cache hit, repeated token",
            (false, false) => "broker: POST /v1/token, cache hit, every request verified",
        };
        brokers.push((
            verified_cache,
            Measured::new(what, broker),
            round_ratios,
            AuditTally::new(audit),
        ));
    }
    let limit = Measured::new(
        if tls {
            "limit (TLS): bare axum handler, one RS256 verify"
        } else {
            "limit: bare axum handler, one RS256 verify (every-request rounds)"
        },
        limit,
    );
    let brokers = brokers
        .into_iter()
        .map(|(verified_cache, broker, round_ratios, audit)| {
            let r = median(round_ratios.iter().copied());
            // Every request verified: the budget also needs every audit event stored.
            let fast = r >= crate::RATIO_BUDGET;
            let pass = fast && (verified_cache || audit.complete);
            let vs_limit = Budget {
                ratio: r,
                budget: crate::RATIO_BUDGET,
                pass,
                verdict: if fast && !pass {
                    "FAIL (audit events lost)"
                } else {
                    verdict(pass)
                },
                round_ratios,
                cpu_ratio: ratio(limit.cpu_us_per_request, broker.cpu_us_per_request),
            };
            (
                verified_cache,
                AgainstLimit {
                    broker,
                    vs_limit,
                    audit,
                },
            )
        })
        .collect();
    Ok((limit, brokers))
}

/// [`cache_hit_rows`] over TLS, both token settings (only the every-request one with
/// `--no-verified-cache`).
pub async fn tls_rows(opts: &Options, distinct: &DistinctTokens) -> anyhow::Result<TlsRows> {
    let settings: &[bool] = if opts.verified_cache {
        &[true, false]
    } else {
        &[false]
    };
    let (limit, rows) = cache_hit_rows(opts, true, settings, distinct).await?;
    let mut broker_cache_hit = None;
    let mut every_request = None;
    for (verified_cache, row) in rows {
        if verified_cache {
            broker_cache_hit = Some(row);
        } else {
            every_request = Some(row);
        }
    }
    Ok(TlsRows {
        limit,
        broker_cache_hit,
        broker_every_request_verified: every_request.context("no every-request row")?,
    })
}

/// [`cache_hit_rows`] over plain HTTP, every request verified.
pub async fn verified_rows(
    opts: &Options,
    distinct: &DistinctTokens,
) -> anyhow::Result<VerifiedRows> {
    let (limit, rows) = cache_hit_rows(opts, false, &[false], distinct).await?;
    let (_, row) = rows.into_iter().next().context("no every-request row")?;
    Ok(VerifiedRows {
        limit,
        broker_every_request_verified: row,
    })
}

/// docs/PERFORMANCE.md: the broker adds at most 2 ms at p99 to a cold exchange.
const COLD_ADDED_P99_BUDGET_US: f64 = 2000.0;

/// The cold path: distinct (identity, scope) keys, each asked for once, against an Entra
/// that takes a fixed time to answer.
#[derive(Debug, Clone, Serialize)]
pub struct ColdPath {
    pub keys: usize,
    pub identities: usize,
    pub scopes_per_identity: usize,
    pub concurrency: usize,
    /// Entra answers each token request this long after it arrived (the fixed Entra), or
    /// waits this long before its own work (the dev emulator).
    pub entra_delay_ms: u64,
    /// Which Entra answered (`--cold-entra`).
    pub entra: &'static str,
    /// The same token requests the broker sends, to Entra directly (no broker): the fixed
    /// delay, the client's cost and, with the dev emulator, its own work (verifying the
    /// assertion with the issuer's keys, signing an access token) on this machine.
    pub entra_alone: Measured,
    /// The broker's `POST /v1/token` for each key once: every one a cache miss.
    pub broker: Measured,
    /// Broker p50 and p99 minus the fixed delay (medians over rounds).
    pub added_p50_us: f64,
    pub added_p99_us: f64,
    /// The same for Entra asked directly: what of the above is not the broker's.
    pub entra_alone_added_p50_us: f64,
    pub entra_alone_added_p99_us: f64,
    pub budget_added_p99_us: f64,
    pub pass: bool,
    pub verdict: &'static str,
    /// This process's CPU per cold exchange (broker, client; with an Entra in this
    /// process, Entra and the issuer too).
    pub cpu_us_per_cold_exchange: f64,
    /// That minus the CPU per request of Entra asked directly: the broker's own.
    pub broker_cpu_us_per_cold_exchange: f64,
    /// The fixed Entra's own CPU per token request, when it runs in a process of its own
    /// (median over the broker's rounds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entra_process_cpu_us_per_request: Option<f64>,
    /// Token requests Entra received per cold exchange (1: no retries, no coalescing
    /// across distinct keys).
    pub entra_calls_per_cold_exchange: f64,
    /// Connections the fixed Entra accepted during the broker's rounds, per cold exchange
    /// (0 when the broker's connections from the warm-up are reused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entra_connections_per_cold_exchange: Option<f64>,
}

/// The Entra the cold path asks: the fixed one, or the dev emulator slowed by a queued
/// `Fault::Delay` per request.
enum ColdEntraServer<'a> {
    Fixed(Box<FixedEntra>),
    Dev(&'a BenchStack, std::time::Duration),
}

impl ColdEntraServer<'_> {
    fn token_endpoint(&self) -> String {
        match self {
            Self::Fixed(fixed) => fixed.token_endpoint(TENANT),
            Self::Dev(stack, _) => stack.entra.token_endpoint(TENANT),
        }
    }

    /// Before `keys` are asked for (twice each when `direct_too`): the fixed Entra mints
    /// their tokens; the dev emulator queues one delay per request.
    async fn before(&self, keys: &[(String, String)], direct_too: bool) -> anyhow::Result<()> {
        match self {
            Self::Fixed(fixed) => fixed.prepare(keys).await,
            Self::Dev(stack, delay) => {
                let requests = keys.len() * if direct_too { 2 } else { 1 };
                for _ in 0..requests {
                    stack.entra.push_fault(Fault::Delay(*delay));
                }
                Ok(())
            }
        }
    }

    async fn token_requests(&self) -> anyhow::Result<u64> {
        Ok(match self {
            Self::Fixed(fixed) => fixed.stats().await?.token_requests,
            Self::Dev(stack, _) => stack.entra.token_requests(),
        })
    }

    /// Connections accepted so far (the fixed Entra only).
    async fn connections(&self) -> anyhow::Result<Option<u64>> {
        Ok(match self {
            Self::Fixed(fixed) => Some(fixed.stats().await?.connections),
            Self::Dev(..) => None,
        })
    }

    fn process_cpu_secs(&self) -> Option<f64> {
        match self {
            Self::Fixed(fixed) => fixed.child_cpu_secs(),
            Self::Dev(..) => None,
        }
    }

    /// Whether every request reached Entra and was answered as prepared.
    async fn finish(self) -> anyhow::Result<()> {
        match self {
            Self::Fixed(fixed) => {
                let stats = fixed.stats().await;
                fixed.shutdown().await;
                let stats = stats?;
                if stats.refused != 0 {
                    bail!(
                        "the fixed Entra refused {} of {} token requests",
                        stats.refused,
                        stats.token_requests
                    );
                }
            }
            Self::Dev(stack, _) => {
                let undelayed = stack.entra.pending_faults();
                if undelayed != 0 {
                    bail!(
                        "{undelayed} queued Entra delays were not used: some requests did not reach Entra"
                    );
                }
            }
        }
        Ok(())
    }
}

/// Rounds of: Entra asked directly for every key, then the broker asked for every key
/// (new scopes each round, so every broker request is a cache miss). Entra is the fixed
/// one (answers `cold_entra_delay` after each token request arrives, its tokens minted
/// before the round), in a process of its own unless `--cold-entra` says otherwise; or
/// the dev emulator, each request waiting `cold_entra_delay` before its own work.
pub async fn cold_path(opts: &Options) -> anyhow::Result<ColdPath> {
    let identities = opts.cold_concurrency.min(opts.cold_keys).max(1);
    let scopes_per_identity = opts.cold_keys.div_ceil(identities);
    let delay = opts.cold_entra_delay;
    let fixed = match opts.cold_entra {
        ColdEntra::Dev => None,
        placement => Some(FixedEntra::start(placement, TENANT, delay).await?),
    };
    let stack = BenchStack::start_configured(StackOptions {
        cold_identities: identities,
        entra_authority: fixed.as_ref().map(|f| f.url().to_owned()),
        ..Default::default()
    })
    .await?;
    let entra = match fixed {
        Some(fixed) => ColdEntraServer::Fixed(Box::new(fixed)),
        None => ColdEntraServer::Dev(&stack, delay),
    };
    let measured = cold_rounds(opts, &stack, &entra, identities).await;
    let finished = entra.finish().await;
    stack.shutdown().await;
    let ColdRounds {
        alone,
        broker,
        calls,
        entra_cpu,
        connections,
    } = measured?;
    finished?;

    let delay_us = delay.as_secs_f64() * 1e6;
    let added =
        |rounds: &[Round], p: fn(&Round) -> f64| median(rounds.iter().map(|r| p(r) - delay_us));
    let added_p50_us = added(&broker, |r| r.p50_us);
    let added_p99_us = added(&broker, |r| r.p99_us);
    let entra_alone_added_p50_us = added(&alone, |r| r.p50_us);
    let entra_alone_added_p99_us = added(&alone, |r| r.p99_us);
    let entra_alone = Measured::new("Entra emulator asked directly (cold path's floor)", alone);
    let broker = Measured::new("broker: POST /v1/token, cold (cache miss)", broker);
    let pass = added_p99_us <= COLD_ADDED_P99_BUDGET_US && broker.errors == 0;
    let broker_requests = broker.requests.max(1) as f64;
    Ok(ColdPath {
        keys: opts.cold_keys,
        identities,
        scopes_per_identity,
        concurrency: opts.cold_concurrency,
        entra_delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        entra: opts.cold_entra.describe(),
        added_p50_us,
        added_p99_us,
        entra_alone_added_p50_us,
        entra_alone_added_p99_us,
        budget_added_p99_us: COLD_ADDED_P99_BUDGET_US,
        pass,
        verdict: verdict(pass),
        cpu_us_per_cold_exchange: broker.cpu_us_per_request,
        broker_cpu_us_per_cold_exchange: broker.cpu_us_per_request - entra_alone.cpu_us_per_request,
        entra_process_cpu_us_per_request: entra_cpu,
        entra_calls_per_cold_exchange: (calls as f64 - entra_alone.requests as f64)
            / broker_requests,
        entra_connections_per_cold_exchange: connections.map(|c| c as f64 / broker_requests),
        entra_alone,
        broker,
    })
}

/// What [`cold_rounds`] measured.
struct ColdRounds {
    alone: Vec<Round>,
    broker: Vec<Round>,
    /// Token requests Entra received during the rounds.
    calls: u64,
    /// Entra's own CPU per token request (a process of its own only).
    entra_cpu: Option<f64>,
    /// Connections Entra accepted during the broker's rounds (the fixed Entra only).
    connections: Option<u64>,
}

/// The warm-up and the measured rounds: Entra alone, then the broker, per round.
async fn cold_rounds(
    opts: &Options,
    stack: &BenchStack,
    entra: &ColdEntraServer<'_>,
    identities: usize,
) -> anyhow::Result<ColdRounds> {
    let client = load_client(opts.cold_concurrency)?;
    let exchange = format!("{}/v1/token", stack.broker.url());
    let entra_token = entra.token_endpoint();
    // `k`: identity k mod identities, scope k / identities, so the requests in flight at
    // once are for different identities.
    let keys = |n: usize, scope: &dyn Fn(usize) -> String| -> Vec<(usize, String)> {
        (0..n)
            .map(|k| (k % identities, scope(k / identities)))
            .collect()
    };
    let entra_keys = |keys: &[(usize, String)]| -> Vec<(String, String)> {
        keys.iter()
            .map(|(i, scope)| (stack.cold[*i].client_id.clone(), scope.clone()))
            .collect()
    };
    let via_broker = |keys: &[(usize, String)]| -> anyhow::Result<Arc<Vec<Target>>> {
        let targets = keys
            .iter()
            .map(|(i, scope)| {
                Target::form(&exchange, Some(&stack.cold[*i].token), &[("scope", scope)])
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Arc::new(targets))
    };
    let direct = |keys: &[(usize, String)]| -> anyhow::Result<Arc<Vec<Target>>> {
        let targets = keys
            .iter()
            .map(|(i, scope)| {
                let identity = &stack.cold[*i];
                Target::form(
                    &entra_token,
                    None,
                    &[
                        ("grant_type", "client_credentials"),
                        ("client_id", &identity.client_id),
                        ("client_assertion_type", JWT_BEARER),
                        ("client_assertion", &identity.token),
                        ("scope", scope),
                    ],
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Arc::new(targets))
    };

    // Warm-up: one exchange per identity (the issuer's keys fetched, each token verified
    // once, the broker's connections to Entra and ours opened), and as many straight to
    // Entra.
    let warm = keys(identities, &|_| {
        "api://wif-bench-warm-up/.default".to_owned()
    });
    entra.before(&entra_keys(&warm), true).await?;
    for round in [
        drive_each(&client, &direct(&warm)?, opts.cold_concurrency).await?,
        drive_each(&client, &via_broker(&warm)?, opts.cold_concurrency).await?,
    ] {
        if let Some(e) = round.first_error {
            bail!("the cold path's warm-up failed: {e}");
        }
    }
    let calls_before = entra.token_requests().await?;

    let (mut alone, mut broker, mut entra_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let mut connections = None;
    for r in 0..opts.rounds {
        let round_keys = keys(opts.cold_keys, &|s| {
            format!("api://wif-bench-cold-{r}-{s}/.default")
        });
        let (direct_targets, broker_targets) = (direct(&round_keys)?, via_broker(&round_keys)?);
        entra.before(&entra_keys(&round_keys), true).await?;
        alone.push(drive_each(&client, &direct_targets, opts.cold_concurrency).await?);
        let connections_before = entra.connections().await?;
        let cpu_before = entra.process_cpu_secs();
        let round = drive_each(&client, &broker_targets, opts.cold_concurrency).await?;
        if let (Some(before), Some(after)) = (cpu_before, entra.process_cpu_secs()) {
            entra_cpu.push((after - before) * 1e6 / round.requests.max(1) as f64);
        }
        if let (Some(before), Some(after)) = (connections_before, entra.connections().await?) {
            *connections.get_or_insert(0) += after - before;
        }
        broker.push(round);
    }
    let calls = entra.token_requests().await? - calls_before;
    Ok(ColdRounds {
        alone,
        broker,
        calls,
        entra_cpu: (!entra_cpu.is_empty()).then(|| median(entra_cpu)),
        connections,
    })
}

pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

#[derive(Debug, Clone, Serialize)]
pub struct Coalescing {
    pub cold_requests: usize,
    pub entra_delay_ms: u64,
    pub ok: usize,
    pub failed: usize,
    pub distinct_access_tokens: usize,
    /// Callers that found the cache empty and waited on the one upstream call.
    pub cache_misses: u64,
    pub entra_token_calls: u64,
    pub target_entra_calls: u64,
    /// The coalescing broker's `[server] max_connections`: above the connections the
    /// harness opens, so no caller is refused for want of a connection.
    pub broker_max_connections: usize,
    /// Connections the broker took beyond `max_connections` (into the ops reserve, or
    /// refused): 0 unless the burst outgrew the limit.
    pub broker_connections_over_limit: u64,
    pub wall_ms: f64,
    pub pass: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// N concurrent cold requests for one (identity, scope) against a fresh stack whose Entra
/// answers after a delay, so they all arrive while the first upstream call is in flight.
pub async fn coalescing(opts: &Options) -> anyhow::Result<Coalescing> {
    // The harness opens one connection per caller, and a caller whose pooled connection is
    // not yet back in the pool opens another: with the broker's default `[server]
    // max_connections` (1,024) the burst itself would be refused 503 `overloaded` or reset.
    // The broker is told to serve twice the callers, so the row measures coalescing, not
    // the connection limit (docs/PERFORMANCE.md).
    let max_connections =
        (2 * opts.cold).max(wif_config::BrokerConfig::default().server.max_connections);
    let stack = BenchStack::start_configured(StackOptions {
        max_connections: Some(max_connections),
        ..Default::default()
    })
    .await?;
    stack.entra.push_fault(Fault::Delay(opts.entra_delay));
    let client = load_client(opts.cold)?;
    let target = Arc::new(stack.target()?);
    // Open the connections first (one `GET /healthz` each), so the exchanges below reach
    // the broker together instead of trailing behind a storm of TCP handshakes.
    let health = format!("{}/healthz", stack.broker.url());
    let mut connecting = JoinSet::new();
    for _ in 0..opts.cold {
        let (client, health) = (client.clone(), health.clone());
        connecting.spawn(async move { client.get(health).send().await?.bytes().await });
    }
    while let Some(joined) = connecting.join_next().await {
        joined
            .context("a connecting task failed")?
            .context("GET /healthz failed")?;
    }
    let started = Instant::now();
    let mut requests = JoinSet::new();
    for _ in 0..opts.cold {
        let (client, target) = (client.clone(), target.clone());
        requests.spawn(async move {
            let body = target.send(&client).await?;
            let answer: Value = serde_json::from_slice(&body)?;
            answer["access_token"]
                .as_str()
                .map(str::to_owned)
                .context("an answer without access_token")
        });
    }
    let mut tokens = HashSet::new();
    let (mut ok, mut failed, mut first_error) = (0, 0, None);
    while let Some(joined) = requests.join_next().await {
        match joined.context("a request task failed")? {
            Ok(token) => {
                ok += 1;
                tokens.insert(token);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    let metrics = stack.broker.broker.metrics().render();
    let cache_misses = metric_value(&metrics, "wif_token_cache_misses_total", &[]) as u64;
    let over_limit = metric_value(&metrics, "wif_connections_reserved_total", &[])
        + metric_value(&metrics, "wif_connections_refused_total", &[]);
    let entra_token_calls = stack.entra.token_requests();
    drop(client);
    stack.shutdown().await;
    Ok(Coalescing {
        cold_requests: opts.cold,
        entra_delay_ms: u64::try_from(opts.entra_delay.as_millis()).unwrap_or(u64::MAX),
        ok,
        failed,
        distinct_access_tokens: tokens.len(),
        cache_misses,
        entra_token_calls,
        target_entra_calls: COALESCING_TARGET,
        broker_max_connections: max_connections,
        broker_connections_over_limit: over_limit as u64,
        wall_ms,
        pass: entra_token_calls == COALESCING_TARGET && failed == 0,
        first_error,
    })
}

/// Where the time of a cache hit goes, measured in-process on one task with no HTTP and
/// no contention: some steps alone, then the whole decision path (`Broker::exchange`).
#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    pub iterations: u32,
    /// Split the token and decode its header and payload (`UnverifiedToken::parse`).
    pub parse_us: f64,
    /// One RS256 verification with a prebuilt key: what the limit does per request.
    pub rs256_verify_us: f64,
    /// `TokenCache::get` answering a hit (key built from four strings, moka lookup).
    pub cache_hit_us: f64,
    /// The metrics one exchange records (`Metrics::exchange` and `cache_hit`).
    pub metrics_us: f64,
    /// Serialise an audit event like the one a cache hit records.
    pub audit_json_us: f64,
    /// The broker's whole exchange on a cache hit, without HTTP.
    pub exchange_cache_hit_us: f64,
}

/// Mean microseconds per call of `step` over `n` calls, after a short warm-up.
pub fn per_call(n: u32, mut step: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..n.min(100) {
        step()?;
    }
    let started = Instant::now();
    for _ in 0..n {
        step()?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}

pub async fn breakdown(opts: &Options, stack: &BenchStack) -> anyhow::Result<Breakdown> {
    let n = opts.breakdown;
    let token = stack.token.as_str();

    let parse_us = per_call(n, || {
        std::hint::black_box(UnverifiedToken::parse(
            std::hint::black_box(token),
            16 * 1024,
        )?);
        Ok(())
    })?;

    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(stack.issuer.current_key().public_jwk())?;
    let key = DecodingKey::from_jwk(&jwk)?;
    let (message, signature) = token.rsplit_once('.').context("not a JWT")?;
    let rs256_verify_us = per_call(n, || {
        let ok = jsonwebtoken::crypto::verify(
            std::hint::black_box(signature),
            message.as_bytes(),
            &key,
            Algorithm::RS256,
        )?;
        if !ok {
            bail!("the job token does not verify against its issuer's key");
        }
        Ok(())
    })?;

    let clock = wif_broker::clock::system();
    let metrics = Metrics::new();
    let cache = TokenCache::new(&CacheConfig::default(), clock.clone(), metrics.clone());
    let key = |scope: &str| CacheKey {
        authority_host: "https://login.microsoftonline.com".into(),
        tenant_id: TENANT.into(),
        client_id: DEPLOY_CLIENT.into(),
        scope: scope.into(),
    };
    let expires_on = clock.now() + 3600;
    let fetch = move || async move {
        Ok(EntraToken {
            access_token: Secret::new("x".repeat(1200)),
            expires_on,
        })
    };
    cache.get(key(ARM), || fetch).await?;
    for _ in 0..n.min(100) {
        cache.get(key(ARM), || fetch).await?;
    }
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(cache.get(key(ARM), || fetch).await?);
    }
    let cache_hit_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);

    let issuer = stack.issuer.url();
    let metrics_us = per_call(n, || {
        metrics.exchange("/v1/token", "ok", &issuer, 0.000_1);
        metrics.cache_hit();
        Ok(())
    })?;

    let event = AuditEvent {
        kind: "exchange",
        time: clock.now(),
        request_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
        endpoint: "/v1/token",
        issuer: Some(issuer.clone()),
        subject: Some(MAIN_SUBJECT.into()),
        token_sha256: Some("0".repeat(64)),
        jti: Some("2b0d8e6c-5f3a-4c1e-9d7b-8a6f4e2c1b0a".into()),
        credential: Some("github-main".into()),
        identity: Some("deploy".into()),
        scope: Some(ARM.into()),
        outcome: "ok".into(),
        cache: Some("hit"),
        ..Default::default()
    };
    let audit_json_us = per_call(n, || {
        std::hint::black_box(serde_json::to_string(std::hint::black_box(&event))?);
        Ok(())
    })?;

    let broker = &stack.broker.broker;
    let exchange = || {
        broker.exchange(ExchangeRequest {
            endpoint: "/v1/token",
            request_id: "bench-breakdown",
            token,
            scope: Some(ARM),
            identity: None,
            tenant: None,
            client: None,
        })
    };
    for _ in 0..n.min(100) {
        exchange().await?;
    }
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(exchange().await?);
    }
    let exchange_cache_hit_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);

    Ok(Breakdown {
        iterations: n,
        parse_us,
        rs256_verify_us,
        cache_hit_us,
        metrics_us,
        audit_json_us,
        exchange_cache_hit_us,
    })
}

/// The agent's footprint, measured on its release binary (docs/PERFORMANCE.md, "The
/// agent's footprint"): what one pod pays for the sidecar.
#[derive(Debug, Clone, Serialize)]
pub struct AgentFootprint {
    pub binary: String,
    /// Why a figure is missing (no binary, no `strip`), when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Size of the binary as built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary_bytes: Option<u64>,
    /// Size after `strip` (a copy; the binary is left alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stripped_bytes: Option<u64>,
    /// Median `VmRSS` of idle agents `serve`-ing the App Service and IMDS protocols.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_rss_kib: Option<u64>,
    pub idle_rss_samples_kib: Vec<u64>,
    pub settle_ms: u64,
}

/// Where the agent's binary is: `--agent-bin`, else `wif-agent` beside this executable
/// (`target/release/` after `cargo build --release -p wif-agent`).
fn agent_binary(opts: &Options) -> Option<std::path::PathBuf> {
    opts.agent_bin.clone().or_else(|| {
        std::env::current_exe()
            .ok()
            .map(|exe| exe.with_file_name("wif-agent"))
    })
}

/// Stripped size and idle RSS of the agent binary: `samples` agents started at once with
/// a token file and a broker that is never called, `VmRSS` read after `settle`, then
/// stopped; the median is reported.
pub async fn agent_footprint(opts: &Options) -> anyhow::Result<AgentFootprint> {
    let settle = opts.agent_settle;
    let mut footprint = AgentFootprint {
        binary: String::new(),
        note: None,
        binary_bytes: None,
        stripped_bytes: None,
        idle_rss_kib: None,
        idle_rss_samples_kib: Vec::new(),
        settle_ms: u64::try_from(settle.as_millis()).unwrap_or(u64::MAX),
    };
    let binary = agent_binary(opts).context("cannot tell where wif-bench runs from")?;
    footprint.binary = binary.display().to_string();
    if !binary.is_file() {
        footprint.note = Some(format!(
            "no wif-agent binary at {}: build it with `cargo build --release -p wif-agent` \
             (alone, as the Dockerfile does), or pass --agent-bin PATH",
            binary.display()
        ));
        return Ok(footprint);
    }
    footprint.binary_bytes = Some(std::fs::metadata(&binary)?.len());
    let dir = tempfile::tempdir()?;
    let stripped = dir.path().join("wif-agent");
    match tokio::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&binary)
        .status()
        .await
    {
        Ok(status) if status.success() => {
            footprint.stripped_bytes = Some(std::fs::metadata(&stripped)?.len());
        }
        Ok(status) => footprint.note = Some(format!("strip failed: {status}")),
        Err(e) => footprint.note = Some(format!("cannot run strip: {e}")),
    }
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJ.not.used")?;
    let mut agents = Vec::with_capacity(opts.agent_samples);
    for _ in 0..opts.agent_samples {
        agents.push(
            tokio::process::Command::new(&binary)
                .args(["serve", "--broker", "http://127.0.0.1:9", "--token-file"])
                .arg(&token)
                .args(["--listen", "127.0.0.1:0"])
                .env("WIF_AGENT_IDENTITY_HEADER", AGENT_SECRET)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start {}", binary.display()))?,
        );
    }
    tokio::time::sleep(settle).await;
    let mut samples = Vec::with_capacity(agents.len());
    for mut agent in agents {
        let rss = agent
            .id()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .and_then(|status| vm_rss_kib(&status));
        let exited = agent.try_wait()?;
        let _ = agent.kill().await;
        match (rss, exited) {
            (Some(kib), None) => samples.push(kib),
            _ => {
                let output = agent.wait_with_output().await?;
                bail!(
                    "the agent did not stay up ({:?}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                        .chars()
                        .take(500)
                        .collect::<String>()
                );
            }
        }
    }
    footprint.idle_rss_kib = Some(median(samples.iter().map(|&k| k as f64)) as u64);
    footprint.idle_rss_samples_kib = samples;
    Ok(footprint)
}

fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub scope: &'static str,
    pub vm_rss_kib: u64,
    pub vm_hwm_kib: u64,
}

/// VmRSS and VmHWM of this process from /proc/self/status (Linux only).
pub fn memory() -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("cannot read /proc/self/status (Linux only)")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/self/status"))
    };
    Ok(Memory {
        scope: "whole benchmark process: broker, local issuer, Entra emulator, limit server and load generator",
        vm_rss_kib: field("VmRSS:")?,
        vm_hwm_kib: field("VmHWM:")?,
    })
}
