//! Identities and federated credentials as code: `wif-broker plan`, `apply`, `export` and
//! `entra plan` (the real binary) against a real `wif-broker serve` on loopback with a
//! SQLite store, and the admin API's `ETag` / `If-Match` they rely on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "attacks/support.rs"]
#[allow(dead_code)] // a shared harness: not every helper is used here
mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::Command;

use support::{ADMIN_TOKEN, Broker, BrokerDir, TENANT, Upstreams, admin, client};
use wif_tests::pg::Schema as PgSchema;

const READER_TOKEN: &str = "wif-gitops-reader-token-0123456789abcdef";
const APP_CLIENT: &str = "0b7c6a59-2f0e-4c8e-9d4b-4a5f7f1e2d01";
const WEB_CLIENT: &str = "0b7c6a59-2f0e-4c8e-9d4b-4a5f7f1e2d02";
const QUICK: Duration = Duration::from_secs(30);

struct Stack {
    _upstreams: Upstreams,
    broker: Broker,
    dir: BrokerDir,
    issuer: String,
}

impl Stack {
    /// A broker whose config declares identity `deploy` (read-only through the API), an
    /// admin token and a reader token.
    async fn start() -> Self {
        Self::start_on(None).await
    }

    /// [`Stack::start`] with the store at `store` (default: SQLite in its directory).
    async fn start_on(store: Option<&str>) -> Self {
        let dir = BrokerDir::new();
        let tokens = dir.path("admin-tokens");
        let mut lines = std::fs::read_to_string(&tokens).unwrap();
        lines.push_str(&format!(
            "reader ci-reader {}\n",
            wif_broker::api::admin::auth::token_hash(READER_TOKEN)
        ));
        std::fs::write(&tokens, lines).unwrap();
        let upstreams = Upstreams::start().await;
        let mut config = upstreams.config(&dir, "");
        if let Some(url) = store {
            config = config.replace(&dir.sqlite_url(), url);
        }
        let broker = Broker::start(&dir, &config, &[]).await;
        let issuer = upstreams.issuer.url();
        Self {
            _upstreams: upstreams,
            broker,
            dir,
            issuer,
        }
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// `wif-broker <args>` with `token`; returns (exit code, stdout, stderr).
    async fn cli(&self, token: &str, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wif-broker"));
        for (name, _) in std::env::vars_os() {
            let upper = name.to_string_lossy().to_ascii_uppercase();
            if upper.starts_with("WIF_") || upper.ends_with("_PROXY") || upper == "RUST_LOG" {
                cmd.env_remove(&name);
            }
        }
        cmd.env("WIF_SERVER_URL", self.broker.url())
            .env("WIF_ADMIN_TOKEN", token)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = tokio::time::timeout(QUICK, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("wif-broker {args:?} did not finish within {QUICK:?}"))
            .unwrap();
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        let err = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            !out.contains(token) && !err.contains(token),
            "token printed"
        );
        (output.status.code().unwrap_or(-1), out, err)
    }

    async fn admin_cli(&self, args: &[&str]) -> (i32, String, String) {
        self.cli(ADMIN_TOKEN, args).await
    }

    async fn api(&self, method: Method, path: &str, body: Option<Value>) -> support::Answer {
        admin(
            &client(),
            method,
            &format!("{}{path}", self.broker.url()),
            body,
        )
        .await
    }

    async fn state(&self) -> Value {
        let identities = self.api(Method::GET, "/v1/identities", None).await.body;
        let mut state = serde_json::Map::new();
        for i in identities["value"].as_array().unwrap() {
            let name = i["name"].as_str().unwrap();
            let creds = self
                .api(
                    Method::GET,
                    &format!("/v1/identities/{name}/federatedIdentityCredentials"),
                    None,
                )
                .await
                .body;
            state.insert(name.into(), json!({"identity": i, "credentials": creds}));
        }
        Value::Object(state)
    }

    /// The registry file every test starts from: two identities, three credentials.
    fn seed(&self) -> String {
        let issuer = &self.issuer;
        format!(
            r#"identities:
  app:
    tenantId: {TENANT}
    clientId: {APP_CLIENT}
    cloud: public
  web:
    tenantId: {TENANT}
    clientId: {WEB_CLIENT}
federatedIdentityCredentials:
  app:
    - name: main
      issuer: {issuer}
      subject: repo:contoso/app:ref:refs/heads/main
    - name: releases
      issuer: {issuer}
      claimsMatchingExpression:
        value: claims['sub'] matches 'repo:contoso/app:ref:refs/tags/v*'
        languageVersion: 1
      description: release tags
  web:
    - name: main
      issuer: {issuer}
      subject: repo:contoso/web:ref:refs/heads/main
"#
        )
    }

    async fn seeded() -> Self {
        Self::seeded_on(None).await
    }

    async fn seeded_on(store: Option<&str>) -> Self {
        let stack = Self::start_on(store).await;
        let seed = stack.file("seed.yaml", &stack.seed());
        let (code, out, err) = stack
            .admin_cli(&["apply", "-f", seed.to_str().unwrap()])
            .await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("Plan: 5 to create, 0 to update, 0 to delete."),
            "{out}"
        );
        stack
    }
}

#[tokio::test]
async fn export_plan_edit_apply_round_trip() {
    let stack = Stack::seeded().await;
    let exported = stack.dir.path("exported.yaml");
    let (code, _, err) = stack
        .admin_cli(&["export", "-o", exported.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&exported).unwrap();
    assert!(
        !text.contains("deploy"),
        "config identities are not exported:\n{text}"
    );

    // Export, then plan: nothing to do (exit 0), and the read-only identity is named.
    let (code, out, err) = stack
        .admin_cli(&["plan", "-f", exported.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("No changes"), "{out}");
    assert!(
        out.contains("Read-only (declared in the broker's config file, not managed here): deploy"),
        "{out}"
    );

    // The same in TOML.
    let toml = stack.dir.path("exported.toml");
    let (code, _, err) = stack
        .admin_cli(&["export", "-o", toml.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = stack
        .admin_cli(&["plan", "-f", toml.to_str().unwrap()])
        .await;
    assert_eq!(
        code,
        0,
        "{out}{err}\n{}",
        std::fs::read_to_string(&toml).unwrap()
    );

    // One edit: plan shows exactly it, field by field, and exits 2.
    let before = stack.state().await;
    let edited_text = text.replace(
        "repo:contoso/web:ref:refs/heads/main",
        "repo:contoso/web:environment:production",
    );
    assert_ne!(edited_text, text);
    let edited = stack.file("edited.yaml", &edited_text);
    let (code, out, err) = stack
        .admin_cli(&["plan", "-f", edited.to_str().unwrap()])
        .await;
    assert_eq!(code, 2, "{out}{err}");
    let changes: Vec<&str> = out
        .lines()
        .take_while(|l| !l.starts_with("Plan:"))
        .collect();
    assert_eq!(
        changes,
        [
            "~ update credential web/main",
            "    subject: \"repo:contoso/web:ref:refs/heads/main\" -> \"repo:contoso/web:environment:production\"",
        ],
        "{out}"
    );
    assert!(
        out.contains("Plan: 0 to create, 1 to update, 0 to delete."),
        "{out}"
    );
    assert_eq!(stack.state().await, before, "plan changed something");

    // --dry-run shows the same and changes nothing.
    let (code, out, err) = stack
        .admin_cli(&["apply", "-f", edited.to_str().unwrap(), "--dry-run"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("~ update credential web/main"), "{out}");
    assert_eq!(stack.state().await, before, "--dry-run changed something");

    let (code, out, err) = stack
        .admin_cli(&["apply", "-f", edited.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("updated credential web/main"), "{out}");
    let again = stack.dir.path("again.yaml");
    let (code, _, err) = stack
        .admin_cli(&["export", "-o", again.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&again).unwrap(), edited_text);

    // Every write was audited with the caller, as any admin write is.
    let audit = stack
        .api(Method::GET, "/v1/audit?kind=admin&identity=web", None)
        .await
        .body;
    let actions: Vec<&str> = audit["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "attacker-admin")
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"credential.update"), "{audit}");
}

#[tokio::test]
async fn a_concurrent_write_stops_apply_before_any_change() {
    let stack = Stack::seeded().await;
    let seed = stack.seed();
    let edited = stack.file(
        "edited.yaml",
        &seed
            .replace("description: release tags", "description: signed release tags")
            .replace(
                "  web:\n    - name: main",
                "  web:\n    - name: nightly\n      issuer: ISSUER\n      subject: repo:contoso/web:ref:refs/heads/nightly\n    - name: main",
            )
            .replace("ISSUER", &stack.issuer),
    );
    let saved = stack.dir.path("plan.json");
    let (code, out, err) = stack
        .admin_cli(&[
            "plan",
            "-f",
            edited.to_str().unwrap(),
            "--out",
            saved.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.contains("Plan: 1 to create, 1 to update, 0 to delete."),
        "{out}"
    );

    // Someone changes the credential the plan updates, through the API.
    let patched = stack
        .api(
            Method::PATCH,
            "/v1/identities/app/federatedIdentityCredentials/releases",
            Some(json!({"description": "changed by someone else"})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    let before = stack.state().await;

    let (code, out, err) = stack
        .admin_cli(&[
            "apply",
            "-f",
            edited.to_str().unwrap(),
            "--plan",
            saved.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("changed since the plan in") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(stack.state().await, before, "apply changed something");
}

#[tokio::test]
async fn writes_honour_if_match_and_answer_412() {
    let stack = Stack::seeded().await;
    let path = "/v1/identities/app/federatedIdentityCredentials/main";
    let read = stack.api(Method::GET, path, None).await;
    let etag = read.headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let identity = stack.api(Method::GET, "/v1/identities/app", None).await;
    let identity_etag = identity.headers["etag"].to_str().unwrap().to_owned();

    // A write in between.
    let patched = stack
        .api(Method::PATCH, path, Some(json!({"description": "first"})))
        .await;
    assert_eq!(patched.status, 200);
    let new_etag = patched.headers["etag"].to_str().unwrap().to_owned();
    assert_ne!(new_etag, etag);
    let reread = stack.api(Method::GET, path, None).await;
    assert_eq!(
        reread.headers["etag"],
        new_etag.as_str(),
        "a write answers the new ETag"
    );
    // Entries of the config file cannot be written, so they have no version.
    let config = stack
        .api(
            Method::GET,
            "/v1/identities/deploy/federatedIdentityCredentials/main",
            None,
        )
        .await;
    assert_eq!(config.status, 200);
    assert!(config.headers.get("etag").is_none());

    let http = client();
    for (method, body) in [
        (Method::PATCH, Some(json!({"description": "second"}))),
        (Method::DELETE, None),
    ] {
        let mut request = http
            .request(method.clone(), format!("{}{path}", stack.broker.url()))
            .bearer_auth(ADMIN_TOKEN)
            .header("If-Match", &etag);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let stale = support::send(request).await;
        assert_eq!(stale.status, 412, "{method}: {}", stale.text);
        assert_eq!(stale.error(), "precondition_failed");
        assert!(
            stale.description().contains("read it again"),
            "{}",
            stale.text
        );
        assert!(stale.body["request_id"].is_string(), "{}", stale.text);
    }
    let now = stack.api(Method::GET, path, None).await;
    assert_eq!(now.body["description"], "first");

    // The current ETag works; so does the identity's for a replacing PUT.
    let ok = support::send(
        http.patch(format!("{}{path}", stack.broker.url()))
            .bearer_auth(ADMIN_TOKEN)
            .header("If-Match", &new_etag)
            .json(&json!({"description": "second"})),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let put = support::send(
        http.put(format!("{}/v1/identities/app", stack.broker.url()))
            .bearer_auth(ADMIN_TOKEN)
            .header("If-Match", &identity_etag)
            .json(&json!({"tenantId": TENANT, "clientId": APP_CLIENT})),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let stale_put = support::send(
        http.put(format!("{}/v1/identities/app", stack.broker.url()))
            .bearer_auth(ADMIN_TOKEN)
            .header("If-Match", &identity_etag)
            .json(&json!({"tenantId": TENANT, "clientId": APP_CLIENT, "cloud": "public"})),
    )
    .await;
    assert_eq!(stale_put.status, 412, "{}", stale_put.text);
    let exists = support::send(
        http.put(format!("{}/v1/identities/app", stack.broker.url()))
            .bearer_auth(ADMIN_TOKEN)
            .header("If-None-Match", "*")
            .json(&json!({"tenantId": TENANT, "clientId": APP_CLIENT})),
    )
    .await;
    assert_eq!(exists.status, 412, "{}", exists.text);

    // Refused writes are audited like any other (the audit writer stores them shortly
    // after the answer).
    let mut audit = json!(null);
    for _ in 0..50 {
        audit = stack
            .api(
                Method::GET,
                "/v1/audit?kind=admin&outcome=precondition_failed",
                None,
            )
            .await
            .body;
        if audit["value"].as_array().unwrap().len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(audit["value"].as_array().unwrap().len() >= 4, "{audit}");
}

#[tokio::test]
async fn only_prune_deletes_what_the_file_does_not_name() {
    let stack = Stack::seeded().await;
    let seed = stack.seed();
    let web_at = seed.find("  web:\n    tenantId").unwrap();
    let web_end = seed.find("federatedIdentityCredentials:").unwrap();
    let smaller = format!(
        "{}{}",
        &seed[..web_at],
        &seed[web_end..seed.find("    - name: releases").unwrap()]
    );
    let smaller = stack.file("smaller.yaml", &smaller);
    let before = stack.state().await;

    let (code, out, err) = stack
        .admin_cli(&["apply", "-f", smaller.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("No changes"), "{out}");
    assert!(
        out.contains("Not in the file, kept (apply --prune deletes them): identity web, credential app/releases"),
        "{out}"
    );
    assert_eq!(stack.state().await, before);

    let (code, out, err) = stack
        .admin_cli(&["plan", "-f", smaller.to_str().unwrap(), "--prune"])
        .await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("- delete credential app/releases"), "{out}");
    assert!(out.contains("- delete identity web"), "{out}");

    let (code, out, err) = stack
        .admin_cli(&["apply", "-f", smaller.to_str().unwrap(), "--prune"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    let after = stack.state().await;
    let names: Vec<&String> = after.as_object().unwrap().keys().collect();
    assert_eq!(names, ["app", "deploy"], "the config identity stays");
    let app: Vec<&str> = after["app"]["credentials"]["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(app, ["main"]);
    assert_eq!(after["deploy"], before["deploy"]);
}

#[tokio::test]
async fn help_lists_each_command_own_options_before_the_connection_options() {
    let stack = Stack::start().await;
    for (command, own) in [
        (&["plan", "--help"][..], "--prune"),
        (&["apply", "--help"], "--dry-run"),
        (&["export", "--help"], "--output <FILE>"),
        (&["entra", "plan", "--help"], "--identity"),
    ] {
        let (code, help, err) = stack.admin_cli(command).await;
        assert_eq!(code, 0, "{err}");
        let heading = help
            .find("Connection options")
            .expect("no connection heading");
        assert!(help.find(own).unwrap() < heading, "{command:?}:\n{help}");
        assert!(
            help.find("--server").unwrap() > heading,
            "{command:?}:\n{help}"
        );
    }
}

#[tokio::test]
async fn file_errors_name_the_line_and_the_field() {
    let stack = Stack::start().await;
    let yaml = stack.file(
        "typo.yaml",
        &format!("identities:\n  app:\n    tenantId: {TENANT}\n    clientID: {APP_CLIENT}\n"),
    );
    let (code, out, err) = stack
        .admin_cli(&["plan", "-f", yaml.to_str().unwrap()])
        .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("typo.yaml"), "{err}");
    assert!(err.contains("clientID"), "{err}");
    assert!(err.contains("line 4"), "{err}");

    let toml = stack.file(
        "typo.toml",
        &format!(
            "[identities.app]\ntenantId = \"{TENANT}\"\nclientId = \"{APP_CLIENT}\"\n\n[[federatedIdentityCredentials.app]]\nname = \"main\"\nissuer = \"https://token.actions.githubusercontent.com\"\nsubjekt = \"x\"\n"
        ),
    );
    let (code, out, err) = stack
        .admin_cli(&["plan", "-f", toml.to_str().unwrap()])
        .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("subjekt") && err.contains("line 8"), "{err}");

    let no_name = stack.file(
        "noname.yaml",
        &format!("identities:\n  app:\n    tenantId: {TENANT}\n    clientId: {APP_CLIENT}\nfederatedIdentityCredentials:\n  app:\n    - issuer: https://token.actions.githubusercontent.com\n      subject: x\n"),
    );
    let (code, _, err) = stack
        .admin_cli(&["plan", "-f", no_name.to_str().unwrap()])
        .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("federatedIdentityCredentials.app[0]: name is required"),
        "{err}"
    );

    // An identity the broker's config file declares cannot be managed from the file.
    let config_identity = stack.file(
        "deploy.yaml",
        &format!("identities:\n  deploy:\n    tenantId: {TENANT}\n    clientId: {APP_CLIENT}\n"),
    );
    let (code, _, err) = stack
        .admin_cli(&["apply", "-f", config_identity.to_str().unwrap()])
        .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("\"deploy\" is declared in the broker's config file and is read-only"),
        "{err}"
    );

    // A value the broker refuses stops apply with the API's field error.
    let bad = stack.file(
        "bad.yaml",
        &format!("identities:\n  app:\n    tenantId: {TENANT}\n    clientId: not-a-guid\n"),
    );
    let (code, _, err) = stack
        .admin_cli(&["apply", "-f", bad.to_str().unwrap()])
        .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot create identity app: ")
            && err.contains("clientId")
            && err.contains("0 of 1 changes were applied"),
        "{err}"
    );
}

#[tokio::test]
async fn a_reader_can_plan_and_export_but_not_apply() {
    let stack = Stack::seeded().await;
    let exported = stack.dir.path("reader.yaml");
    let (code, _, err) = stack
        .cli(READER_TOKEN, &["export", "-o", exported.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&exported).unwrap();
    let edited = stack.file("reader-edit.yaml", &text.replace("release tags", "tags"));
    let (code, out, err) = stack
        .cli(READER_TOKEN, &["plan", "-f", edited.to_str().unwrap()])
        .await;
    assert_eq!(code, 2, "{out}{err}");
    let before = stack.state().await;
    let (code, out, err) = stack
        .cli(READER_TOKEN, &["apply", "-f", edited.to_str().unwrap()])
        .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("forbidden") && err.contains("reader"), "{err}");
    assert_eq!(stack.state().await, before);
}

#[tokio::test]
async fn entra_plan_gives_graph_json_the_broker_itself_accepts() {
    let stack = Stack::seeded().await;
    // An expression Entra cannot hold (a nested Kubernetes claim, another issuer).
    let k8s = stack
        .api(
            Method::POST,
            "/v1/identities/app/federatedIdentityCredentials",
            Some(json!({
                "name": "aks-payments",
                "issuer": "https://westeurope.oic.prod-aks.azure.com/t/c/",
                "claimsMatchingExpression": {"value": "claims['kubernetes.io']['namespace'] eq 'payments'", "languageVersion": 1}
            })),
        )
        .await;
    assert_eq!(k8s.status, 201, "{}", k8s.text);
    // An expression Entra can hold (GitHub's issuer, on `sub`).
    let github = stack
        .api(
            Method::POST,
            "/v1/identities/app/federatedIdentityCredentials",
            Some(json!({
                "name": "gh-tags",
                "issuer": "https://token.actions.githubusercontent.com",
                "claimsMatchingExpression": {"value": "claims['sub'] matches 'repo:contoso/app:ref:refs/tags/*'", "languageVersion": 1},
                "description": "tags"
            })),
        )
        .await;
    assert_eq!(github.status, 201, "{}", github.text);

    let (code, out, err) = stack
        .admin_cli(&["entra", "plan", "--identity", "app", "-o", "json"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    let plans: Value = serde_json::from_str(&out).unwrap();
    let app = &plans[0];
    assert_eq!(app["identity"], "app");
    assert_eq!(app["assertion"], "passthrough");
    let fics = app["federatedIdentityCredentials"].as_array().unwrap();
    let names: Vec<&str> = fics
        .iter()
        .map(|f| f["graph"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gh-tags", "main"]);
    // `releases` is an expression on an issuer Entra takes none for (the test issuer).
    let broker_only: Vec<&str> = app["brokerOnly"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["credential"].as_str().unwrap())
        .collect();
    assert_eq!(broker_only, ["aks-payments", "releases"], "{app}");
    for f in fics {
        let cmd = f["azAppCommand"].as_str().unwrap();
        assert!(
            cmd.starts_with(&format!(
                "az ad app federated-credential create --id {APP_CLIENT} --parameters '{{"
            )),
            "{cmd}"
        );
    }
    assert!(
        fics[1]["azIdentityCommand"]
            .as_str()
            .unwrap()
            .starts_with("az identity federated-credential create --name main")
    );
    assert!(
        fics[0].get("azIdentityCommand").is_none(),
        "managed identities take no expression"
    );

    // Each Graph body, posted to the broker's own Graph-shaped API, is accepted and reads
    // back the same.
    let made = stack
        .api(
            Method::PUT,
            "/v1/identities/mirror",
            Some(json!({"tenantId": TENANT, "clientId": "0b7c6a59-2f0e-4c8e-9d4b-4a5f7f1e2d09"})),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    for f in fics {
        let graph = &f["graph"];
        let created = stack
            .api(
                Method::POST,
                "/v1/identities/mirror/federatedIdentityCredentials",
                Some(graph.clone()),
            )
            .await;
        assert_eq!(created.status, 201, "{graph}: {}", created.text);
        for (k, v) in graph.as_object().unwrap() {
            assert_eq!(&created.body[k], v, "{k}");
        }
    }

    // Over Entra's limit of 20, the rest can only work through the broker assertion.
    for n in 0..20 {
        let made = stack
            .api(
                Method::POST,
                "/v1/identities/web/federatedIdentityCredentials",
                Some(json!({"name": format!("branch-{n:02}"), "issuer": stack.issuer, "subject": format!("repo:contoso/web:ref:refs/heads/b{n}")})),
            )
            .await;
        assert_eq!(made.status, 201, "{}", made.text);
    }
    let (code, out, err) = stack
        .admin_cli(&["entra", "plan", "--identity", "web"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("20 federated credential(s) in Entra"), "{out}");
    assert!(
        out.contains("broker only: main: Entra holds at most 20 federated credentials"),
        "{out}"
    );

    // The read-only identity from the config file is covered too.
    let (code, out, err) = stack.admin_cli(&["entra", "plan", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let all: Value = serde_json::from_str(&out).unwrap();
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|p| p["identity"] == "deploy"),
        "{all}"
    );
}

/// Signs in to the console with the admin token and returns the identity's page.
async fn console_page(stack: &Stack, identity: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(QUICK)
        .build()
        .unwrap();
    let mut cookies: Vec<String> = Vec::new();
    let keep = |cookies: &mut Vec<String>, response: &reqwest::Response| {
        for value in response.headers().get_all("set-cookie") {
            let pair = value
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_owned();
            let name = pair.split('=').next().unwrap().to_owned();
            cookies.retain(|c| !c.starts_with(&format!("{name}=")));
            cookies.push(pair);
        }
    };
    let base = stack.broker.url();
    let login = http.get(format!("{base}/ui/login")).send().await.unwrap();
    keep(&mut cookies, &login);
    let body = login.text().await.unwrap();
    let marker = "name=\"csrf\" value=\"";
    let start = body.find(marker).unwrap() + marker.len();
    let csrf = &body[start..start + body[start..].find('"').unwrap()];
    let signed = http
        .post(format!("{base}/ui/login"))
        .header("cookie", cookies.join("; "))
        .form(&[
            ("csrf", csrf),
            ("next", "/ui/identities"),
            ("token", ADMIN_TOKEN),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 303);
    keep(&mut cookies, &signed);
    let page = http
        .get(format!("{base}/ui/identities/{identity}"))
        .header("cookie", cookies.join("; "))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    page.text().await.unwrap()
}

#[tokio::test]
async fn the_console_shows_what_entra_must_hold() {
    let stack = Stack::seeded().await;
    let page = console_page(&stack, "app").await;
    let section = &page[page
        .find("data-testid=\"entra-setup\"")
        .expect("no Entra section")..];
    assert!(section.contains("1 federated credential(s)"), "{section}");
    assert!(
        section.contains(&format!(
            "az ad app federated-credential create --id {APP_CLIENT} --parameters"
        )),
        "{section}"
    );
    assert!(section.contains("data-testid=\"broker-only\""), "{section}");
    assert!(section.contains("<code>releases</code>"), "{section}");
}

// ----- PostgreSQL: two replicas on one store --------------------------------------------

#[tokio::test]
async fn on_postgresql_a_write_through_another_replica_stops_a_reviewed_apply() {
    let Some(schema) = PgSchema::create("wif_gitops").await else {
        return;
    };
    let url = schema.url();
    let stack = Stack::seeded_on(Some(&url)).await;
    // A second replica on the same store.
    let other_dir = BrokerDir::new();
    let config = std::fs::read_to_string(&stack.broker.config).unwrap();
    let other = Broker::start(&other_dir, &config, &[]).await;

    let edited = stack.file(
        "edited.yaml",
        &stack.seed().replace(
            "description: release tags",
            "description: signed release tags",
        ),
    );
    let saved = stack.dir.path("plan.json");
    let (code, out, err) = stack
        .admin_cli(&[
            "plan",
            "-f",
            edited.to_str().unwrap(),
            "--out",
            saved.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 2, "{out}{err}");

    // Through the other replica, someone changes the credential the plan updates.
    let patched = admin(
        &client(),
        Method::PATCH,
        &format!(
            "{}/v1/identities/app/federatedIdentityCredentials/releases",
            other.url()
        ),
        Some(json!({"oneTimeUse": true})),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.text);

    // The versions come from the store, so the first replica sees the change at once.
    let (code, out, err) = stack
        .admin_cli(&[
            "apply",
            "-f",
            edited.to_str().unwrap(),
            "--plan",
            saved.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    let releases = stack
        .api(
            Method::GET,
            "/v1/identities/app/federatedIdentityCredentials/releases",
            None,
        )
        .await;
    assert_eq!(releases.body["description"], "release tags", "apply wrote");
    drop(other);
    drop(stack);
}

/// The broker's own restrictions (docs/admin.md, "Least privilege") round-trip: a file that
/// sets them applies, plans to nothing afterwards although the server fills in defaults
/// (a rate limit's burst), and exports back to a file that also plans to nothing.
#[tokio::test]
async fn restrictions_apply_and_then_plan_to_nothing() {
    let stack = Stack::seeded().await;
    let issuer = &stack.issuer;
    let text = format!(
        r#"identities:
  app:
    tenantId: {TENANT}
    clientId: {APP_CLIENT}
    cloud: public
    allowedScopes:
      - https://storage.azure.com/.default
    rateLimit:
      perMinute: 60
  web:
    tenantId: {TENANT}
    clientId: {WEB_CLIENT}
    disabled: true
federatedIdentityCredentials:
  app:
    - name: main
      issuer: {issuer}
      subject: repo:contoso/app:ref:refs/heads/main
      sourceNetworks:
        - 10.0.0.0/8
      maxTokenAgeSeconds: 600
      notBefore: 2026-01-01T00:00:00Z
      notAfter: 2036-01-01T00:00:00Z
      rateLimit:
        perMinute: 5
    - name: releases
      issuer: {issuer}
      claimsMatchingExpression:
        value: claims['sub'] matches 'repo:contoso/app:ref:refs/tags/v*'
        languageVersion: 1
      description: release tags
      disabled: true
  web:
    - name: main
      issuer: {issuer}
      subject: repo:contoso/web:ref:refs/heads/main
      allowedScopes:
        - https://vault.azure.net/.default
"#
    );
    let file = stack.file("restricted.yaml", &text);
    let (code, out, err) = stack
        .admin_cli(&["apply", "-f", file.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Plan: 0 to create, 5 to update, 0 to delete."),
        "{out}"
    );
    let app = stack
        .api(Method::GET, "/v1/identities/app", None)
        .await
        .body;
    assert_eq!(
        app["rateLimit"],
        json!({"perMinute": 60, "burst": 60}),
        "{app}"
    );

    let (code, out, err) = stack
        .admin_cli(&["plan", "-f", file.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("No changes"), "{out}");

    let exported = stack.dir.path("restricted-export.yaml");
    let (code, _, err) = stack
        .admin_cli(&["export", "-o", exported.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = stack
        .admin_cli(&["plan", "-f", exported.to_str().unwrap()])
        .await;
    assert_eq!(
        code,
        0,
        "{out}{err}\n{}",
        std::fs::read_to_string(&exported).unwrap()
    );
}
