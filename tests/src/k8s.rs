//! Kubernetes checks with real tools, through `tests/python/k8s.py`: Helm's engine
//! (`helm-python-sdk`) renders and lints the chart, `kubernetes-validate` checks objects
//! against the Kubernetes schemas, cloudcoil's CRD models check ServiceMonitor and
//! cert-manager objects. `.ci/run` installs them into `.venv`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The Kubernetes versions objects are validated against: the oldest the chart supports
/// (native sidecars are on by default from 1.29) and the newest kubernetes-validate ships.
pub const KUBE_VERSIONS: &[&str] = &["1.29", "1.37"];

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The interpreter with the Kubernetes tools: `WIF_TEST_PYTHON`, else `.venv`. `None`
/// (with a printed reason) when they are missing outside CI; under `CI=true` a failure.
pub fn python() -> Option<PathBuf> {
    let python = std::env::var_os("WIF_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    let probe = Command::new(&python)
        .args([
            "-c",
            "import helm_python, kubernetes_validate, jsonschema, yaml, \
             cloudcoil.models.prometheus_operator, cloudcoil.models.cert_manager",
        ])
        .output();
    if probe.as_ref().is_ok_and(|o| o.status.success()) {
        return Some(python);
    }
    let detail = probe
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_else(|e| e.to_string());
    let why = format!(
        "{} lacks the Kubernetes test tools (helm-python-sdk, kubernetes-validate, \
         cloudcoil models): run .ci/run once, or install the versions it pins ({detail})",
        python.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {why}");
    }
    eprintln!("skipping the Kubernetes checks of this test: {why}");
    None
}

/// Runs `k8s.py MODE` with `request` on standard input; returns its JSON answer.
pub fn run(python: &Path, mode: &str, request: &Value) -> Value {
    let mut child = Command::new(python)
        .arg(repo_root().join("tests/python/k8s.py"))
        .arg(mode)
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "k8s.py {mode} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Schema problems of `objects` (empty when all are valid).
pub fn problems(python: &Path, objects: &[Value]) -> Vec<String> {
    let answer = run(
        python,
        "validate",
        &serde_json::json!({"kube_versions": KUBE_VERSIONS, "objects": objects}),
    );
    serde_json::from_value(answer["problems"].clone()).unwrap()
}
