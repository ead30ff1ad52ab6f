//! The load generator: a fixed number of tokio tasks over one keep-alive reqwest client,
//! each sending the next request as soon as the previous one is answered, for a fixed time
//! or a fixed number of requests. Every latency is kept (sorted for percentiles).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use tokio::task::JoinSet;

/// The exchange request body; `scope` as a form, like `az` or a curl user would send it.
const BODY: &str = "scope=https%3A%2F%2Fmanagement.azure.com%2F.default";
/// A worker stops after this many failed requests rather than spinning on errors.
const MAX_ERRORS_PER_WORKER: u64 = 100;

/// When a round ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    After(Duration),
    Count(u64),
}

impl Stop {
    pub fn describe(self) -> String {
        match self {
            Stop::After(d) => format!("{} s", crate::report::trim_float(d.as_secs_f64())),
            Stop::Count(n) => format!("{n} requests"),
        }
    }
}

/// One request, prebuilt so the generator does the same small work for every target.
pub struct Target {
    pub url: reqwest::Url,
    /// `POST` [`Self::body`] (as a form); otherwise a plain `GET`.
    pub post: bool,
    /// The bearer token sent with it, if any.
    pub authorization: Option<HeaderValue>,
    /// Extra headers (the agent's `X-IDENTITY-HEADER`).
    pub headers: Vec<(&'static str, HeaderValue)>,
    /// The form body of a `POST` (cheap to clone: usually the static exchange body).
    pub body: Bytes,
    /// Distinct bearer tokens sent instead of [`Self::authorization`], the next one on
    /// every request (round-robin over the pool, shared by every load task).
    pub pool: Option<TokenPool>,
}

/// Prebuilt `Authorization` values of distinct tokens, taken in turn.
pub struct TokenPool {
    headers: Arc<Vec<HeaderValue>>,
    next: AtomicUsize,
}

impl TokenPool {
    pub fn new(tokens: &[String]) -> anyhow::Result<Self> {
        if tokens.is_empty() {
            bail!("an empty token pool");
        }
        let headers = tokens
            .iter()
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            headers: Arc::new(headers),
            next: AtomicUsize::new(0),
        })
    }

    fn take(&self) -> &HeaderValue {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.headers.len();
        &self.headers[i]
    }
}

impl Target {
    pub fn new(url: &str, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            url: url.parse()?,
            post: true,
            authorization: Some(HeaderValue::from_str(&format!("Bearer {token}"))?),
            headers: Vec::new(),
            body: Bytes::from_static(BODY.as_bytes()),
            pool: None,
        })
    }

    /// [`Self::new`], each request with the next token of `pool`.
    pub fn with_pool(url: &str, pool: TokenPool) -> anyhow::Result<Self> {
        let mut target = Self::new(url, "unused")?;
        target.authorization = None;
        target.pool = Some(pool);
        Ok(target)
    }

    /// A `POST` of `form` (url-encoded pairs), with a bearer token when `token` is given:
    /// an exchange for another scope, or a token request straight to Entra.
    pub fn form(url: &str, token: Option<&str>, form: &[(&str, &str)]) -> anyhow::Result<Self> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        Ok(Self {
            url: url.parse()?,
            post: true,
            authorization: token
                .map(|token| HeaderValue::from_str(&format!("Bearer {token}")))
                .transpose()?,
            headers: Vec::new(),
            body: Bytes::from(body),
            pool: None,
        })
    }

    /// A `GET` with `headers`, as an SDK asks a managed-identity endpoint.
    pub fn get(url: &str, headers: &[(&'static str, &str)]) -> anyhow::Result<Self> {
        Ok(Self {
            url: url.parse()?,
            post: false,
            authorization: None,
            headers: headers
                .iter()
                .map(|(k, v)| Ok((*k, HeaderValue::from_str(v)?)))
                .collect::<anyhow::Result<_>>()?,
            body: Bytes::new(),
            pool: None,
        })
    }

    pub async fn send(&self, client: &reqwest::Client) -> anyhow::Result<Bytes> {
        let mut request = if self.post {
            client
                .post(self.url.clone())
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(self.body.clone())
        } else {
            client.get(self.url.clone())
        };
        if let Some(pool) = &self.pool {
            request = request.header(header::AUTHORIZATION, pool.take().clone());
        } else if let Some(bearer) = &self.authorization {
            request = request.header(header::AUTHORIZATION, bearer.clone());
        }
        for (name, value) in &self.headers {
            request = request.header(*name, value.clone());
        }
        let response = request.send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body);
            bail!(
                "HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            );
        }
        Ok(body)
    }
}

pub fn load_client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    Ok(client_builder(concurrency).build()?)
}

fn client_builder(concurrency: usize) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(concurrency)
        .pool_idle_timeout(Duration::from_secs(120))
        .timeout(Duration::from_secs(30))
}

/// [`load_client`] for HTTPS: trusts only `ca_pem`, and speaks HTTP/1.1 like the plain
/// rows (one request at a time per kept-alive connection; the TLS handshake is paid once
/// per connection, in the warm-up), so the TLS rows differ from them by TLS alone.
pub fn tls_load_client(concurrency: usize, ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())?;
    Ok(client_builder(concurrency)
        .tls_certs_only([ca])
        .http1_only()
        .build()?)
}

/// One measured round against one target.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub requests: u64,
    pub errors: u64,
    pub elapsed_secs: f64,
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// CPU time of the whole process (load generator and servers) per request: steadier
    /// than requests/s on a shared machine, since other tenants' load does not count.
    pub cpu_us_per_request: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

#[derive(Default)]
pub struct WorkerTally {
    pub latencies_ns: Vec<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Keeps `concurrency` requests in flight until `stop`, timing each one from send to the
/// last byte of the answer.
pub async fn drive(
    client: &reqwest::Client,
    target: &Arc<Target>,
    concurrency: usize,
    stop: Stop,
) -> anyhow::Result<Round> {
    let cpu_before = process_cpu_secs();
    let started = Instant::now();
    let (deadline, budget) = match stop {
        Stop::After(d) => (Some(started + d), u64::MAX),
        Stop::Count(n) => (None, n),
    };
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (client, target, issued) = (client.clone(), target.clone(), issued.clone());
        workers.spawn(async move {
            let mut tally = WorkerTally {
                latencies_ns: Vec::with_capacity(4096),
                ..Default::default()
            };
            loop {
                match deadline {
                    Some(deadline) if Instant::now() >= deadline => break,
                    None if issued.fetch_add(1, Ordering::Relaxed) >= budget => break,
                    _ => {}
                }
                let sent = Instant::now();
                let result = target.send(&client).await;
                let ns = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                match result {
                    Ok(_) => tally.latencies_ns.push(ns),
                    Err(e) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert_with(|| format!("{e:#}"));
                        if tally.errors >= MAX_ERRORS_PER_WORKER {
                            break;
                        }
                    }
                }
            }
            tally
        });
    }
    summarise(workers, cpu_before, started).await
}

/// Sends every target of `targets` once, `concurrency` at a time, in order: each of the
/// workers takes the next one not yet sent (cold-path keys, each asked for once).
pub async fn drive_each(
    client: &reqwest::Client,
    targets: &Arc<Vec<Target>>,
    concurrency: usize,
) -> anyhow::Result<Round> {
    let cpu_before = process_cpu_secs();
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (client, targets, next) = (client.clone(), targets.clone(), next.clone());
        workers.spawn(async move {
            let mut tally = WorkerTally::default();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(target) = usize::try_from(index).ok().and_then(|i| targets.get(i)) else {
                    break;
                };
                let sent = Instant::now();
                let result = target.send(&client).await;
                let ns = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                match result {
                    Ok(_) => tally.latencies_ns.push(ns),
                    Err(e) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            tally
        });
    }
    summarise(workers, cpu_before, started).await
}

/// Gathers the workers' tallies into one round: latencies sorted, CPU per request.
async fn summarise(
    mut workers: JoinSet<WorkerTally>,
    cpu_before: Option<f64>,
    started: Instant,
) -> anyhow::Result<Round> {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        let tally = joined.context("a load-generator task failed")?;
        latencies.extend(tally.latencies_ns);
        errors += tally.errors;
        first_error = first_error.or(tally.first_error);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = match (cpu_before, process_cpu_secs()) {
        (Some(before), Some(after)) => after - before,
        _ => 0.0,
    };
    latencies.sort_unstable();
    let requests = latencies.len() as u64;
    Ok(Round {
        requests,
        errors,
        elapsed_secs: elapsed,
        requests_per_sec: requests as f64 / elapsed,
        p50_us: percentile_us(&latencies, 50.0),
        p99_us: percentile_us(&latencies, 99.0),
        max_us: latencies.last().map_or(0.0, |&ns| ns as f64 / 1000.0),
        cpu_us_per_request: if requests > 0 {
            cpu * 1e6 / requests as f64
        } else {
            0.0
        },
        first_error,
    })
}

/// CPU time this process's threads have run, in seconds: the sum of each thread's
/// `sum_exec_runtime` (ns) from /proc/self/task/*/schedstat (Linux). Threads that exit
/// between two readings drop out, but the runtime's worker threads live all run long.
pub fn process_cpu_secs() -> Option<f64> {
    cpu_secs_of("/proc/self/task")
}

/// The sum of every thread's run time under `tasks` (`/proc/PID/task`), in seconds.
pub fn cpu_secs_of(tasks: &str) -> Option<f64> {
    let mut total_ns: u64 = 0;
    for task in std::fs::read_dir(tasks).ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total_ns += stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total_ns as f64 / 1e9)
}

/// Nearest-rank percentile of sorted nanoseconds, in microseconds.
pub fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_ns.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted_ns.len()) - 1;
    sorted_ns[index] as f64 / 1000.0
}

pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// One target over all rounds; the headline figures are medians across rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub what: &'static str,
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us_per_request: f64,
    pub requests: u64,
    pub errors: u64,
    pub rounds: Vec<Round>,
}

impl Measured {
    pub fn new(what: &'static str, rounds: Vec<Round>) -> Self {
        Self {
            what,
            requests_per_sec: median(rounds.iter().map(|r| r.requests_per_sec)),
            p50_us: median(rounds.iter().map(|r| r.p50_us)),
            p99_us: median(rounds.iter().map(|r| r.p99_us)),
            cpu_us_per_request: median(rounds.iter().map(|r| r.cpu_us_per_request)),
            requests: rounds.iter().map(|r| r.requests).sum(),
            errors: rounds.iter().map(|r| r.errors).sum(),
            rounds,
        }
    }

    pub fn first_error(&self) -> Option<&str> {
        self.rounds.iter().find_map(|r| r.first_error.as_deref())
    }
}
