//! The servers under test: the broker with its dev-stack neighbours, and the bare axum
//! server that stands for the machine's limit.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wif_broker::api::serve;
use wif_broker::dev::entra::{AppRegistration, EmulatedFic, EntraEmulator};
use wif_broker::dev::issuer::LocalIssuer;
use wif_broker::exchange::{Broker, ExchangeRequest};
use wif_broker::server::RunningBroker;
use wif_config::{BrokerConfig, FederatedCredentialConfig, IdentityConfig};
use wif_tests::pki::Pki;
use wif_tests::{ARM, DEPLOY_CLIENT, MAIN_SUBJECT, REPO, TENANT, github_claims};

use crate::load::{Target, load_client, tls_load_client};

/// How long minted job tokens stay valid: longer than any sane run.
const TOKEN_LIFETIME_SECS: u64 = 3600;

/// The broker with one GitHub-style issuer and the Entra emulator, as in `wif_tests::Stack`
/// (same identity, credential and Entra-side FIC), but failing with errors, not panics.
pub struct BenchStack {
    pub issuer: LocalIssuer,
    pub entra: EntraEmulator,
    pub broker: RunningBroker,
    /// A job token for contoso/app on main, valid for [`TOKEN_LIFETIME_SECS`].
    pub token: String,
    /// With [`StackOptions::cold_identities`]: one token per extra identity.
    pub cold: Vec<ColdIdentity>,
    /// The CA of the broker's certificate, when it serves TLS.
    pub ca_pem: Option<String>,
    /// Holds the SQLite file (WAL, as deployed; every exchange's audit event is written)
    /// and the TLS certificate and key.
    store_dir: tempfile::TempDir,
    /// Whether the issuer is this stack's own (stopped with it) or shared with others.
    owns_issuer: bool,
}

const CERT_FILE: &str = "tls.crt";
const KEY_FILE: &str = "tls.key";

fn pki_files(pki: &Pki, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    std::fs::write(&cert, &pki.cert_pem)?;
    std::fs::write(&key, &pki.key_pem)?;
    Ok((cert, key))
}

/// A GitHub Actions job token for `repo` on main, valid for [`TOKEN_LIFETIME_SECS`].
fn mint(issuer: &LocalIssuer, repo: &str, now: u64) -> anyhow::Result<String> {
    mint_variant(issuer, repo, now, None)
}

/// [`mint`], with `variant` (when given) making the token distinct: its own `jti` and
/// `run_id`, the same `sub`, so it matches the same credential.
fn mint_variant(
    issuer: &LocalIssuer,
    repo: &str,
    now: u64,
    variant: Option<usize>,
) -> anyhow::Result<String> {
    let mut claims = github_claims(repo, "main");
    if let Value::Object(map) = &mut claims {
        map.insert("exp".into(), Value::from(now + TOKEN_LIFETIME_SECS));
        if let Some(i) = variant {
            map.insert(
                "jti".into(),
                Value::from(format!("wif-bench-distinct-{i:08}")),
            );
            map.insert(
                "run_id".into(),
                Value::from(format!("{}", 9_000_000_000u64 + i as u64)),
            );
        }
    }
    Ok(issuer.mint(claims)?)
}

/// `n` distinct job tokens for contoso/app on main (the bench's credential), signed by
/// `issuer` on every core at once: the pool the every-request-verified rows take their
/// tokens from, round-robin (docs/PERFORMANCE.md).
pub async fn mint_pool(issuer: &LocalIssuer, n: usize) -> anyhow::Result<Vec<String>> {
    let now = wif_broker::clock::system().now();
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let per_worker = n.div_ceil(workers).max(1);
    let mut minting = tokio::task::JoinSet::new();
    for start in (0..n).step_by(per_worker) {
        let issuer = issuer.clone();
        let end = (start + per_worker).min(n);
        minting.spawn_blocking(move || {
            (start..end)
                .map(|i| Ok((i, mint_variant(&issuer, REPO, now, Some(i))?)))
                .collect::<anyhow::Result<Vec<_>>>()
        });
    }
    let mut tokens = Vec::with_capacity(n);
    while let Some(joined) = minting.join_next().await {
        tokens.extend(joined??);
    }
    tokens.sort_unstable_by_key(|(i, _)| *i);
    Ok(tokens.into_iter().map(|(_, token)| token).collect())
}

/// How to set up a [`BenchStack`].
#[derive(Default)]
pub struct StackOptions<'a> {
    /// Whether the broker remembers verified tokens (`[tokens] verified_cache_entries`);
    /// off, every request verifies the signature like the limit.
    pub no_verified_cache: bool,
    /// Serve TLS with this certificate (`[server] tls_cert`, `tls_key`).
    pub tls: Option<&'a Pki>,
    /// Also register this many identities (`bench-0`, ...), each with its own Entra app
    /// and one credential for its own subject, and mint a token for each: the cold path's
    /// distinct (identity, scope) keys.
    pub cold_identities: usize,
    /// Trust this issuer (shared with other stacks, so one token pool serves them all)
    /// instead of starting one of its own.
    pub issuer: Option<LocalIssuer>,
    /// `[server] max_connections`, when the default (1,024) is below what the harness
    /// itself opens (the coalescing burst).
    pub max_connections: Option<usize>,
    /// `[entra] authority_host`, when the broker asks another Entra than the dev stack's
    /// emulator (the cold path's fixed Entra).
    pub entra_authority: Option<String>,
}

/// One of the cold path's identities: its token and its Entra app.
pub struct ColdIdentity {
    pub client_id: String,
    pub token: String,
}

impl BenchStack {
    /// `verified_cache`: whether the broker remembers verified tokens (`[tokens]
    /// verified_cache_entries`); off, every request verifies the signature like the limit.
    pub async fn start_with(verified_cache: bool) -> anyhow::Result<Self> {
        Self::start_configured(StackOptions {
            no_verified_cache: !verified_cache,
            ..Default::default()
        })
        .await
    }

    pub async fn start_configured(options: StackOptions<'_>) -> anyhow::Result<Self> {
        wif_broker::crypto::install_provider();
        let clock = wif_broker::clock::system();
        let owns_issuer = options.issuer.is_none();
        let issuer = match options.issuer {
            Some(issuer) => issuer,
            None => LocalIssuer::start(clock.clone()).await?,
        };
        let entra = EntraEmulator::start(clock.clone()).await?;
        entra.register_app(
            AppRegistration::new(TENANT, DEPLOY_CLIENT).with_fic(EmulatedFic::new(
                "github-main",
                &issuer.url(),
                MAIN_SUBJECT,
            )),
        );
        let mut config = BrokerConfig::default();
        config.server.listen = "127.0.0.1:0".into();
        config.server.shutdown_timeout_secs = 2;
        config.server.drain_secs = 0;
        if let Some(max) = options.max_connections {
            config.server.max_connections = max;
        }
        let store_dir = tempfile::tempdir()?;
        config.store.url = format!("sqlite://{}", store_dir.path().join("wif.db").display());
        if options.no_verified_cache {
            config.tokens.verified_cache_entries = 0;
        }
        if let Some(pki) = options.tls {
            let (cert, key) = pki_files(pki, store_dir.path())?;
            config.server.tls_cert = Some(cert);
            config.server.tls_key = Some(key);
        }
        config.outbound.allow_loopback_http = true;
        config.entra.authority_host = options.entra_authority.unwrap_or_else(|| entra.url());
        config.identities = vec![IdentityConfig {
            name: "deploy".into(),
            tenant_id: TENANT.parse()?,
            client_id: DEPLOY_CLIENT.parse()?,
            federated_credentials: vec![FederatedCredentialConfig {
                name: "github-main".into(),
                issuer: issuer.url(),
                subject: Some(MAIN_SUBJECT.into()),
                ..Default::default()
            }],
            ..Default::default()
        }];
        let mut cold = Vec::with_capacity(options.cold_identities);
        for i in 0..options.cold_identities {
            let repo = format!("contoso/bench-{i}");
            let subject = format!("repo:{repo}:ref:refs/heads/main");
            let client_id = format!("3f1c2a9e-5b7d-4e21-9c3a-{i:012x}");
            entra.register_app(
                AppRegistration::new(TENANT, &client_id).with_fic(EmulatedFic::new(
                    "github-main",
                    &issuer.url(),
                    &subject,
                )),
            );
            config.identities.push(IdentityConfig {
                name: format!("bench-{i}"),
                tenant_id: TENANT.parse()?,
                client_id: client_id.parse()?,
                federated_credentials: vec![FederatedCredentialConfig {
                    name: "github-main".into(),
                    issuer: issuer.url(),
                    subject: Some(subject),
                    ..Default::default()
                }],
                ..Default::default()
            });
            let token = mint(&issuer, &repo, clock.now())?;
            cold.push(ColdIdentity { client_id, token });
        }
        let broker = RunningBroker::start(&config, clock.clone()).await?;
        let token = mint(&issuer, REPO, clock.now())?;
        Ok(Self {
            issuer,
            entra,
            broker,
            token,
            cold,
            ca_pem: options.tls.map(|pki| pki.ca_pem.clone()),
            store_dir,
            owns_issuer,
        })
    }

    /// A load-generator client for this broker: plain, or trusting its CA.
    pub fn client(&self, concurrency: usize) -> anyhow::Result<reqwest::Client> {
        match &self.ca_pem {
            Some(ca) => tls_load_client(concurrency, ca),
            None => load_client(concurrency),
        }
    }

    /// The PEM files the broker serves TLS with, when it does.
    pub fn tls_files(&self) -> Option<(PathBuf, PathBuf)> {
        self.ca_pem.as_ref().map(|_| {
            (
                self.store_dir.path().join(CERT_FILE),
                self.store_dir.path().join(KEY_FILE),
            )
        })
    }

    pub fn target(&self) -> anyhow::Result<Target> {
        Target::new(&format!("{}/v1/token", self.broker.url()), &self.token)
    }

    pub async fn shutdown(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.broker.shutdown()).await;
        if self.owns_issuer {
            self.issuer.shutdown().await;
        }
        self.entra.shutdown().await;
    }
}

/// The bare axum server. Every route reads the body, as the broker does.
/// - `/verify` does one RS256 verification of the bearer token with a prebuilt key (no
///   claims validation) and answers small JSON: the limit;
/// - `/fixed` answers small JSON: the HTTP floor;
/// - `/exchange` runs the broker's `Broker::exchange` in-process and answers the broker's
///   own (pre-recorded) answer bytes: the broker's logic without its HTTP edge.
pub struct LimitServer {
    pub url: String,
    pub stop: oneshot::Sender<()>,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl LimitServer {
    /// `tls`: the certificate and key the broker serves: the bare server then serves TLS
    /// with the same rustls configuration (`wif_broker::tls::server_config` of the same
    /// files) through the broker's own serving loop (`axum::serve` has no TLS).
    pub async fn start(
        key: DecodingKey,
        broker: Arc<Broker>,
        answer: Bytes,
        tls: Option<(PathBuf, PathBuf)>,
    ) -> anyhow::Result<Self> {
        let app = Router::new()
            .route("/verify", post(verify_once))
            .route("/fixed", post(fixed_json).get(fixed_json))
            .route("/exchange", post(exchange_in_process))
            .with_state(Arc::new(Bare {
                key,
                broker,
                answer,
            }));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        if let Some((cert, key)) = tls {
            let url = format!("https://{}", listener.local_addr()?);
            let rustls = wif_broker::tls::server_config(cert, key, Duration::from_secs(10))?;
            // The broker's defaults, with the bench broker's quick shutdown.
            let limits = serve::Limits {
                drain: Duration::ZERO,
                shutdown_timeout: Duration::from_secs(2),
                ..serve::Limits::default()
            };
            let task = tokio::spawn(serve::serve(
                listener,
                app,
                Some(rustls),
                async move {
                    let _ = stopped.await;
                },
                limits,
            ));
            return Ok(Self { url, stop, task });
        }
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
        });
        Ok(Self { url, stop, task })
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

pub struct Bare {
    key: DecodingKey,
    broker: Arc<Broker>,
    answer: Bytes,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

pub async fn verify_once(
    State(bare): State<Arc<Bare>>,
    headers: HeaderMap,
    _body: Bytes,
) -> Response {
    let verified = bearer(&headers)
        .and_then(|token| token.rsplit_once('.'))
        .is_some_and(|(message, signature)| {
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), &bare.key, Algorithm::RS256)
                .unwrap_or(false)
        });
    if verified {
        Json(json!({ "verified": true, "alg": "RS256" })).into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_signature" })),
        )
            .into_response()
    }
}

pub async fn fixed_json(_body: Bytes) -> Response {
    Json(json!({ "verified": false, "alg": "none" })).into_response()
}

pub async fn exchange_in_process(
    State(bare): State<Arc<Bare>>,
    headers: HeaderMap,
    _body: Bytes,
) -> Response {
    let Some(token) = bearer(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let exchanged = bare
        .broker
        .exchange(ExchangeRequest {
            endpoint: "/v1/token",
            request_id: "wif-bench",
            token,
            scope: Some(ARM),
            identity: None,
            tenant: None,
            client: None,
        })
        .await;
    match exchanged {
        Ok(_) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            bare.answer.clone(),
        )
            .into_response(),
        Err(e) => (StatusCode::FORBIDDEN, e.code().as_str()).into_response(),
    }
}
