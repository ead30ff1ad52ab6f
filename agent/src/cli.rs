//! The `wif-agent` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use wif_config::{AgentConfig, BrokerUrl, ListenAddr};

use crate::broker::{BrokerClient, BrokerToken, Selector};
use crate::serve::{Agent, AgentSettings, RunningAgent};
use crate::source::{CommandSource, FileSource, TokenSource};

#[derive(Debug, Parser)]
#[command(
    name = "wif-agent",
    version,
    about = "Azure tokens for workloads, through the WIF broker, with no code change"
)]
pub struct Cli {
    /// Configuration file (TOML); flags override its keys, `WIF_AGENT_*` variables too.
    #[arg(long, global = true, env = "WIF_AGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the managed-identity endpoints (App Service and IMDS protocols) on
    /// 127.0.0.1:8181 unless told otherwise; the start-up log says which protocols are
    /// served where.
    Serve(ServeArgs),
    /// Exchange the CI job's OIDC token once and print the access token.
    Token(TokenArgs),
    /// Run a command with managed-identity endpoints backed by the CI job's OIDC token.
    Exec(ExecArgs),
}

/// Where a CI job's OIDC token comes from. Detected from the environment: GitHub Actions
/// (`ACTIONS_ID_TOKEN_REQUEST_URL` and `_TOKEN`), Azure Pipelines (`SYSTEM_OIDCREQUESTURI`,
/// `SYSTEM_ACCESSTOKEN` and a service connection), GitLab (`WIF_GITLAB_TOKEN_VARIABLE`),
/// else `AZURE_FEDERATED_TOKEN_FILE`; `--token-file`, `--token-command` or
/// `--gitlab-variable` choose explicitly.
#[derive(Debug, Clone, Args, Default)]
#[command(next_help_heading = "CI token options")]
pub struct CiArgs {
    /// Audience to ask GitHub Actions for (Azure Pipelines tokens always carry the default).
    #[arg(long, value_name = "AUD", default_value = crate::ci::DEFAULT_AUDIENCE)]
    pub audience: String,
    /// Azure Pipelines service connection id [env: AZURE_SERVICE_CONNECTION_ID, WIF_SERVICE_CONNECTION_ID].
    #[arg(long, value_name = "ID")]
    pub service_connection: Option<String>,
    /// GitLab: the `id_tokens` variable holding the token [env: WIF_GITLAB_TOKEN_VARIABLE].
    #[arg(long, value_name = "NAME")]
    pub gitlab_variable: Option<String>,
}

/// How `token` prints the access token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `{"access_token","expires_on","client_id","tenant_id","token_type":"Bearer"}`.
    #[default]
    Json,
    /// The access token alone.
    Raw,
    /// `export` lines: AZURE_ACCESS_TOKEN, AZURE_ACCESS_TOKEN_EXPIRES_ON, AZURE_CLIENT_ID,
    /// AZURE_TENANT_ID.
    Env,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The scope or resource to get a token for, e.g. https://management.azure.com/.default.
    #[arg(long, value_name = "SCOPE")]
    pub scope: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    // The shared groups come last: each brings its own help heading.
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub ci: CiArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub ci: CiArgs,
}

/// Flags shared by the commands that talk to the broker.
#[derive(Debug, Clone, Args, Default)]
#[command(next_help_heading = "Broker options (every command)")]
pub struct BrokerArgs {
    /// The broker's base URL.
    #[arg(long, value_name = "URL", value_parser = BrokerUrl::from_str)]
    pub broker: Option<BrokerUrl>,
    /// External token file, re-read for every exchange [default: $AZURE_FEDERATED_TOKEN_FILE].
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Command printing the external token, run for every exchange.
    #[arg(long, value_name = "CMD", conflicts_with = "token_file")]
    pub token_command: Option<String>,
    /// Identity to ask for when a request names none.
    #[arg(long)]
    pub identity: Option<String>,
    /// Extra PEM roots for the broker's certificate.
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS with the broker.
    #[arg(long, value_name = "PATH", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS with the broker.
    #[arg(long, value_name = "PATH", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Where to listen [default: 127.0.0.1:8181, or `listen` in the config file].
    #[arg(long, value_name = "HOST:PORT", value_parser = ListenAddr::from_str)]
    pub listen: Option<ListenAddr>,
    /// Also listen on this Unix socket [default: none].
    #[arg(long, value_name = "PATH")]
    pub unix_socket: Option<PathBuf>,
    /// The App Service protocol's X-IDENTITY-HEADER secret, at least 16 characters.
    /// Without it the App Service protocol (/msi/token) is off and only IMDS is served.
    #[arg(
        long,
        env = "WIF_AGENT_IDENTITY_HEADER",
        hide_env_values = true,
        value_name = "VALUE"
    )]
    pub identity_header: Option<String>,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

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
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The config file (or defaults) with the environment overlaid.
pub fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<AgentConfig> {
    let vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k != "WIF_AGENT_CONFIG" && k != "WIF_AGENT_IDENTITY_HEADER")
        .collect();
    let (text, origin) = match path {
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (String::new(), "defaults".to_owned()),
    };
    Ok(AgentConfig::from_toml_with_env(&text, &origin, &vars)?)
}

/// Applies the flags over the file's keys.
pub fn merge(mut cfg: AgentConfig, args: &BrokerArgs) -> AgentConfig {
    let a = args.clone();
    cfg.broker = a.broker.or(cfg.broker);
    if a.token_file.is_some() || a.token_command.is_some() {
        cfg.token_file = a.token_file;
        cfg.token_command = a.token_command;
    }
    cfg.identity = a.identity.or(cfg.identity);
    cfg.ca_file = a.ca_file.or(cfg.ca_file);
    cfg.client_cert = a.client_cert.or(cfg.client_cert);
    cfg.client_key = a.client_key.or(cfg.client_key);
    cfg
}

/// The token source the config names: a command, a file, or `AZURE_FEDERATED_TOKEN_FILE`.
pub fn file_or_command_source(cfg: &AgentConfig) -> anyhow::Result<Arc<dyn TokenSource>> {
    if let Some(command) = &cfg.token_command {
        return Ok(Arc::new(CommandSource {
            command: command.clone(),
            timeout: Duration::from_secs(cfg.timeout_secs.max(1)),
        }));
    }
    let file = cfg
        .token_file
        .clone()
        .or_else(|| std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from))
        .context("no external token source: give --token-file, --token-command, or set AZURE_FEDERATED_TOKEN_FILE")?;
    Ok(Arc::new(FileSource(file)))
}

pub fn broker_client(cfg: &AgentConfig) -> anyhow::Result<BrokerClient> {
    let url = cfg
        .broker
        .as_ref()
        .context("no broker: give --broker URL or `broker` in the config")?;
    let identity = match (&cfg.client_cert, &cfg.client_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    Ok(BrokerClient::with_roots(
        url,
        Duration::from_secs(cfg.timeout_secs),
        cfg.retries,
        cfg.ca_file.as_deref(),
        cfg.ca_pem.as_deref(),
        identity,
    )?)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    wif_proto::crypto::install_provider();
    init_logging();
    match cli.command {
        Command::Serve(args) => {
            let mut cfg = merge(load_config(cli.config.as_deref())?, &args.broker);
            if let Some(listen) = args.listen {
                cfg.listen = listen;
            }
            cfg.unix_socket = args.unix_socket.or(cfg.unix_socket);
            cfg.identity_header = args.identity_header.or(cfg.identity_header);
            if cfg.identity_header.as_deref().is_some_and(|h| h.len() < 16) {
                anyhow::bail!("the identity header secret must be at least 16 characters");
            }
            let client = broker_client(&cfg)?;
            let source = file_or_command_source(&cfg)?;
            let served = ServedProtocols {
                broker: client.base().to_owned(),
                source: source.describe(),
                app_service: cfg.identity_header.is_some(),
                imds: cfg.imds,
                unix_socket: cfg.unix_socket.clone(),
            };
            let agent = Agent::new(
                AgentSettings {
                    client,
                    source,
                    header_secret: cfg.identity_header.clone(),
                    default_identity: cfg.identity.clone(),
                    min_remaining_secs: cfg.min_remaining_secs,
                    refresh_before_secs: cfg.refresh_before_secs,
                    imds: cfg.imds,
                },
                wif_proto::clock::system(),
            );
            let running = RunningAgent::start_with_limits(
                agent,
                &cfg.listen,
                cfg.unix_socket.as_deref(),
                crate::serve::limits(&cfg),
            )
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
            served.log(running.url().as_deref());
            wif_proto::shutdown::signal().await;
            running.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(args) => token(cli.config.as_deref(), args).await,
        Command::Exec(args) => exec(cli.config.as_deref(), args).await,
    }
}

/// What `serve` answers, and where: logged once at start, so a protocol left off (no
/// identity-header secret, `imds = false`) is seen before the first 404.
struct ServedProtocols {
    broker: String,
    source: String,
    app_service: bool,
    imds: bool,
    unix_socket: Option<PathBuf>,
}

impl ServedProtocols {
    fn log(&self, url: Option<&str>) {
        let places: Vec<String> = url
            .map(str::to_owned)
            .into_iter()
            .chain(
                self.unix_socket
                    .as_ref()
                    .map(|p| format!("unix:{}", p.display())),
            )
            .collect();
        let at = |path: &str| {
            places
                .iter()
                .map(|place| format!("{place}{path}"))
                .collect::<Vec<_>>()
                .join(" and ")
        };
        tracing::info!(
            broker = %self.broker,
            token_source = %self.source,
            "agent listening on {}",
            places.join(" and ")
        );
        if self.app_service {
            tracing::info!(
                "App Service protocol at {} (IDENTITY_ENDPOINT with IDENTITY_HEADER; \
                 2017-09-01: MSI_ENDPOINT with MSI_SECRET)",
                at("/msi/token")
            );
        } else {
            tracing::warn!(
                "App Service protocol off: no identity-header secret (--identity-header or \
                 WIF_AGENT_IDENTITY_HEADER), so /msi/token answers 404"
            );
        }
        if self.imds {
            tracing::info!(
                "IMDS protocol at {} (AZURE_POD_IDENTITY_AUTHORITY_HOST={})",
                at("/metadata/identity/oauth2/token"),
                url.unwrap_or("-")
            );
        } else {
            tracing::info!("IMDS protocol off (imds = false)");
        }
    }
}

/// The CI token source: an explicit `--token-command`, else [`crate::ci::detect`].
pub fn ci_source(cfg: &AgentConfig, ci: &CiArgs) -> anyhow::Result<Arc<dyn TokenSource>> {
    if cfg.token_command.is_some() {
        return file_or_command_source(cfg);
    }
    let options = crate::ci::CiOptions {
        audience: Some(ci.audience.clone()),
        service_connection: ci.service_connection.clone(),
        gitlab_variable: ci.gitlab_variable.clone(),
        token_file: cfg.token_file.clone(),
        timeout: Duration::from_secs(cfg.timeout_secs.max(1)),
    };
    Ok(crate::ci::detect(&options, &crate::ci::ProcessEnv)?)
}

fn selector(cfg: &AgentConfig) -> Selector {
    Selector {
        client_id: None,
        identity: cfg.identity.clone(),
    }
}

/// Single-quoted for a POSIX shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// What `token` prints for `token` in `format`.
pub fn render(token: &BrokerToken, format: Format) -> String {
    match format {
        Format::Json => serde_json::json!({
            "access_token": token.access_token,
            "expires_on": token.expires_on,
            "client_id": token.client_id,
            "tenant_id": token.tenant_id,
            "token_type": "Bearer",
        })
        .to_string(),
        Format::Raw => token.access_token.clone(),
        Format::Env => [
            ("AZURE_ACCESS_TOKEN", token.access_token.clone()),
            (
                "AZURE_ACCESS_TOKEN_EXPIRES_ON",
                token.expires_on.to_string(),
            ),
            ("AZURE_CLIENT_ID", token.client_id.clone()),
            ("AZURE_TENANT_ID", token.tenant_id.clone()),
        ]
        .iter()
        .map(|(name, value)| format!("export {name}={}", shell_quote(value)))
        .collect::<Vec<_>>()
        .join("\n"),
    }
}

async fn token(config: Option<&std::path::Path>, args: TokenArgs) -> anyhow::Result<ExitCode> {
    let cfg = merge(load_config(config)?, &args.broker);
    let source = ci_source(&cfg, &args.ci)?;
    let client = broker_client(&cfg)?;
    let external = source
        .token()
        .await
        .with_context(|| format!("no token from {}", source.describe()))?;
    let answer = client
        .exchange(&external, &args.scope, &selector(&cfg))
        .await?;
    println!("{}", render(&answer, args.format));
    Ok(ExitCode::SUCCESS)
}

async fn exec(config: Option<&std::path::Path>, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let cfg = merge(load_config(config)?, &args.broker);
    let source = ci_source(&cfg, &args.ci)?;
    tracing::debug!(source = %source.describe(), "exec token source");
    let secret = crate::exec::header_secret()?;
    let agent = Agent::new(
        AgentSettings {
            client: broker_client(&cfg)?,
            source,
            header_secret: Some(secret.clone()),
            default_identity: cfg.identity.clone(),
            min_remaining_secs: cfg.min_remaining_secs,
            refresh_before_secs: cfg.refresh_before_secs,
            imds: cfg.imds,
        },
        wif_proto::clock::system(),
    );
    let code = crate::exec::run(agent, &secret, &args.command).await?;
    Ok(ExitCode::from(code))
}

/// Logs to stderr, coloured only on a terminal and never with `NO_COLOR`.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(wif_proto::stderr_colours())
        .with_writer(std::io::stderr)
        .try_init();
}
