//! The `wif-broker` command line: `serve`, `dev`, `check-config`; the admin commands
//! `identity`, `credential`, `simulate` and `audit`, which call a running broker's admin
//! API ([`admin`]); `plan`, `apply`, `export` and `entra plan`, registry files as code
//! ([`gitops`]); and `admin-token`, which makes admin tokens locally.

pub mod dev;
pub use wif_cli::{admin, client, gitops, output};
pub use wif_proto::timespec;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
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
    /// The broker's configuration file, for `serve` and `check-config` (also accepted
    /// after them).
    #[arg(long, env = "WIF_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// `--config` of `serve` and `check-config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Configuration file (TOML); `WIF_<SECTION>_<KEY>` variables override its keys.
    /// Without a file, the configuration is the defaults and the `WIF_*` variables, and
    /// at least one such variable must be set.
    #[arg(long, env = "WIF_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    ///
    /// Unless the configuration says otherwise it listens on 127.0.0.1:8080 (`[server]
    /// listen`, WIF_SERVER_LISTEN) and stores identities, credentials and audit events in
    /// the SQLite file ./wif.db (`[store] url`, WIF_STORE_URL). It refuses to start with
    /// neither a configuration file nor a WIF_* variable; see config/examples/broker.toml,
    /// or try `wif-broker dev`.
    Serve(ConfigArgs),
    /// Run a self-contained local stack on loopback: the broker (in-memory store), a local
    /// OIDC issuer and an Entra emulator, with two demo identities, and print a
    /// ready-to-paste curl that returns an access token. `dev token` mints more tokens.
    Dev(dev::DevArgs),
    /// Load and validate the configuration, then exit: 0 when valid, 1 when not, or when
    /// there is nothing to check (no file and no WIF_* variable).
    CheckConfig(ConfigArgs),
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

/// The configuration `serve` and `check-config` run on: the file, or the `WIF_*`
/// variables alone. With neither there is nothing to run or check, and the error says
/// what to do instead of starting a broker that knows nothing. Validated once, here: the
/// typed values come with it.
fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<wif_config::Checked> {
    match path {
        Some(path) => Ok(BrokerConfig::load_checked(path)?),
        None if has_config_variables() => Ok(BrokerConfig::check_env_only()?),
        None => anyhow::bail!(
            "no configuration: pass --config FILE (or set WIF_CONFIG), or set WIF_<SECTION>_<KEY> \
             variables. config/examples/broker.toml is a commented example \
             (docs/configuration.md has every key); `wif-broker dev` runs a local stack with \
             demo identities instead"
        ),
    }
}

/// Whether a `WIF_<SECTION>_<KEY>` variable is set (the admin client's `WIF_SERVER_URL`
/// and `WIF_ADMIN_TOKEN` do not count). A malformed one counts, so its error is shown.
fn has_config_variables() -> bool {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    wif_config::env::overrides(&vars, BrokerConfig::SECTIONS).map_or(true, |o| !o.is_empty())
}

/// What a configuration leaves a newcomer wondering about: a broker with no identity and
/// no way to register one can exchange nothing.
fn config_warnings(cfg: &BrokerConfig) -> Vec<String> {
    let admin = cfg.admin.tokens_file.is_some() || cfg.admin.oidc_issuer.is_some();
    if cfg.identities.is_empty() && !admin {
        vec![
            "no identities are configured and the admin API is off (no [admin] tokens_file \
             or oidc_issuer): only identities already in the store can be used, and none can \
             be registered"
                .to_owned(),
        ]
    } else {
        Vec::new()
    }
}

/// Where `[store] url` keeps the data, for the start-up log: a relative SQLite path made
/// absolute (it is relative to the working directory), a PostgreSQL URL without its
/// user and password.
fn describe_store(url: &str) -> String {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let path = path.split('?').next().unwrap_or(path);
        if path == ":memory:" {
            return "in memory (nothing survives a restart)".to_owned();
        }
        let file = std::env::current_dir()
            .map(|dir| dir.join(path))
            .unwrap_or_else(|_| path.into());
        return format!("SQLite file {}", file.display());
    }
    match url::Url::parse(url) {
        Ok(parsed) => format!(
            "PostgreSQL at {}:{}{}",
            parsed.host_str().unwrap_or("-"),
            parsed.port().unwrap_or(5432),
            parsed.path()
        ),
        Err(_) => "PostgreSQL".to_owned(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    crate::crypto::install_provider();
    match cli.command {
        Command::Serve(args) => {
            let checked = load_config(args.config.or(cli.config).as_deref())?;
            let cfg = checked.config();
            init_logging(&cfg.log);
            for warning in config_warnings(cfg) {
                tracing::warn!("{warning}");
            }
            tracing::info!("store: {}", describe_store(&cfg.store.url));
            let broker = RunningBroker::start_checked(checked, clock::system()).await?;
            broker.run_until(shutdown_signal()).await?;
            Ok(())
        }
        Command::Dev(dev::DevArgs {
            command: Some(dev::DevCommand::Token(args)),
            ..
        }) => dev::token(args, clock::system()).await,
        #[cfg(feature = "dev")]
        Command::Dev(dev::DevArgs { listen, .. }) => {
            init_logging(&LogConfig {
                level: "warn,wif_audit=info".into(),
                ..LogConfig::default()
            });
            crate::dev::stack::run(&listen).await
        }
        #[cfg(not(feature = "dev"))]
        Command::Dev(_) => anyhow::bail!("{}", crate::dev::NOT_BUILT),
        Command::CheckConfig(args) => {
            let cfg = load_config(args.config.or(cli.config).as_deref())?.into_config();
            crate::exchange::Broker::new(
                &cfg,
                clock::system(),
                crate::metrics::Metrics::new(),
                None,
            )?;
            println!(
                "configuration is valid: {}, {}, {}",
                output::count(cfg.identities.len(), "identity", "identities"),
                output::count(
                    cfg.identities
                        .iter()
                        .map(|i| i.federated_credentials.len())
                        .sum::<usize>(),
                    "federated credential",
                    "federated credentials"
                ),
                output::count(cfg.issuers.len(), "explicit issuer", "explicit issuers"),
            );
            for warning in config_warnings(&cfg) {
                eprintln!("warning: {warning}");
            }
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

/// Logs go to stderr; `RUST_LOG` overrides `[log] level`. Colours only on a terminal,
/// and never when `NO_COLOR` is set (<https://no-color.org>).
pub fn init_logging(cfg: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(wif_proto::stderr_colours())
        .with_writer(std::io::stderr);
    let _ = if cfg.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
