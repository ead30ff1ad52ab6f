//! The `wif-broker` binary as operators run it: real processes, real signals, real HTTP on
//! loopback. Every wait is bounded, so a hang fails the test instead of blocking it, and
//! every child is killed when its handle drops, so a failing test leaks no process.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use wif_broker::clock;
use wif_broker::dev::issuer::{LocalIssuer, github_claims};
use wif_broker::dev::jwt;
use wif_broker::dev::stack::{DEMO_CLIENT, DEMO_FLEET_CLIENT, DEMO_FLEET_IDENTITY};
use wif_tests::process::{self, collect, free_port};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6c";
const MAIN_SUBJECT: &str = "repo:contoso/app:ref:refs/heads/main";
const ARM: &str = "https://management.azure.com/.default";

/// Longest a short command (`--help`, `check-config`) may take.
const QUICK: Duration = Duration::from_secs(30);
/// Longest a server may take to start answering.
const STARTUP: Duration = Duration::from_secs(30);
/// Longest a graceful shutdown may take once nothing is in flight.
const SHUTDOWN: Duration = Duration::from_secs(10);

/// `wif-broker` with a clean environment ([`process::command`]).
fn wif_broker() -> Command {
    process::command(env!("CARGO_BIN_EXE_wif-broker"))
}

/// Runs a command to completion, failing the test if it takes longer than `limit`.
async fn run_to_end(mut cmd: Command, limit: Duration) -> Output {
    match tokio::time::timeout(limit, cmd.output()).await {
        Ok(output) => output.unwrap(),
        Err(_) => panic!("{cmd:?} did not finish within {limit:?}"),
    }
}

/// `wif-broker <args>` to completion.
async fn wif_broker_run(args: &[&str]) -> Output {
    let mut cmd = wif_broker();
    cmd.args(args);
    run_to_end(cmd, QUICK).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A long-running `wif-broker` process (`serve` or `dev`).
struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        text(&self.stdout.lock().unwrap())
    }

    fn stderr(&self) -> String {
        text(&self.stderr.lock().unwrap())
    }

    /// Fails the test, showing what the process printed.
    fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// Fails the test if the process has already exited.
    fn still_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            self.fail(&format!("wif-broker exited early with {status}"));
        }
    }

    /// Waits until stdout holds `needle`.
    async fn printed(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.stdout();
            if out.contains(needle) {
                return out;
            }
            self.still_running();
            if Instant::now() > deadline {
                self.fail(&format!("{needle:?} not printed within {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `url` answers, whatever the status.
    async fn answering(&mut self, url: &str) {
        let http = client();
        let deadline = Instant::now() + STARTUP;
        loop {
            if http.get(url).send().await.is_ok() {
                return;
            }
            self.still_running();
            if Instant::now() > deadline {
                self.fail(&format!("{url} did not answer within {STARTUP:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM, as Kubernetes and systemd do to stop a service.
    async fn terminate(&self) {
        let pid = self.child.id().expect("the process is still running");
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "kill -TERM {pid} failed: {status}");
    }

    /// Waits for the process to exit.
    async fn exit(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => self.fail(&format!("wif-broker still running {limit:?} after SIGTERM")),
        }
    }

    /// Waits for the process to exit and asserts it exited 0.
    async fn exits_cleanly(&mut self, limit: Duration) {
        let status = self.exit(limit).await;
        if !status.success() {
            self.fail(&format!("wif-broker exited with {status}"));
        }
    }
}

/// A client that never goes through a proxy and never reuses a connection.
fn client() -> reqwest::Client {
    wif_broker::crypto::install_provider();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples")
}

/// Writes `toml` to a file in a fresh temporary directory.
fn config_file(toml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wif.toml");
    std::fs::write(&path, toml).unwrap();
    (dir, path)
}

fn jwt_payload(token: &str) -> Value {
    let payload = token
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("not a JWT: {token}"));
    jwt::decode_segment(payload).unwrap_or_else(|| panic!("undecodable JWT payload: {token}"))
}

// ---------------------------------------------------------------------------------------
// --help

#[tokio::test]
async fn help_describes_the_commands_and_the_config_option() {
    let output = wif_broker_run(&["--help"]).await;
    assert!(output.status.success(), "{output:?}");
    let help = text(&output.stdout);
    for word in ["--config", "serve", "dev", "check-config"] {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
}

#[tokio::test]
async fn serve_help_mentions_the_config_option_and_the_defaults() {
    let output = wif_broker_run(&["serve", "--help"]).await;
    assert!(output.status.success(), "{output:?}");
    let help = text(&output.stdout);
    assert!(help.contains("--config"), "{help}");
    for default in [
        "127.0.0.1:8080",
        "./wif.db",
        "WIF_SERVER_LISTEN",
        "WIF_STORE_URL",
    ] {
        assert!(
            help.contains(default),
            "serve --help omits {default}:\n{help}"
        );
    }
}

/// A client command lists its own options, then the connection options under their own
/// heading, and not the broker's `--config`, which means nothing to a client.
#[tokio::test]
async fn client_help_sets_the_connection_options_apart_and_omits_config() {
    for (command, own) in [
        (&["identity", "create", "--help"][..], "--tenant-id"),
        (&["credential", "list", "--help"], "--identity"),
        (&["simulate", "--help"], "--token"),
        (&["audit", "--help"], "--since"),
    ] {
        let output = wif_broker_run(command).await;
        assert!(output.status.success(), "{output:?}");
        let help = text(&output.stdout);
        assert!(!help.contains("--config"), "{command:?}:\n{help}");
        let heading = help
            .find("Connection options")
            .unwrap_or_else(|| panic!("{command:?} has no connection heading:\n{help}"));
        let server = help.find("--server").unwrap();
        assert!(
            server > heading,
            "{command:?}: --server before its heading:\n{help}"
        );
        let own = help.find(own).unwrap();
        assert!(
            own < heading,
            "{command:?}: its options under the connection heading:\n{help}"
        );
    }
    let audit = text(&wif_broker_run(&["audit", "--help"]).await.stdout);
    assert!(
        audit.contains("[possible values: exchange, admin]"),
        "{audit}"
    );
    let wrong = wif_broker_run(&["audit", "--kind", "exchanges"]).await;
    assert_eq!(wrong.status.code(), Some(2), "{wrong:?}");
    assert!(text(&wrong.stderr).contains("exchange, admin"), "{wrong:?}");
}

// ---------------------------------------------------------------------------------------
// dev

/// A busy port is named, with the flag that picks another, not just "Address in use".
#[tokio::test]
async fn dev_on_a_busy_port_names_the_address_and_the_flag_to_change_it() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let output = wif_broker_run(&["dev", "--listen", &addr]).await;
    assert!(!output.status.success(), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("--listen"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_curl_printed_by_dev_returns_an_access_token_and_sigterm_stops_it() {
    let mut cmd = wif_broker();
    cmd.args(["dev", "--listen", "127.0.0.1:0"]);
    let mut dev = Running::spawn(cmd);
    let out = dev.printed("-d scope=", STARTUP).await;

    // The command exactly as printed, backslash-newlines and all.
    let lines: Vec<&str> = out.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.starts_with("curl "))
        .unwrap_or_else(|| dev.fail("no curl command printed"));
    let last = first
        + lines[first..]
            .iter()
            .position(|l| l.trim_start().starts_with("-d scope="))
            .unwrap();
    let pasted = lines[first..=last].join("\n");
    assert!(pasted.contains("127.0.0.1:"), "{pasted}");

    let mut shell = Command::new("sh");
    shell
        .args(["-c", &pasted])
        .env("NO_PROXY", "*")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = run_to_end(shell, QUICK).await;
    assert!(output.status.success(), "curl failed: {output:?}");
    let answer: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| dev.fail(&format!("curl printed no JSON ({e}): {output:?}")));
    let token = answer["access_token"]
        .as_str()
        .unwrap_or_else(|| dev.fail(&format!("no access_token in {answer}")));
    let claims = jwt_payload(token);
    assert_eq!(claims["aud"], "https://management.azure.com", "{claims}");
    assert_eq!(claims["appid"], DEMO_CLIENT, "{claims}");

    dev.terminate().await;
    dev.exits_cleanly(SHUTDOWN).await;
}

// ---------------------------------------------------------------------------------------
// The README's tour

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

/// The README's five-minute tour, run as written: every command in the `sh` code blocks of
/// its "A five-minute tour" section, read from README.md (so this fails when the README
/// and the commands drift apart), against a real `wif-broker dev` on a free port, with
/// the real `wif-broker` and `wif-agent` binaries on `PATH`. What a reader does by hand:
/// - `cargo run -p wif-broker -- dev` (step 1) is this test's `wif-broker dev`;
/// - `cargo build -p wif-agent` is not run (cargo is busy running this test): the
///   `wif-agent` it builds must be beside `wif-broker` (`cargo test --workspace` builds
///   it; alone, run `cargo build -p wif-agent` first);
/// - `$PWD/target/debug` is wherever cargo put the binaries;
/// - the `export` line the dev stack prints is pasted before the commands, and each
///   command runs in `sh` in a fresh directory after the `export` lines so far.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_tour_works_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
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

    let mut cmd = wif_broker();
    cmd.args(["dev", "--listen", "127.0.0.1:0"]);
    let mut dev = Running::spawn(cmd);
    let printed = dev.printed("export WIF_SERVER_URL=", STARTUP).await;
    let exports = printed
        .lines()
        .find(|l| l.starts_with("export WIF_SERVER_URL="))
        .unwrap()
        .to_owned();
    assert!(
        printed.contains(&format!(
            "wif-broker and wif-agent are in {}",
            bin_dir.display()
        )),
        "the dev stack does not say where the commands are:\n{printed}"
    );

    let workdir = tempfile::tempdir().unwrap();
    let mut prelude = vec![exports];
    let mut ran: Vec<(String, Output)> = Vec::new();
    for command in commands {
        if command == "cargo build -p wif-agent" {
            continue;
        }
        if command.starts_with("export ") {
            prelude.push(command.replace("$PWD/target/debug", &bin_dir.display().to_string()));
            continue;
        }
        let mut sh = process::command("sh");
        sh.args(["-c", &format!("set -e\n{}\n{command}", prelude.join("\n"))])
            .current_dir(workdir.path());
        let output = run_to_end(sh, QUICK).await;
        if !output.status.success() {
            dev.fail(&format!("README command failed: {command}\n{output:?}"));
        }
        ran.push((command, output));
    }
    let stdout = |prefix: &str| {
        ran.iter()
            .find(|(command, _)| command.starts_with(prefix))
            .map(|(_, output)| text(&output.stdout))
            .unwrap_or_else(|| panic!("the tour has no `{prefix} ...` command"))
    };
    let json = |prefix: &str| -> Value {
        serde_json::from_str(stdout(prefix).trim())
            .unwrap_or_else(|e| panic!("`{prefix} ...` printed no JSON: {e}"))
    };

    // Step 4: the commands reach the dev broker with the printed admin token.
    assert!(stdout("wif-broker identity list").contains(DEMO_FLEET_IDENTITY));
    assert!(stdout("wif-broker credential list").contains("demo-features"));
    // Step 5: a feature-branch token acts as demo-fleet, by curl and through the agent.
    let simulate = stdout("wif-broker simulate");
    assert!(
        simulate.contains(&format!("match: {DEMO_FLEET_IDENTITY}/demo-features")),
        "{simulate}"
    );
    let curl = json("curl -s -X POST");
    assert_eq!(curl["identity"]["name"], DEMO_FLEET_IDENTITY, "{curl}");
    let agent = json("wif-agent token");
    assert_eq!(agent["client_id"], DEMO_FLEET_CLIENT, "{agent}");
    let access = jwt_payload(agent["access_token"].as_str().unwrap());
    assert_eq!(access["appid"], DEMO_FLEET_CLIENT, "{access}");
    // Step 6: the metrics count those exchanges.
    assert!(stdout("curl -s \"$WIF_SERVER_URL/metrics\"").contains("wif_exchanges_total"));

    dev.terminate().await;
    dev.exits_cleanly(SHUTDOWN).await;
}

// ---------------------------------------------------------------------------------------
// check-config

#[tokio::test]
async fn every_documented_example_passes_check_config() {
    let mut examples: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    assert!(
        !examples.is_empty(),
        "no examples in {}",
        examples_dir().display()
    );
    for example in &examples {
        let output = wif_broker_run(&["check-config", "--config", example.to_str().unwrap()]).await;
        assert!(
            output.status.success(),
            "check-config refused {}:\n{}",
            example.display(),
            text(&output.stderr)
        );
        let said = text(&output.stdout);
        assert!(said.contains("configuration is valid"), "{said}");
    }
}

/// Runs `check-config` on `toml` and returns stderr, asserting it failed.
async fn check_config_refuses(toml: &str) -> String {
    let (_dir, path) = config_file(toml);
    let output = wif_broker_run(&["check-config", "--config", path.to_str().unwrap()]).await;
    let stderr = text(&output.stderr);
    assert!(
        !output.status.success(),
        "check-config accepted a broken config:\n{toml}\nstdout: {}",
        text(&output.stdout)
    );
    stderr
}

const DEPLOY_IDENTITY: &str = r#"
[[identities]]
name = "deploy"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6c"
"#;

#[tokio::test]
async fn a_typo_in_a_key_is_refused_by_check_config_naming_the_key() {
    let stderr = check_config_refuses(
        r#"
[server]
listen = "127.0.0.1:8080"
shutdown_timeout = 5
"#,
    )
    .await;
    assert!(stderr.contains("shutdown_timeout"), "{stderr}");
    assert!(stderr.contains("unknown field"), "{stderr}");
}

#[tokio::test]
async fn a_client_id_that_is_not_a_guid_is_refused_by_check_config_naming_the_key() {
    let toml = DEPLOY_IDENTITY.replace("3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6c", "my-app");
    let stderr = check_config_refuses(&toml).await;
    assert!(stderr.contains("identities[0].client_id"), "{stderr}");
    assert!(stderr.contains("my-app"), "{stderr}");
}

#[tokio::test]
async fn a_credential_name_entra_would_refuse_is_refused_by_check_config_naming_the_key() {
    let toml = format!(
        r#"{DEPLOY_IDENTITY}
[[identities.federated_credentials]]
name = "a b"
issuer = "https://token.actions.githubusercontent.com"
subject = "{MAIN_SUBJECT}"
"#
    );
    let stderr = check_config_refuses(&toml).await;
    assert!(
        stderr.contains("identities[0].federated_credentials[0].name"),
        "{stderr}"
    );
}

/// `wif-broker` with no `WIF_*` variable at all, run in a fresh directory.
async fn in_empty_dir(args: &[&str]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = wif_broker();
    cmd.args(args).current_dir(dir.path());
    (run_to_end(cmd, QUICK).await, dir)
}

#[tokio::test]
async fn check_config_with_nothing_to_check_fails_and_says_what_to_do() {
    let (output, _dir) = in_empty_dir(&["check-config"]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    for hint in [
        "no configuration",
        "--config FILE",
        "config/examples/broker.toml",
        "wif-broker dev",
    ] {
        assert!(stderr.contains(hint), "no {hint:?} in: {stderr}");
    }
    assert!(text(&output.stdout).is_empty(), "{output:?}");
}

#[tokio::test]
async fn serve_with_no_configuration_refuses_to_start_and_creates_no_store() {
    let (output, dir) = in_empty_dir(&["serve"]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        text(&output.stderr).contains("no configuration"),
        "{output:?}"
    );
    let created: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(created.is_empty(), "serve created {created:?}");
}

/// `serve` logs where its data goes: a relative SQLite path is relative to the working
/// directory, so the log shows it absolute; a PostgreSQL URL without its password.
#[tokio::test]
async fn serve_logs_where_the_store_is() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (url, said) in [
        (
            "sqlite://wif.db".to_owned(),
            format!("SQLite file {}", dir.path().join("wif.db").display()),
        ),
        (
            "postgres://wif:s3cret-password@127.0.0.1:1/wif".to_owned(),
            "PostgreSQL at 127.0.0.1:1/wif".to_owned(),
        ),
    ] {
        let mut cmd = wif_broker();
        cmd.arg("serve")
            .current_dir(dir.path())
            .env("WIF_STORE_URL", &url)
            .env("WIF_SERVER_LISTEN", taken.local_addr().unwrap().to_string());
        let output = run_to_end(cmd, QUICK).await;
        let stderr = text(&output.stderr);
        assert!(stderr.contains(&said), "{url}: {stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
}

/// The `WIF_*` variables alone are a configuration.
#[tokio::test]
async fn check_config_on_variables_alone_checks_them() {
    let mut cmd = wif_broker();
    cmd.arg("check-config")
        .env("WIF_SERVER_LISTEN", "not-an-address");
    let output = run_to_end(cmd, QUICK).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        text(&output.stderr).contains("WIF_SERVER_LISTEN"),
        "{output:?}"
    );

    let mut cmd = wif_broker();
    cmd.arg("check-config")
        .env("WIF_STORE_URL", "sqlite::memory:");
    let output = run_to_end(cmd, QUICK).await;
    assert!(output.status.success(), "{output:?}");
}

#[tokio::test]
async fn check_config_counts_in_the_singular_and_warns_when_nothing_can_be_exchanged() {
    let (_dir, path) = config_file(&format!(
        r#"{DEPLOY_IDENTITY}
[[identities.federated_credentials]]
name = "github-main"
issuer = "https://token.actions.githubusercontent.com"
subject = "{MAIN_SUBJECT}"
"#
    ));
    let output = wif_broker_run(&["check-config", "--config", path.to_str().unwrap()]).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        text(&output.stdout).trim(),
        "configuration is valid: 1 identity, 1 federated credential, 0 explicit issuers"
    );
    assert!(text(&output.stderr).is_empty(), "{output:?}");

    let (_dir, empty) = config_file("[store]\nurl = \"sqlite::memory:\"\n");
    let output = wif_broker_run(&["check-config", "--config", empty.to_str().unwrap()]).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        text(&output.stdout).trim(),
        "configuration is valid: 0 identities, 0 federated credentials, 0 explicit issuers"
    );
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with("warning: no identities"), "{stderr}");
    assert!(stderr.contains("tokens_file"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// dev token

#[tokio::test]
async fn dev_token_without_an_issuer_says_where_to_find_one() {
    let output = wif_broker_run(&["dev", "token", "--sub", "x"]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("WIF_DEV_ISSUER"), "{stderr}");
    assert!(stderr.contains("wif-broker dev"), "{stderr}");

    let remote = wif_broker_run(&[
        "dev",
        "token",
        "--issuer",
        "https://token.actions.githubusercontent.com",
    ])
    .await;
    assert_eq!(remote.status.code(), Some(1), "{remote:?}");
    assert!(text(&remote.stderr).contains("loopback"), "{remote:?}");

    let bad = wif_broker_run(&[
        "dev",
        "token",
        "--issuer",
        "http://127.0.0.1:1",
        "--claim",
        "novalue",
    ])
    .await;
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(text(&bad.stderr).contains("NAME=VALUE"), "{bad:?}");

    let closed = format!("http://127.0.0.1:{}", free_port());
    let down = wif_broker_run(&["dev", "token", "--issuer", &closed]).await;
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    assert!(text(&down.stderr).contains(&closed), "{down:?}");
}

// ---------------------------------------------------------------------------------------
// colours

/// Log lines carry ANSI colours on a terminal only, and never with `NO_COLOR`. The
/// terminal is a real pseudo-terminal from util-linux `script`; `serve` logs its warning
/// about an empty configuration, then stops on a port that is taken.
#[tokio::test]
async fn logs_are_coloured_only_on_a_terminal_without_no_color() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_dir, path) = config_file(&format!(
        "[server]\nlisten = \"{}\"\n[store]\nurl = \"sqlite::memory:\"\n",
        taken.local_addr().unwrap()
    ));
    let serve = format!(
        "exec {} serve --config {} 2>&1",
        env!("CARGO_BIN_EXE_wif-broker"),
        path.display()
    );
    let coloured = |tty: bool, no_color: bool| {
        let mut cmd = if tty {
            let mut script = process::command("script");
            script.args(["-qec", &serve, "/dev/null"]);
            script
        } else {
            let mut sh = process::command("sh");
            sh.args(["-c", &serve]);
            sh
        };
        if !no_color {
            cmd.env_remove("NO_COLOR");
        }
        async move {
            let output = run_to_end(cmd, QUICK).await;
            let out = text(&output.stdout);
            assert!(
                out.contains("no identities are configured"),
                "tty={tty}: {output:?}"
            );
            out.contains('\u{1b}')
        }
    };
    assert!(coloured(true, false).await, "no colours on a terminal");
    assert!(!coloured(true, true).await, "colours despite NO_COLOR");
    assert!(!coloured(false, false).await, "colours in a pipe");
}

// ---------------------------------------------------------------------------------------
// serve

#[tokio::test]
async fn serve_with_a_missing_config_file_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    let output = wif_broker_run(&["serve", "--config", missing.to_str().unwrap()]).await;
    assert!(!output.status.success(), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
}

#[tokio::test]
async fn serve_with_an_unreadable_config_file_fails_naming_the_file() {
    // A directory where the file should be: unreadable even for root.
    let dir = tempfile::tempdir().unwrap();
    let output = wif_broker_run(&["serve", "--config", dir.path().to_str().unwrap()]).await;
    assert!(!output.status.success(), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains(dir.path().to_str().unwrap()), "{stderr}");
}

#[tokio::test]
async fn start_up_errors_give_their_reason_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    let output = wif_broker_run(&["serve", "--config", missing.to_str().unwrap()]).await;
    let stderr = text(&output.stderr);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_dir, path) = config_file(&format!(
        "[server]\nlisten = \"{}\"\n[store]\nurl = \"sqlite::memory:\"\n",
        taken.local_addr().unwrap()
    ));
    let output = wif_broker_run(&["serve", "--config", path.to_str().unwrap()]).await;
    assert!(!output.status.success(), "{output:?}");
    let stderr = text(&output.stderr);
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
}

/// A production-shaped config (listening on all interfaces, on a fixed port) for one
/// identity that GitHub jobs on main of the test issuer may act as.
fn serve_config(issuer: &str, authority_host: &str) -> String {
    format!(
        r#"
[server]
listen = "0.0.0.0:8443"
shutdown_timeout_secs = 15

[store]
url = "sqlite::memory:"

[entra]
authority_host = "{authority_host}"
max_retries = 0

[outbound]
allow_loopback_http = true

{DEPLOY_IDENTITY}
[[identities.federated_credentials]]
name = "github-main"
issuer = "{issuer}"
subject = "{MAIN_SUBJECT}"
"#
    )
}

/// Starts `wif-broker serve --config <file>` with `WIF_SERVER_LISTEN` moving it to a free
/// loopback port, and waits until it answers.
async fn serve(config: &Path) -> (Running, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = wif_broker();
    cmd.args(["serve", "--config", config.to_str().unwrap()])
        .env("WIF_SERVER_LISTEN", &listen);
    let mut broker = Running::spawn(cmd);
    let url = format!("http://{listen}");
    broker.answering(&format!("{url}/healthz")).await;
    (broker, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_listens_where_the_environment_says_and_reports_health_and_readiness() {
    let (_dir, path) = config_file(&serve_config(
        "https://token.actions.githubusercontent.com",
        "https://login.microsoftonline.com",
    ));
    let (mut broker, url) = serve(&path).await;
    let http = client();

    let health = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"status": "ready"})
    );

    broker.terminate().await;
    broker.exits_cleanly(SHUTDOWN).await;
}

/// How long the slow Entra takes to answer a token request.
const ENTRA_DELAY: Duration = Duration::from_millis(1500);

/// An Entra token endpoint that tells the test when a request arrives, then takes
/// [`ENTRA_DELAY`] to answer it successfully.
async fn slow_entra() -> (SocketAddr, mpsc::UnboundedReceiver<()>, String) {
    let (arrived, arrivals) = mpsc::unbounded_channel();
    let access_token = jwt::unsigned_token(&json!({
        "aud": "https://management.azure.com",
        "appid": CLIENT,
        "tid": TENANT,
    }));
    let issued = access_token.clone();
    let router = Router::new()
        .route(
            "/{tenant}/oauth2/v2.0/token",
            post(
                |State(arrived): State<mpsc::UnboundedSender<()>>| async move {
                    let _ = arrived.send(());
                    tokio::time::sleep(ENTRA_DELAY).await;
                    Json(json!({
                        "token_type": "Bearer",
                        "expires_in": 3599,
                        "ext_expires_in": 3599,
                        "access_token": issued,
                    }))
                },
            ),
        )
        .with_state(arrived);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, arrivals, access_token)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_fails_readiness_at_once_and_lets_an_exchange_in_flight_finish() {
    let issuer = LocalIssuer::start(clock::system()).await.unwrap();
    let (entra, mut arrivals, issued) = slow_entra().await;
    let (_dir, path) = config_file(&serve_config(&issuer.url(), &format!("http://{entra}")));
    let (mut broker, url) = serve(&path).await;

    // A GitHub job asks for a token; Entra is slow to answer.
    let job_token = issuer.mint(github_claims("contoso/app", "main")).unwrap();
    let exchange = tokio::spawn({
        let http = client();
        let url = format!("{url}/v1/token");
        async move {
            let response = http
                .post(url)
                .bearer_auth(job_token)
                .form(&[("scope", ARM)])
                .send()
                .await?;
            let status = response.status();
            let body: Value = response.json().await?;
            Ok::<_, reqwest::Error>((status, body))
        }
    });
    match tokio::time::timeout(Duration::from_secs(20), arrivals.recv()).await {
        Ok(Some(())) => {}
        _ => broker.fail("the exchange never reached Entra"),
    }

    // The orchestrator stops the broker while the exchange waits on Entra.
    let stopped_at = Instant::now();
    broker.terminate().await;

    // Readiness fails at once (the broker drains before it stops accepting; see
    // tests/attacks/connections.rs), while the exchange in flight is still being served.
    let http = client();
    let readyz = format!("{url}/readyz");
    loop {
        match http.get(&readyz).send().await {
            // Refused, or reset before an answer: either way, turned away.
            Err(e) if !e.is_timeout() => break,
            Ok(r) if r.status() == 503 => break,
            _ => {}
        }
        if stopped_at.elapsed() > ENTRA_DELAY / 2 {
            broker.fail("still ready after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !exchange.is_finished(),
        "the exchange should still be in flight"
    );

    let (status, body) = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .unwrap_or_else(|_| broker.fail("the exchange in flight never completed"))
        .unwrap()
        .unwrap_or_else(|e| broker.fail(&format!("the exchange in flight was cut off: {e}")));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], issued.as_str());
    assert_eq!(body["identity"]["client_id"], CLIENT);

    broker.exits_cleanly(SHUTDOWN).await;
    assert!(
        arrivals.try_recv().is_err(),
        "Entra was called more than once"
    );
}
