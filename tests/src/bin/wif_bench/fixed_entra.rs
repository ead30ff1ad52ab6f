//! The cold path's Entra (docs/PERFORMANCE.md, "Cold path"): Entra's token endpoint on
//! loopback that answers every token request a fixed time after it arrived, as the budget
//! says, with its costly work done ahead of time.
//!
//! It checks the form as Entra does, in Entra's order (the dev emulator's,
//! `wif_broker::dev::entra`): `grant_type` is `client_credentials`, a `client_assertion`
//! (a compact JWS) and its `client_assertion_type` are present, the tenant and the
//! `client_id` are known, `scope` is one `/.default` scope. It answers with the dev
//! emulator's JSON shape (`token_type`, `expires_in`, `ext_expires_in`, `access_token`) or
//! Entra's error shape. What it does not do per request is what costs the dev emulator a
//! millisecond of CPU: fetching the assertion issuer's discovery document and keys,
//! verifying the assertion's signature, signing an access token. Access tokens are
//! RS256-signed by [`FixedEntra::prepare`] before a round, one per (client id, scope) key,
//! and a token request answers its key's prepared bytes.
//!
//! The fixed delay is kept by a timer thread (not tokio's timer, whose resolution is a
//! millisecond: a 20 ms sleep answered after 20 to 21 ms), so the answer leaves 20 ms
//! after the request arrived, within the thread's wake-up time.
//!
//! It runs in a process of its own by default (`wif-bench` started again with
//! [`CHILD_FLAG`], on a single-threaded tokio runtime), so its scheduling does not mix with
//! the broker's runtime and its CPU is not counted in the benchmark process's; or in the
//! benchmark process, on the shared runtime (`--cold-entra in-process`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use wif_broker::dev::entra::AadError;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wif_broker::dev::jwt::{KeyKind, SigningKey};

/// `wif-bench --serve-fixed-entra TENANT DELAY_US`: serve the fixed Entra in this process
/// (the child the benchmark starts); prints `listening URL` once it accepts connections.
pub const CHILD_FLAG: &str = "--serve-fixed-entra";

/// `client_assertion_type` of a JWT assertion (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// `expires_in` of the prepared tokens, as Entra commonly answers.
const TOKEN_LIFETIME_SECS: u64 = 3599;

/// Which Entra the cold path asks (`--cold-entra`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColdEntra {
    /// The fixed Entra in a process of its own (the budget's figure).
    Process,
    /// The fixed Entra in the benchmark process, on its runtime.
    InProcess,
    /// The dev stack's Entra emulator: the fixed delay, then its own work per request
    /// (the issuer's keys fetched, the assertion verified, an access token signed).
    Dev,
}

impl ColdEntra {
    pub fn parse(value: &str) -> anyhow::Result<Self> {
        Ok(match value {
            "process" => Self::Process,
            "in-process" => Self::InProcess,
            "dev" => Self::Dev,
            other => bail!("--cold-entra: {other:?} is not process, in-process or dev"),
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Process => "fixed Entra in its own process (tokens prepared ahead)",
            Self::InProcess => "fixed Entra in this process (tokens prepared ahead)",
            Self::Dev => "the dev Entra emulator (verifies and signs per request)",
        }
    }
}

/// What the fixed Entra counted since it started.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Every request to the token endpoint.
    pub token_requests: u64,
    pub answered: u64,
    /// Requests answered with an Entra error (a form Entra would refuse, an unknown key).
    pub refused: u64,
    /// TCP connections accepted (the broker's and the load generator's).
    pub connections: u64,
}

/// A running fixed Entra, here or in a child process.
pub struct FixedEntra {
    url: String,
    control: reqwest::Client,
    running: Running,
}

enum Running {
    Child {
        child: tokio::process::Child,
        pid: u32,
        stderr: Arc<std::sync::Mutex<Vec<u8>>>,
    },
    Here {
        stop: oneshot::Sender<()>,
        task: JoinHandle<std::io::Result<()>>,
    },
}

impl FixedEntra {
    /// Starts one for `tenant` answering `delay` after each token request arrives.
    pub async fn start(
        placement: ColdEntra,
        tenant: &str,
        delay: Duration,
    ) -> anyhow::Result<Self> {
        let control = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()?;
        let (url, running) = match placement {
            ColdEntra::Process => spawn_child(tenant, delay).await?,
            ColdEntra::InProcess | ColdEntra::Dev => {
                let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
                let url = format!("http://{}", listener.local_addr()?);
                let fixed = Fixed::new(tenant, delay)?;
                let (stop, stopped) = oneshot::channel::<()>();
                let task = tokio::spawn(async move {
                    axum::serve(counting(listener, &fixed), router(fixed))
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await
                });
                (url, Running::Here { stop, task })
            }
        };
        Ok(Self {
            url,
            control,
            running,
        })
    }

    /// The authority host, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.url)
    }

    /// Mints one access token for each `(client id, scope)` of `keys` (RS256, Entra's
    /// claims), so their token requests are answered without signing anything.
    pub async fn prepare(&self, keys: &[(String, String)]) -> anyhow::Result<()> {
        let keys: Vec<Key> = keys
            .iter()
            .map(|(client_id, scope)| Key {
                client_id: client_id.clone(),
                scope: scope.clone(),
            })
            .collect();
        let response = self
            .control
            .post(format!("{}/wif-bench/prepare", self.url))
            .json(&keys)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "the fixed Entra could not prepare its tokens: HTTP {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    pub async fn stats(&self) -> anyhow::Result<Stats> {
        Ok(self
            .control
            .get(format!("{}/wif-bench/stats", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// CPU seconds the child process has run (every thread), when it is one; `None` in
    /// process (its CPU is in the benchmark process's).
    pub fn child_cpu_secs(&self) -> Option<f64> {
        let Running::Child { pid, .. } = &self.running else {
            return None;
        };
        crate::load::cpu_secs_of(&format!("/proc/{pid}/task"))
    }

    pub async fn shutdown(self) {
        match self.running {
            Running::Child {
                mut child, stderr, ..
            } => {
                // Still running is the normal case; exited early is worth a word.
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!(
                        "the fixed Entra exited early ({status}): {}",
                        wif_tests::process::tail(&stderr)
                    );
                }
                let _ = child.kill().await;
            }
            Running::Here { stop, task } => {
                let _ = stop.send(());
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            }
        }
    }
}

/// Starts `wif-bench` again as the fixed Entra and reads the URL it prints.
async fn spawn_child(tenant: &str, delay: Duration) -> anyhow::Result<(String, Running)> {
    let exe = std::env::current_exe().context("cannot find wif-bench's own executable")?;
    let mut child = wif_tests::process::command(&exe)
        .arg(CHILD_FLAG)
        .arg(tenant)
        .arg(delay.as_micros().to_string())
        .spawn()
        .with_context(|| format!("cannot start {} {CHILD_FLAG}", exe.display()))?;
    let pid = child.id().context("the fixed Entra exited at once")?;
    let stderr = wif_tests::process::collect(child.stderr.take().context("no stderr pipe")?);
    let mut lines = BufReader::new(child.stdout.take().context("no stdout pipe")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the fixed Entra did not start within 30 s")??;
    let Some(url) = first.as_deref().and_then(|l| l.strip_prefix("listening ")) else {
        let _ = child.kill().await;
        bail!(
            "the fixed Entra did not start: {first:?}; {}",
            wif_tests::process::tail(&stderr)
        );
    };
    let url = url.trim().to_owned();
    // Keep reading, so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((url, Running::Child { child, pid, stderr }))
}

/// The child's `main`: `args` are `TENANT DELAY_US`. Serves until killed.
pub fn child_main(args: &[String]) -> anyhow::Result<()> {
    let [tenant, delay_us] = args else {
        bail!("usage: wif-bench {CHILD_FLAG} TENANT DELAY_US");
    };
    let delay = Duration::from_micros(delay_us.parse().context("DELAY_US")?);
    wif_broker::crypto::install_provider();
    // One thread serves: a token request is a form check, a wait and prepared bytes.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let fixed = Fixed::new(tenant, delay)?;
        println!("listening http://{}", listener.local_addr()?);
        axum::serve(counting(listener, &fixed), router(fixed)).await?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// The server.

#[derive(Debug, Serialize, Deserialize)]
struct Key {
    client_id: String,
    scope: String,
}

/// An app the fixed Entra knows, with the access tokens prepared for it by scope.
struct App {
    object_id: String,
    answers: HashMap<String, Bytes>,
}

struct Fixed {
    tenant: String,
    delay: Duration,
    key: SigningKey,
    /// By lowercase client id.
    apps: RwLock<HashMap<String, App>>,
    token_requests: AtomicU64,
    answered: AtomicU64,
    refused: AtomicU64,
    connections: AtomicU64,
    timer: Timer,
}

impl Fixed {
    fn new(tenant: &str, delay: Duration) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            tenant: tenant.to_owned(),
            delay,
            key: SigningKey::generate(KeyKind::Rsa2048, "wif-bench-fixed-entra")?,
            apps: RwLock::new(HashMap::new()),
            token_requests: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            timer: Timer::start()?,
        }))
    }

    /// The answer for one key: an access token with the claims the dev emulator issues.
    fn mint(&self, client_id: &str, object_id: &str, scope: &str) -> anyhow::Result<Bytes> {
        let now = wif_broker::clock::system().now();
        let resource = scope.strip_suffix("/.default").unwrap_or(scope);
        let audience = resource.strip_suffix('/').unwrap_or(resource);
        let issuer = format!("https://sts.windows.net/{}/", self.tenant);
        let claims = json!({
            "aud": audience,
            "iss": issuer,
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME_SECS,
            "appid": client_id,
            "appidacr": "2",
            "azp": client_id,
            "idp": issuer,
            "idtyp": "app",
            "oid": object_id,
            "sub": object_id,
            "tid": self.tenant,
            "uti": URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes()),
            "ver": "1.0",
        });
        let access_token = self.key.sign(&claims)?;
        Ok(Bytes::from(serde_json::to_vec(&json!({
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME_SECS,
            "ext_expires_in": TOKEN_LIFETIME_SECS,
            "access_token": access_token,
        }))?))
    }

    /// Entra's checks of a client-credentials request with a client assertion, in Entra's
    /// order; `Ok` is the prepared answer of its key.
    fn answer(&self, tenant: &str, body: &[u8]) -> Result<Bytes, AadError> {
        let (mut grant_type, mut client_id, mut scope) = (None, None, None);
        let (mut assertion, mut assertion_type) = (None, None);
        for (name, value) in url::form_urlencoded::parse(body) {
            let slot = match &*name {
                "grant_type" => &mut grant_type,
                "client_id" => &mut client_id,
                "scope" => &mut scope,
                "client_assertion" => &mut assertion,
                "client_assertion_type" => &mut assertion_type,
                _ => continue,
            };
            if !value.is_empty() {
                *slot = Some(value);
            }
        }
        let grant_type = grant_type.ok_or_else(|| AadError::missing_parameter("grant_type"))?;
        if grant_type != "client_credentials" {
            return Err(AadError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                format!("The app requested an unsupported grant type '{grant_type}'."),
            ));
        }
        let assertion = assertion.ok_or_else(|| {
            AadError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' \
                 or 'client_secret'.",
            )
        })?;
        let assertion_type =
            assertion_type.ok_or_else(|| AadError::missing_parameter("client_assertion_type"))?;
        if assertion_type != JWT_BEARER {
            return Err(AadError::invalid_request(
                90011,
                format!("Unexpected client assertion type '{assertion_type}'."),
            ));
        }
        if !tenant.eq_ignore_ascii_case(&self.tenant) {
            return Err(AadError::invalid_request(
                90002,
                format!("Tenant '{tenant}' not found."),
            ));
        }
        let client_id = client_id.ok_or_else(|| AadError::missing_parameter("client_id"))?;
        let apps = self.apps.read().unwrap_or_else(|p| p.into_inner());
        let Some(app) = apps.get(&client_id.to_ascii_lowercase()) else {
            return Err(AadError::new(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                format!(
                    "Application with identifier '{client_id}' was not found in the directory \
                     '{tenant}'."
                ),
            ));
        };
        let scope = scope.ok_or_else(|| AadError::missing_parameter("scope"))?;
        if scope.split_whitespace().count() > 1 || !scope.ends_with("/.default") {
            return Err(AadError::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                1002012,
                format!(
                    "The provided value for scope {scope} is not valid. Client credential flows \
                     must have a scope value with /.default suffixed to the resource identifier \
                     (application ID URI)."
                ),
            ));
        }
        // A compact JWS: header, payload, signature. Not verified: that is the work done
        // ahead of time (docs/PERFORMANCE.md, "Cold path").
        let segments = assertion.split('.').count();
        if segments != 3 || assertion.split('.').any(str::is_empty) {
            return Err(AadError::invalid_request(
                50027,
                "JWT token is invalid or malformed. The assertion is not a compact JWS.",
            ));
        }
        app.answers.get(&*scope).cloned().ok_or_else(|| {
            AadError::new(
                StatusCode::BAD_REQUEST,
                "invalid_resource",
                500011,
                format!(
                    "The resource principal named {} was not found in the tenant named {tenant}.",
                    scope.trim_end_matches("/.default")
                ),
            )
        })
    }
}

/// `listener`, counting the connections it accepts in `fixed`.
fn counting(
    listener: TcpListener,
    fixed: &Arc<Fixed>,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    let fixed = Arc::clone(fixed);
    listener.tap_io(move |_| {
        fixed.connections.fetch_add(1, Ordering::Relaxed);
    })
}

fn router(fixed: Arc<Fixed>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/wif-bench/prepare", post(prepare))
        .route("/wif-bench/stats", get(stats))
        .with_state(fixed)
}

async fn token(
    State(fixed): State<Arc<Fixed>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    fixed.token_requests.fetch_add(1, Ordering::Relaxed);
    let answer = fixed.answer(&tenant, &body);
    fixed.timer.until(arrived + fixed.delay).await;
    let correlation = headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let trace_id = uuid::Uuid::new_v4().to_string();
    let (status, body) = match answer {
        Ok(body) => {
            fixed.answered.fetch_add(1, Ordering::Relaxed);
            (StatusCode::OK, body)
        }
        Err(e) => {
            fixed.refused.fetch_add(1, Ordering::Relaxed);
            (
                e.status(),
                Bytes::from(
                    e.body(&trace_id, correlation, wif_broker::clock::system().now())
                        .to_string(),
                ),
            )
        }
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store, no-cache")
        .header("x-ms-request-id", trace_id)
        .header("client-request-id", correlation)
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Mints the answers of `keys` on a blocking thread (RSA signing: a few hundred µs each).
async fn prepare(State(fixed): State<Arc<Fixed>>, body: Bytes) -> Response {
    let keys: Vec<Key> = match serde_json::from_slice(&body) {
        Ok(keys) => keys,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let minting = Arc::clone(&fixed);
    let minted = tokio::task::spawn_blocking(move || {
        let mut minted = Vec::with_capacity(keys.len());
        for key in keys {
            let client = key.client_id.to_ascii_lowercase();
            let object_id = {
                let mut apps = minting.apps.write().unwrap_or_else(|p| p.into_inner());
                apps.entry(client.clone())
                    .or_insert_with(|| App {
                        object_id: uuid::Uuid::new_v4().to_string(),
                        answers: HashMap::new(),
                    })
                    .object_id
                    .clone()
            };
            let answer = minting.mint(&key.client_id, &object_id, &key.scope)?;
            minted.push((client, key.scope, answer));
        }
        anyhow::Ok(minted)
    })
    .await;
    let minted = match minted {
        Ok(Ok(minted)) => minted,
        Ok(Err(e)) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let count = minted.len();
    let mut apps = fixed.apps.write().unwrap_or_else(|p| p.into_inner());
    for (client, scope, answer) in minted {
        if let Some(app) = apps.get_mut(&client) {
            app.answers.insert(scope, answer);
        }
    }
    axum::Json(json!({ "prepared": count })).into_response()
}

async fn stats(State(fixed): State<Arc<Fixed>>) -> Response {
    axum::Json(Stats {
        token_requests: fixed.token_requests.load(Ordering::Relaxed),
        answered: fixed.answered.load(Ordering::Relaxed),
        refused: fixed.refused.load(Ordering::Relaxed),
        connections: fixed.connections.load(Ordering::Relaxed),
    })
    .into_response()
}

// ---------------------------------------------------------------------------------------
// The timer.

/// Wakes waiters at their instant from a thread of its own: `std::thread` sleeps to the
/// microsecond, where tokio's timer rounds up to the next millisecond.
struct Timer {
    requests: mpsc::Sender<(Instant, oneshot::Sender<()>)>,
}

impl Timer {
    fn start() -> anyhow::Result<Self> {
        let (requests, received) = mpsc::channel();
        std::thread::Builder::new()
            .name("fixed-entra-timer".into())
            .spawn(move || run_timer(&received))?;
        Ok(Self { requests })
    }

    async fn until(&self, at: Instant) {
        let (done, wait) = oneshot::channel();
        if self.requests.send((at, done)).is_err() || wait.await.is_err() {
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

/// Fires each waiter at its instant, earliest first, until every sender is gone.
fn run_timer(received: &mpsc::Receiver<(Instant, oneshot::Sender<()>)>) {
    let mut waiting: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut wakers: HashMap<u64, oneshot::Sender<()>> = HashMap::new();
    let mut serial = 0u64;
    let mut add = |(at, done): (Instant, oneshot::Sender<()>),
                   waiting: &mut BinaryHeap<Reverse<(Instant, u64)>>,
                   wakers: &mut HashMap<u64, oneshot::Sender<()>>| {
        serial += 1;
        waiting.push(Reverse((at, serial)));
        wakers.insert(serial, done);
    };
    loop {
        let Some(&Reverse((next, _))) = waiting.peek() else {
            match received.recv() {
                Ok(request) => add(request, &mut waiting, &mut wakers),
                Err(_) => return,
            }
            continue;
        };
        let now = Instant::now();
        if next > now {
            match received.recv_timeout(next - now) {
                Ok(request) => add(request, &mut waiting, &mut wakers),
                Err(RecvTimeoutError::Timeout) => {}
                // No new waiters can come; still wake those queued.
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(next - now),
            }
            continue;
        }
        while let Some(&Reverse((at, id))) = waiting.peek() {
            if at > now {
                break;
            }
            waiting.pop();
            if let Some(done) = wakers.remove(&id) {
                let _ = done.send(());
            }
        }
    }
}
