//! The rules of docs/architecture.md that tools can check, checked:
//! - the agent and the CLI (`wif-cli`) link what they share with the broker (`wif-proto`,
//!   `wif-config`) and never the broker itself or what only the broker needs (the store,
//!   JWT verification, the OpenAPI generator); read from `cargo tree`, offline, from the
//!   lockfile;
//! - the checked-in OpenAPI document is valid OpenAPI 3.1, by the `openapi-spec-validator`
//!   package `.ci/run` installs into `.venv`;
//! - the error codes `wif-proto` names for clients are codes docs/api.md documents.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use wif_tests::k8s::repo_root;

/// Crates the agent must never link: the broker, and what only the broker needs.
const BROKER_ONLY: &[&str] = &[
    "wif-broker",
    "sqlx",
    "sqlx-core",
    "sqlx-sqlite",
    "sqlx-postgres",
    "libsqlite3-sys",
    "jsonwebtoken",
    "utoipa",
];

/// The packages `package` builds with (normal and build dependencies, its own features
/// only: not unified with the rest of the workspace, as `cargo build -p` resolves them).
fn dependencies(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["tree", "--locked", "--offline", "-p", package])
        .args(["-e", "normal,build", "--prefix", "none", "--format", "{p}"])
        .current_dir(repo_root())
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn broker_only_in(package: &str) -> (BTreeSet<String>, Vec<String>) {
    let deps = dependencies(package);
    let found = deps
        .iter()
        .filter(|d| BROKER_ONLY.contains(&d.as_str()) || d.starts_with("utoipa"))
        .cloned()
        .collect();
    (deps, found)
}

#[test]
fn the_agent_never_links_the_broker_or_its_store_jwt_and_openapi_crates() {
    let (deps, found) = broker_only_in("wif-agent");
    // What it does link: the shared crates (so an empty answer cannot pass).
    for shared in ["wif-agent", "wif-proto", "wif-config", "tokio", "rustls"] {
        assert!(
            deps.contains(shared),
            "wif-agent should depend on {shared}: {deps:?}"
        );
    }
    assert!(
        found.is_empty(),
        "wif-agent depends on {found:?}; move what it needs into wif-proto (docs/architecture.md)"
    );
}

#[test]
fn the_cli_never_links_the_broker_or_its_store_jwt_and_openapi_crates() {
    let (deps, found) = broker_only_in("wif-cli");
    for shared in ["wif-cli", "wif-proto", "wif-config", "reqwest", "clap"] {
        assert!(
            deps.contains(shared),
            "wif-cli should depend on {shared}: {deps:?}"
        );
    }
    assert!(
        found.is_empty(),
        "wif-cli depends on {found:?}; it is a client of the admin API and takes the wire types from wif-proto (docs/architecture.md)"
    );
}

#[test]
fn the_shared_crates_never_link_the_broker() {
    for package in ["wif-proto", "wif-config"] {
        let (deps, found) = broker_only_in(package);
        assert!(deps.contains(package), "{deps:?}");
        assert!(found.is_empty(), "{package} depends on {found:?}");
    }
    // The check itself sees the broker's own graph.
    let (_, found) = broker_only_in("wif-broker");
    for expected in ["wif-broker", "sqlx", "jsonwebtoken", "utoipa"] {
        assert!(
            found.iter().any(|f| f == expected),
            "{expected} not found in {found:?}"
        );
    }
}

/// The interpreter with `openapi-spec-validator`: `WIF_TEST_PYTHON`, else `.venv`. `None`
/// (with a printed reason) when it is missing outside CI; under `CI=true` a failure.
fn python() -> Option<PathBuf> {
    let python = std::env::var_os("WIF_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    let probe = Command::new(&python)
        .args(["-c", "import openapi_spec_validator"])
        .output();
    if probe.as_ref().is_ok_and(|o| o.status.success()) {
        return Some(python);
    }
    let why = format!(
        "{} lacks openapi-spec-validator: run .ci/run once, or install the version it pins",
        python.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {why}");
    }
    eprintln!("skipping the OpenAPI validation: {why}");
    None
}

/// The validator's complaints about the OpenAPI 3.1 document `doc`, one per line.
fn openapi_errors(python: &PathBuf, doc: &str) -> Vec<String> {
    const VALIDATE: &str = "\
import json, sys
from openapi_spec_validator import OpenAPIV31SpecValidator
spec = json.load(sys.stdin)
for e in OpenAPIV31SpecValidator(spec).iter_errors():
    print('/'.join(str(p) for p in e.absolute_path) + ': ' + e.message.splitlines()[0])
";
    let mut child = Command::new(python)
        .args(["-c", VALIDATE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), doc.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the validator failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_checked_in_openapi_document_is_valid_openapi_3_1() {
    let Some(python) = python() else { return };
    let doc = std::fs::read_to_string(repo_root().join("docs/openapi.json")).unwrap();
    let errors = openapi_errors(&python, &doc);
    assert!(
        errors.is_empty(),
        "docs/openapi.json is not valid OpenAPI 3.1 ({} errors; fix the annotations in \
         broker/src/api and regenerate):\n{}",
        errors.len(),
        errors.join("\n")
    );

    // The validator does find what this test guards against: a response without its
    // description, and an operationId used twice.
    let mut broken: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let paths = broken["paths"].as_object_mut().unwrap();
    let token = &mut paths["/v1/token"]["post"];
    token["responses"]["200"]
        .as_object_mut()
        .unwrap()
        .remove("description");
    let id = token["operationId"].clone();
    paths["/oauth2/token"]["post"]["operationId"] = id;
    let errors = openapi_errors(&python, &broken.to_string());
    assert!(
        errors
            .iter()
            .any(|e| e.contains("'description' is a required property")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("is not unique")),
        "{errors:?}"
    );
}

#[test]
fn the_error_codes_clients_act_on_are_documented() {
    let api = std::fs::read_to_string(repo_root().join("docs/api.md")).unwrap();
    // The error table's rows: `| 403 | `no_matching_credential` | ...`.
    let rows: Vec<&str> = api
        .lines()
        .filter(|l| l.starts_with("| 4") || l.starts_with("| 5"))
        .collect();
    assert!(rows.len() > 10, "docs/api.md has no error table");
    for code in wif_proto::error::code::ALL {
        assert!(
            rows.iter().any(|row| row.contains(&format!("`{code}`"))),
            "docs/api.md's error table does not list `{code}`"
        );
    }
}

/// The emulators (`broker/src/dev/`) are behind the `dev` feature of `wif-broker`: on by
/// default (the README's `cargo run -p wif-broker -- dev`, and these tests, which run them),
/// off in the image (the Dockerfile builds `--no-default-features`). Without it the broker
/// must still build, and every emulator module must be left out.
#[test]
fn the_emulators_are_left_out_of_a_build_without_the_dev_feature() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let metadata = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(repo_root())
        .output()
        .expect("cargo metadata runs");
    assert!(metadata.status.success());
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout).unwrap();
    let broker = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "wif-broker")
        .unwrap();
    assert_eq!(broker["features"]["dev"], serde_json::json!([]));
    assert_eq!(
        broker["features"]["default"],
        serde_json::json!(["dev"]),
        "`dev` is a default feature, so `cargo run -p wif-broker -- dev` works as the README says"
    );

    // Every module of broker/src/dev/ is compiled only with the feature.
    let dev = std::fs::read_to_string(repo_root().join("broker/src/dev/mod.rs")).unwrap();
    let lines: Vec<&str> = dev.lines().collect();
    let modules: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("pub mod ") || lines[i].starts_with("mod "))
        .collect();
    assert!(modules.len() >= 6, "{modules:?}");
    for i in modules {
        assert_eq!(
            lines[i - 1],
            "#[cfg(feature = \"dev\")]",
            "broker/src/dev/mod.rs: `{}` is not behind the dev feature",
            lines[i]
        );
    }

    // And what is left (serve, the CLI, the webhook) builds without it: no code outside
    // the gated modules reaches into them.
    let check = Command::new(&cargo)
        .args(["check", "--locked", "--offline", "-p", "wif-broker"])
        .args([
            "--no-default-features",
            "--lib",
            "--bins",
            "--message-format=short",
        ])
        .current_dir(repo_root())
        .output()
        .expect("cargo check runs");
    assert!(
        check.status.success(),
        "wif-broker does not build without the dev feature:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// Every code of the broker's one error model is in docs/api.md's error table, with the
/// status the broker answers it with, and the codes wif-proto names for clients are the
/// broker's own (same wire names).
#[test]
fn every_error_code_is_documented_with_its_status() {
    use wif_broker::error::ErrorCode;
    let api = std::fs::read_to_string(repo_root().join("docs/api.md")).unwrap();
    let rows: Vec<&str> = api
        .lines()
        .filter(|l| l.starts_with("| 4") || l.starts_with("| 5"))
        .collect();
    for code in ErrorCode::ALL {
        let status = code.status().as_u16().to_string();
        assert!(
            rows.iter()
                .any(|row| row.contains(&format!("`{}`", code.as_str()))
                    && row.split('|').nth(1).is_some_and(|s| s.contains(&status))),
            "docs/api.md's error table has no row for `{code}` with status {status}"
        );
    }
    for name in wif_proto::error::code::ALL {
        assert!(
            ErrorCode::ALL.iter().any(|c| c.as_str() == *name),
            "wif_proto::error::code names {name}, which the broker never answers"
        );
    }
}

/// The broker's modules that `module` (a file or a directory under broker/src) names,
/// outside comments and `#[cfg(test)]` modules: `crate::X`, `use crate::{X, ..}`.
fn imported_modules(module: &str) -> BTreeSet<(String, String)> {
    let src = repo_root().join("broker/src");
    let mut files = Vec::new();
    let dir = src.join(module);
    if dir.is_dir() {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
    } else {
        files.push(src.join(format!("{module}.rs")));
    }
    let mut found = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let relative = file.strip_prefix(&src).unwrap().display().to_string();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("#[cfg(test)]") {
                break;
            }
            if line.starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                    group
                        .split('}')
                        .next()
                        .unwrap_or_default()
                        .split(',')
                        .map(|n| n.trim().split("::").next().unwrap_or_default())
                        .collect()
                } else {
                    vec![
                        rest.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                            .next()
                            .unwrap_or_default(),
                    ]
                };
                for name in names {
                    let name = name.trim();
                    if !name.is_empty() {
                        found.insert((name.to_owned(), relative.clone()));
                    }
                }
            }
        }
    }
    found
}

/// docs/architecture.md, "Module dependencies": the steps of the exchange and the layers
/// under the edges never import an edge (`api`, `ui`, `cli`, `dev`, `server`), so no
/// module-level cycle runs through the HTTP edge; `api` never imports the console, the
/// CLI or the emulators; `dev` (the emulators) is imported by `cli` only; and `store`
/// imports no step.
#[test]
fn the_steps_never_import_the_edges() {
    const EDGES: &[&str] = &["api", "ui", "cli", "dev", "server"];
    const STEPS: &[&str] = &[
        "error",
        "exchange",
        "policy",
        "token",
        "issuer",
        "store",
        "cache",
        "audit",
        "ratelimit",
        "admin",
        "simulate",
        "metrics",
        "sync",
        "crypto",
        "tls",
        "entra",
        "entra_setup",
        "inject",
    ];
    let mut violations = Vec::new();
    for step in STEPS {
        for (name, file) in imported_modules(step) {
            if EDGES.contains(&name.as_str()) {
                violations.push(format!("{file} imports crate::{name}"));
            }
        }
    }
    // The store is the bottom layer: it holds what the steps decide with, and imports none
    // of them (no store <-> policy or store <-> entra cycle).
    for (name, file) in imported_modules("store") {
        if STEPS.contains(&name.as_str()) && !["store", "crypto"].contains(&name.as_str()) {
            violations.push(format!("{file} imports crate::{name}"));
        }
    }
    for (name, file) in imported_modules("api") {
        if ["ui", "cli", "dev", "server"].contains(&name.as_str()) {
            violations.push(format!("{file} imports crate::{name}"));
        }
    }
    for edge in ["ui", "server"] {
        for (name, file) in imported_modules(edge) {
            if name == "dev" {
                violations.push(format!("{file} imports crate::dev"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "module dependency rules broken (docs/architecture.md):\n{}",
        violations.join("\n")
    );
}

/// docs/architecture.md, "Module dependencies": no import cycle between the broker's
/// top-level modules, whatever the layer (a strongly connected component of the graph of
/// `crate::X` references, outside comments and tests, is a cycle).
#[test]
fn the_broker_modules_import_each_other_without_cycles() {
    let lib = std::fs::read_to_string(repo_root().join("broker/src/lib.rs")).unwrap();
    let modules: Vec<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_owned())
        .collect();
    assert!(modules.len() > 20, "{modules:?}");
    let edges: std::collections::BTreeMap<&str, BTreeSet<String>> = modules
        .iter()
        .map(|m| {
            let names = imported_modules(m)
                .into_iter()
                .map(|(name, _)| name)
                .filter(|name| name != m && modules.contains(name))
                .collect();
            (m.as_str(), names)
        })
        .collect();
    // Which modules each reaches, then the pairs that reach each other.
    let mut cycles = BTreeSet::new();
    for &start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = edges[start].iter().map(String::as_str).collect();
        while let Some(m) = stack.pop() {
            if seen.insert(m) {
                stack.extend(edges[m].iter().map(String::as_str));
            }
        }
        for &other in &seen {
            if other != start && edges[start].contains(other) {
                let mut back = BTreeSet::new();
                let mut stack = vec![other];
                while let Some(m) = stack.pop() {
                    if back.insert(m) {
                        stack.extend(edges[m].iter().map(String::as_str));
                    }
                }
                if back.contains(start) {
                    cycles.insert(format!("{start} -> {other} -> ... -> {start}"));
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles between the broker's modules (docs/architecture.md):\n{}",
        cycles.into_iter().collect::<Vec<_>>().join("\n")
    );
}
