//! Where the agent gets the external token it presents to the broker. Asked again for
//! every exchange: kubelet rewrites a projected token file at 80% of its life, and a CI
//! job's token lives minutes, so a cached copy would go stale.

use std::path::PathBuf;
use std::time::Duration;

/// Why no external token could be had.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("cannot read the token file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("the token command failed: {0}")]
    Command(String),
    #[error("the CI platform did not give a token: {0}")]
    Ci(String),
    #[error("the token source gave an empty token")]
    Empty,
}

/// A source of external OIDC tokens (the seam between the agent and its platform).
#[async_trait::async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// A current token, fetched or read now.
    async fn token(&self) -> Result<String, SourceError>;
    /// For logs and `/readyz`: where tokens come from (never the token).
    fn describe(&self) -> String;
}

/// Largest token accepted from any source (the broker refuses more than 16 KiB anyway).
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

fn checked(raw: String) -> Result<String, SourceError> {
    let token = raw.trim().to_owned();
    if token.is_empty() {
        return Err(SourceError::Empty);
    }
    Ok(token)
}

/// A file re-read for every exchange (`AZURE_FEDERATED_TOKEN_FILE`, a projected token).
#[derive(Debug, Clone)]
pub struct FileSource(pub PathBuf);

#[async_trait::async_trait]
impl TokenSource for FileSource {
    async fn token(&self) -> Result<String, SourceError> {
        let fail = |reason: String| SourceError::File {
            path: self.0.display().to_string(),
            reason,
        };
        let bytes = tokio::fs::read(&self.0)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if bytes.len() > MAX_TOKEN_BYTES {
            return Err(fail(format!("larger than {MAX_TOKEN_BYTES} bytes")));
        }
        checked(String::from_utf8(bytes).map_err(|_| fail("not UTF-8".into()))?)
    }

    fn describe(&self) -> String {
        format!("file {}", self.0.display())
    }
}

/// A command run through `sh -c` for every exchange; its standard output is the token.
#[derive(Debug, Clone)]
pub struct CommandSource {
    pub command: String,
    pub timeout: Duration,
}

#[async_trait::async_trait]
impl TokenSource for CommandSource {
    async fn token(&self) -> Result<String, SourceError> {
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SourceError::Command(e.to_string()))?;
        let output = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                SourceError::Command(format!("no answer within {} s", self.timeout.as_secs()))
            })?
            .map_err(|e| SourceError::Command(e.to_string()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(SourceError::Command(format!(
                "exited with {}: {}",
                output.status,
                stderr.lines().next().unwrap_or_default()
            )));
        }
        if output.stdout.len() > MAX_TOKEN_BYTES {
            return Err(SourceError::Command(format!(
                "printed more than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        checked(
            String::from_utf8(output.stdout)
                .map_err(|_| SourceError::Command("printed non-UTF-8".into()))?,
        )
    }

    fn describe(&self) -> String {
        "a command".into()
    }
}
