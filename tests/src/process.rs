//! Real processes for tests: a command with a clean environment, free loopback ports, and
//! pipes read in the background. Every test that runs `wif-broker` or `wif-agent` as a
//! process (the broker's, the agent's and this crate's) uses these.

use std::ffi::OsStr;
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// `program` with a clean environment: no `WIF_*` override, `RUST_LOG` or proxy of the
/// developer's shell leaks into the test; no colours; stdin closed, stdout and stderr
/// piped; killed when dropped. Pass `env!("CARGO_BIN_EXE_wif-broker")` and the like.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let upper = name.to_string_lossy().to_ascii_uppercase();
        if upper.starts_with("WIF_") || upper.ends_with("_PROXY") || upper == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    cmd.env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads a pipe into a buffer in the background, so the child never blocks on a full pipe.
pub fn collect(mut pipe: impl AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = buffer.clone();
    tokio::spawn(async move {
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buffer
}

/// The end of what a process printed, enough to see why it failed.
pub fn tail(buffer: &Mutex<Vec<u8>>) -> String {
    const KEEP: usize = 6000;
    let bytes = buffer.lock().unwrap();
    let text = String::from_utf8_lossy(&bytes);
    match text.char_indices().rev().nth(KEEP) {
        Some((at, _)) => format!("[...]{}", &text[at..]),
        None => text.into_owned(),
    }
}
