//! The attack suite's harness: a real `wif-broker serve` process on loopback, fed a config
//! file, with what it logs captured so a test can measure how much an attacker made it
//! write; and the external parties it talks to (an issuer, Entra) as faithful fakes.
//! Every wait is bounded and every child is killed when its handle drops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use wif_broker::clock;
use wif_broker::dev::entra::{AppRegistration, EmulatedFic, EntraEmulator};
use wif_broker::dev::issuer::{LocalIssuer, github_claims};
pub use wif_tests::process::free_port;
use wif_tests::process::{self, collect};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT: &str = "3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6c";
pub const REPO: &str = "contoso/app";
pub const MAIN_SUBJECT: &str = "repo:contoso/app:ref:refs/heads/main";
pub const ARM: &str = "https://management.azure.com/.default";
/// The static admin token every test broker accepts (role `admin`).
pub const ADMIN_TOKEN: &str = "wif-attack-suite-admin-token-0123456789";

/// Longest a broker may take to start answering.
const STARTUP: Duration = Duration::from_secs(30);

/// `wif-broker` with a clean environment ([`process::command`]).
fn wif_broker() -> Command {
    process::command(env!("CARGO_BIN_EXE_wif-broker"))
}

/// A client that never goes through a proxy and never reuses a connection.
pub fn client() -> reqwest::Client {
    wif_broker::crypto::install_provider();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A directory for one broker's files (config, admin tokens, SQLite store).
pub struct BrokerDir {
    dir: tempfile::TempDir,
}

impl BrokerDir {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("admin-tokens"),
            format!(
                "admin attacker-admin {}\n",
                wif_broker::api::admin::auth::token_hash(ADMIN_TOKEN)
            ),
        )
        .unwrap();
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The SQLite store's URL in this directory.
    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}", self.path("wif.db").display())
    }

    /// The `[store]` and `[admin]` sections every test broker has: SQLite in this
    /// directory and the static admin token [`ADMIN_TOKEN`].
    pub fn base_sections(&self) -> String {
        format!(
            "[store]\nurl = \"{}\"\n\n[admin]\ntokens_file = \"{}\"\n",
            self.sqlite_url(),
            self.path("admin-tokens").display()
        )
    }

    /// Total size of the SQLite store's files (database, WAL, shared memory).
    pub fn store_bytes(&self) -> u64 {
        ["wif.db", "wif.db-wal", "wif.db-shm"]
            .iter()
            .filter_map(|f| std::fs::metadata(self.path(f)).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// A running `wif-broker serve`.
pub struct Broker {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    pub addr: SocketAddr,
    pub config: PathBuf,
}

impl Broker {
    /// Writes `toml` to `dir/wif.toml` and starts `wif-broker serve` on it, listening on a
    /// free loopback port (set through `WIF_SERVER_LISTEN`, so `toml` need not name one),
    /// and waits until `/healthz` answers. `env` adds environment variables.
    pub async fn start(dir: &BrokerDir, toml: &str, env: &[(&str, &str)]) -> Self {
        Self::start_under(&[], dir, toml, env).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn wait_answering(&mut self) {
        let http = client();
        let deadline = Instant::now() + STARTUP;
        loop {
            if http
                .get(format!("{}/healthz", self.url()))
                .send()
                .await
                .is_ok()
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                self.fail(&format!("wif-broker exited early with {status}"));
            }
            if Instant::now() > deadline {
                self.fail(&format!("/healthz did not answer within {STARTUP:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything the process wrote so far (stdout, then stderr), as text.
    pub fn output(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.stdout.lock().unwrap()),
            String::from_utf8_lossy(&self.stderr.lock().unwrap())
        )
    }

    /// How many bytes the process has written to stdout and stderr (its log).
    pub fn log_bytes(&self) -> usize {
        self.stdout.lock().unwrap().len() + self.stderr.lock().unwrap().len()
    }

    /// Fails the test, showing the end of what the process printed.
    pub fn fail(&self, why: &str) -> ! {
        let out = self.output();
        let tail: String = {
            let chars: Vec<char> = out.chars().collect();
            chars[chars.len().saturating_sub(6000)..].iter().collect()
        };
        panic!("{why}\n--- wif-broker output (end) ---\n{tail}")
    }

    /// Sends SIGTERM, as Kubernetes does to stop a pod.
    pub async fn terminate(&self) {
        let pid = self.child.id().expect("the process is still running");
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits at most `limit` for the process to exit.
    pub async fn exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => self.fail(&format!("wif-broker still running {limit:?} later")),
        }
    }
}

/// The external parties: a GitHub-style issuer and the Entra emulator, which holds the
/// app [`CLIENT`] in [`TENANT`] trusting jobs on main.
pub struct Upstreams {
    pub issuer: LocalIssuer,
    pub entra: EntraEmulator,
}

impl Upstreams {
    pub async fn start() -> Self {
        let issuer = LocalIssuer::start(clock::system()).await.unwrap();
        let entra = EntraEmulator::start(clock::system()).await.unwrap();
        entra.register_app(AppRegistration::new(TENANT, CLIENT));
        entra.add_fic(
            TENANT,
            CLIENT,
            EmulatedFic::new("main", &issuer.url(), MAIN_SUBJECT),
        );
        Self { issuer, entra }
    }

    /// A fresh token (new `jti`) of a job on main.
    pub fn main_job_token(&self) -> String {
        self.issuer.mint(github_claims(REPO, "main")).unwrap()
    }

    /// A config declaring identity `deploy` (tenant [`TENANT`], client [`CLIENT`],
    /// passthrough) trusting jobs on main, with `extra` appended (more sections or keys of
    /// sections not named here: `[server]`, `[jwks]`, `[audit]`, ...).
    pub fn config(&self, dir: &BrokerDir, extra: &str) -> String {
        format!(
            r#"{base}
[entra]
authority_host = "{entra}"
max_retries = 0
timeout_secs = 5

[outbound]
allow_loopback_http = true

[[identities]]
name = "deploy"
tenant_id = "{TENANT}"
client_id = "{CLIENT}"

[[identities.federated_credentials]]
name = "main"
issuer = "{issuer}"
subject = "{MAIN_SUBJECT}"

{extra}
"#,
            base = dir.base_sections(),
            entra = self.entra.url(),
            issuer = self.issuer.url(),
        )
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("<no error code>")
    }
    pub fn description(&self) -> &str {
        self.body["error_description"].as_str().unwrap_or("")
    }
}

/// Sends `request` and reads its answer.
pub async fn send(request: reqwest::RequestBuilder) -> Answer {
    answer(request.send().await.unwrap()).await
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        text,
    }
}

/// `POST /v1/token` with `token` as the bearer and `scope`.
pub async fn exchange(http: &reqwest::Client, broker: &str, token: &str, scope: &str) -> Answer {
    let response = http
        .post(format!("{broker}/v1/token"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "scope": scope }))
        .send()
        .await
        .unwrap();
    answer(response).await
}

/// An admin API call with [`ADMIN_TOKEN`].
pub async fn admin(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Answer {
    let mut request = http.request(method, url).bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    answer(request.send().await.unwrap()).await
}

/// A file's size, 0 when it does not exist.
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// A loopback server that accepts connections, reads what is sent and never answers: an
/// issuer (or any upstream) that hangs. Counts the HTTP requests it received.
pub struct SilentServer {
    pub url: String,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Count each request head; hold the connection open, never answer.
                    while let Ok(n @ 1..) = socket.read(&mut chunk).await {
                        seen.extend_from_slice(&chunk[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            seen.drain(..end + 4);
                        }
                    }
                });
            }
        });
        Self {
            url,
            requests,
            task,
        }
    }

    /// HTTP requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The longest run of `c` in `text`: how much of an attacker's padding made it through.
pub fn longest_run(text: &str, c: char) -> usize {
    let (mut best, mut run) = (0, 0);
    for ch in text.chars() {
        run = if ch == c { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

/// A throwaway CA and a server certificate it signed for `127.0.0.1` and `localhost`, for
/// TLS listeners (the admission webhook's).
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestPki {
    pub fn new() -> Self {
        Self::for_names(&["127.0.0.1", "localhost"])
    }

    /// A CA and a server certificate it signed for `names` (host names or IP addresses).
    pub fn for_names(names: &[&str]) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let ca = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let cert = leaf.signed_by(&key, &ca).unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the certificate and key into `dir` (`tls.crt`, `tls.key`); returns their paths.
    pub fn write(&self, dir: &BrokerDir) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }

    /// An HTTPS client trusting this CA only, never through a proxy.
    pub fn client(&self) -> reqwest::Client {
        wif_broker::crypto::install_provider();
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap();
        reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([ca])
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }
}

/// An attacker's HTTP server on loopback that counts every request it receives (any
/// method, any path) and answers each with a 400 in Entra's error shape.
pub struct StandIn {
    pub addr: SocketAddr,
    hits: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl StandIn {
    pub async fn start() -> Self {
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().fallback(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    axum::Json(serde_json::json!({"error": "invalid_request"})),
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, hits, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Broker {
    /// Like [`Broker::start`], with `wif-broker serve` run through `prefix` (a program and
    /// its arguments that execs the rest, such as `prlimit --nofile=256:256 --`; none:
    /// run directly).
    pub async fn start_under(
        prefix: &[&str],
        dir: &BrokerDir,
        toml: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::launch(prefix, addr, dir, toml, env).await
    }

    /// Like [`Broker::start`], listening on `addr`, for a config that names the broker's
    /// own address (its `[broker_issuer] url`).
    pub async fn start_at(
        addr: SocketAddr,
        dir: &BrokerDir,
        toml: &str,
        env: &[(&str, &str)],
    ) -> Self {
        Self::launch(&[], addr, dir, toml, env).await
    }

    async fn launch(
        prefix: &[&str],
        addr: SocketAddr,
        dir: &BrokerDir,
        toml: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let config = dir.path("wif.toml");
        std::fs::write(&config, toml).unwrap();
        let plain = wif_broker();
        let mut cmd = match prefix.split_first() {
            None => plain,
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(plain.as_std().get_program());
                for (name, value) in plain.as_std().get_envs() {
                    match value {
                        Some(value) => cmd.env(name, value),
                        None => cmd.env_remove(name),
                    };
                }
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true);
                cmd
            }
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .env("WIF_SERVER_LISTEN", addr.to_string());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let mut broker = Self {
            child,
            stdout,
            stderr,
            addr,
            config,
        };
        broker.wait_answering().await;
        broker
    }
}
