//! `wif-bench`: the benchmark harness behind docs/PERFORMANCE.md.
//!
//! Everything runs in this one process, on loopback, on one tokio runtime: the broker with
//! the dev stack's local issuer and Entra emulator, a bare axum server that stands for the
//! machine's limit, and the load generator. The one exception is the cold path's Entra,
//! which answers in a fixed time and runs as a process of its own (this binary started
//! again with `--serve-fixed-entra`; `wif_bench/fixed_entra.rs`). The figures are reported, never asserted: the
//! process always exits 0 once it has measured, whatever the verdicts say.
//!
//! Measured, with the same load generator and settings for every target:
//! - the floor: a bare axum handler answering fixed JSON (HTTP cost alone);
//! - the limit: a bare axum handler doing one RS256 verification of the same token;
//! - the broker: `POST /v1/token` answered from the token cache;
//! - with `--split`, also the broker's `Broker::exchange` behind a bare handler, which
//!   splits the broker's extra cost into its exchange logic and its HTTP edge;
//!
//! in interleaved rounds (floor, limit, broker, floor, limit, broker, ...), medians
//! reported; the budget ratio is the median of the per-round broker ÷ limit ratios. The
//! agent's cache hit runs in the same rounds against a bare `GET` floor. Then the
//! every-request-verified row: a broker with its verified-token cache off, each request with
//! the next of a pool of distinct tokens minted before the rounds, against the limit in
//! rounds of its own, with every exchange's audit event counted in the store. Then the TLS
//! rows: the limit and the broker (repeated token; every request verified, from the same
//! pool) serving TLS with the same rustls configuration, in rounds of their own. `--only`
//! runs some of these sections. Then coalescing: N concurrent cold
//! requests for one (identity, scope) against a fresh stack whose Entra is slowed down,
//! counting the token calls Entra receives. Then the cold path: distinct (identity, scope)
//! keys, each asked for once, against an Entra that answers after a fixed delay (its
//! tokens minted before each round), next to the same requests sent to Entra directly. Then the agent binary's stripped size and idle
//! RSS, a breakdown of the cache-hit path measured in-process without HTTP, and the
//! process's resident memory. docs/PERFORMANCE.md describes each.
//!
//! No tracing subscriber is installed, so logging costs nothing beyond what the broker
//! does before it reaches the `tracing` macros.

#[path = "wif_bench/fixed_entra.rs"]
mod fixed_entra;
#[path = "wif_bench/load.rs"]
mod load;
#[path = "wif_bench/measure.rs"]
mod measure;
#[path = "wif_bench/report.rs"]
mod report;
#[path = "wif_bench/servers.rs"]
mod servers;

use std::time::Duration;

use anyhow::{Context, bail};
use wif_broker::clock::{Clock, SystemClock};

use load::Stop;
use measure::{
    DistinctTokens, agent_footprint, breakdown, coalescing, cold_path, memory, throughput,
    tls_rows, verified_rows,
};
use report::{
    Budget, Machine, PlainRows, Report, Settings, cpu_model, markdown, table, utc_timestamp,
    verdict,
};
use servers::BenchStack;

/// docs/PERFORMANCE.md: cache-hit exchange throughput ≥ 80% of the limit (plain and TLS).
const RATIO_BUDGET: f64 = 0.80;
/// docs/PERFORMANCE.md: an agent cache hit ≥ 90% of the bare `GET` floor.
const AGENT_RATIO_BUDGET: f64 = 0.90;

const USAGE: &str = "\
wif-bench: cache-hit exchange throughput against the machine's limit (plain and TLS),
coalescing, the cold path, the agent's cache hit and footprint, memory.

USAGE:
    cargo run --release -p wif-tests --bin wif-bench -- [OPTIONS]

OPTIONS:
    --concurrency N        requests in flight at once (default 32)
    --duration SECS        length of each measured round (default 5)
    --requests N           measure N requests per round instead of a duration
    --warmup-ms MS         unmeasured load before each round (default 500)
    --rounds N             interleaved rounds per target; medians are reported (default 3)
    --cold N               concurrent cold requests for the coalescing check (default 1000)
    --entra-delay-ms MS    how long Entra takes to answer during that check (default 1000)
    --cold-keys N          distinct (identity, scope) keys for the cold path (default 500)
    --cold-concurrency N   cold requests in flight at once (default 50)
    --cold-entra-ms MS     how long Entra takes to answer on the cold path (default 20)
    --cold-entra KIND      the cold path's Entra: process (default: answers after exactly
                           the delay, tokens minted before each round, in a process of its
                           own), in-process (the same in this process), dev (the dev stack's
                           emulator: the delay, then it verifies and signs per request)
    --agent-bin PATH       the wif-agent binary whose footprint is reported (default:
                           wif-agent beside this executable)
    --breakdown N          iterations of each in-process breakdown step (default 5000)
    --split                also measure the broker's exchange logic behind a bare axum
                           handler, to split the broker's cost into logic and HTTP edge
    --no-verified-cache    the broker verifies every token's signature, as with a new token
                           per request (default: it remembers verified tokens, as deployed)
    --distinct N           distinct job tokens minted (on every core) before the rounds; the
                           every-request-verified rows send the next one on every request
                           (default 5000: a few seconds of minting)
    --only LIST            run only these sections, comma-separated: plain (floor, limit,
                           repeated-token broker, agent, breakdown), verified (the plain
                           every-request-verified row and its limit), tls, coalescing,
                           cold, footprint (default: all)
    --quick                tiny counts for a smoke test (a few seconds in all)
    --json                 print one JSON object instead of the table
    --markdown             print a Markdown table (for docs/PERFORMANCE.md)
    --json-file PATH       also write the JSON object to PATH (one run, two formats)
    -h, --help             print this help
";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    Table,
    Json,
    Markdown,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub concurrency: usize,
    pub stop: Stop,
    pub warmup: Stop,
    pub rounds: usize,
    pub cold: usize,
    pub entra_delay: Duration,
    pub cold_keys: usize,
    pub cold_concurrency: usize,
    pub cold_entra_delay: Duration,
    pub cold_entra: fixed_entra::ColdEntra,
    pub agent_bin: Option<std::path::PathBuf>,
    /// Idle agents started for the footprint (the median is reported).
    pub agent_samples: usize,
    /// How long an idle agent runs before its RSS is read.
    pub agent_settle: Duration,
    pub breakdown: u32,
    pub quick: bool,
    pub split: bool,
    /// Whether the broker remembers verified tokens (on by default, as deployed).
    pub verified_cache: bool,
    pub format: Format,
    pub json_file: Option<std::path::PathBuf>,
    /// Distinct tokens of the every-request-verified rows' pool.
    pub distinct: usize,
    /// The sections to run, in [`SECTIONS`] order.
    pub sections: Vec<&'static str>,
}

/// Every section, in the order they run (`--only` picks some).
const SECTIONS: [&str; 6] = [
    "plain",
    "verified",
    "tls",
    "coalescing",
    "cold",
    "footprint",
];

impl Options {
    fn runs(&self, section: &str) -> bool {
        self.sections.contains(&section)
    }
}

impl Options {
    fn full() -> Self {
        Self {
            concurrency: 32,
            stop: Stop::After(Duration::from_secs(5)),
            warmup: Stop::After(Duration::from_millis(500)),
            rounds: 3,
            cold: 1000,
            entra_delay: Duration::from_millis(1000),
            cold_keys: 500,
            cold_concurrency: 50,
            cold_entra_delay: Duration::from_millis(20),
            cold_entra: fixed_entra::ColdEntra::Process,
            agent_bin: None,
            agent_samples: 5,
            agent_settle: Duration::from_secs(3),
            breakdown: 5000,
            quick: false,
            split: false,
            verified_cache: true,
            format: Format::Table,
            json_file: None,
            distinct: 5000,
            sections: SECTIONS.to_vec(),
        }
    }

    fn quick() -> Self {
        Self {
            concurrency: 4,
            stop: Stop::Count(200),
            warmup: Stop::Count(20),
            rounds: 1,
            cold: 50,
            entra_delay: Duration::from_millis(300),
            cold_keys: 20,
            cold_concurrency: 5,
            cold_entra_delay: Duration::from_millis(20),
            cold_entra: fixed_entra::ColdEntra::Process,
            agent_bin: None,
            agent_samples: 1,
            agent_settle: Duration::from_millis(500),
            breakdown: 50,
            quick: true,
            split: false,
            verified_cache: true,
            format: Format::Table,
            json_file: None,
            distinct: 20,
            sections: SECTIONS.to_vec(),
        }
    }

    /// `None` when help was asked for.
    fn parse(args: &[String]) -> anyhow::Result<Option<Self>> {
        if args.iter().any(|a| a == "-h" || a == "--help") {
            return Ok(None);
        }
        let mut opts = if args.iter().any(|a| a == "--quick") {
            Self::quick()
        } else {
            Self::full()
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .with_context(|| format!("{arg} needs a value (see --help)"))
            };
            match arg.as_str() {
                "--quick" => {}
                "--split" => opts.split = true,
                "--no-verified-cache" => opts.verified_cache = false,
                "--json" => opts.format = Format::Json,
                "--markdown" => opts.format = Format::Markdown,
                "--json-file" => opts.json_file = Some(value()?.into()),
                "--concurrency" => opts.concurrency = positive(arg, value()?)?,
                "--duration" => {
                    let secs: f64 = value()?
                        .parse()
                        .with_context(|| format!("{arg} takes seconds"))?;
                    if !(secs > 0.0 && secs <= 3600.0) {
                        bail!("{arg} must be between 0 and 3600 seconds");
                    }
                    opts.stop = Stop::After(Duration::from_secs_f64(secs));
                }
                "--requests" => opts.stop = Stop::Count(positive(arg, value()?)? as u64),
                "--warmup-ms" => {
                    let ms: u64 = value()?
                        .parse()
                        .with_context(|| format!("{arg} takes milliseconds"))?;
                    opts.warmup = Stop::After(Duration::from_millis(ms));
                }
                "--rounds" => opts.rounds = positive(arg, value()?)?,
                "--cold" => opts.cold = positive(arg, value()?)?,
                "--entra-delay-ms" => {
                    opts.entra_delay = Duration::from_millis(positive(arg, value()?)? as u64)
                }
                "--cold-keys" => opts.cold_keys = positive(arg, value()?)?,
                "--cold-concurrency" => opts.cold_concurrency = positive(arg, value()?)?,
                "--cold-entra-ms" => {
                    opts.cold_entra_delay = Duration::from_millis(positive(arg, value()?)? as u64)
                }
                "--cold-entra" => opts.cold_entra = fixed_entra::ColdEntra::parse(value()?)?,
                "--agent-bin" => opts.agent_bin = Some(value()?.into()),
                "--breakdown" => opts.breakdown = positive(arg, value()?)? as u32,
                "--distinct" => opts.distinct = positive(arg, value()?)?,
                "--only" => {
                    let list = value()?;
                    let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
                    if let Some(unknown) = wanted.iter().find(|w| !SECTIONS.contains(w)) {
                        bail!(
                            "{arg}: no section {unknown:?} (one of {})",
                            SECTIONS.join(", ")
                        );
                    }
                    opts.sections = SECTIONS
                        .into_iter()
                        .filter(|s| wanted.contains(s))
                        .collect();
                }
                other => bail!("unknown argument {other:?} (see --help)"),
            }
        }
        Ok(Some(opts))
    }
}

fn positive(flag: &str, value: &str) -> anyhow::Result<usize> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 && n <= 10_000_000 => Ok(n),
        _ => bail!("{flag} takes a positive whole number, not {value:?}"),
    }
}

// ---------------------------------------------------------------------------------------

async fn run(opts: Options) -> anyhow::Result<Report> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut token_bytes = 0;
    let mut broker_answer_bytes = 0;
    let plain = if opts.runs("plain") {
        let stack = BenchStack::start_with(opts.verified_cache).await?;
        token_bytes = stack.token.len();
        let t = throughput(&opts, &stack).await?;
        broker_answer_bytes = t.broker_answer_bytes;
        let breakdown = breakdown(&opts, &stack).await?;
        stack.shutdown().await;
        let pass = t.ratio >= RATIO_BUDGET;
        let agent_pass = t.agent_ratio >= AGENT_RATIO_BUDGET;
        Some(PlainRows {
            floor: t.floor,
            limit: t.limit,
            broker_logic: t.broker_logic,
            broker_cache_hit: t.broker,
            cache_hit_vs_limit: Budget {
                ratio: t.ratio,
                budget: RATIO_BUDGET,
                pass,
                verdict: verdict(pass),
                round_ratios: t.round_ratios,
                cpu_ratio: t.cpu_ratio,
            },
            agent_floor: t.floor_get,
            agent_cache_hit: t.agent,
            agent_vs_floor: Budget {
                ratio: t.agent_ratio,
                budget: AGENT_RATIO_BUDGET,
                pass: agent_pass,
                verdict: verdict(agent_pass),
                round_ratios: t.agent_round_ratios,
                cpu_ratio: t.agent_cpu_ratio,
            },
            breakdown,
        })
    } else {
        None
    };
    // One issuer and one pool of distinct tokens for every every-request-verified row.
    let distinct = if opts.runs("verified") || opts.runs("tls") {
        Some(DistinctTokens::mint(opts.distinct).await?)
    } else {
        None
    };
    let (mut distinct_tokens, mut distinct_mint_secs) = (0, 0.0);
    if let Some(d) = &distinct {
        distinct_tokens = d.tokens.len();
        distinct_mint_secs = d.mint_secs;
        if token_bytes == 0 {
            token_bytes = d.tokens.first().map_or(0, String::len);
        }
    }
    let every_request_verified = match &distinct {
        Some(d) if opts.runs("verified") => Some(verified_rows(&opts, d).await?),
        _ => None,
    };
    let tls = match &distinct {
        Some(d) if opts.runs("tls") => Some(tls_rows(&opts, d).await?),
        _ => None,
    };
    if let Some(d) = distinct {
        d.shutdown().await;
    }
    let coalescing = if opts.runs("coalescing") {
        Some(coalescing(&opts).await?)
    } else {
        None
    };
    let cold_path = if opts.runs("cold") {
        Some(cold_path(&opts).await?)
    } else {
        None
    };
    let agent_footprint = if opts.runs("footprint") {
        Some(agent_footprint(&opts).await?)
    } else {
        None
    };
    let memory = memory()?;
    Ok(Report {
        date_utc: utc_timestamp(SystemClock.now()),
        machine: Machine {
            cores,
            cpu: cpu_model(),
            note: "the load generator and all servers run in this process on one tokio runtime and share these cores, so every target pays the same client cost (the cold path's Entra runs as a process of its own on the same cores)",
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        },
        settings: Settings {
            concurrency: opts.concurrency,
            per_round: opts.stop.describe(),
            warmup_per_round: opts.warmup.describe(),
            rounds: opts.rounds,
            order: if opts.split {
                "floor, limit, broker logic, broker, GET floor, agent"
            } else {
                "floor, limit, broker, GET floor, agent"
            },
            quick: opts.quick,
            logging: "off (no tracing subscriber)",
            verified_cache: opts.verified_cache,
            token_bytes,
            broker_answer_bytes,
            distinct_tokens,
            distinct_mint_secs,
            sections: opts.sections.clone(),
        },
        plain,
        every_request_verified,
        tls,
        coalescing,
        cold_path,
        agent_footprint,
        memory,
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The cold path's fixed Entra, started by this benchmark as a process of its own.
    if let Some((flag, rest)) = args.split_first()
        && flag == fixed_entra::CHILD_FLAG
    {
        return fixed_entra::child_main(rest);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(args))
}

async fn bench(args: Vec<String>) -> anyhow::Result<()> {
    let Some(opts) = Options::parse(&args)? else {
        print!("{USAGE}");
        return Ok(());
    };
    let (format, json_file) = (opts.format, opts.json_file.clone());
    let report = run(opts).await?;
    if let Some(path) = json_file {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    match format {
        Format::Table => print!("{}", table(&report)),
        Format::Markdown => print!("{}", markdown(&report)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}
