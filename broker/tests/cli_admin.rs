//! The admin commands of `wif-broker` as an admin runs them: the real binary against a
//! broker serving the admin API on loopback, with a static admin token. Every command is
//! bounded in time, so a hang fails the test instead of blocking it.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;
use wif_broker::cli::admin::{new_admin_token, token_hash};
use wif_broker::clock;
use wif_broker::dev::issuer::{LocalIssuer, github_claims};
use wif_broker::server::RunningBroker;
use wif_config::BrokerConfig;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6c";
const MAIN_SUBJECT: &str = "repo:contoso/app:ref:refs/heads/main";
const RELEASES: &str = "claims['repository'] eq 'contoso/app' and claims['actor'] eq 'octocat'";

/// Longest one CLI command may take.
const QUICK: Duration = Duration::from_secs(30);

/// A broker with the admin API, an issuer for its credentials, and an admin token.
struct Admin {
    issuer: LocalIssuer,
    broker: RunningBroker,
    token: String,
    dir: tempfile::TempDir,
}

impl Admin {
    async fn start() -> Self {
        let clock = clock::system();
        let issuer = LocalIssuer::start(clock.clone()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let token = new_admin_token().unwrap();
        let tokens_file = dir.path().join("admin-tokens");
        std::fs::write(
            &tokens_file,
            format!("admin alice {}\n", token_hash(&token)),
        )
        .unwrap();
        let mut config = BrokerConfig::default();
        config.server.listen = "127.0.0.1:0".into();
        config.server.drain_secs = 0;
        config.store.url = "sqlite::memory:".into();
        config.outbound.allow_loopback_http = true;
        config.admin.tokens_file = Some(tokens_file);
        let broker = RunningBroker::start(&config, clock).await.unwrap();
        Self {
            issuer,
            broker,
            token,
            dir,
        }
    }

    /// `wif-broker <args>` with the server and admin token in the environment, as an admin
    /// would set them, and nothing of the developer's shell leaking in.
    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wif-broker"));
        for (name, _) in std::env::vars_os() {
            let upper = name.to_string_lossy().to_ascii_uppercase();
            if upper.starts_with("WIF_") || upper.ends_with("_PROXY") || upper == "RUST_LOG" {
                cmd.env_remove(&name);
            }
        }
        cmd.env("WIF_SERVER_URL", self.broker.url())
            .env("WIF_ADMIN_TOKEN", &self.token)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(QUICK, cmd.output()).await {
            Ok(output) => output.unwrap(),
            Err(_) => panic!("wif-broker {args:?} did not finish within {QUICK:?}"),
        };
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(
            !stdout.contains(&self.token) && !stderr.contains(&self.token),
            "the admin token was printed by {args:?}"
        );
        output
    }

    /// Runs a command that must succeed; returns its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        if !output.status.success() {
            panic!(
                "wif-broker {args:?} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                output.status,
                text(&output.stdout),
                text(&output.stderr)
            );
        }
        text(&output.stdout)
    }

    /// Runs a command with `-o json`; returns the parsed JSON.
    async fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        let stdout = self.ok(&args).await;
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}\n{stdout}"))
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    async fn create_deploy_identity(&self) {
        let out = self
            .ok(&[
                "identity",
                "create",
                "deploy",
                "--tenant-id",
                TENANT,
                "--client-id",
                CLIENT,
            ])
            .await;
        assert!(out.starts_with("created identity deploy\n"), "{out}");
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn at(path: &std::path::Path) -> String {
    format!("@{}", path.display())
}

#[tokio::test]
async fn a_credential_saved_as_graph_json_is_registered_again_unchanged() {
    let admin = Admin::start().await;
    let issuer = admin.issuer.url();
    admin.create_deploy_identity().await;
    let out = admin
        .ok(&[
            "credential",
            "create",
            "--identity",
            "deploy",
            "--name",
            "main",
            "--issuer",
            &issuer,
            "--subject",
            MAIN_SUBJECT,
            "--audiences",
            "api://AzureADTokenExchange",
            "--description",
            "deploys from main",
        ])
        .await;
    assert!(
        out.starts_with("created credential main for identity deploy\n"),
        "{out}"
    );

    let original = admin
        .json(&["credential", "show", "--identity", "deploy", "main"])
        .await;
    assert_eq!(original["subject"], MAIN_SUBJECT);
    assert_eq!(original["description"], "deploys from main");
    let saved = admin.file(
        "main.json",
        &serde_json::to_string_pretty(&original).unwrap(),
    );

    let out = admin
        .ok(&["credential", "delete", "--identity", "deploy", "main"])
        .await;
    assert_eq!(out, "deleted credential main of identity deploy\n");
    let listed = admin
        .json(&["credential", "list", "--identity", "deploy"])
        .await;
    assert_eq!(listed["value"], json!([]));

    let recreated = admin
        .json(&[
            "credential",
            "create",
            "--identity",
            "deploy",
            "--parameters",
            &at(&saved),
        ])
        .await;
    assert_ne!(
        recreated["id"], original["id"],
        "a new credential has a new id"
    );
    let without_id = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("id");
        v
    };
    assert_eq!(without_id(&recreated), without_id(&original));

    let table = admin
        .ok(&["credential", "list", "--identity", "deploy"])
        .await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME  "), "{table}");
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[1].starts_with("main  "), "{table}");
    assert!(
        lines[1].contains(&format!("subject {MAIN_SUBJECT}")),
        "{table}"
    );

    // The same credential again is a conflict, reported with the request id; exit 1.
    let again = admin
        .run(&[
            "credential",
            "create",
            "--identity",
            "deploy",
            "--parameters",
            &at(&saved),
        ])
        .await;
    assert_eq!(again.status.code(), Some(1));
    let stderr = text(&again.stderr);
    assert!(
        stderr.starts_with(
            "error: a federated credential with this name already exists on this identity (conflict, request "
        ),
        "{stderr}"
    );
    assert!(text(&again.stdout).is_empty());
}

#[tokio::test]
async fn simulate_names_the_clause_a_token_fails() {
    let admin = Admin::start().await;
    let issuer = admin.issuer.url();
    admin.create_deploy_identity().await;
    admin
        .ok(&[
            "credential",
            "create",
            "--identity",
            "deploy",
            "--name",
            "releases",
            "--issuer",
            &issuer,
            "--claims-matching-expression",
            RELEASES,
        ])
        .await;

    // A job on contoso/app, started by someone other than octocat.
    let mut claims = github_claims("contoso/app", "main");
    claims["actor"] = json!("mallory");
    let token = admin.issuer.mint(claims).unwrap();
    let token_file = admin.file("job.jwt", &token);
    let report = admin
        .ok(&[
            "simulate",
            "--token",
            &at(&token_file),
            "--identity",
            "deploy",
        ])
        .await;
    assert!(
        report.contains("near miss: deploy/releases failed expression clause"),
        "{report}"
    );
    assert!(
        report.contains(": claims['actor'] eq 'octocat'"),
        "{report}"
    );
    assert!(!report.starts_with("outcome:      ok\n"), "{report}");

    // octocat's job matches.
    let token = admin
        .issuer
        .mint(github_claims("contoso/app", "main"))
        .unwrap();
    let answer = admin.json(&["simulate", "--token", &token]).await;
    assert_eq!(answer["outcome"], "ok", "{answer}");
    assert_eq!(answer["identity"], "deploy", "{answer}");
}

#[tokio::test]
async fn the_audit_trail_lists_the_admin_writes() {
    let admin = Admin::start().await;
    admin.create_deploy_identity().await;
    admin
        .ok(&[
            "credential",
            "create",
            "--identity",
            "deploy",
            "--name",
            "main",
            "--issuer",
            &admin.issuer.url(),
            "--subject",
            MAIN_SUBJECT,
        ])
        .await;
    let events = admin
        .json(&["audit", "--since", "5m", "--identity", "deploy", "--all"])
        .await;
    let events = events["value"].as_array().unwrap();
    assert!(events.len() >= 2, "{events:?}");
    let table = admin.ok(&["audit", "--since", "5m"]).await;
    assert!(table.starts_with("TIME  "), "{table}");
    let writes: Vec<&str> = table.lines().filter(|l| l.contains(" alice ")).collect();
    assert!(
        writes
            .iter()
            .any(|l| l.contains("deploy") && l.contains("identity.put")),
        "{table}"
    );
    assert!(
        writes.iter().any(|l| l.contains("credential.create main")),
        "{table}"
    );

    // One event per page, followed to the end.
    let paged = admin
        .json(&["audit", "--since", "5m", "--limit", "1", "--all"])
        .await;
    assert!(paged["value"].as_array().unwrap().len() >= 2, "{paged}");
}

#[tokio::test]
async fn refusals_and_unreachable_brokers_exit_1_with_a_clear_message() {
    let admin = Admin::start().await;
    let missing = admin.run(&["identity", "show", "nobody"]).await;
    assert_eq!(missing.status.code(), Some(1));
    let stderr = text(&missing.stderr);
    assert!(
        stderr.starts_with("error: no identity named \"nobody\" (not_found, request "),
        "{stderr}"
    );

    let wrong_token = admin
        .run(&["identity", "list", "--admin-token", "not-a-token"])
        .await;
    assert_eq!(wrong_token.status.code(), Some(1));
    let stderr = text(&wrong_token.stderr);
    assert!(
        stderr.contains("(invalid_admin_token, request "),
        "{stderr}"
    );

    // Each invalid field on its own line, under the error.
    admin.create_deploy_identity().await;
    let invalid = admin
        .run(&[
            "credential",
            "create",
            "--identity",
            "deploy",
            "--name",
            "x",
            "--issuer",
            "https://example.com",
            "--subject",
            "",
        ])
        .await;
    assert_eq!(invalid.status.code(), Some(1));
    let stderr = text(&invalid.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines[0].contains("(invalid_request, request "), "{stderr}");
    assert!(lines[1].starts_with("  name: "), "{stderr}");
    assert_eq!(lines[2], "  subject: subject must not be empty", "{stderr}");

    let unreachable = admin
        .run(&["identity", "list", "--server", "http://127.0.0.1:9"])
        .await;
    assert_eq!(unreachable.status.code(), Some(1));
    let stderr = text(&unreachable.stderr);
    assert!(
        stderr.starts_with("error: cannot reach the broker at http://127.0.0.1:9/"),
        "{stderr}"
    );
}
