//! What the agent's process tests share: `wif-agent serve` started the same way.

use std::process::Stdio;

pub const AGENT: &str = env!("CARGO_BIN_EXE_wif-agent");
/// The identity-header secret every test agent is given.
pub const SECRET: &str = "a-sidecar-secret-of-32-characters";

/// `wif-agent serve` with a clean environment (only the identity-header secret and a
/// quiet log), no input, its output dropped, killed when the handle drops. Callers add
/// the arguments.
pub fn agent_serve() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(AGENT);
    command
        .arg("serve")
        .env_clear()
        .env("WIF_AGENT_IDENTITY_HEADER", SECRET)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}
