//! Slow and silent clients against `wif-agent serve` (docs/agent.md): the agent's listener
//! has the broker's connection limits. Silent, half-sent and idle connections are closed by
//! its timeouts, `/healthz` answers at the connection cap, and a half-sent request does not
//! hold shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

mod support;
use support::{SECRET, agent_serve};
/// Generous bound for anything the agent must close or answer "soon".
const HANG_GUARD: Duration = Duration::from_secs(15);

struct Agent {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// `wif-agent serve` with `config` (TOML) on a free loopback port, answering `/healthz`.
/// The broker is never called by these tests.
async fn start(config: &str) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "unused").unwrap();
    let config_file = dir.path().join("agent.toml");
    std::fs::write(
        &config_file,
        format!("broker = \"http://127.0.0.1:9\"\n{config}"),
    )
    .unwrap();
    let addr: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let child = agent_serve()
        .arg("--config")
        .arg(&config_file)
        .arg("--token-file")
        .arg(&token_file)
        .args(["--listen", &addr.to_string()])
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if raw_request(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        .await
        .starts_with("HTTP/1.1 200")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the agent never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Agent {
        child,
        addr,
        _dir: dir,
    }
}

/// One raw HTTP/1.1 request on a new connection; the answer, read until the agent closes
/// the connection (bounded). Empty when the connection fails.
async fn raw_request(addr: SocketAddr, request: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return String::new();
    };
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(HANG_GUARD, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether the agent closes `stream` within `limit` (whatever it sends before is skipped).
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

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_half_sent_connections_at_the_cap_leave_healthz_answering_and_are_closed() {
    let agent = start("max_connections = 20\nheader_read_timeout_secs = 8\n").await;

    // The cap is taken: ten connections say nothing, ten send half a request line.
    let mut streams = Vec::new();
    for i in 0..20 {
        let mut stream = TcpStream::connect(agent.addr).await.unwrap();
        if i % 2 == 1 {
            stream.write_all(b"GET /msi/tok").await.unwrap();
        }
        streams.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let health = raw_request(
        agent.addr,
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // The cap was reached all along: a token request is turned away.
    let refused = raw_request(
        agent.addr,
        &format!(
            "GET /msi/token?api-version=2019-08-01&resource=https://vault.azure.net HTTP/1.1\r\n\
             Host: 127.0.0.1\r\nX-IDENTITY-HEADER: {SECRET}\r\n\r\n"
        ),
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("\"error\":\"overloaded\""), "{refused}");

    let metrics = raw_request(
        agent.addr,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    )
    .await;
    let reserved: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("wif_agent_connections_reserved_total ")?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(reserved >= 2, "{metrics}");

    let checks = streams
        .iter_mut()
        .map(|s| closed_within(s, HANG_GUARD))
        .collect::<Vec<_>>();
    let closed = futures::future::join_all(checks).await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} of 20 connections still open");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed_and_a_half_sent_request_does_not_hold_shutdown() {
    let mut agent =
        start("idle_timeout_secs = 2\nheader_read_timeout_secs = 60\nshutdown_timeout_secs = 60\n")
            .await;

    // Keep-alive works, then an idle connection is closed (the header timeout is far off).
    let mut stream = TcpStream::connect(agent.addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let n = tokio::time::timeout(HANG_GUARD, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    assert!(
        closed_within(&mut stream, HANG_GUARD).await,
        "an idle keep-alive connection was kept past the idle timeout"
    );

    // Half a request does not keep the agent from stopping (neither timeout would end it).
    let mut half = TcpStream::connect(agent.addr).await.unwrap();
    half.write_all(b"GET /msi/token HTTP/1.1\r\nHost: 127.0.0.1\r\nX-IDENT")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = agent.child.id().unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(HANG_GUARD, agent.child.wait())
        .await
        .expect("the agent was still running: a half-sent request held shutdown")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(closed_within(&mut half, Duration::from_secs(5)).await);
}
