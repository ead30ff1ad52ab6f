//! Starting and stopping a broker: build the exchange state from config, bind, serve.
//! Used by `wif-broker serve`, by `dev`, and by tests that run real servers in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wif_config::BrokerConfig;

use crate::api::{self, AppState};
use crate::clock::SharedClock;
use crate::exchange::{Broker, SetupError};
use crate::metrics::Metrics;
use crate::policy::registry::Declared;
use crate::tls::{self, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    AdminAuth(#[from] crate::api::admin::auth::AuthSetupError),
    #[error("cannot open the store: {0}")]
    Store(crate::store::StoreError),
    #[error(transparent)]
    Webhook(#[from] crate::api::mutate::WebhookSetupError),
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: String, error: std::io::Error },
    #[error(transparent)]
    Config(#[from] wif_config::ConfigError),
    #[error("broker_issuer: {0}")]
    Issuer(#[from] crate::entra::assertion::issuer::IssuerKeyError),
}

/// A broker serving HTTP in this process.
pub struct RunningBroker {
    pub addr: SocketAddr,
    pub tls: bool,
    pub broker: Arc<Broker>,
    ready: Arc<AtomicBool>,
    shutdown_timeout: Duration,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    /// The admission webhook's own TLS listener, when `[webhook] enabled`.
    webhook: Option<crate::api::mutate::WebhookServer>,
    /// Registry sync and, for an issuer, signing-key refresh.
    background: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningBroker")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The listener `[server] listen` names.
async fn bind(parsed: &wif_config::Parsed) -> Result<TcpListener, StartError> {
    TcpListener::bind(parsed.listen)
        .await
        .map_err(|error| StartError::Bind {
            addr: parsed.listen.to_string(),
            error,
        })
}

impl RunningBroker {
    /// Builds the broker from `cfg` and starts serving on `cfg.server.listen`.
    pub async fn start(cfg: &BrokerConfig, clock: SharedClock) -> Result<Self, StartError> {
        let parsed = cfg.parse()?;
        let listener = bind(&parsed).await?;
        Self::start_parsed(cfg, &parsed, clock, listener).await
    }

    /// Like [`Self::start`], taking the configuration: its federated credentials are
    /// moved into the registry one by one (each dropped once built) rather than copied, so
    /// a large configuration and the registry are never both held whole
    /// (docs/PERFORMANCE.md, "Scale").
    pub async fn start_owned(cfg: BrokerConfig, clock: SharedClock) -> Result<Self, StartError> {
        Self::start_checked(wif_config::Checked::new(cfg)?, clock).await
    }

    /// [`Self::start_owned`] for a configuration validated already
    /// ([`BrokerConfig::load_checked`]), which is not validated again. What `wif-broker
    /// serve` uses.
    pub async fn start_checked(
        checked: wif_config::Checked,
        clock: SharedClock,
    ) -> Result<Self, StartError> {
        let (mut cfg, parsed) = checked.into_parts();
        let listener = bind(&parsed).await?;
        let declared = Declared::take_from_config(&mut cfg).map_err(SetupError::Registry)?;
        Self::start_declared(&cfg, &parsed, declared, clock, listener).await
    }

    /// Like [`Self::start`], on a listener bound already (so a test can know the broker's
    /// URL, say as its issuer URL, before it starts).
    pub async fn start_on(
        cfg: &BrokerConfig,
        clock: SharedClock,
        listener: TcpListener,
    ) -> Result<Self, StartError> {
        Self::start_parsed(cfg, &cfg.parse()?, clock, listener).await
    }

    /// The configuration's strings are parsed once, by `wif-config` ([`BrokerConfig::parse`]);
    /// what is started here takes the typed values.
    async fn start_parsed(
        cfg: &BrokerConfig,
        parsed: &wif_config::Parsed,
        clock: SharedClock,
        listener: TcpListener,
    ) -> Result<Self, StartError> {
        let declared = Declared::from_config(cfg).map_err(SetupError::Registry)?;
        Self::start_declared(cfg, parsed, declared, clock, listener).await
    }

    /// Starts serving with the declared registry built already.
    async fn start_declared(
        cfg: &BrokerConfig,
        parsed: &wif_config::Parsed,
        declared: Declared,
        clock: SharedClock,
        listener: TcpListener,
    ) -> Result<Self, StartError> {
        crate::crypto::install_provider();
        let metrics = Metrics::new();
        let store = crate::store::open_or_defer(&cfg.store.url).await?;
        let broker = Arc::new(Broker::with_declared(
            cfg,
            parsed,
            declared,
            clock,
            metrics,
            Some(store),
        )?);
        // Without the database, start anyway and serve the config file's identities; the
        // registry sync picks up the stored ones once the store answers.
        let degraded = match broker.reload("start", true).await {
            Ok(_) => false,
            Err(crate::store::StoreError::Unavailable(reason)) => {
                tracing::debug!(%reason, "no stored registry at start: serving the config file's identities until the store answers");
                true
            }
            Err(e) => return Err(e.into()),
        };
        let mut background = Vec::new();
        if let Some(issuer) = broker.issuer() {
            // Keys first: an identity with the broker assertion must not find none. Keys
            // kept in an unreachable store come with it.
            match issuer.refresh().await {
                Err(e) if degraded => {
                    tracing::warn!(error = %e, "no signing keys until the store answers")
                }
                other => other?,
            }
            background.push(issuer.spawn_refresh());
            tracing::info!(url = issuer.url(), "serving as an OIDC issuer");
        }
        background.push(crate::sync::spawn(
            broker.clone(),
            Duration::from_millis(cfg.store.poll_interval_ms),
            cfg.audit.retention_days,
        ));
        let tls_config = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(
                cert.clone(),
                key.clone(),
                Duration::from_secs(cfg.server.tls_reload_secs),
            )?),
            _ => None,
        };
        let addr = listener.local_addr().map_err(|error| StartError::Bind {
            addr: parsed.listen.to_string(),
            error,
        })?;
        let ready = Arc::new(AtomicBool::new(true));
        let state = AppState {
            admin: Arc::new(crate::admin::Admin::new(
                broker.clone(),
                cfg.outbound.allow_loopback_http,
                cfg.admin.max_credentials_per_identity,
            )),
            auth: Arc::new(crate::api::admin::auth::AdminAuth::from_config(&cfg.admin)?),
            broker: broker.clone(),
            max_body_bytes: cfg.server.max_body_bytes,
            request_timeout: Duration::from_secs(cfg.server.request_timeout_secs),
            ready: ready.clone(),
            tls: tls_config.is_some(),
            self_address: Arc::new(crate::api::entra_compat::SelfAddress::new(
                parsed.public_url.as_ref(),
                addr,
            )),
            webhook: crate::api::mutate::Webhook::from_config(cfg)?,
        };
        let webhook =
            crate::api::mutate::WebhookServer::start(cfg, parsed.webhook_listen, state.clone())
                .await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let tls = tls_config.is_some();
        let task = tokio::spawn(api::serve::serve_counted(
            listener,
            router(state),
            tls_config,
            async move {
                let _ = stopped.await;
            },
            api::serve::Limits::from_config(&cfg.server),
            broker.metrics().connections(),
        ));
        tracing::info!(%addr, tls, "broker listening");
        Ok(Self {
            addr,
            tls,
            broker,
            ready,
            shutdown_timeout: Duration::from_secs(
                cfg.server.drain_secs + cfg.server.shutdown_timeout_secs,
            ),
            stop: Some(stop),
            task,
            webhook,
            background,
        })
    }

    /// `http://addr` or `https://addr`.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// `https://addr` of the admission webhook's own listener, when it is enabled.
    pub fn webhook_url(&self) -> Option<String> {
        self.webhook.as_ref().map(|w| w.url())
    }

    /// Fails readiness and keeps serving for `server.drain_secs`, then stops accepting and
    /// lets in-flight requests finish (bounded by `server.shutdown_timeout_secs`; later
    /// ones get 503 `shutting_down`). See docs/kubernetes.md.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        self.ready.store(false, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.background.iter().for_each(JoinHandle::abort);
        let started = std::time::Instant::now();
        let webhook = self.webhook.take().map(|w| tokio::spawn(w.stop()));
        let served = match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        };
        if let Some(webhook) = webhook {
            let _ = webhook.await;
        }
        // What the audit queue still holds goes to the store (or the spill file) within
        // what is left of the deadline, and at least a second.
        let left = self.shutdown_timeout.saturating_sub(started.elapsed());
        self.broker
            .auditor()
            .close(self.broker.clock().now(), left.max(Duration::from_secs(1)))
            .await;
        served
    }

    /// Serves until `signal` resolves, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> std::io::Result<()> {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}

impl From<crate::store::StoreError> for StartError {
    fn from(e: crate::store::StoreError) -> Self {
        StartError::Store(e)
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        self.background.iter().for_each(JoinHandle::abort);
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub use wif_proto::shutdown::signal as shutdown_signal;

/// The broker's listener: the API's routes and the admin console's (`/ui/`, HTML with its
/// own security headers), behind the one [`api::edge`]. The only place the two are
/// composed, so `api` never imports `ui` (docs/architecture.md, "Module dependencies").
pub fn router(state: AppState) -> axum::Router {
    let routes = api::routes().merge(crate::ui::router(state.clone()));
    api::edge(routes, state)
}
