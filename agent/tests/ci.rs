//! `wif-agent token` and `exec` as a CI job runs them: the real binary, against the real
//! broker, with GitHub Actions and Azure Pipelines token endpoints emulated as
//! docs/agent.md describes them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use wif_tests::ci::{AzurePipelinesEmulator, GitHubActionsEmulator};
use wif_tests::*;

const AGENT: &str = env!("CARGO_BIN_EXE_wif-agent");
/// Longest any one run of the binary may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `wif-agent ARGS` with only `env` (and PATH) set, as a CI step would.
async fn agent(env: &[(String, String)], args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(AGENT);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().unwrap();
    let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("wif-agent {args:?} did not finish within {RUN_LIMIT:?}"))
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "wif-agent failed; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

fn assert_deploy_token(stack: &Stack, token: &str) {
    let claims = stack.verify_access_token(token);
    assert_eq!(claims["appid"], DEPLOY_CLIENT, "{claims}");
}

#[tokio::test]
async fn a_github_job_on_main_prints_a_token_for_management_azure_com() {
    let stack = Stack::start().await;
    let github = GitHubActionsEmulator::start(&stack.github, REPO, "main", 300).await;
    let broker = stack.broker.url();
    let run = agent(
        &github.env(),
        &["token", "--scope", ARM, "--broker", &broker],
    )
    .await
    .ok();
    let answer: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["client_id"], DEPLOY_CLIENT);
    assert_eq!(answer["tenant_id"], TENANT);
    assert!(answer["expires_on"].as_u64().unwrap() > stack.clock_now());
    assert_deploy_token(&stack, answer["access_token"].as_str().unwrap());
    assert_eq!(github.tokens_issued(), 1);
    assert!(
        !run.stderr.contains("eyJ"),
        "a token reached the log: {}",
        run.stderr
    );

    let raw = agent(
        &github.env(),
        &[
            "token", "--scope", ARM, "--broker", &broker, "--format", "raw",
        ],
    )
    .await
    .ok();
    assert_deploy_token(&stack, raw.stdout.trim());

    let env = agent(
        &github.env(),
        &[
            "token", "--scope", ARM, "--broker", &broker, "--format", "env",
        ],
    )
    .await
    .ok();
    let exported: std::collections::HashMap<&str, &str> = env
        .stdout
        .lines()
        .map(|l| {
            let (name, value) = l.strip_prefix("export ").unwrap().split_once('=').unwrap();
            (name, value.trim_matches('\''))
        })
        .collect();
    assert_deploy_token(&stack, exported["AZURE_ACCESS_TOKEN"]);
    assert_eq!(exported["AZURE_CLIENT_ID"], DEPLOY_CLIENT);
    assert_eq!(exported["AZURE_TENANT_ID"], TENANT);
    assert!(
        exported["AZURE_ACCESS_TOKEN_EXPIRES_ON"]
            .parse::<u64>()
            .is_ok()
    );
}

#[tokio::test]
async fn an_azure_pipelines_job_prints_a_token_through_its_service_connection() {
    let stack = Stack::start().await;
    let pipelines = AzurePipelinesEmulator::start(&stack.ado, 600).await;
    let run = agent(
        &pipelines.env(),
        &[
            "token",
            "--scope",
            ARM,
            "--broker",
            &stack.broker.url(),
            "--format",
            "raw",
        ],
    )
    .await
    .ok();
    assert_deploy_token(&stack, run.stdout.trim());
    assert_eq!(pipelines.tokens_issued(), 1);
}

#[tokio::test]
async fn a_wrong_request_bearer_fails_with_a_message_naming_github_and_401() {
    let stack = Stack::start().await;
    let github = GitHubActionsEmulator::start(&stack.github, REPO, "main", 300).await;
    let mut env = github.env();
    for (name, value) in &mut env {
        if name == "ACTIONS_ID_TOKEN_REQUEST_TOKEN" {
            *value = "not-the-job-token".into();
        }
    }
    let run = agent(
        &env,
        &["token", "--scope", ARM, "--broker", &stack.broker.url()],
    )
    .await;
    assert_ne!(run.code, 0);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains("GitHub Actions answered HTTP 401"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("not-the-job-token"), "{}", run.stderr);
    assert_eq!(github.tokens_issued(), 0);
}

#[tokio::test]
async fn without_a_service_connection_azure_pipelines_is_named_as_what_is_missing() {
    let stack = Stack::start().await;
    let pipelines = AzurePipelinesEmulator::start(&stack.ado, 600).await;
    let env: Vec<_> = pipelines
        .env()
        .into_iter()
        .filter(|(k, _)| k != "AZURE_SERVICE_CONNECTION_ID")
        .collect();
    let run = agent(
        &env,
        &["token", "--scope", ARM, "--broker", &stack.broker.url()],
    )
    .await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("--service-connection"),
        "{}",
        run.stderr
    );
}

const CURL_TOKEN: &str = r#"curl -sf -H "X-IDENTITY-HEADER: $IDENTITY_HEADER" "$IDENTITY_ENDPOINT?api-version=2019-08-01&resource=$1""#;

#[tokio::test]
async fn exec_gives_the_command_an_app_service_endpoint_and_passes_its_exit_code_back() {
    let stack = Stack::start().await;
    let github = GitHubActionsEmulator::start(&stack.github, REPO, "main", 300).await;
    let broker = stack.broker.url();
    let script =
        format!("{CURL_TOKEN}; echo; echo \"authority=$AZURE_POD_IDENTITY_AUTHORITY_HOST\"");
    let run = agent(
        &github.env(),
        &[
            "exec",
            "--broker",
            &broker,
            "--",
            "sh",
            "-c",
            &script,
            "sh",
            "https://management.azure.com",
        ],
    )
    .await
    .ok();
    let mut lines = run.stdout.lines();
    let answer: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_deploy_token(&stack, answer["access_token"].as_str().unwrap());
    assert_eq!(answer["client_id"], DEPLOY_CLIENT);
    let authority = lines.next().unwrap();
    assert!(
        authority.starts_with("authority=http://127.0.0.1:"),
        "{authority}"
    );

    // The same endpoint for clients that know only App Service's 2017-09-01 protocol.
    let run = agent(
        &github.env(),
        &[
            "exec",
            "--broker",
            &broker,
            "--",
            "sh",
            "-c",
            r#"curl -sf -H "secret: $MSI_SECRET" "$MSI_ENDPOINT?api-version=2017-09-01&resource=https://management.azure.com""#,
        ],
    )
    .await
    .ok();
    let answer: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_deploy_token(&stack, answer["access_token"].as_str().unwrap());

    let run = agent(
        &github.env(),
        &["exec", "--broker", &broker, "--", "sh", "-c", "exit 7"],
    )
    .await;
    assert_eq!(run.code, 7, "{}", run.stderr);

    // Without the header secret the endpoint refuses (the SSRF guard still stands).
    let run = agent(
        &github.env(),
        &[
            "exec",
            "--broker",
            &broker,
            "--",
            "sh",
            "-c",
            r#"curl -s -o /dev/null -w '%{http_code}' "$IDENTITY_ENDPOINT?api-version=2019-08-01&resource=https://management.azure.com""#,
        ],
    )
    .await
    .ok();
    assert_ne!(run.stdout.trim(), "200");
}

/// Whether process `pid` has a child (Linux: any `/proc/N/stat` whose parent is `pid`).
fn has_child(pid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|stat| {
            // `pid (comm) state ppid ...`; comm may hold spaces, so read after the last ')'.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .is_some_and(|ppid| ppid == pid.to_string())
        })
    })
}

#[tokio::test]
async fn exec_forwards_sigterm_and_reports_it_as_128_plus_the_signal() {
    let stack = Stack::start().await;
    let github = GitHubActionsEmulator::start(&stack.github, REPO, "main", 300).await;
    let mut child = tokio::process::Command::new(AGENT)
        .args(["exec", "--broker", &stack.broker.url(), "--", "sleep", "30"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(github.env())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Signal once the command runs (the agent's child), however loaded the machine is.
    let agent_pid = child.id().unwrap();
    let started = std::time::Instant::now();
    while !has_child(agent_pid) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "exec never started its command"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exec did not end after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(128 + 15));
}

#[tokio::test]
async fn a_long_job_still_gets_tokens_after_its_first_ci_token_expired() {
    // No leeway: a CI token is refused the second it expires, as the test needs.
    let stack = Stack::start_with(|c| c.tokens.leeway_secs = 0).await;
    let github = GitHubActionsEmulator::start(&stack.github, REPO, "main", 3).await;
    // A token from the job's start, to show that the broker does refuse it later.
    let first: Value = stack
        .http
        .get(format!(
            "{}&audience=api://AzureADTokenExchange",
            github.request_url()
        ))
        .bearer_auth(wif_tests::ci::GITHUB_REQUEST_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = first["value"].as_str().unwrap().to_owned();

    let script = format!(
        "set -e; {CURL_TOKEN} >/dev/null; sleep 5; \
         curl -sf -H \"X-IDENTITY-HEADER: $IDENTITY_HEADER\" \
         \"$IDENTITY_ENDPOINT?api-version=2019-08-01&resource=https://vault.azure.net\""
    );
    let before = github.tokens_issued();
    let run = agent(
        &github.env(),
        &[
            "exec",
            "--broker",
            &stack.broker.url(),
            "--",
            "sh",
            "-c",
            &script,
            "sh",
            "https://management.azure.com",
        ],
    )
    .await
    .ok();
    let answer: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(answer["resource"], "https://vault.azure.net");
    assert_deploy_token(&stack, answer["access_token"].as_str().unwrap());
    assert!(
        github.tokens_issued() >= before + 2,
        "the agent asked GitHub {} time(s)",
        github.tokens_issued() - before
    );
    // The token from the start of the job is expired by now: the agent did not use it.
    let stale = stack
        .exchange(&first, "https://vault.azure.net/.default")
        .await;
    assert_eq!(stale.status.as_u16(), 401, "{}", stale.body);
}

trait ClockNow {
    fn clock_now(&self) -> u64;
}

impl ClockNow for Stack {
    fn clock_now(&self) -> u64 {
        use wif_proto::clock::Clock;
        self.clock.now()
    }
}

#[tokio::test]
async fn the_ci_emulators_refuse_what_the_platforms_refuse() {
    let stack = Stack::start().await;
    let github = GitHubActionsEmulator::start(&stack.github, REPO, "main", 300).await;
    let pipelines = AzurePipelinesEmulator::start(&stack.ado, 600).await;
    let http = &stack.http;
    let gh = |url: String, bearer: &'static str| http.get(url).bearer_auth(bearer).send();
    let aud = "&audience=api%3A%2F%2FAzureADTokenExchange";
    let ok = wif_tests::ci::GITHUB_REQUEST_TOKEN;
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(
            gh(format!("{}{aud}", github.request_url()), ok)
                .await
                .unwrap()
        ),
        200
    );
    assert_eq!(
        status(
            gh(format!("{}{aud}", github.request_url()), "wrong")
                .await
                .unwrap()
        ),
        401
    );
    assert_eq!(status(gh(github.request_url(), ok).await.unwrap()), 400);
    let no_version = github.request_url().replace("?api-version=2.0", "?x=1");
    assert_eq!(
        status(gh(format!("{no_version}{aud}"), ok).await.unwrap()),
        400
    );

    let ado = |query: &str, bearer: &str, json: bool| {
        let mut request = http
            .post(format!("{}{query}", pipelines.request_uri()))
            .bearer_auth(bearer);
        if json {
            request = request
                .header("Content-Type", "application/json")
                .body("{}");
        }
        request.send()
    };
    let good = format!(
        "?api-version=7.1&serviceConnectionId={}",
        wif_tests::ci::ADO_SERVICE_CONNECTION_ID
    );
    let token = wif_tests::ci::ADO_ACCESS_TOKEN;
    let answer = ado(&good, token, true).await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let body: Value = answer.json().await.unwrap();
    let oidc = body["oidcToken"].as_str().unwrap();
    assert_eq!(stack.exchange(oidc, ARM).await.status.as_u16(), 200);
    assert_eq!(status(ado(&good, "wrong", true).await.unwrap()), 401);
    assert_eq!(status(ado(&good, token, false).await.unwrap()), 415);
    assert_eq!(
        status(ado("?api-version=7.1", token, true).await.unwrap()),
        400
    );
    let no_version = format!(
        "?serviceConnectionId={}",
        wif_tests::ci::ADO_SERVICE_CONNECTION_ID
    );
    assert_eq!(status(ado(&no_version, token, true).await.unwrap()), 400);
    assert_eq!(
        status(
            ado("?api-version=7.1&serviceConnectionId=other", token, true)
                .await
                .unwrap()
        ),
        404
    );
    assert_eq!(github.tokens_issued(), 1);
    assert_eq!(pipelines.tokens_issued(), 1);
}

/// A refusal names the broker and carries its request id, which finds the decision in the
/// broker's audit trail.
#[tokio::test]
async fn a_refusal_names_the_broker_and_quotes_its_request_id() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("job.jwt");
    std::fs::write(&token_file, stack.github_token("no-credential-names-this")).unwrap();
    let broker = stack.broker.url();
    let run = agent(
        &[],
        &[
            "token",
            "--scope",
            ARM,
            "--broker",
            &broker,
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let said = format!("the broker at {broker} refused: ");
    assert!(run.stderr.contains(&said), "{}", run.stderr);
    assert!(
        run.stderr.contains("(no_matching_credential, request "),
        "{}",
        run.stderr
    );
    let request_id = run
        .stderr
        .split("request ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap();
    assert!(
        !request_id.is_empty() && request_id != "-",
        "no request id: {}",
        run.stderr
    );

    let closed = format!("http://127.0.0.1:{}", {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    });
    let run = agent(
        &[],
        &[
            "token",
            "--scope",
            ARM,
            "--broker",
            &closed,
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "the broker is unavailable: cannot connect to {closed}"
        )),
        "{}",
        run.stderr
    );
}
