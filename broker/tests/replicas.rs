//! Replicas as operators run them: several `wif-broker serve` processes on one PostgreSQL.
//! A change made at one replica reaches the others within 2 s (docs/storage.md), a
//! one-time-use token is spent once across all of them, a store outage keeps exchanges
//! going while writes answer 503, and `kill -9` loses no acknowledged write, on SQLite and
//! on PostgreSQL.
//!
//! PostgreSQL is expected at 127.0.0.1:5432, database `test`, user `postgres` (trust).
//! Each test works in a schema of its own, created here and dropped when the test ends;
//! the brokers reach it through `?options=-c search_path=<schema>` in the store URL. When
//! PostgreSQL cannot be reached the tests that need it print a notice and pass, except
//! under `CI=true`, where they fail. The issuer and Entra are the in-process emulators.
//! Every wait is bounded, and every child is killed when its handle drops. Tests marked
//! `#[ignore = "bug: ..."]` reproduce broker bugs; `--ignored` runs them.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ops::Deref;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wif_broker::api::admin::auth::token_hash;
use wif_broker::clock;
use wif_broker::dev::entra::{AppRegistration, EmulatedFic, EntraEmulator, Fault};
use wif_broker::dev::issuer::{LocalIssuer, github_claims};
use wif_tests::pg::Schema as PgSchema;
use wif_tests::process::{self, collect, free_port, tail};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b";
const IDENTITY: &str = "api-app";
const REPO: &str = "contoso/app";
const ARM: &str = "https://management.azure.com/.default";
const ADMIN_TOKEN: &str = "replica-tests-admin-token";

const PG_HOST: &str = "127.0.0.1";
const PG_PORT: u16 = 5432;
const PG_DATABASE: &str = "test";

/// docs/storage.md: replicas on one PostgreSQL see each other's writes within this.
const CONVERGENCE: Duration = Duration::from_secs(2);
/// Longest a broker may take to start answering.
const STARTUP: Duration = Duration::from_secs(30);
/// Longest a broker may take to answer a write while its store is gone ("a few seconds").
const OUTAGE_ANSWER: Duration = Duration::from_secs(10);
/// Longest anything else the tests wait for may take.
const PATIENCE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// PostgreSQL: one schema per test

/// The store URL through `proxy`, in plain text so the proxy can read it.
fn url_through(pg: &PgSchema, proxy: &PgProxy) -> String {
    format!(
        "postgres://postgres@{PG_HOST}:{}/{PG_DATABASE}?sslmode=disable&options=-c%20search_path%3D{}",
        proxy.port,
        pg.name()
    )
}

// ---------------------------------------------------------------------------------------
// A TCP proxy in front of PostgreSQL that the test can switch off

/// What the link between the brokers and PostgreSQL does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Forwards both ways.
    Up,
    /// Closes every forwarded connection, and new ones as soon as they arrive: the
    /// database server went away.
    Closed,
    /// Every connection, old or new, goes silent (held open, nothing forwarded either
    /// way) as soon as it carries a query: the network failed while queries were in flight.
    StallsQueries,
}

/// A TCP proxy in front of PostgreSQL whose link the test controls. It reads the
/// PostgreSQL wire protocol just enough to tell a query from a handshake or a ping, so the
/// store URL through it must say `sslmode=disable`.
struct PgProxy {
    port: u16,
    link: watch::Sender<Link>,
    shared: Arc<ProxyShared>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct ProxyShared {
    /// The next query, on whichever connection, stalls (while the link is up).
    stall_next: AtomicBool,
    /// Queries stalled so far.
    stalled: AtomicU64,
}

impl ProxyShared {
    fn stalls(&self, link: Link) -> bool {
        let stall = match link {
            Link::Up => self.stall_next.swap(false, Ordering::SeqCst),
            Link::StallsQueries => true,
            Link::Closed => false,
        };
        if stall {
            self.stalled.fetch_add(1, Ordering::SeqCst);
        }
        stall
    }
}

impl PgProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (link, watch) = watch::channel(Link::Up);
        let shared = Arc::new(ProxyShared::default());
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(forward(client, watch.clone(), shared.clone()));
                }
            }
        });
        Self {
            port,
            link,
            shared,
            task,
        }
    }

    fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// The next query through the proxy never gets an answer (its connection stays open
    /// and silent); everything else goes on working: one TCP flow lost in the network.
    fn stall_next_query(&self) {
        self.shared.stall_next.store(true, Ordering::SeqCst);
    }

    fn stalled_queries(&self) -> u64 {
        self.shared.stalled.load(Ordering::SeqCst)
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.link.send_replace(Link::Closed);
    }
}

/// Whether a chunk the client sent starts a query: Parse, Bind or a simple Query. (The
/// handshake starts with a length, a ping is a lone Sync.) The brokers write each message
/// group at once, so chunks start at message boundaries.
fn is_query(chunk: &[u8]) -> bool {
    matches!(chunk.first(), Some(b'P' | b'B' | b'Q'))
}

/// One proxied connection. Ends, closing both sides, when either side closes or the link
/// closes; a stalled connection stays open and silent until then.
async fn forward(client: TcpStream, link: watch::Receiver<Link>, shared: Arc<ProxyShared>) {
    let mut closing = link.clone();
    if *closing.borrow_and_update() == Link::Closed {
        return;
    }
    let connect = TcpStream::connect((PG_HOST, PG_PORT));
    let Ok(Ok(server)) = tokio::time::timeout(Duration::from_secs(5), connect).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let stalled = AtomicBool::new(false);
    let upstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = client_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            let stall = is_query(&buf[..n]) && shared.stalls(*link.borrow());
            if stall {
                stalled.store(true, Ordering::SeqCst);
            }
            server_write.write_all(&buf[..n]).await?;
            if stall {
                std::future::pending::<()>().await;
            }
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            if !stalled.load(Ordering::SeqCst) {
                client_write.write_all(&buf[..n]).await?;
            }
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
        // Closed, or the proxy dropped.
        _ = closing.wait_for(|l| *l == Link::Closed) => {}
    }
}

// ---------------------------------------------------------------------------------------
// The issuer and Entra

/// A GitHub-like issuer and an Entra that knows the API-registered app.
struct Upstreams {
    issuer: LocalIssuer,
    entra: EntraEmulator,
}

impl Upstreams {
    async fn start() -> Self {
        let issuer = LocalIssuer::start(clock::system()).await.unwrap();
        let entra = EntraEmulator::start(clock::system()).await.unwrap();
        entra.register_app(AppRegistration::new(TENANT, CLIENT));
        Self { issuer, entra }
    }

    fn subject(branch: &str) -> String {
        format!("repo:{REPO}:ref:refs/heads/{branch}")
    }

    /// Entra holds a federated credential for jobs on `branch`, as the broker will.
    fn entra_trusts(&self, branch: &str) {
        self.entra.add_fic(
            TENANT,
            CLIENT,
            EmulatedFic::new(branch, &self.issuer.url(), &Self::subject(branch)),
        );
    }

    /// A fresh token (new `jti`) of a job on `branch`.
    fn job_token(&self, branch: &str) -> String {
        self.issuer.mint(github_claims(REPO, branch)).unwrap()
    }

    /// The admin API body of a credential for jobs on `branch`, named `name`.
    fn credential(&self, name: &str, branch: &str) -> Value {
        json!({
            "name": name,
            "issuer": self.issuer.url(),
            "subject": Self::subject(branch),
            "audiences": ["api://AzureADTokenExchange"],
        })
    }
}

/// A config file (and the admin tokens file it names) for brokers on `store_url`.
struct BrokerFiles {
    _dir: tempfile::TempDir,
    config: PathBuf,
}

impl BrokerFiles {
    /// Adds `toml` (whole sections) to the end of the config file.
    fn append(&self, toml: &str) {
        let mut config = std::fs::read_to_string(&self.config).unwrap();
        config.push('\n');
        config.push_str(toml);
        std::fs::write(&self.config, config).unwrap();
    }

    /// Adds a `[store]` setting (the section holds the URL already).
    fn store_setting(&self, line: &str) {
        let config = std::fs::read_to_string(&self.config).unwrap();
        let config = config.replacen("[store]\n", &format!("[store]\n{line}\n"), 1);
        std::fs::write(&self.config, config).unwrap();
    }

    fn new(store_url: &str, upstreams: &Upstreams) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("admin-tokens");
        std::fs::write(&tokens, format!("admin ops {}\n", token_hash(ADMIN_TOKEN))).unwrap();
        let config = dir.path().join("wif.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
shutdown_timeout_secs = 2

[store]
url = "{store_url}"

[entra]
authority_host = "{entra}"
max_retries = 0
timeout_secs = 5

[outbound]
allow_loopback_http = true

[admin]
tokens_file = "{tokens}"
"#,
                entra = upstreams.entra.url(),
                tokens = tokens.display(),
            ),
        )
        .unwrap();
        Self { _dir: dir, config }
    }
}

// ---------------------------------------------------------------------------------------
// Broker processes

fn wif_broker() -> Command {
    process::command(env!("CARGO_BIN_EXE_wif-broker"))
}

/// One answer of a broker.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

impl Answer {
    fn expect(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "{self:?}");
        self
    }

    fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.body["error"].as_str()),
            (status, Some(code)),
            "{self:?}"
        );
    }

    fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The HTTP face of one broker: admin API with the test's admin token, and exchanges.
#[derive(Clone)]
struct Api {
    url: String,
    http: reqwest::Client,
}

impl Api {
    fn new(url: String) -> Self {
        wif_broker::crypto::install_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(PATIENCE)
            .build()
            .unwrap();
        Self { url, http }
    }

    async fn answer(request: reqwest::RequestBuilder) -> reqwest::Result<Answer> {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    async fn try_admin(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> reqwest::Result<Answer> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(body);
        }
        Self::answer(request).await
    }

    async fn admin(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        let what = format!("{method} {}{path}", self.url);
        self.try_admin(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// A job trades its token for an ARM token.
    async fn exchange(&self, job_token: &str) -> Answer {
        let request = self
            .http
            .post(format!("{}/v1/token", self.url))
            .bearer_auth(job_token)
            .form(&[("scope", ARM)]);
        Self::answer(request)
            .await
            .unwrap_or_else(|e| panic!("exchange at {}: {e}", self.url))
    }

    /// Registers the API identity the Entra emulator knows.
    async fn put_identity(&self) {
        let body = json!({"tenantId": TENANT, "clientId": CLIENT});
        self.admin(Method::PUT, &identity_path(), Some(&body))
            .await
            .expect(201);
    }

    async fn create_credential(&self, body: &Value) -> Answer {
        self.admin(Method::POST, &credentials_path(), Some(body))
            .await
    }

    async fn credential_names(&self) -> Vec<String> {
        let list = self.admin(Method::GET, &credentials_path(), None).await;
        list.expect(200);
        list.body["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Sends `job_token` every 50 ms until the answer satisfies `wanted`, and returns how
    /// long after `since` that answer came. Fails after `PATIENCE`.
    async fn exchange_until(
        &self,
        job_token: &str,
        since: Instant,
        wanted: impl Fn(&Answer) -> bool,
    ) -> (Duration, Answer) {
        loop {
            let answer = self.exchange(job_token).await;
            let elapsed = since.elapsed();
            if wanted(&answer) {
                return (elapsed, answer);
            }
            assert!(elapsed < PATIENCE, "still {answer:?} after {elapsed:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this broker lists the credential `name` (another replica wrote it).
    async fn knows_credential(&self, name: &str) {
        let path = format!("{}/{name}", credentials_path());
        let started = Instant::now();
        loop {
            let answer = self.admin(Method::GET, &path, None).await;
            if answer.status == 200 {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{name} never arrived: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn identity_path() -> String {
    format!("/v1/identities/{IDENTITY}")
}

fn credentials_path() -> String {
    format!("/v1/identities/{IDENTITY}/federatedIdentityCredentials")
}

/// A `wif-broker serve` process and its API. Killed on drop; when the test is failing,
/// what it printed is shown.
struct Replica {
    label: &'static str,
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    api: Api,
}

impl Deref for Replica {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Replica {
    /// Starts a replica holding the API identity with a credential for jobs on main
    /// (which Entra trusts).
    async fn serving_main(label: &'static str, files: &BrokerFiles, upstreams: &Upstreams) -> Self {
        upstreams.entra_trusts("main");
        let replica = Self::start(label, &files.config).await;
        replica.put_identity().await;
        replica
            .create_credential(&upstreams.credential("main", "main"))
            .await
            .expect(201);
        replica
    }

    /// Starts `wif-broker serve --config <config>` on a free loopback port (through
    /// `WIF_SERVER_LISTEN`) and waits until it answers.
    async fn start(label: &'static str, config: &Path) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut cmd = wif_broker();
        cmd.args(["serve", "--config", config.to_str().unwrap()])
            .env("WIF_SERVER_LISTEN", &listen);
        let mut child = cmd.spawn().unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let mut replica = Self {
            label,
            child,
            stdout,
            stderr,
            api: Api::new(format!("http://{listen}")),
        };
        let started = Instant::now();
        loop {
            let health = replica.http.get(format!("{}/healthz", replica.url));
            if health.send().await.is_ok() {
                return replica;
            }
            if let Some(status) = replica.child.try_wait().unwrap() {
                panic!("replica {label} exited at start-up with {status}");
            }
            assert!(
                started.elapsed() < STARTUP,
                "replica {label} never answered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, as Kubernetes stops a pod, then waits for a clean exit.
    async fn terminate(&mut self) {
        let pid = self.child.id().expect("the process is still running");
        let kill = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(kill.success(), "kill -TERM {pid} failed: {kill}");
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("still running a minute after SIGTERM")
            .unwrap();
        assert!(
            status.success(),
            "replica {} exited with {status}",
            self.label
        );
    }

    /// What the process logged so far.
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// `kill -9`: no shutdown, no flush, as a crash or the OOM killer.
    async fn kill_9(&mut self) {
        let pid = self.child.id().expect("the process is still running");
        let kill = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(kill.success(), "kill -KILL {pid} failed: {kill}");
        let status: ExitStatus = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("still running after SIGKILL")
            .unwrap();
        assert_eq!(status.signal(), Some(9), "{status}");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- replica {} ({}) stdout ---\n{}\n--- replica {} stderr ---\n{}",
                self.label,
                self.api.url,
                tail(&self.stdout),
                self.label,
                tail(&self.stderr)
            );
        }
    }
}

/// Two replicas on one store, started together (they take turns migrating).
async fn two_replicas(files: &BrokerFiles) -> (Replica, Replica) {
    tokio::join!(
        Replica::start("A", &files.config),
        Replica::start("B", &files.config)
    )
}

// ---------------------------------------------------------------------------------------
// Replicas see each other's writes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_created_at_one_replica_admits_its_job_at_the_other_within_2_s_and_a_delete_at_the_other_stops_it_within_2_s()
 {
    let Some(pg) = PgSchema::create("wif_replicas").await else {
        return;
    };
    let upstreams = Upstreams::start().await;
    let files = BrokerFiles::new(&pg.url(), &upstreams);
    let (a, b) = two_replicas(&files).await;
    upstreams.entra_trusts("feature");
    a.put_identity().await;
    let job = upstreams.job_token("feature");
    let before = b.exchange(&job).await;
    assert!(
        matches!(before.status, 401 | 403),
        "admitted before any credential: {before:?}"
    );

    // An admin registers the feature branch at replica A...
    a.create_credential(&upstreams.credential("feature-branch", "feature"))
        .await
        .expect(201);
    let acknowledged = Instant::now();
    // ...and the job, sent to replica B by the load balancer, is admitted.
    let (admitted_after, answer) = b
        .exchange_until(&job, acknowledged, |a| a.status == 200)
        .await;
    assert_eq!(answer.body["identity"]["name"], IDENTITY, "{answer:?}");
    eprintln!("create at A -> admitted at B after {admitted_after:?}");
    assert!(
        admitted_after < CONVERGENCE,
        "B admitted the job {admitted_after:?} after A acknowledged the credential"
    );
    a.exchange(&job).await.expect(200);

    // The admin deletes it at B; replica A, which holds a cached Entra token for the
    // identity, stops admitting the job.
    b.admin(
        Method::DELETE,
        &format!("{}/feature-branch", credentials_path()),
        None,
    )
    .await
    .expect(204);
    let acknowledged = Instant::now();
    let (refused_after, answer) = a
        .exchange_until(&job, acknowledged, |a| a.status != 200)
        .await;
    eprintln!("delete at B -> refused at A after {refused_after:?}");
    assert!(
        matches!(
            answer.body["error"].as_str(),
            Some("no_matching_credential" | "unknown_issuer")
        ) && matches!(answer.status, 401 | 403),
        "{answer:?}"
    );
    assert!(
        refused_after < CONVERGENCE,
        "A admitted the job until {refused_after:?} after B acknowledged the delete"
    );
}

/// Polls `replica`'s credential list until `wanted` holds; how long after `since` it did.
/// A 404 is "not yet": the identity itself may still be on its way to this replica.
async fn listed_until(
    replica: &Replica,
    since: Instant,
    wanted: impl Fn(&[String]) -> bool,
) -> Duration {
    loop {
        let list = replica.admin(Method::GET, &credentials_path(), None).await;
        if list.status != 404 {
            list.expect(200);
            let names: Vec<String> = list.body["value"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect();
            if wanted(&names) {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < PATIENCE,
            "replica {} never saw the change",
            replica.label
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// PostgreSQL notifies every registry write, so replicas apply it at once: with the poll
/// set to ten minutes, only the notification can carry a write to the others in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_polling_all_but_off_a_write_at_one_replica_reaches_the_others_through_notifications()
{
    let Some(pg) = PgSchema::create("wif_replicas").await else {
        return;
    };
    let upstreams = Upstreams::start().await;
    let files = BrokerFiles::new(&pg.url(), &upstreams);
    files.store_setting("poll_interval_ms = 600000");
    let (a, b) = two_replicas(&files).await;
    let c = Replica::start("C", &files.config).await;
    upstreams.entra_trusts("feature");
    a.put_identity().await;
    let job = upstreams.job_token("feature");

    let mut seen = Vec::new();
    for round in 0..10 {
        let name = format!("feature-{round}");
        // Only the last round's credential admits the job; the others are for other
        // branches.
        let branch = if round == 9 {
            "feature".to_owned()
        } else {
            format!("other-{round}")
        };
        let body = upstreams.credential(&name, &branch);
        let writer = [&a, &b, &c][round % 3];
        writer.create_credential(&body).await.expect(201);
        let acknowledged = Instant::now();
        for other in [&a, &b, &c] {
            if other.label != writer.label {
                seen.push(listed_until(other, acknowledged, |names| names.contains(&name)).await);
            }
        }
    }
    // The job is admitted at every replica, then a delete at C stops it at A and B.
    for replica in [&a, &b, &c] {
        replica.exchange(&job).await.expect(200);
    }
    c.admin(
        Method::DELETE,
        &format!("{}/feature-9", credentials_path()),
        None,
    )
    .await
    .expect(204);
    let acknowledged = Instant::now();
    for replica in [&a, &b] {
        replica
            .exchange_until(&job, acknowledged, |answer| answer.status != 200)
            .await;
    }
    seen.sort();
    eprintln!(
        "write at one replica -> listed at the others (informational): p50 {:?}, max {:?} over {}",
        seen[seen.len() / 2],
        seen[seen.len() - 1],
        seen.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_use_credential_refuses_the_same_token_twice_also_at_another_replica() {
    let Some(pg) = PgSchema::create("wif_replicas").await else {
        return;
    };
    let upstreams = Upstreams::start().await;
    let files = BrokerFiles::new(&pg.url(), &upstreams);
    let (a, b) = two_replicas(&files).await;
    upstreams.entra_trusts("release");
    a.put_identity().await;
    let mut credential = upstreams.credential("release-once", "release");
    credential["oneTimeUse"] = json!(true);
    a.create_credential(&credential)
        .await
        .expect(201)
        .body
        .get("oneTimeUse")
        .filter(|v| **v == json!(true))
        .expect("oneTimeUse echoed");
    b.knows_credential("release-once").await;

    let job = upstreams.job_token("release");
    a.exchange(&job).await.expect(200);
    // The same token, replayed at the other replica and at the first.
    b.exchange(&job).await.expect_error(401, "token_replayed");
    a.exchange(&job).await.expect_error(401, "token_replayed");
    // A fresh token of the same job is still welcome, anywhere.
    b.exchange(&upstreams.job_token("release"))
        .await
        .expect(200);
}

// ---------------------------------------------------------------------------------------
// PostgreSQL going away

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgresql_is_gone_exchanges_go_on_and_writes_answer_503_then_writes_work_again() {
    let Some(pg) = PgSchema::create("wif_replicas").await else {
        return;
    };
    let proxy = PgProxy::start().await;
    let upstreams = Upstreams::start().await;
    let files = BrokerFiles::new(&url_through(&pg, &proxy), &upstreams);
    let (a, b) = two_replicas(&files).await;
    upstreams.entra_trusts("main");
    upstreams.entra_trusts("hotfix");
    upstreams.entra_trusts("release");
    a.put_identity().await;
    a.create_credential(&upstreams.credential("main", "main"))
        .await
        .expect(201);
    let mut once = upstreams.credential("release-once", "release");
    once["oneTimeUse"] = json!(true);
    a.create_credential(&once).await.expect(201);
    b.knows_credential("release-once").await;
    a.exchange(&upstreams.job_token("main")).await.expect(200);
    b.exchange(&upstreams.job_token("main")).await.expect(200);

    proxy.set(Link::Closed);

    // Jobs keep getting tokens at both replicas, from the registry in memory.
    for replica in [&a, &b] {
        let started = Instant::now();
        let answer = replica.exchange(&upstreams.job_token("main")).await;
        assert_eq!(answer.status, 200, "replica {}: {answer:?}", replica.label);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    a.admin(Method::GET, &credentials_path(), None)
        .await
        .expect(200);
    // Replay protection cannot work without the store: it fails closed, and says so.
    b.exchange(&upstreams.job_token("release"))
        .await
        .expect_error(503, "store_unavailable");

    // Writes at either replica are refused promptly with a retryable 503.
    let hotfix = upstreams.credential("hotfix", "hotfix");
    let main = format!("{}/main", credentials_path());
    let started = Instant::now();
    let (create, delete) = tokio::join!(
        a.create_credential(&hotfix),
        b.admin(Method::DELETE, &main, None),
    );
    let answered_after = started.elapsed();
    eprintln!("writes during the outage answered after {answered_after:?}");
    for answer in [&create, &delete] {
        answer.expect_error(503, "store_unavailable");
        let retry_after = answer.retry_after.as_deref().unwrap_or_default();
        assert!(
            retry_after.parse::<u64>().is_ok_and(|s| s >= 1),
            "{answer:?}"
        );
    }
    assert!(
        answered_after < OUTAGE_ANSWER,
        "writes took {answered_after:?} to answer while the store was gone"
    );
    // The refused delete did not take effect anywhere.
    a.exchange(&upstreams.job_token("main")).await.expect(200);
    b.exchange(&upstreams.job_token("main")).await.expect(200);

    proxy.set(Link::Up);

    // The admin retries as told; the write goes through, and the other replica sees it.
    let started = Instant::now();
    loop {
        let answer = a.create_credential(&hotfix).await;
        if answer.status == 201 {
            break;
        }
        answer.expect_error(503, "store_unavailable");
        assert!(
            started.elapsed() < PATIENCE,
            "writes still refused {:?} after the store came back",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acknowledged = Instant::now();
    eprintln!(
        "writes work again {:?} after the store came back",
        acknowledged - started
    );
    let (admitted_after, _) = b
        .exchange_until(&upstreams.job_token("hotfix"), acknowledged, |a| {
            a.status == 200
        })
        .await;
    eprintln!("after the outage: create at A -> admitted at B after {admitted_after:?}");
    assert!(admitted_after < CONVERGENCE, "{admitted_after:?}");
}

/// A request whose store query is in flight when the network fails must still answer
/// within a few seconds, like one that finds the store gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_network_fails_mid_query_writes_and_one_time_use_exchanges_still_answer_503_within_seconds()
 {
    let Some(pg) = PgSchema::create("wif_replicas").await else {
        return;
    };
    let proxy = PgProxy::start().await;
    let upstreams = Upstreams::start().await;
    let files = BrokerFiles::new(&url_through(&pg, &proxy), &upstreams);
    let a = Replica::start("A", &files.config).await;
    upstreams.entra_trusts("main");
    upstreams.entra_trusts("release");
    a.put_identity().await;
    a.create_credential(&upstreams.credential("main", "main"))
        .await
        .expect(201);
    let mut once = upstreams.credential("release-once", "release");
    once["oneTimeUse"] = json!(true);
    a.create_credential(&once).await.expect(201);
    a.exchange(&upstreams.job_token("release"))
        .await
        .expect(200);

    proxy.set(Link::StallsQueries);

    // Exchanges that need no store go on.
    a.exchange(&upstreams.job_token("main")).await.expect(200);
    // Those that do, and writes, are refused in time with a retryable 503.
    let hotfix = upstreams.credential("hotfix", "hotfix");
    let release = upstreams.job_token("release");
    let started = Instant::now();
    let (write, spend) = tokio::join!(
        tokio::time::timeout(OUTAGE_ANSWER, a.create_credential(&hotfix)),
        tokio::time::timeout(OUTAGE_ANSWER, a.exchange(&release)),
    );
    eprintln!("stalled store: answers after {:?}", started.elapsed());
    let write = write.unwrap_or_else(|_| panic!("a write hung for {OUTAGE_ANSWER:?}"));
    let spend =
        spend.unwrap_or_else(|_| panic!("a one-time-use exchange hung for {OUTAGE_ANSWER:?}"));
    write.expect_error(503, "store_unavailable");
    spend.expect_error(503, "store_unavailable");
}

/// One lost TCP flow (a query that never gets its answer while the database is fine, as
/// when a NAT or conntrack entry vanishes) must not stop a replica from converging or
/// from answering its own writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_one_stalled_store_connection_still_sees_writes_and_answers_its_own() {
    let Some(pg) = PgSchema::create("wif_replicas").await else {
        return;
    };
    let proxy = PgProxy::start().await;
    let upstreams = Upstreams::start().await;
    let through_proxy = BrokerFiles::new(&url_through(&pg, &proxy), &upstreams);
    let direct = BrokerFiles::new(&pg.url(), &upstreams);
    let (a, b) = tokio::join!(
        Replica::start("A", &through_proxy.config),
        Replica::start("B", &direct.config)
    );
    upstreams.entra_trusts("main");
    upstreams.entra_trusts("late");
    a.put_identity().await;
    a.create_credential(&upstreams.credential("main", "main"))
        .await
        .expect(201);
    b.knows_credential("main").await;

    // A is idle (its audit events written); the next query it sends is its poll.
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.stall_next_query();
    let armed = Instant::now();
    while proxy.stalled_queries() == 0 {
        assert!(armed.elapsed() < PATIENCE, "A sent no query");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A credential created at B reaches A, and A answers a write of its own.
    b.create_credential(&upstreams.credential("late", "late"))
        .await
        .expect(201);
    let acknowledged = Instant::now();
    let job = upstreams.job_token("late");
    let converged = async {
        loop {
            if a.exchange(&job).await.status == 200 {
                return acknowledged.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let own = upstreams.credential("own", "main-own");
    let (converged, own_write) = tokio::join!(
        tokio::time::timeout(OUTAGE_ANSWER, converged),
        tokio::time::timeout(OUTAGE_ANSWER, a.create_credential(&own)),
    );
    let mut failures = Vec::new();
    match own_write {
        Err(_) => failures.push(format!("A's own write hung for {OUTAGE_ANSWER:?}")),
        Ok(answer) if answer.status != 201 => failures.push(format!("A's own write: {answer:?}")),
        Ok(_) => {}
    }
    match converged {
        Err(_) => failures.push(format!("A did not see B's write within {OUTAGE_ANSWER:?}")),
        Ok(after) if after >= CONVERGENCE => {
            failures.push(format!("A saw B's write after {after:?}"))
        }
        Ok(_) => {}
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// kill -9 during a stream of writes

/// Creates credentials `{prefix}0000`, `{prefix}0001`, ... one after another at `api`
/// until the broker stops answering; returns the names it acknowledged with 2xx, and
/// counts them in `acked` as it goes.
fn stream_of_writes(
    api: Api,
    upstreams: &Upstreams,
    prefix: String,
    acked: Arc<AtomicU64>,
) -> JoinHandle<Vec<String>> {
    let issuer = upstreams.issuer.url();
    tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for i in 0.. {
            let name = format!("{prefix}{i:04}");
            let body = json!({
                "name": name,
                "issuer": issuer,
                "subject": Upstreams::subject(&name),
            });
            match api
                .try_admin(Method::POST, &credentials_path(), Some(&body))
                .await
            {
                Ok(answer) if answer.is_success() => {
                    acknowledged.push(name);
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                Ok(answer) => assert_eq!(answer.status, 503, "{name}: {answer:?}"),
                Err(_) => break, // killed: the request in flight has no answer
            }
        }
        acknowledged
    })
}

/// Rounds of `kill -9` the crash-consistency test runs, and writers in each.
const KILL_ROUNDS: usize = 5;
const WRITERS: usize = 3;

/// Repeatedly: a broker takes concurrent admin writes and is killed with `kill -9` in the
/// middle of them; the next round starts a new broker on the same store. At the end every
/// write any round acknowledged is there, once.
async fn no_acknowledged_write_is_lost_to_kill_9(store_url: &str) {
    let upstreams = Upstreams::start().await;
    let files = BrokerFiles::new(store_url, &upstreams);
    let mut acknowledged = Vec::new();
    for round in 0..KILL_ROUNDS {
        let mut broker = Replica::start("writer", &files.config).await;
        if round == 0 {
            broker.put_identity().await;
        }
        let acked = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let prefix = format!("r{round}w{w}-");
                stream_of_writes(broker.api.clone(), &upstreams, prefix, acked.clone())
            })
            .collect();
        // Kill once writes are flowing (however loaded the machine), at a different point
        // of them each round.
        let flowing = Instant::now();
        while acked.load(Ordering::SeqCst) < 3 {
            assert!(
                flowing.elapsed() < PATIENCE,
                "round {round}: writes never flowed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100 + 150 * round as u64)).await;
        broker.kill_9().await;
        let mut this_round = 0;
        for writer in writers {
            let names = tokio::time::timeout(PATIENCE, writer)
                .await
                .expect("a writer never noticed the broker was gone")
                .unwrap();
            this_round += names.len();
            acknowledged.extend(names);
        }
        assert!(
            this_round >= 3,
            "round {round}: too few writes to mean anything ({this_round})"
        );
    }

    let last = Replica::start("last", &files.config).await;
    let listed = last.credential_names().await;
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|name| !listed.contains(name))
        .collect();
    let mut unique = listed.clone();
    unique.sort();
    unique.dedup();
    eprintln!(
        "{store_url}: {} writes acknowledged over {KILL_ROUNDS} rounds of kill -9, {} listed after the last restart",
        acknowledged.len(),
        listed.len()
    );
    assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");
    assert_eq!(unique.len(), listed.len(), "a credential listed twice");
    // Beyond the acknowledged ones, at most the write each writer had in flight per round.
    assert!(
        listed.len() <= acknowledged.len() + KILL_ROUNDS * WRITERS,
        "{} listed for {} acknowledged",
        listed.len(),
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_stream_of_writes_loses_no_acknowledged_write_with_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("wif.db").display());
    assert!(url.starts_with("sqlite:///"), "{url}");
    no_acknowledged_write_is_lost_to_kill_9(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_stream_of_writes_loses_no_acknowledged_write_with_postgresql() {
    let Some(pg) = PgSchema::create("wif_replicas").await else {
        return;
    };
    no_acknowledged_write_is_lost_to_kill_9(&pg.url()).await;
}

// ---------------------------------------------------------------------------------------
// Start-up without a store

/// `wif-broker serve` on `store_url`: how long until it exited, its status and stderr.
async fn serve_to_the_end(store_url: &str) -> (Duration, ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wif.toml");
    std::fs::write(&config, format!("[store]\nurl = \"{store_url}\"\n")).unwrap();
    let mut cmd = wif_broker();
    cmd.args(["serve", "--config", config.to_str().unwrap()])
        .env("WIF_SERVER_LISTEN", format!("127.0.0.1:{}", free_port()));
    let started = Instant::now();
    let output = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("serve on {store_url} still running after {PATIENCE:?}"))
        .unwrap();
    (
        started.elapsed(),
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `wif-broker serve` on `store_url` until it answers `/readyz`: its answer, and what it
/// logged by then.
async fn serve_until_ready(store_url: &str) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wif.toml");
    std::fs::write(&config, format!("[store]\nurl = \"{store_url}\"\n")).unwrap();
    let replica = Replica::start("no-store", &config).await;
    let ready = Api::answer(replica.http.get(format!("{}/readyz", replica.url)))
        .await
        .unwrap();
    ready.expect(200);
    (ready.body, replica.stderr_text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_degraded_and_says_why_when_postgresql_cannot_be_reached_at_start_up() {
    // Nothing listens on one port; on the other something accepts and never answers, as
    // a host behind a firewall that drops packets.
    let refused = format!("postgres://postgres@127.0.0.1:{}/test", free_port());
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("postgres://postgres@{}/test", silent.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });

    let (refused_end, silent_end) =
        tokio::join!(serve_until_ready(&refused), serve_until_ready(&silent_url));
    holder.abort();
    for (url, (ready, stderr)) in [(&refused, refused_end), (&silent_url, silent_end)] {
        assert_eq!(ready["status"], "degraded", "{url}: {ready}");
        assert_eq!(
            stderr.matches("cannot reach the store").count(),
            1,
            "{url}: the operator reads why once:\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_says_why_the_store_cannot_be_reached() {
    let refused = format!("postgres://postgres@127.0.0.1:{}/test", free_port());
    let (_, stderr) = serve_until_ready(&refused).await;
    let line = stderr
        .lines()
        .find(|l| l.contains("cannot reach the store"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.to_ascii_lowercase().contains("refused"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_with_a_clear_message_when_the_sqlite_file_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}",
        dir.path().join("missing-dir/wif.db").display()
    );
    let (took, status, stderr) = serve_to_the_end(&url).await;
    eprintln!("exited with {status} after {took:?}: {stderr}");
    assert!(!status.success(), "{status}");
    assert!(stderr.contains("cannot open the store"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// Audit events across a shutdown during an outage

/// Exchanges `n` main-branch tokens at `replica`, 8 at a time, all granted.
async fn granted_exchanges(replica: &Replica, upstreams: &Upstreams, n: usize) {
    use futures::StreamExt;
    let token = upstreams.job_token("main");
    let mut answers = futures::stream::iter(0..n)
        .map(|_| replica.exchange(&token))
        .buffer_unordered(8);
    while let Some(answer) = answers.next().await {
        answer.expect(200);
    }
}

/// How many granted exchanges the store's audit trail holds.
async fn audited_exchanges(replica: &Replica) -> usize {
    let mut total = 0;
    let mut after = String::new();
    loop {
        let page = replica
            .admin(
                Method::GET,
                &format!("/v1/audit?kind=exchange&outcome=ok&limit=1000{after}"),
                None,
            )
            .await;
        page.expect(200);
        total += page.body["value"].as_array().unwrap().len();
        match page.body["nextCursor"].as_str() {
            Some(cursor) => after = format!("&after={cursor}"),
            None => return total,
        }
    }
}

const DURING_OUTAGE: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_postgresql_outage_spills_every_audit_event_and_the_next_start_writes_them()
 {
    let Some(pg) = PgSchema::create("wif_replicas").await else {
        return;
    };
    let proxy = PgProxy::start().await;
    let upstreams = Upstreams::start().await;
    let files = BrokerFiles::new(&url_through(&pg, &proxy), &upstreams);
    let spill = files.config.with_file_name("audit-spill.jsonl");
    files.append(&format!(
        "\n[audit]\nspill_file = \"{}\"\n",
        spill.display()
    ));
    let mut a = Replica::serving_main("A", &files, &upstreams).await;

    proxy.set(Link::Closed);
    granted_exchanges(&a, &upstreams, DURING_OUTAGE).await;
    a.terminate().await;
    let spilled = std::fs::read_to_string(&spill).unwrap_or_default();
    let spilled_exchanges = spilled
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|record| record["kind"] == "exchange" && record["outcome"] == "ok")
        .count();
    assert_eq!(
        spilled_exchanges,
        DURING_OUTAGE,
        "granted exchanges kept in the spill file at shutdown:\n{}",
        a.stderr_text()
    );

    proxy.set(Link::Up);
    let b = Replica::start("B", &files.config).await;
    let started = Instant::now();
    loop {
        let stored = audited_exchanges(&b).await;
        if stored == DURING_OUTAGE {
            break;
        }
        assert!(stored < DURING_OUTAGE, "{stored} events stored: some twice");
        assert!(
            started.elapsed() < PATIENCE,
            "only {stored} of {DURING_OUTAGE} spilled events written after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!spill.exists(), "the spill file is removed once written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_spill_file_audit_events_lost_at_shutdown_are_counted_and_logged() {
    let Some(pg) = PgSchema::create("wif_replicas").await else {
        return;
    };
    let proxy = PgProxy::start().await;
    let upstreams = Upstreams::start().await;
    let files = BrokerFiles::new(&url_through(&pg, &proxy), &upstreams);
    let mut a = Replica::serving_main("A", &files, &upstreams).await;

    proxy.set(Link::Closed);
    granted_exchanges(&a, &upstreams, DURING_OUTAGE).await;
    a.terminate().await;
    let log = a.stderr_text();
    let lost = log
        .lines()
        .find(|l| l.contains("audit events lost from the store"))
        .unwrap_or_else(|| panic!("no line counts the lost events:\n{log}"));
    // Every granted exchange, and perhaps the admin writes just before the outage.
    let counted: usize = lost
        .split("events=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {lost}"));
    assert!(
        (DURING_OUTAGE..=DURING_OUTAGE + 2).contains(&counted),
        "the line does not count all {DURING_OUTAGE} events: {lost}"
    );
}

// ---------------------------------------------------------------------------------------
// Client errors are not outages

/// A NUL character in a filter or a stored field is the caller's mistake: 400 with our own
/// message, on either backend, and never the database's text.
async fn nul_characters_are_refused_as_bad_requests(store_url: &str) {
    let upstreams = Upstreams::start().await;
    let files = BrokerFiles::new(store_url, &upstreams);
    let a = Replica::start("A", &files.config).await;
    a.put_identity().await;
    let check = |answer: Answer, field: &str| {
        answer.expect_error(400, "invalid_request");
        let text = answer.body.to_string();
        assert!(text.contains(field), "{text}");
        for leak in ["invalid byte sequence", "0x00", "database", "sqlx"] {
            assert!(
                !text.contains(leak),
                "the database's text reached the caller: {text}"
            );
        }
    };
    for filter in ["subject", "identity", "outcome", "kind"] {
        check(
            a.admin(Method::GET, &format!("/v1/audit?{filter}=%00"), None)
                .await,
            filter,
        );
    }
    let mut credential = upstreams.credential("main", "main");
    credential["description"] = json!("deploys\u{0}");
    check(a.create_credential(&credential).await, "description");
    // Nothing was written, and the store is not taken for down.
    assert!(a.credential_names().await.is_empty());
    a.admin(Method::GET, "/v1/audit?limit=1", None)
        .await
        .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_bad_requests_on_postgresql() {
    let Some(pg) = PgSchema::create("wif_replicas").await else {
        return;
    };
    nul_characters_are_refused_as_bad_requests(&pg.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_bad_requests_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("wif.db").display());
    nul_characters_are_refused_as_bad_requests(&url).await;
}

// ---------------------------------------------------------------------------------------
// The audit trail has a size

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_keeps_at_most_max_events_and_reports_the_stores_size() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("wif.db").display());
    let upstreams = Upstreams::start().await;
    let files = BrokerFiles::new(&url, &upstreams);
    files.append("\n[audit]\nmax_events = 50\n");
    let a = Replica::serving_main("A", &files, &upstreams).await;
    granted_exchanges(&a, &upstreams, 300).await;

    let started = Instant::now();
    loop {
        let held = audited_exchanges(&a).await;
        if held <= 50 {
            assert!(held >= 40, "only {held} events left: trimmed too far");
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{held} exchange events still stored with max_events = 50"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = a
        .http
        .get(format!("{}/metrics", a.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for gauge in ["wif_store_size_bytes ", "wif_store_audit_events "] {
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(gauge))
            .unwrap_or_else(|| panic!("no {gauge} in\n{metrics}"));
        assert!(value.trim().parse::<u64>().is_ok(), "{gauge}{value}");
    }
    let bytes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wif_store_size_bytes "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(bytes > 0, "the store's size is reported");
}

// ---------------------------------------------------------------------------------------
// Starting without the database

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_postgresql_is_down_serves_config_identities_then_stored_ones() {
    const DECLARED_CLIENT: &str = "9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
    let Some(pg) = PgSchema::create("wif_replicas").await else {
        return;
    };
    let proxy = PgProxy::start().await;
    let upstreams = Upstreams::start().await;
    let files = BrokerFiles::new(&url_through(&pg, &proxy), &upstreams);
    // A config-file identity for release jobs, beside the stored one for main.
    files.append(&format!(
        r#"
[[identities]]
name = "declared"
tenant_id = "{TENANT}"
client_id = "{DECLARED_CLIENT}"

[[identities.federated_credentials]]
name = "release"
issuer = "{issuer}"
subject = "{subject}"
"#,
        issuer = upstreams.issuer.url(),
        subject = Upstreams::subject("release"),
    ));
    upstreams
        .entra
        .register_app(AppRegistration::new(TENANT, DECLARED_CLIENT));
    upstreams.entra.add_fic(
        TENANT,
        DECLARED_CLIENT,
        EmulatedFic::new(
            "release",
            &upstreams.issuer.url(),
            &Upstreams::subject("release"),
        ),
    );
    let mut a = Replica::serving_main("A", &files, &upstreams).await;
    a.terminate().await;

    proxy.set(Link::Closed);
    let b = Replica::start("B", &files.config).await;
    let ready = Api::answer(b.http.get(format!("{}/readyz", b.url)))
        .await
        .unwrap();
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(ready.body["status"], "degraded", "{ready:?}");
    b.exchange(&upstreams.job_token("release"))
        .await
        .expect(200);
    b.exchange(&upstreams.job_token("main"))
        .await
        .expect_error(403, "no_matching_credential");

    proxy.set(Link::Up);
    let recovered = Instant::now();
    let (after, _) = b
        .exchange_until(&upstreams.job_token("main"), recovered, |a| a.status == 200)
        .await;
    eprintln!("stored identities served {after:?} after PostgreSQL came back");
    let ready = Api::answer(b.http.get(format!("{}/readyz", b.url)))
        .await
        .unwrap();
    assert_eq!(ready.body["status"], "ready", "{ready:?}");
}

// ---------------------------------------------------------------------------------------
// One deadline per exchange

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_miss_against_a_hanging_entra_is_answered_within_the_exchange_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("wif.db").display());
    let upstreams = Upstreams::start().await;
    let files = BrokerFiles::new(&url, &upstreams);
    // Entra's defaults (10 s per attempt, 3 retries: ~41 s against a hanging Entra), and
    // the default deadline.
    let config = std::fs::read_to_string(&files.config)
        .unwrap()
        .replace("max_retries = 0\n", "")
        .replace("timeout_secs = 5\n", "");
    std::fs::write(&files.config, config).unwrap();
    let a = Replica::serving_main("A", &files, &upstreams).await;
    for _ in 0..8 {
        upstreams
            .entra
            .push_fault(Fault::Delay(Duration::from_secs(120)));
    }
    let started = Instant::now();
    let answer = a.exchange(&upstreams.job_token("main")).await;
    let took = started.elapsed();
    eprintln!("a cache miss against a hanging Entra answered after {took:?}");
    answer.expect_error(503, "entra_unavailable");
    assert!(answer.retry_after.is_some(), "{answer:?}");
    assert!(
        took < Duration::from_secs(15),
        "answered after {took:?}, past the 8 s deadline and the agent's 10 s timeout"
    );
}
