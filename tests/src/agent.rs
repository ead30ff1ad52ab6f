//! An in-process `wif-agent` in front of a [`Stack`]'s broker, fed by a token file the
//! test rewrites, and a way to run the real Python `azure-identity` SDK against it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use wif_agent::broker::BrokerClient;
use wif_agent::serve::{Agent, AgentSettings, RunningAgent};
use wif_agent::source::FileSource;
use wif_broker::clock::SharedClock;

use crate::Stack;

/// The identity header secret the tests' agents require.
pub const HEADER_SECRET: &str = "sdk-tests-identity-header-secret";

/// A running agent and the token file it reads for every exchange.
pub struct TestAgent {
    pub running: RunningAgent,
    pub token_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestAgent {
    /// An agent on a free loopback port, exchanging `stack.github_token("main")` (written
    /// to its token file) at the stack's broker.
    pub async fn start(stack: &Stack) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("azure-identity-token");
        std::fs::write(&token_file, stack.github_token("main")).unwrap();
        Self::start_with_file(stack, dir, token_file, None).await
    }

    /// Like [`TestAgent::start`], for a broker serving HTTPS with a certificate `ca` signed.
    pub async fn start_trusting(stack: &Stack, ca: &Path) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("azure-identity-token");
        std::fs::write(&token_file, stack.github_token("main")).unwrap();
        Self::start_with_file(stack, dir, token_file, Some(ca)).await
    }

    /// Like [`TestAgent::start`], but with no token file yet: any exchange fails.
    pub async fn start_without_token(stack: &Stack) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("azure-identity-token");
        Self::start_with_file(stack, dir, token_file, None).await
    }

    async fn start_with_file(
        stack: &Stack,
        dir: tempfile::TempDir,
        token_file: PathBuf,
        ca: Option<&Path>,
    ) -> TestAgent {
        let client =
            BrokerClient::new(&stack.broker.url(), Duration::from_secs(3), 1, ca, None).unwrap();
        let clock: SharedClock = stack.clock.clone();
        let agent = Agent::new(
            AgentSettings {
                client,
                source: Arc::new(FileSource(token_file.clone())),
                header_secret: Some(HEADER_SECRET.into()),
                default_identity: None,
                min_remaining_secs: 300,
                refresh_before_secs: 600,
                imds: true,
            },
            clock,
        );
        let running = RunningAgent::start(agent, "127.0.0.1:0", None)
            .await
            .unwrap();
        TestAgent {
            running,
            token_file,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        self.running.url().unwrap()
    }

    /// `IDENTITY_ENDPOINT` for the App Service protocol.
    pub fn identity_endpoint(&self) -> String {
        format!("{}/msi/token", self.url())
    }

    /// Replaces the token file's content, as kubelet does when it rotates a projected token.
    pub fn rewrite_token(&self, token: &str) {
        let tmp = self.token_file.with_extension("new");
        std::fs::write(&tmp, token).unwrap();
        std::fs::rename(&tmp, &self.token_file).unwrap();
    }

    pub fn token_file(&self) -> &Path {
        &self.token_file
    }
}

/// How the Python SDK is asked for a token (`tests/python/get_token.py`'s modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PythonMode {
    /// `ManagedIdentityCredential` with `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`.
    ManagedAppService,
    /// `ManagedIdentityCredential` with `AZURE_POD_IDENTITY_AUTHORITY_HOST` only.
    ManagedImds,
    /// `DefaultAzureCredential` with the App Service variables.
    Default,
}

impl PythonMode {
    fn arg(self) -> &'static str {
        match self {
            PythonMode::ManagedAppService => "managed-appservice",
            PythonMode::ManagedImds => "managed-imds",
            PythonMode::Default => "default",
        }
    }
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The interpreter with `azure-identity` installed: `WIF_TEST_PYTHON`, else `.venv` at
/// the repository root (`.ci/run` creates it). `None` when it is missing or has no
/// `azure-identity` and this is not CI; under `CI=true` that is a failure instead.
pub fn python() -> Option<PathBuf> {
    let python = std::env::var_os("WIF_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    let usable = Command::new(&python)
        .args(["-c", "import azure.identity"])
        .output()
        .is_ok_and(|o| o.status.success());
    if usable {
        return Some(python);
    }
    let why = format!(
        "{} cannot import azure.identity; create it with `python3 -m venv .venv && \
         .venv/bin/pip install azure-identity msal` (or set WIF_TEST_PYTHON)",
        python.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and the Python Azure SDK is unavailable: {why}");
    }
    eprintln!("skipping the Python SDK part of this test: {why}");
    None
}

/// Runs `get_token.py` with only the environment `mode` needs; returns the token and
/// `expires_on`, or the SDK's error text.
pub async fn python_get_token(
    python: &Path,
    mode: PythonMode,
    agent: &TestAgent,
    scope: &str,
) -> Result<(String, u64), String> {
    let mut command = tokio::process::Command::new(python);
    command
        .env_clear()
        .arg(repo_root().join("tests/python/get_token.py"))
        .arg(mode.arg())
        .arg(scope);
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    let home = agent._dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    command.env("HOME", &home);
    match mode {
        PythonMode::ManagedAppService | PythonMode::Default => {
            command
                .env("IDENTITY_ENDPOINT", agent.identity_endpoint())
                .env("IDENTITY_HEADER", HEADER_SECRET);
        }
        PythonMode::ManagedImds => {
            command.env("AZURE_POD_IDENTITY_AUTHORITY_HOST", agent.url());
        }
    }
    if mode == PythonMode::Default {
        // Only the production credentials (environment, workload identity, managed
        // identity): the developer tools are not consulted.
        command.env("AZURE_TOKEN_CREDENTIALS", "prod");
    }
    command.kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .unwrap_or_else(|_| panic!("get_token.py {} gave no answer within 120 s", mode.arg()))
        .unwrap();
    if !output.status.success() {
        return Err(format!(
            "{} (exit {})",
            String::from_utf8_lossy(&output.stderr).trim(),
            output.status
        ));
    }
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "get_token.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    Ok((
        printed["token"].as_str().unwrap().to_owned(),
        printed["expires_on"].as_u64().unwrap(),
    ))
}
