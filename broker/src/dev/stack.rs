//! `wif-broker dev`: the whole stack on loopback, ready to try in one command.
//!
//! A local OIDC issuer plays the CI system, the Entra emulator plays Entra, and the broker
//! runs with an in-memory store, a demo identity and a federated credential for the demo
//! subject. The emulator holds the same credential, as Entra must for the passthrough
//! assertion. Everything listens on 127.0.0.1 only. A random admin token made for this
//! run signs in to the admin console at `/ui/`.

use std::io::Write;

use serde_json::json;
use wif_config::{AssertionSource, BrokerConfig, FederatedCredentialConfig, IdentityConfig};

use super::entra::{AppRegistration, EmulatedFic, EntraEmulator};
use super::issuer::LocalIssuer;
use crate::clock::{self, SharedClock};
use crate::server::{RunningBroker, shutdown_signal};

pub const DEMO_TENANT: &str = "11111111-1111-4111-8111-111111111111";
pub const DEMO_CLIENT: &str = "22222222-2222-4222-8222-222222222222";
pub const DEMO_IDENTITY: &str = "demo";
pub use super::DEMO_SUBJECT;
pub const DEMO_SCOPE: &str = "https://management.azure.com/.default";
/// An identity with the broker assertion: Entra holds one credential trusting the broker,
/// and any `feature/*` branch of the demo repository may act as it.
pub const DEMO_FLEET_IDENTITY: &str = "demo-fleet";
pub const DEMO_FLEET_CLIENT: &str = "22222222-2222-4222-8222-222222222223";
pub const DEMO_FLEET_EXPRESSION: &str =
    "claims['sub'] matches 'repo:contoso/demo:ref:refs/heads/feature/*'";
pub use super::DEMO_TOKEN_SECS;

/// The running dev stack.
pub struct DevStack {
    pub issuer: LocalIssuer,
    pub entra: EntraEmulator,
    pub broker: RunningBroker,
    pub config: BrokerConfig,
    /// An admin token for the admin API and console, valid for this run only.
    pub admin_token: String,
}

impl DevStack {
    /// Starts the issuer, the emulator and a broker listening on `listen`.
    pub async fn start(listen: &str, clock: SharedClock) -> anyhow::Result<Self> {
        crate::crypto::install_provider();
        let issuer = LocalIssuer::start_minting(clock.clone()).await?;
        let entra = EntraEmulator::start(clock.clone()).await?;
        entra.register_app(
            AppRegistration::new(DEMO_TENANT, DEMO_CLIENT).with_fic(EmulatedFic::new(
                "demo-main",
                &issuer.url(),
                DEMO_SUBJECT,
            )),
        );
        // Bound first: the broker's own URL is its issuer URL.
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {listen}: {e}; another process may be using it (another \
                 `wif-broker dev`?): stop it, or pick another address with --listen, e.g. \
                 `wif-broker dev --listen 127.0.0.1:8090`"
            )
        })?;
        let broker_url = format!("http://{}", listener.local_addr()?);
        entra.register_app(
            AppRegistration::new(DEMO_TENANT, DEMO_FLEET_CLIENT).with_fic(EmulatedFic::new(
                "wif-broker",
                &broker_url,
                DEMO_FLEET_IDENTITY,
            )),
        );
        let mut config = dev_config(listen, &issuer.url(), &entra.url())?;
        config.broker_issuer.url = Some(broker_url);
        // The tokens file holds only the hash, and is read once at start.
        let admin_token = crate::api::admin::auth::new_admin_token()
            .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
        let tokens_file = std::env::temp_dir().join(format!(
            "wif-dev-admin-tokens-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let mut open = std::fs::OpenOptions::new();
        open.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        std::io::Write::write_all(
            &mut open.open(&tokens_file)?,
            format!(
                "admin dev {}\n",
                crate::api::admin::auth::token_hash(&admin_token)
            )
            .as_bytes(),
        )?;
        config.admin.tokens_file = Some(tokens_file.clone());
        let broker = RunningBroker::start_on(&config, clock, listener).await;
        let _ = std::fs::remove_file(&tokens_file);
        Ok(Self {
            issuer,
            entra,
            broker: broker?,
            config,
            admin_token,
        })
    }

    /// A token from the local issuer for the demo subject, valid for an hour.
    pub fn demo_token(&self, now: u64) -> anyhow::Result<String> {
        self.demo_token_for(now, "refs/heads/main")
    }

    /// A token for a push to `git_ref` of the demo repository, valid for an hour.
    pub fn demo_token_for(&self, now: u64, git_ref: &str) -> anyhow::Result<String> {
        Ok(self.issuer.mint(json!({
            "sub": format!("repo:contoso/demo:ref:{git_ref}"),
            "repository": "contoso/demo",
            "ref": git_ref,
            "exp": now + DEMO_TOKEN_SECS,
        }))?)
    }

    /// The `export` line that points the admin commands, `dev token` and `wif-agent`'s
    /// `--broker "$WIF_SERVER_URL"` at this stack.
    pub fn exports(&self) -> String {
        format!(
            "export WIF_SERVER_URL={} WIF_ADMIN_TOKEN={} WIF_DEV_ISSUER={}",
            self.broker.url(),
            self.admin_token,
            self.issuer.url()
        )
    }

    /// The command a user pastes to get an access token.
    pub fn curl(&self, token: &str) -> String {
        format!(
            "curl -s -X POST {}/v1/token \\\n  -H 'Authorization: Bearer {token}' \\\n  -d scope={DEMO_SCOPE}",
            self.broker.url()
        )
    }
}

/// The broker configuration of the dev stack.
pub fn dev_config(listen: &str, issuer: &str, entra: &str) -> anyhow::Result<BrokerConfig> {
    let mut config = BrokerConfig::default();
    config.server.listen = listen.to_owned();
    // Ctrl-C stops the dev stack at once: no load balancer to drain.
    config.server.drain_secs = 0;
    config.store.url = "sqlite::memory:".into();
    config.entra.authority_host = entra.to_owned();
    config.outbound.allow_loopback_http = true;
    config.identities = vec![
        IdentityConfig {
            name: DEMO_IDENTITY.into(),
            tenant_id: DEMO_TENANT.parse()?,
            client_id: DEMO_CLIENT.parse()?,
            federated_credentials: vec![FederatedCredentialConfig {
                name: "demo-main".into(),
                issuer: issuer.to_owned(),
                subject: Some(DEMO_SUBJECT.into()),
                description: Some("The dev stack's demo job on main".into()),
                ..Default::default()
            }],
            ..Default::default()
        },
        IdentityConfig {
            name: DEMO_FLEET_IDENTITY.into(),
            tenant_id: DEMO_TENANT.parse()?,
            client_id: DEMO_FLEET_CLIENT.parse()?,
            assertion: AssertionSource::Broker,
            federated_credentials: vec![FederatedCredentialConfig {
                name: "demo-features".into(),
                issuer: issuer.to_owned(),
                claims_matching_expression: Some(DEMO_FLEET_EXPRESSION.into()),
                description: Some(
                    "Any feature branch of the demo repository; Entra holds one credential \
                     trusting the broker"
                        .into(),
                ),
                ..Default::default()
            }],
            ..Default::default()
        },
    ];
    Ok(config)
}

/// Runs the dev stack until Ctrl-C, printing how to use it.
pub async fn run(listen: &str) -> anyhow::Result<()> {
    let clock = clock::system();
    let stack = DevStack::start(listen, clock.clone()).await?;
    let token = stack.demo_token(clock.now())?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "WIF broker dev stack is running on loopback (Ctrl-C to stop).\n\
         \n  broker          {broker}\n  local issuer    {issuer}\n  Entra emulator  {entra}\n\
         \n  identity        {DEMO_IDENTITY} (tenant {DEMO_TENANT}, client {DEMO_CLIENT})\
         \n  credential      demo-main: issuer {issuer}, subject {DEMO_SUBJECT}\
         \n  identity        {DEMO_FLEET_IDENTITY} (assertion broker: Entra holds one credential, trusting {broker})\
         \n  credential      demo-features: {DEMO_FLEET_EXPRESSION}\n\
         \n  admin console   {broker}/ui/ (sign in with admin token {admin_token}, valid for this run)\n\
         {commands}\
         \nA demo job token (valid {mins} minutes) is in this command; paste it to get an access token:\n\n{curl}\n\
         \nIn another terminal, this line points the admin commands (wif-broker identity, credential,\
         \nsimulate, audit) and `wif-broker dev token` at this stack; give wif-agent --broker \"$WIF_SERVER_URL\":\
         \n\n{exports}\n",
        broker = stack.broker.url(),
        issuer = stack.issuer.url(),
        entra = stack.entra.url(),
        mins = DEMO_TOKEN_SECS / 60,
        admin_token = stack.admin_token,
        commands = commands(),
        curl = stack.curl(&token),
        exports = stack.exports(),
    )?;
    out.flush()?;
    drop(out);
    stack.broker.run_until(shutdown_signal()).await?;
    stack.issuer.shutdown().await;
    stack.entra.shutdown().await;
    Ok(())
}

/// Where `wif-broker` and `wif-agent` are, so the tour's commands can be put on `PATH`;
/// `cargo run -p wif-broker` builds only the first.
fn commands() -> String {
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(std::path::Path::to_path_buf))
    else {
        return String::new();
    };
    let agent = dir.join(format!("wif-agent{}", std::env::consts::EXE_SUFFIX));
    let agent_note = if agent.is_file() {
        String::new()
    } else {
        " (wif-agent is not built yet: cargo build -p wif-agent)".to_owned()
    };
    format!(
        "  commands        wif-broker and wif-agent are in {}{agent_note}\n",
        dir.display()
    )
}
