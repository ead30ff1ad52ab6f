//! `wif-agent serve` as a sidecar runs it: the real binary, flags and a config file, the
//! header secret from the environment, a TCP port and a Unix socket.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use wif_tests::*;

const AGENT: &str = env!("CARGO_BIN_EXE_wif-agent");
const SECRET: &str = "a-sidecar-secret-of-32-characters";

use wif_tests::process::free_port;

async fn wait_healthy(http: &reqwest::Client, url: &str) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if http
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the agent at {url} never became healthy");
}

/// As the webhook runs it in a `hostNetwork` pod: IMDS off, next to a Service named
/// `wif-agent` whose service-link variables share the agent's prefix.
#[tokio::test]
async fn a_host_network_sidecar_serves_only_the_header_guarded_protocol() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, stack.github_token("main")).unwrap();
    let port = free_port();
    let mut child = tokio::process::Command::new(AGENT)
        .args(["serve", "--broker", &stack.broker.url()])
        .arg("--token-file")
        .arg(&token_file)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_clear()
        .env("WIF_AGENT_IDENTITY_HEADER", SECRET)
        .env("WIF_AGENT_IMDS", "false")
        .env("WIF_AGENT_SERVICE_HOST", "10.96.0.12")
        .env("WIF_AGENT_PORT", "tcp://10.96.0.12:8181")
        .env("WIF_AGENT_PORT_8181_TCP_ADDR", "10.96.0.12")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    wait_healthy(&http, &url).await;
    let imds = http
        .get(format!("{url}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net"))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(imds.status(), 400, "a 400 moves SDK credential chains on");
    let body: serde_json::Value = imds.json().await.unwrap();
    assert_eq!(body["error"], "imds_disabled", "{body}");
    let app_service = http
        .get(format!(
            "{url}/msi/token?api-version=2019-08-01&resource=https://management.azure.com"
        ))
        .header("X-IDENTITY-HEADER", SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(app_service.status(), 200);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn a_sidecar_serves_app_service_and_imds_from_its_flags_and_config_file() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, stack.github_token("main")).unwrap();
    let socket = dir.path().join("agent.sock");
    // The broker comes from the file; the rest from flags; the secret from the environment.
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!("broker = \"{}\"\ntimeout_secs = 5\n", stack.broker.url()),
    )
    .unwrap();
    let port = free_port();
    let mut child = tokio::process::Command::new(AGENT)
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--token-file")
        .arg(&token_file)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--unix-socket")
        .arg(&socket)
        .env_clear()
        .env("WIF_AGENT_IDENTITY_HEADER", SECRET)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    wait_healthy(&http, &url).await;

    let app_service = http
        .get(format!(
            "{url}/msi/token?api-version=2019-08-01&resource=https://management.azure.com"
        ))
        .header("X-IDENTITY-HEADER", SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(app_service.status(), 200);
    let body: serde_json::Value = app_service.json().await.unwrap();
    assert!(body["expires_on"].is_string(), "{body}");
    assert_eq!(body["client_id"], DEPLOY_CLIENT);
    let claims = stack.verify_access_token(body["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], "https://management.azure.com");

    let imds = http
        .get(format!("{url}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net"))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(imds.status(), 200);
    let body: serde_json::Value = imds.json().await.unwrap();
    assert!(
        body["expires_in"].is_string() && body["expires_on"].is_string(),
        "{body}"
    );

    // The same endpoints on the Unix socket, spoken with curl.
    let output = tokio::process::Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(&socket)
        .args(["-H", &format!("X-IDENTITY-HEADER: {SECRET}")])
        .arg("http://agent/msi/token?api-version=2019-08-01&resource=https://management.azure.com")
        .output()
        .await
        .unwrap();
    let over_socket: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(over_socket["client_id"], DEPLOY_CLIENT);

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_short_header_secret_or_a_missing_broker_stops_the_agent_with_a_clear_message() {
    let run = |args: &[&str], secret: &str| {
        std::process::Command::new(AGENT)
            .args(args)
            .env_clear()
            .env("WIF_AGENT_IDENTITY_HEADER", secret)
            .output()
            .unwrap()
    };
    let short = run(
        &[
            "serve",
            "--broker",
            "http://127.0.0.1:1",
            "--token-file",
            "/nonexistent",
        ],
        "short",
    );
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 16 characters"));
    let no_broker = run(&["serve", "--token-file", "/nonexistent"], SECRET);
    assert!(!no_broker.status.success());
    assert!(String::from_utf8_lossy(&no_broker.stderr).contains("--broker"));
}

/// Starts `wif-agent serve` with `extra` arguments and environment, and returns what it
/// logged once it answers `/healthz`.
async fn start_up_log(env: &[(&str, &str)]) -> String {
    let port = free_port();
    let mut child = tokio::process::Command::new(AGENT)
        .args([
            "serve",
            "--broker",
            "http://127.0.0.1:1",
            "--token-file",
            "/nonexistent",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_clear()
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    wait_healthy(&http, &url).await;
    child.start_kill().unwrap();
    let output = child.wait_with_output().await.unwrap();
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The start-up log says which protocols are served where, and warns when the App
/// Service protocol is off for want of a header secret (instead of a 404 at first use).
/// Piped to a file, it carries no colour codes.
#[tokio::test]
async fn the_start_up_log_names_each_protocol_served_and_the_one_left_off() {
    let with_secret = start_up_log(&[("WIF_AGENT_IDENTITY_HEADER", SECRET)]).await;
    assert!(
        with_secret.contains("App Service protocol at http://127.0.0.1:"),
        "{with_secret}"
    );
    assert!(with_secret.contains("/msi/token"), "{with_secret}");
    assert!(
        with_secret.contains("IMDS protocol at http://127.0.0.1:"),
        "{with_secret}"
    );
    assert!(
        with_secret.contains("broker=http://127.0.0.1:1"),
        "{with_secret}"
    );
    assert!(
        !with_secret.contains('\u{1b}'),
        "ANSI codes in a pipe: {with_secret:?}"
    );
    assert!(!with_secret.contains(SECRET), "{with_secret}");

    let without = start_up_log(&[]).await;
    assert!(without.contains("App Service protocol off"), "{without}");
    assert!(without.contains("WIF_AGENT_IDENTITY_HEADER"), "{without}");
    assert!(without.contains("IMDS protocol at"), "{without}");

    let no_imds = start_up_log(&[("WIF_AGENT_IMDS", "false")]).await;
    assert!(no_imds.contains("IMDS protocol off"), "{no_imds}");
}

#[test]
fn serve_help_gives_the_defaults_and_what_turns_a_protocol_off() {
    let output = std::process::Command::new(AGENT)
        .args(["serve", "--help"])
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("[default: 127.0.0.1:8181"), "{help}");
    assert!(help.contains("only IMDS is served"), "{help}");
    assert!(help.contains("WIF_AGENT_IDENTITY_HEADER"), "{help}");
    let listen = help.find("--listen").unwrap();
    let broker = help.find("Broker options").unwrap();
    assert!(
        listen < broker,
        "serve's own options under the broker heading:\n{help}"
    );

    let output = std::process::Command::new(AGENT)
        .args(["token", "--help"])
        .env_clear()
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    let scope = help.find("--scope").unwrap();
    let broker = help.find("Broker options").unwrap();
    let ci = help.find("CI token options").unwrap();
    assert!(scope < broker && broker < ci, "{help}");
    assert!(help.find("--audience").unwrap() > ci, "{help}");
}

/// `--broker` and `--listen` are parsed by wif-config's types, as the config file's keys
/// are: a bad flag and a bad key are refused with the same words, before anything starts.
#[test]
fn a_bad_flag_and_a_bad_config_key_say_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], config: &str| {
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, config).unwrap();
        let output = std::process::Command::new(AGENT)
            .arg("--config")
            .arg(&file)
            .args(args)
            .env_clear()
            .output()
            .unwrap();
        assert!(!output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    for (flag, key, value, words) in [
        (
            "--broker",
            "broker",
            "wif-broker.wif.svc:8443",
            "the broker URL \"wif-broker.wif.svc:8443\" is not an http(s) URL",
        ),
        (
            "--listen",
            "listen",
            "127.0.0.1",
            "`127.0.0.1` is not an address and port such as 127.0.0.1:8181",
        ),
    ] {
        let from_flag = run(&["serve", flag, value], "");
        assert!(
            from_flag.contains(&format!("invalid value '{value}' for '{flag}")),
            "{from_flag}"
        );
        assert!(from_flag.contains(words), "{from_flag}");
        let from_file = run(&["serve"], &format!("{key} = {value:?}\n"));
        assert!(
            from_file.contains(&format!("{key}: {words}")),
            "{from_file}"
        );
    }
}
