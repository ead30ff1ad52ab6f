//! DNS rebinding and relayed requests against the real `wif-agent serve` process: a page
//! that re-points `rebind.attacker.example` at 127.0.0.1 calls the agent with its own name
//! in `Host`, and a proxy relaying to the agent adds `Forwarded`, `Via` or
//! `X-Forwarded-For`. Neither gets a token, on either protocol (IMDS, App Service); the
//! requests the Azure SDKs make (Host = the literal they were given) still do
//! (docs/agent.md, "Who may call the agent").
//!
//! The requests are written by hand on a TCP (or Unix) socket, so the `Host` line and the
//! request target are exactly the attacker's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wif_tests::*;

mod support;
use support::{SECRET, agent_serve};
const IMDS: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";
const APP_SERVICE: &str =
    "/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";

/// A `wif-agent serve` on `127.0.0.1:port` and a Unix socket, both protocols on.
struct Sidecar {
    port: u16,
    socket: PathBuf,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
    _stack: Stack,
}

async fn sidecar() -> Sidecar {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, stack.github_token("main")).unwrap();
    let socket = dir.path().join("agent.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = agent_serve()
        .args(["--broker", &stack.broker.url()])
        .arg("--token-file")
        .arg(&token_file)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--unix-socket")
        .arg(&socket)
        .spawn()
        .unwrap();
    let sidecar = Sidecar {
        port,
        socket,
        _child: child,
        _dir: dir,
        _stack: stack,
    };
    let started = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
            && sidecar
                .get("/healthz", &format!("127.0.0.1:{port}"), &[])
                .await
                .status
                == 200
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the agent never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sidecar
}

#[derive(Debug)]
struct Got {
    status: u16,
    body: Value,
    text: String,
}

/// Writes `request` on `stream` (the server closes after it) and reads the answer.
async fn exchange(mut stream: impl AsyncRead + AsyncWrite + Unpin, request: String) -> Got {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("the agent answers within 30 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Got {
        status,
        body: serde_json::from_str(body).unwrap_or(Value::Null),
        text,
    }
}

/// `GET target` with `Host: host` (none when empty) and `headers`, HTTP/1.1.
fn request(target: &str, host: &str, headers: &[(&str, &str)]) -> String {
    let mut r = format!("GET {target} HTTP/1.1\r\n");
    if !host.is_empty() {
        r.push_str(&format!("Host: {host}\r\n"));
    }
    for (name, value) in headers {
        r.push_str(&format!("{name}: {value}\r\n"));
    }
    r.push_str("Connection: close\r\n\r\n");
    r
}

impl Sidecar {
    async fn raw(&self, request: String) -> Got {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        exchange(stream, request).await
    }

    async fn get(&self, target: &str, host: &str, headers: &[(&str, &str)]) -> Got {
        self.raw(request(target, host, headers)).await
    }

    async fn unix(&self, target: &str, host: &str, headers: &[(&str, &str)]) -> Got {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.unwrap();
        exchange(stream, request(target, host, headers)).await
    }

    fn local(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Each protocol's request with its guard header (Metadata / X-IDENTITY-HEADER).
fn protocols() -> [(&'static str, (&'static str, &'static str)); 2] {
    [
        (IMDS, ("Metadata", "true")),
        (APP_SERVICE, ("X-IDENTITY-HEADER", SECRET)),
    ]
}

#[track_caller]
fn assert_token(got: &Got, what: &str) {
    assert_eq!(got.status, 200, "{what}: {}", got.text);
    assert!(
        got.body["access_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{what}: {}",
        got.text
    );
}

#[track_caller]
fn assert_refused(got: &Got, code: &str, what: &str) {
    assert_eq!(got.status, 400, "{what}: {}", got.text);
    assert_eq!(got.body["error"], code, "{what}: {}", got.text);
    assert!(!got.text.contains("access_token"), "{what}: {}", got.text);
}

#[tokio::test]
async fn a_rebound_name_gets_no_token_from_either_protocol() {
    let s = sidecar().await;
    let port = s.port;
    for (target, guard) in protocols() {
        for host in [
            format!("rebind.attacker.example:{port}"),
            "rebind.attacker.example".to_owned(),
            format!("localhost.attacker.example:{port}"),
            format!("127.0.0.1.nip.io:{port}"),
            format!("LOCALHOST.:{port}"),
        ] {
            let got = s.get(target, &host, &[guard]).await;
            assert_refused(&got, "invalid_host", &format!("{target} Host {host}"));
        }
        // The attacker's name in an absolute-form request target, with an innocent Host.
        let absolute = format!("http://rebind.attacker.example:{port}{target}");
        let got = s.get(&absolute, &s.local(), &[guard]).await;
        assert_refused(&got, "invalid_host", &absolute);
        // No Host at all (HTTP/1.0 allows it).
        let got = s
            .raw(format!(
                "GET {target} HTTP/1.0\r\n{}: {}\r\n\r\n",
                guard.0, guard.1
            ))
            .await;
        assert_refused(&got, "invalid_host", "no Host");
    }
    // Not the token routes only: nothing is told to a rebound page.
    for path in ["/metrics", "/readyz", "/healthz"] {
        let got = s
            .get(path, &format!("rebind.attacker.example:{port}"), &[])
            .await;
        assert_refused(&got, "invalid_host", path);
    }
}

#[tokio::test]
async fn relayed_requests_get_no_token_on_any_listener() {
    let s = sidecar().await;
    for (target, guard) in protocols() {
        for proxy in [
            ("Forwarded", "for=203.0.113.7;host=127.0.0.1"),
            ("Via", "1.1 squid"),
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Host", "127.0.0.1"),
        ] {
            let got = s.get(target, &s.local(), &[guard, proxy]).await;
            assert_refused(&got, "proxied_request", &format!("{target} {}", proxy.0));
            let got = s.unix(target, "localhost", &[guard, proxy]).await;
            assert_refused(
                &got,
                "proxied_request",
                &format!("unix {target} {}", proxy.0),
            );
        }
    }
}

#[tokio::test]
async fn the_requests_sdks_make_still_get_tokens() {
    let s = sidecar().await;
    let port = s.port;
    for (target, guard) in protocols() {
        // AZURE_POD_IDENTITY_AUTHORITY_HOST / IDENTITY_ENDPOINT as the webhook sets them,
        // other loopback spellings, and IMDS's own address (no port: port 80 redirected).
        for host in [
            format!("127.0.0.1:{port}"),
            "127.0.0.1".to_owned(),
            format!("localhost:{port}"),
            format!("LocalHost:{port}"),
            format!("[::1]:{port}"),
            "169.254.169.254".to_owned(),
            "169.254.169.254:80".to_owned(),
        ] {
            let got = s.get(target, &host, &[guard]).await;
            assert_token(&got, &format!("{target} Host {host}"));
        }
        // Over the Unix socket, where no browser reaches, the Host is not checked.
        let got = s.unix(target, "agent", &[guard]).await;
        assert_token(&got, &format!("unix {target}"));
    }
    // And through an ordinary HTTP client.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let got = http
        .get(format!("http://127.0.0.1:{port}{IMDS}"))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
}
