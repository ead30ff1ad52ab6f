//! The README's five-minute tour, run as written: every command in the `sh` code blocks of
//! its "A five-minute tour" section, read from README.md (so the test fails when the README
//! and the commands drift apart), against a real `wif-broker dev` on free ports, with the
//! real `wif-broker` and `wif-agent` binaries on `PATH`.
//!
//! What a reader does by hand is done here as follows:
//! - `cargo run -p wif-broker -- dev` (named in step 1) is the `wif-broker dev` binary
//!   cargo built for this test, on a free port instead of 8080;
//! - `cargo build -p wif-agent` is not run (cargo is busy running this test): the
//!   `wif-agent` it builds must be beside `wif-broker` (`cargo test --workspace` builds it;
//!   alone, run `cargo build -p wif-agent` first);
//! - `$PWD/target/debug` is wherever cargo put those binaries;
//! - the `export ...` line the dev stack prints is pasted before the commands;
//! - each command runs in `sh` in a fresh directory, with the `export` lines before it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use wif_broker::dev::jwt;
use wif_broker::dev::stack::{DEMO_FLEET_CLIENT, DEMO_FLEET_IDENTITY};

/// Longest the dev stack may take to print its instructions.
const STARTUP: Duration = Duration::from_secs(60);
/// Longest one tour command may take.
const COMMAND: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The commands of the tour: each `sh` block's lines, continuation lines joined.
fn tour_commands(readme: &str) -> Vec<String> {
    let start = readme
        .find("## A five-minute tour")
        .expect("README.md has no \"A five-minute tour\" section");
    let rest = &readme[start + 3..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in section.lines() {
        let line = line.trim();
        if line.starts_with("```") {
            in_sh = !in_sh && line == "```sh";
            continue;
        }
        if !in_sh || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(line);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    commands
}

/// Reads a pipe in the background.
fn collect(mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = buffer.clone();
    tokio::spawn(async move {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buffer
}

/// Drops the developer's `WIF_*`, `RUST_LOG` and proxy settings.
fn clean_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let upper = name.to_string_lossy().to_ascii_uppercase();
        if upper.starts_with("WIF_") || upper.ends_with("_PROXY") || upper == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    cmd.env("NO_COLOR", "1").kill_on_drop(true);
}

struct Ran {
    command: String,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("{} printed no JSON ({e}):\n{}", self.command, self.stdout))
    }
}

fn claims(token: &str) -> Value {
    jwt::decode_segment(token.split('.').nth(1).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_tour_works_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    assert!(
        readme.contains("`cargo run -p wif-broker -- dev`"),
        "the tour no longer starts with `cargo run -p wif-broker -- dev`"
    );
    let commands = tour_commands(&readme);
    assert!(
        commands.iter().any(|c| c.starts_with("wif-agent token")),
        "the tour has no wif-agent step: {commands:#?}"
    );

    let broker_bin = std::fs::canonicalize(env!("CARGO_BIN_EXE_wif-broker")).unwrap();
    let bin_dir = broker_bin.parent().unwrap().to_path_buf();
    assert!(
        bin_dir.join("wif-agent").is_file(),
        "no wif-agent beside {}: run `cargo build -p wif-agent` (or `cargo test --workspace`)",
        broker_bin.display()
    );

    // Step 1: the dev stack, on a free port.
    let mut dev = Command::new(&broker_bin);
    clean_env(&mut dev);
    dev.args(["dev", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut dev = dev.spawn().unwrap();
    let dev_out = collect(dev.stdout.take().unwrap());
    let dev_err = collect(dev.stderr.take().unwrap());
    let printed = || String::from_utf8_lossy(&dev_out.lock().unwrap()).into_owned();
    let deadline = Instant::now() + STARTUP;
    let exports = loop {
        if let Some(line) = printed()
            .lines()
            .find(|l| l.starts_with("export WIF_SERVER_URL="))
        {
            break line.to_owned();
        }
        if Instant::now() > deadline || dev.try_wait().unwrap().is_some() {
            panic!(
                "the dev stack printed no export line:\n{}\n{}",
                printed(),
                String::from_utf8_lossy(&dev_err.lock().unwrap())
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        printed().contains(&format!(
            "wif-broker and wif-agent are in {}",
            bin_dir.display()
        )),
        "the dev stack does not say where the commands are:\n{}",
        printed()
    );

    // Steps 4 on: every command, in a fresh directory, after the export lines so far.
    let workdir = tempfile::tempdir().unwrap();
    let mut prelude = vec![exports];
    let mut ran = Vec::new();
    for command in &commands {
        if command == "cargo build -p wif-agent" {
            continue;
        }
        if command.starts_with("export ") {
            prelude.push(command.replace("$PWD/target/debug", &bin_dir.display().to_string()));
            continue;
        }
        let script = format!("set -e\n{}\n{command}", prelude.join("\n"));
        let mut sh = Command::new("sh");
        clean_env(&mut sh);
        sh.args(["-c", &script])
            .current_dir(workdir.path())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = tokio::time::timeout(COMMAND, sh.output())
            .await
            .unwrap_or_else(|_| panic!("{command} did not finish within {COMMAND:?}"))
            .unwrap();
        let result = Ran {
            command: command.clone(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        assert!(
            output.status.success(),
            "README command failed ({}): {command}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            result.stdout,
            result.stderr
        );
        ran.push(result);
    }
    let find = |prefix: &str| {
        ran.iter()
            .find(|r| r.command.starts_with(prefix))
            .unwrap_or_else(|| panic!("the tour has no `{prefix} ...` command"))
    };

    // Step 4: the commands reach the dev broker with the printed admin token.
    assert!(
        find("wif-broker identity list")
            .stdout
            .contains(DEMO_FLEET_IDENTITY)
    );
    assert!(
        find("wif-broker credential list")
            .stdout
            .contains("demo-features")
    );
    // Step 5: a feature-branch token acts as demo-fleet, by curl and by the agent.
    let simulate = find("wif-broker simulate");
    assert!(simulate.stdout.contains("outcome:"), "{}", simulate.stdout);
    assert!(
        simulate.stdout.contains(DEMO_FLEET_IDENTITY),
        "{}",
        simulate.stdout
    );
    let curl = find("curl -s -X POST").json();
    assert_eq!(curl["identity"]["name"], DEMO_FLEET_IDENTITY, "{curl}");
    let agent = find("wif-agent token");
    let answer = agent.json();
    assert_eq!(answer["client_id"], DEMO_FLEET_CLIENT, "{answer}");
    let access = claims(answer["access_token"].as_str().unwrap());
    assert_eq!(access["appid"], DEMO_FLEET_CLIENT, "{access}");
    assert!(
        !agent.stderr.contains("eyJ"),
        "a token in the log: {}",
        agent.stderr
    );
    // Step 6: the metrics count those exchanges.
    assert!(
        find("curl -s \"$WIF_SERVER_URL/metrics\"")
            .stdout
            .contains("wif_exchanges_total"),
    );

    dev.start_kill().unwrap();
    let _ = dev.wait().await;
}

/// The dev issuer's minting endpoint answers bad input in the documented error shape.
#[tokio::test]
async fn the_dev_issuer_refuses_bad_claims_clearly() {
    wif_broker::crypto::install_provider();
    let issuer = wif_broker::dev::issuer::LocalIssuer::start_minting(wif_broker::clock::system())
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let url = format!("{}/dev/token", issuer.url());
    for (content_type, body, status) in [
        ("text/plain", "{}", 415),
        ("application/json", "[1]", 400),
        ("application/json", "{not json", 400),
    ] {
        let answer = http
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status, "{content_type} {body}");
        let error: Value = answer.json().await.unwrap();
        assert_eq!(error["error"], "invalid_request", "{error}");
        assert!(
            error["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{error}"
        );
        assert!(
            error["request_id"].as_str().is_some_and(|d| !d.is_empty()),
            "{error}"
        );
    }
    let minted: Value = http
        .post(&url)
        .json(
            &serde_json::json!({"sub": "repo:contoso/demo:ref:refs/heads/feature/x", "jti": null}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token_claims = claims(minted["token"].as_str().unwrap());
    assert_eq!(
        token_claims["sub"],
        "repo:contoso/demo:ref:refs/heads/feature/x"
    );
    assert_eq!(token_claims["iss"], issuer.url());
    assert!(token_claims.get("jti").is_none(), "{token_claims}");
    assert_eq!(minted["claims"], token_claims);

    // Only the dev stack's issuer mints.
    let plain = wif_broker::dev::issuer::LocalIssuer::start(wif_broker::clock::system())
        .await
        .unwrap();
    let refused = http
        .post(format!("{}/dev/token", plain.url()))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 405);
}
