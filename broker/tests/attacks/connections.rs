//! Slow and silent clients, and stopping under load (docs/configuration.md `[server]`,
//! docs/kubernetes.md): connections that never send a request, or half of one, or sit idle
//! between requests are closed by the broker's timeouts; at the connection cap `/healthz`
//! still answers; SIGTERM drains (readiness fails while requests are still served), a
//! half-sent request does not hold shutdown, and a request still running at the deadline is
//! answered 503 `shutting_down`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::support::*;

/// Generous bound for anything the broker must close or answer "soon".
const HANG_GUARD: Duration = Duration::from_secs(15);

/// Opens `n` TCP connections that send nothing.
async fn silent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        streams.push(TcpStream::connect(addr).await.unwrap());
    }
    streams
}

/// Whether the peer closes `stream` (end of stream or a reset) within `limit`; whatever
/// it sends before closing is skipped.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_to_end).await.is_ok()
}

/// Asserts every stream in `streams` is closed by the broker within `limit` (all at once).
async fn all_closed_within(broker: &Broker, streams: Vec<TcpStream>, limit: Duration, what: &str) {
    let checks = streams.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 1];
        closed_within(&mut s, limit).await && {
            // Really closed: nothing more to read, ever.
            matches!(s.read(&mut buf).await, Ok(0) | Err(_))
        }
    });
    let results = futures::future::join_all(checks).await;
    let open = results.iter().filter(|closed| !**closed).count();
    if open > 0 {
        broker.fail(&format!(
            "{open} of {} {what} still open {limit:?} later",
            results.len()
        ));
    }
}

/// The broker's `/metrics` text.
async fn metrics_text(broker: &Broker) -> String {
    let response = client()
        .get(format!("{}/metrics", broker.url()))
        .send()
        .await
        .unwrap_or_else(|e| broker.fail(&format!("/metrics: {e}")));
    response.text().await.unwrap()
}

/// The value of the unlabelled metric `name` in `text` (0 when absent).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Sends one raw HTTP/1.1 request on a new connection and reads the answer until the
/// broker closes the connection (bounded).
async fn raw_request(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(HANG_GUARD, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_at_the_cap_leave_healthz_answering_and_are_closed_after_the_header_timeout()
 {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    let config = up.config(
        &dir,
        "[server]\nmax_connections = 50\nops_reserve_connections = 4\nheader_read_timeout_secs = 8\n",
    );
    let broker = Broker::start(&dir, &config, &[]).await;
    let http = client();

    // The attacker takes every connection the broker serves, and sends nothing.
    let streams = silent(broker.addr, 50).await;
    // Let the broker accept them all (the next connections queue behind them).
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The kubelet's liveness and readiness probes still get through.
    let health = answer(
        http.get(format!("{}/healthz", broker.url()))
            .send()
            .await
            .unwrap_or_else(|e| broker.fail(&format!("/healthz at the cap: {e}"))),
    )
    .await;
    assert_eq!(health.status, 200, "{health:?}");
    let ready = send(http.get(format!("{}/readyz", broker.url()))).await;
    assert_eq!(ready.status, 200, "{ready:?}");

    // The cap was reached all along (silent connections only ever go away): anything but
    // the ops routes is turned away, and the connection is not kept.
    let refused = raw_request(
        broker.addr,
        "POST /v1/token HTTP/1.1\r\nHost: broker\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("\"error\":\"overloaded\""), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("connection: close"),
        "{refused}"
    );

    // Operators see it: connections open, and taken into the reserve.
    let metrics = metrics_text(&broker).await;
    assert!(metric(&metrics, "wif_connections_open") >= 50, "{metrics}");
    assert!(
        metric(&metrics, "wif_connections_reserved_total") >= 3,
        "{metrics}"
    );

    // The silent connections are closed after the header timeout (8 s), not kept forever.
    all_closed_within(&broker, streams, HANG_GUARD, "silent connections").await;
    let metrics = metrics_text(&broker).await;
    assert!(
        metric(&metrics, "wif_connections_timed_out_total") >= 50,
        "{metrics}"
    );

    // Capacity is back: a real exchange succeeds.
    let got = exchange(&http, &broker.url(), &up.main_job_token(), ARM).await;
    assert_eq!(got.status, 200, "{got:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn half_sent_request_lines_and_headers_are_closed_after_the_header_timeout() {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    let config = up.config(&dir, "[server]\nheader_read_timeout_secs = 3\n");
    let broker = Broker::start(&dir, &config, &[]).await;

    // Half a request line, an HTTP/2 preface without a request, and a request whose headers
    // trickle in a byte at a time (each byte well within any per-read timeout).
    let mut halves = silent(broker.addr, 20).await;
    for stream in &mut halves {
        stream.write_all(b"POST /v1/tok").await.unwrap();
    }
    // An HTTP/2 client that sends its preface and settings, and no request.
    let mut preface = TcpStream::connect(broker.addr).await.unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    halves.push(preface);
    let mut trickle = TcpStream::connect(broker.addr).await.unwrap();
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n")
        .await
        .unwrap();
    let dripping = tokio::spawn(async move {
        let started = Instant::now();
        while started.elapsed() < HANG_GUARD {
            if trickle.write_all(b"X").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    });

    all_closed_within(&broker, halves, HANG_GUARD, "half-sent requests").await;
    let cut_off = tokio::time::timeout(HANG_GUARD + Duration::from_secs(5), dripping)
        .await
        .unwrap()
        .unwrap();
    if !cut_off {
        broker.fail("a client trickling header bytes kept its connection past the header timeout");
    }

    // The broker still serves.
    let health = send(client().get(format!("{}/healthz", broker.url()))).await;
    assert_eq!(health.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    // The header timeout is long: only the idle timeout can close the connection in time.
    let config = up.config(
        &dir,
        "[server]\nidle_timeout_secs = 2\nheader_read_timeout_secs = 60\n",
    );
    let broker = Broker::start(&dir, &config, &[]).await;

    let mut stream = TcpStream::connect(broker.addr).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    // Two requests on one connection: keep-alive works.
    for _ in 0..2 {
        stream.write_all(request).await.unwrap();
        let n = tokio::time::timeout(HANG_GUARD, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("{\"status\":\"ok\"}"), "{text}");
    }
    // Then the client goes quiet and keeps the connection.
    if !closed_within(&mut stream, HANG_GUARD).await {
        broker.fail("an idle keep-alive connection was kept past the idle timeout");
    }
}

/// What one request of a busy client got.
enum Outcome {
    Answered(u16, String),
    /// The connection was refused: the listener is closed.
    Refused,
    /// No answer: reset or closed.
    Failed(String),
}

async fn probe(request: reqwest::RequestBuilder) -> Outcome {
    match request.send().await {
        Ok(response) => {
            let a = answer(response).await;
            Outcome::Answered(a.status, a.text)
        }
        Err(e) if e.is_connect() => Outcome::Refused,
        Err(e) => Outcome::Failed(format!("{e:?}")),
    }
}

/// A client sending `kind` requests every 20 ms until the broker stops serving it (refused,
/// no answer, or 503 `shutting_down`). Returns the answers that were 200, every other
/// answer before that end, what ended it, and when.
async fn busy_client(
    kind: &'static str,
    http: reqwest::Client,
    url: String,
    tokens: Vec<String>,
) -> (usize, Vec<String>, String, Instant) {
    let (mut ok, mut failures) = (0usize, Vec::new());
    for token in tokens {
        let request = match kind {
            "healthz" => http.get(format!("{url}/healthz")),
            _ => http
                .post(format!("{url}/v1/token"))
                .bearer_auth(token)
                .json(&serde_json::json!({ "scope": ARM })),
        };
        match probe(request).await {
            Outcome::Answered(200, _) => ok += 1,
            Outcome::Answered(503, text) if text.contains("\"shutting_down\"") => {
                return (ok, failures, format!("503 {text}"), Instant::now());
            }
            Outcome::Answered(status, text) => failures.push(format!("{status} {text}")),
            Outcome::Refused => return (ok, failures, "refused".into(), Instant::now()),
            Outcome::Failed(e) => return (ok, failures, e, Instant::now()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    failures.push("the broker never stopped serving".into());
    (ok, failures, String::new(), Instant::now())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_while_busy_clients_see_no_failure_then_the_broker_exits() {
    const DRAIN: Duration = Duration::from_secs(5);
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    let config = up.config(
        &dir,
        "[server]\ndrain_secs = 5\nshutdown_timeout_secs = 5\n",
    );
    let mut broker = Broker::start(&dir, &config, &[]).await;
    let url = broker.url();
    let http = client();
    let got = exchange(&http, &url, &up.main_job_token(), ARM).await;
    assert_eq!(got.status, 200, "{got:?}");

    // Busy clients: exchanges and health checks on new connections, and exchanges on one
    // kept connection.
    let kinds = ["exchange", "healthz", "keep-alive"];
    let mut clients = Vec::new();
    for kind in kinds {
        let tokens: Vec<String> = (0..600)
            .map(|_| match kind {
                "healthz" => String::new(),
                _ => up.main_job_token(),
            })
            .collect();
        let http = match kind {
            "keep-alive" => reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            _ => client(),
        };
        clients.push(tokio::spawn(busy_client(kind, http, url.clone(), tokens)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let terminated = Instant::now();
    broker.terminate().await;

    // Readiness fails during the drain, while exchanges are still answered.
    let mut not_ready = false;
    while terminated.elapsed() < HANG_GUARD && !not_ready {
        if let Outcome::Answered(503, text) = probe(http.get(format!("{url}/readyz"))).await {
            assert!(text.contains("shutting_down"), "{text}");
            not_ready = true;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if !not_ready {
        broker.fail("/readyz never answered 503 after SIGTERM");
    }
    let during_drain = exchange(&http, &url, &up.main_job_token(), ARM).await;
    assert_eq!(during_drain.status, 200, "{during_drain:?}");

    for (kind, task) in kinds.iter().zip(clients) {
        let (ok, failures, end, ended) = tokio::time::timeout(HANG_GUARD * 2, task)
            .await
            .unwrap_or_else(|_| broker.fail(&format!("the {kind} client never finished")))
            .unwrap();
        if !failures.is_empty() {
            broker.fail(&format!(
                "the {kind} client had {} failed requests ({ok} succeeded): {:?}",
                failures.len(),
                &failures[..failures.len().min(5)]
            ));
        }
        // Only the end of the drain may stop a client (a slow machine only makes it later).
        if ended < terminated + DRAIN {
            broker.fail(&format!(
                "the {kind} client was stopped {:?} after SIGTERM, before the drain ended: {end}",
                ended - terminated
            ));
        }
        assert!(ok > 5, "the {kind} client got only {ok} answers");
    }
    let status = broker.exit(HANG_GUARD).await;
    assert!(status.success(), "{status}\n{}", broker.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_with_half_sent_headers_does_not_hold_shutdown() {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    // Neither the header timeout nor the shutdown deadline would end it in time.
    let config = up.config(
        &dir,
        "[server]\ndrain_secs = 1\nshutdown_timeout_secs = 60\nheader_read_timeout_secs = 60\n",
    );
    let mut broker = Broker::start(&dir, &config, &[]).await;
    let mut stream = TcpStream::connect(broker.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/token HTTP/1.1\r\nHost: broker\r\nContent-Ty")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    broker.terminate().await;
    let status = broker.exit(HANG_GUARD).await;
    assert!(status.success(), "{status}\n{}", broker.output());
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await);
}

/// An Entra stand-in whose token endpoint never answers; tells the test when a request
/// arrives.
async fn hanging_entra() -> (String, mpsc::UnboundedReceiver<()>) {
    let (arrived, arrivals) = mpsc::unbounded_channel::<()>();
    let router = Router::new().route(
        "/{tenant}/oauth2/v2.0/token",
        post(move || {
            let arrived = arrived.clone();
            async move {
                let _ = arrived.send(());
                tokio::time::sleep(Duration::from_secs(600)).await;
                "never"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, arrivals)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_still_running_at_the_deadline_gets_503_shutting_down() {
    let up = Upstreams::start().await;
    let (entra, mut arrivals) = hanging_entra().await;
    let dir = BrokerDir::new();
    let config = up.config(
        &dir,
        "[server]\ndrain_secs = 1\nshutdown_timeout_secs = 2\n",
    );
    let mut broker = Broker::start(
        &dir,
        &config,
        &[
            ("WIF_ENTRA_AUTHORITY_HOST", entra.as_str()),
            ("WIF_ENTRA_TIMEOUT_SECS", "120"),
        ],
    )
    .await;
    let token = up.main_job_token();
    let url = broker.url();
    let stuck = tokio::spawn(async move { exchange(&client(), &url, &token, ARM).await });
    match tokio::time::timeout(HANG_GUARD, arrivals.recv()).await {
        Ok(Some(())) => {}
        _ => broker.fail("the exchange never reached the hanging Entra"),
    }

    broker.terminate().await;
    let got = tokio::time::timeout(HANG_GUARD, stuck)
        .await
        .unwrap_or_else(|_| broker.fail("the stuck exchange was never answered"))
        .unwrap();
    assert_eq!(got.status, 503, "{got:?}");
    assert_eq!(got.error(), "shutting_down", "{got:?}");
    assert!(got.headers.contains_key("retry-after"), "{got:?}");
    assert!(!got.body["request_id"].as_str().unwrap_or("").is_empty());
    let status = broker.exit(HANG_GUARD).await;
    assert!(status.success(), "{status}\n{}", broker.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_beyond_a_low_open_files_limit_leave_healthz_answering() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("prlimit (util-linux) is not installed; skipping");
        return;
    }
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    // The default caps (1024 + 16) do not fit in 256 files; the header timeout is long, so
    // only the lowered caps (and the reserve's short timeout) can free a slot in time.
    let config = up.config(&dir, "[server]\nheader_read_timeout_secs = 60\n");
    let broker =
        Broker::start_under(&["prlimit", "--nofile=256:256", "--"], &dir, &config, &[]).await;
    assert!(
        broker.output().contains("open-files limit"),
        "no warning about the lowered caps\n{}",
        broker.output()
    );

    // More silent connections than the process has files.
    let streams = silent(broker.addr, 300).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The probe gets through: at once, or once a reserve connection's 2 s are up.
    let http = client();
    let started = Instant::now();
    loop {
        if let Ok(response) = http.get(format!("{}/healthz", broker.url())).send().await
            && response.status() == 200
        {
            break;
        }
        if started.elapsed() > HANG_GUARD {
            broker.fail("/healthz did not answer with 300 silent connections and 256 files");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(streams);
}

/// Opens an HTTP/2 (prior knowledge) connection, sends `GET /healthz` on stream 1 and reads
/// frames until its response headers arrive. The client never acknowledges anything.
async fn h2_healthz(broker: &Broker) -> TcpStream {
    let mut stream = TcpStream::connect(broker.addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
    // HPACK: :method GET, :scheme http, :path "/healthz", :authority "a".
    let mut block = vec![0x82, 0x86, 0x44, 8];
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x41, 1, b'a']);
    out.extend_from_slice(&[0, 0, block.len() as u8, 1, 0x05, 0, 0, 0, 1]); // HEADERS, END_STREAM|END_HEADERS
    out.extend_from_slice(&block);
    stream.write_all(&out).await.unwrap();
    let answered = async {
        loop {
            let mut head = [0u8; 9];
            stream.read_exact(&mut head).await?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            stream.read_exact(&mut payload).await?;
            let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            if head[3] == 1 && stream_id == 1 {
                return Ok::<_, std::io::Error>(());
            }
        }
    };
    match tokio::time::timeout(HANG_GUARD, answered).await {
        Ok(Ok(())) => stream,
        other => broker.fail(&format!("no HTTP/2 answer to GET /healthz: {other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_connections_that_sit_idle_or_whose_peer_stops_answering_pings_are_closed() {
    let up = Upstreams::start().await;

    // Idle after a request: the idle timeout closes it (the first ping is a minute away).
    let dir = BrokerDir::new();
    let config = up.config(
        &dir,
        "[server]\nidle_timeout_secs = 2\nheader_read_timeout_secs = 60\n\
         http2_keepalive_interval_secs = 60\n",
    );
    let broker = Broker::start(&dir, &config, &[]).await;
    let mut idle = h2_healthz(&broker).await;
    if !closed_within(&mut idle, HANG_GUARD).await {
        broker.fail("an idle HTTP/2 connection was kept past the idle timeout");
    }

    // A peer that never acknowledges pings is dead: keep-alive closes it long before the
    // idle timeout would.
    let dir = BrokerDir::new();
    let config = up.config(
        &dir,
        "[server]\nidle_timeout_secs = 120\nheader_read_timeout_secs = 120\n\
         http2_keepalive_interval_secs = 1\nhttp2_keepalive_timeout_secs = 2\n",
    );
    let broker = Broker::start(&dir, &config, &[]).await;
    let mut dead = h2_healthz(&broker).await;
    if !closed_within(&mut dead, HANG_GUARD).await {
        broker.fail("an HTTP/2 peer that answers no ping was kept");
    }
}
