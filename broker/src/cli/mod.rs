//! The `wif-broker` command line: `serve`, `dev`, `check-config`; the admin commands
//! `identity`, `credential`, `simulate` and `audit`, which call a running broker's admin
//! API ([`admin`]); `plan`, `apply`, `export` and `entra plan`, registry files as code
//! ([`gitops`]); and `admin-token`, which makes admin tokens locally.

pub mod admin;
pub mod client;
pub mod gitops;
pub mod output;
pub mod timespec;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wif_config::{BrokerConfig, LogConfig};

use crate::clock;
use crate::server::{RunningBroker, shutdown_signal};

#[derive(Debug, Parser)]
#[command(
    name = "wif-broker",
    version,
    about = "Workload-identity federation broker for Microsoft Entra"
)]
pub struct Cli {
    /// Configuration file (TOML). `WIF_*` environment variables override its keys.
    #[arg(long, global = true, env = "WIF_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve,
    /// Run a self-contained local stack on loopback: the broker (in-memory store), a local
    /// OIDC issuer and an Entra emulator, with a demo identity, and print a ready-to-paste
    /// curl that returns an access token.
    Dev {
        /// Where the broker listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Load and validate the configuration, then exit (0 when valid).
    CheckConfig,
    /// Register, list, show and delete identities on a running broker.
    Identity(admin::IdentityArgs),
    /// Register, list, show, update and delete federated credentials on a running broker.
    Credential(admin::CredentialArgs),
    /// Ask a running broker what an exchange with a token (or claims) would decide, and why.
    Simulate(admin::SimulateArgs),
    /// Read a running broker's audit trail.
    Audit(admin::AuditArgs),
    /// Show how a running broker differs from a registry file (identities and federated
    /// credentials as code); exit code 0 when nothing would change, 2 when something would.
    Plan(gitops::PlanArgs),
    /// Make a running broker match a registry file (deletes only with --prune).
    Apply(gitops::ApplyArgs),
    /// Write a running broker's API-registered identities and credentials as a registry file.
    Export(gitops::ExportArgs),
    /// What Entra must hold for each identity to work through the broker.
    #[command(subcommand)]
    Entra(gitops::EntraCommand),
    /// Make admin tokens and their `tokens_file` lines (no broker needed).
    #[command(subcommand)]
    AdminToken(admin::AdminTokenCommand),
}

/// Entry point for the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<gitops::ChangesPending>() => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<BrokerConfig> {
    Ok(match path {
        Some(path) => BrokerConfig::load(path)?,
        None => BrokerConfig::from_env_only()?,
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    crate::crypto::install_provider();
    match cli.command {
        Command::Serve => {
            let cfg = load_config(cli.config.as_deref())?;
            init_logging(&cfg.log);
            let broker = RunningBroker::start(&cfg, clock::system()).await?;
            broker.run_until(shutdown_signal()).await?;
            Ok(())
        }
        Command::Dev { listen } => {
            init_logging(&LogConfig {
                level: "warn,wif_audit=info".into(),
                ..LogConfig::default()
            });
            crate::dev::stack::run(&listen).await
        }
        Command::CheckConfig => {
            let cfg = load_config(cli.config.as_deref())?;
            crate::exchange::Broker::new(
                &cfg,
                clock::system(),
                crate::metrics::Metrics::new(),
                None,
            )?;
            println!(
                "configuration is valid: {} identities, {} federated credentials, {} explicit issuers",
                cfg.identities.len(),
                cfg.identities
                    .iter()
                    .map(|i| i.federated_credentials.len())
                    .sum::<usize>(),
                cfg.issuers.len()
            );
            Ok(())
        }
        Command::Identity(args) => admin::identity(args).await,
        Command::Credential(args) => admin::credential(args).await,
        Command::Simulate(args) => admin::simulate(args).await,
        Command::Audit(args) => admin::audit(args, clock::system()).await,
        Command::Plan(args) => gitops::plan(args).await,
        Command::Apply(args) => gitops::apply(args).await,
        Command::Export(args) => gitops::export(args).await,
        Command::Entra(command) => gitops::entra(command).await,
        Command::AdminToken(command) => admin::admin_token(command),
    }
}

/// Logs go to stderr; `RUST_LOG` overrides `[log] level`.
pub fn init_logging(cfg: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if cfg.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
