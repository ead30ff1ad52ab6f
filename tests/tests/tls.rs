//! The broker's TLS listener: it serves HTTPS with the configured certificate, refuses
//! plain http on that port, and picks up a rotated certificate (cert-manager writes new
//! files over the old ones) without a restart. Certificates come from a throwaway CA made
//! per test; clients trust only that CA.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wif_tests::pki::Pki;
use wif_tests::*;

/// Where the broker reads its certificate and key.
struct TlsFiles {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            _dir: dir,
        }
    }
}

/// The standard stack, its listener serving TLS from `files`, checked every second.
async fn tls_stack(files: &TlsFiles) -> Stack {
    let (cert, key) = (files.cert.clone(), files.key.clone());
    Stack::start_with(move |cfg| {
        cfg.server.tls_cert = Some(cert);
        cfg.server.tls_key = Some(key);
        cfg.server.tls_reload_secs = 1;
    })
    .await
}

async fn healthz(client: &reqwest::Client, stack: &Stack) -> reqwest::Result<reqwest::Response> {
    client.get(stack.url("/healthz")).send().await
}

/// Polls until a new connection from `client` gets 200 from `/healthz`.
async fn until_healthy(client: &reqwest::Client, stack: &Stack, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let last = healthz(client, stack).await;
        if last.as_ref().is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no 200 from /healthz within {limit:?}; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A GitHub job on main gets a token through `stack.http`.
async fn a_github_job_gets_a_token(stack: &Stack) {
    let answer = stack.exchange(&stack.github_token("main"), ARM).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let claims = stack.verify_access_token(answer.access_token());
    assert_eq!(claims["aud"], "https://management.azure.com");
    assert_eq!(claims["appid"], DEPLOY_CLIENT);
}

fn assert_refused(result: reqwest::Result<reqwest::Response>, what: &str) {
    assert!(result.is_err(), "{what} should fail, got {result:?}");
}

#[tokio::test]
async fn the_broker_serves_https_to_clients_that_trust_its_ca() {
    let files = TlsFiles::new();
    let pki = Pki::new("first");
    pki.install(&files.cert, &files.key);
    let mut stack = tls_stack(&files).await;
    assert!(stack.broker.url().starts_with("https://127.0.0.1:"));
    stack.http = pki.client();

    let health = stack.get("/healthz").await;
    assert_eq!(health.status, 200, "{:?}", health.body);
    a_github_job_gets_a_token(&stack).await;

    let stranger = Pki::new("stranger");
    assert_refused(
        healthz(&stranger.client(), &stack).await,
        "a client trusting another CA",
    );
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_answer() {
    let files = TlsFiles::new();
    let pki = Pki::new("first");
    pki.install(&files.cert, &files.key);
    let stack = tls_stack(&files).await;

    let plain = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let url = format!("http://{}/healthz", stack.broker.addr);
    assert_refused(plain.get(&url).send().await, "plain http");

    // The listener shrugs it off and keeps serving TLS.
    let health = healthz(&pki.client(), &stack).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_certificate_rotated_in_place_is_served_without_a_restart() {
    let files = TlsFiles::new();
    let first = Pki::new("first");
    first.install(&files.cert, &files.key);
    let mut stack = tls_stack(&files).await;
    assert_eq!(
        healthz(&first.client(), &stack).await.unwrap().status(),
        200
    );

    // cert-manager renews: a new CA and a new leaf, written over the same paths.
    let second = Pki::new("second");
    second.install(&files.cert, &files.key);
    until_healthy(&second.client(), &stack, Duration::from_secs(10)).await;

    assert_refused(
        healthz(&first.client(), &stack).await,
        "a client trusting only the old CA",
    );
    stack.http = second.client();
    a_github_job_gets_a_token(&stack).await;
}

#[tokio::test]
async fn a_broken_rotation_keeps_the_previous_certificate_serving() {
    let files = TlsFiles::new();
    let first = Pki::new("first");
    first.install(&files.cert, &files.key);
    let stack = tls_stack(&files).await;
    let client = first.client();
    assert_eq!(healthz(&client, &stack).await.unwrap().status(), 200);

    // A new certificate lands, but its key is not the one that goes with it (a rotation
    // caught half way, or a botched secret).
    let second = Pki::new("second");
    std::fs::write(&files.cert, &second.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let health = healthz(&client, &stack).await.unwrap();
    assert_eq!(
        health.status(),
        200,
        "the old certificate must keep serving"
    );

    // Garbage is no better.
    write_garbage(&files.cert);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let health = healthz(&client, &stack).await.unwrap();
    assert_eq!(
        health.status(),
        200,
        "the old certificate must keep serving"
    );

    // Once the pair is whole again it is picked up.
    second.install(&files.cert, &files.key);
    until_healthy(&second.client(), &stack, Duration::from_secs(10)).await;
}

fn write_garbage(path: &Path) {
    std::fs::write(path, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
}
