//! `wif-agent exec -- CMD ARGS`: serve the managed-identity endpoints on an ephemeral
//! loopback port for the life of one command, so the Azure SDKs and CLIs inside a CI job
//! get tokens without a secret. The external token source is asked on every exchange, so
//! a job that runs for hours presents a fresh CI token each time the broker needs one.
//!
//! The child sees:
//! - `IDENTITY_ENDPOINT=http://127.0.0.1:PORT/msi/token` and `IDENTITY_HEADER` (App Service);
//! - `MSI_ENDPOINT` and `MSI_SECRET`, the same endpoint and secret for clients that only
//!   know App Service's older 2017-09-01 protocol;
//! - `AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:PORT` (IMDS, Python and JavaScript);
//! - `AZURE_FEDERATED_TOKEN_FILE` removed, so JavaScript's workload-identity credential does
//!   not send the raw CI token straight to Entra.
//!
//! SIGINT and SIGTERM are passed on to the child; its exit code becomes ours (a child
//! killed by signal N gives 128 + N). The header secret is never printed or logged.

use std::ffi::OsString;
use std::process::ExitStatus;
use std::sync::Arc;

use anyhow::Context;

use crate::serve::{Agent, RunningAgent};

/// Variables `exec` sets for the child.
pub const IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";
pub const IDENTITY_HEADER: &str = "IDENTITY_HEADER";
pub const AUTHORITY_HOST: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
pub const MSI_ENDPOINT: &str = "MSI_ENDPOINT";
pub const MSI_SECRET: &str = "MSI_SECRET";

/// A fresh 32-byte secret, hex-encoded, for the App Service protocol's header.
pub fn header_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("cannot draw random bytes for the header secret"))?;
    Ok(hex::encode(bytes))
}

/// The exit code a shell would report for `status`.
pub fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return u8::try_from(code & 0xff).unwrap_or(1);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return u8::try_from(128 + (signal & 0x7f)).unwrap_or(1);
        }
    }
    1
}

/// Serves `agent` (built with `header_secret`) on `127.0.0.1:0`, runs `command` with the
/// endpoint variables, and returns its exit code once it ends.
pub async fn run(
    agent: Arc<Agent>,
    header_secret: &str,
    command: &[OsString],
) -> anyhow::Result<u8> {
    let (program, args) = command
        .split_first()
        .context("no command to run: give it after `--`")?;
    // Watch SIGINT and SIGTERM before anything else: one that arrives while the endpoint
    // starts is held and forwarded as soon as the command runs, instead of killing the
    // agent with the command never told.
    let signals = Signals::watch()?;
    let running = RunningAgent::start(agent, "127.0.0.1:0", None)
        .await
        .context("cannot listen on 127.0.0.1")?;
    let base = running
        .url()
        .context("the loopback listener has no address")?;
    tracing::debug!(url = %base, "serving the child's managed-identity endpoints");
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .env(IDENTITY_ENDPOINT, format!("{base}/msi/token"))
        .env(IDENTITY_HEADER, header_secret)
        .env(MSI_ENDPOINT, format!("{base}/msi/token"))
        .env(MSI_SECRET, header_secret)
        .env(AUTHORITY_HOST, &base)
        .env_remove("AZURE_FEDERATED_TOKEN_FILE")
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            running.shutdown().await;
            return Err(e).with_context(|| {
                format!("cannot run {}", std::path::Path::new(program).display())
            });
        }
    };
    let status = signals.forward_until_exit(&mut child).await;
    running.shutdown().await;
    Ok(exit_code(status?))
}

/// The signals `exec` forwards to its command.
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn watch() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
        })
    }

    /// Waits for `child`, passing on every SIGINT and SIGTERM the agent receives.
    async fn forward_until_exit(
        mut self,
        child: &mut tokio::process::Child,
    ) -> anyhow::Result<ExitStatus> {
        use rustix::process::{Pid, Signal, kill_process};
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw);
        loop {
            let forward = tokio::select! {
                status = child.wait() => return Ok(status?),
                _ = self.interrupt.recv() => Signal::INT,
                _ = self.terminate.recv() => Signal::TERM,
            };
            if let Some(pid) = pid {
                // The child may have just exited; then there is nobody to tell.
                let _ = kill_process(pid, forward);
            }
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn watch() -> anyhow::Result<Self> {
        Ok(Self)
    }

    async fn forward_until_exit(
        self,
        child: &mut tokio::process::Child,
    ) -> anyhow::Result<ExitStatus> {
        Ok(child.wait().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_secret_is_64_hex_digits_and_differs_each_time() {
        let a = header_secret().unwrap();
        let b = header_secret().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[cfg(unix)]
    #[test]
    fn a_signal_death_is_reported_as_128_plus_the_signal() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
    }
}
