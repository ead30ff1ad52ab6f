//! Real Azure clients run as child processes against a [`Stack`] and a [`TestAgent`]:
//! JavaScript (`tests/js/get_token.mjs`: `@azure/identity`, `@azure/msal-node`), Python
//! (`tests/python/get_token.py`: `azure-identity`, `msal`) and the Azure CLI, plus what
//! they need around them: the broker over HTTPS with a throwaway CA, and a Resource
//! Manager stand-in for the CLI (which lists subscriptions when it logs in).
//!
//! Each client gets only the environment a workload would have (the variables the test
//! names, `PATH` and a fresh `HOME`). A missing tool skips with a notice, except under
//! `CI=true`, where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::agent::{HEADER_SECRET, TestAgent, repo_root};
use crate::pki::Pki;
use crate::{DEPLOY_CLIENT, Stack, TENANT, metric_value};

/// How long one client run may take before the test fails (the CLI starts slowly).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

/// A user-assigned identity's resource id, as `az --resource-id` and the SDKs' resource-id
/// options take it: its last segment names the broker identity (`deploy`).
pub const DEPLOY_RESOURCE_ID: &str = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/ci/providers/Microsoft.ManagedIdentity/userAssignedIdentities/deploy";
/// The same for the `payments` identity, which the agents' GitHub token may not act as.
pub const PAYMENTS_RESOURCE_ID: &str = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/ci/providers/Microsoft.ManagedIdentity/userAssignedIdentities/payments";

/// Asserts an access token Entra (the emulator) issued to the deploy identity for ARM.
pub fn assert_deploy_arm_token(stack: &Stack, token: &str, context: &str) {
    let claims = stack.verify_access_token(token);
    assert_eq!(
        claims["aud"], "https://management.azure.com",
        "{context}: {claims}"
    );
    assert_eq!(claims["appid"], DEPLOY_CLIENT, "{context}: {claims}");
}

/// Requests `agent` answered over `protocol` (its metric label) with `outcome` (`ok` or
/// an error code).
pub async fn agent_requests(
    stack: &Stack,
    agent: &TestAgent,
    protocol: &str,
    outcome: &str,
) -> f64 {
    let exposition = stack
        .http
        .get(format!("{}/metrics", agent.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_value(
        &exposition,
        "wif_agent_requests_total",
        &[
            &format!("protocol=\"{protocol}\""),
            &format!("outcome=\"{outcome}\""),
        ],
    )
}

/// Which managed-identity protocol a client is pointed at, by the variables a platform
/// sets for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`: App Service 2019-08-01.
    AppService,
    /// `MSI_ENDPOINT` + `MSI_SECRET`: App Service 2017-09-01 (header `secret`).
    AppService2017,
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST`: IMDS (the SDKs send no availability probe).
    Imds,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [
        Protocol::AppService,
        Protocol::AppService2017,
        Protocol::Imds,
    ];

    /// The variables that point a client at `agent` over this protocol.
    pub fn env(self, agent: &TestAgent) -> Vec<(&'static str, String)> {
        match self {
            Protocol::AppService => vec![
                ("IDENTITY_ENDPOINT", agent.identity_endpoint()),
                ("IDENTITY_HEADER", HEADER_SECRET.to_owned()),
            ],
            Protocol::AppService2017 => vec![
                ("MSI_ENDPOINT", agent.identity_endpoint()),
                ("MSI_SECRET", HEADER_SECRET.to_owned()),
            ],
            Protocol::Imds => vec![("AZURE_POD_IDENTITY_AUTHORITY_HOST", agent.url())],
        }
    }

    /// The agent's `protocol` metric label for requests over this protocol.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::AppService | Protocol::AppService2017 => "app_service",
            Protocol::Imds => "imds",
        }
    }
}

/// `None` with a notice when `tool` is unusable, or a panic under `CI=true`.
fn unavailable<T>(tool: &str, why: String) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {tool} is unavailable: {why}");
    }
    eprintln!("skipping the {tool} part of this test: {why}");
    None
}

/// Node.js with `tests/js`'s packages installed (`cd tests/js && npm ci`; `.ci/run` does
/// it). `WIF_TEST_NODE` names another `node`.
pub fn node() -> Option<PathBuf> {
    let node = std::env::var_os("WIF_TEST_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "node".into());
    let runs = std::process::Command::new(&node)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !runs {
        return unavailable("node", format!("{} does not run", node.display()));
    }
    let packages = repo_root().join("tests/js/node_modules/@azure/identity/package.json");
    if !packages.exists() {
        return unavailable(
            "node",
            format!(
                "{} is missing; run `npm ci` in tests/js",
                packages.display()
            ),
        );
    }
    Some(node)
}

/// The Azure CLI: `WIF_TEST_AZ`, else `.venv-az/bin/az` at the repository root (`.ci/run`
/// creates that venv with the pinned `azure-cli`).
pub fn az() -> Option<PathBuf> {
    let az = std::env::var_os("WIF_TEST_AZ")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-az/bin/az"));
    if az.is_file() {
        return Some(az);
    }
    unavailable(
        "the Azure CLI",
        format!(
            "{} is missing; create it with `python3 -m venv .venv-az && \
             .venv-az/bin/pip install azure-cli==2.91.0` (or set WIF_TEST_AZ)",
            az.display()
        ),
    )
}

/// One run of a client, with a clean environment.
pub struct ClientRun {
    name: String,
    command: tokio::process::Command,
    _home: tempfile::TempDir,
}

impl ClientRun {
    pub fn new(program: &Path, args: &[&str]) -> Self {
        let home = tempfile::tempdir().unwrap();
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env_clear()
            .env("HOME", home.path())
            .kill_on_drop(true);
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        Self {
            name: format!("{} {}", program.display(), args.join(" ")),
            command,
            _home: home,
        }
    }

    /// `tests/js/get_token.mjs MODE SCOPE [ID]` under `node`.
    pub fn js(node: &Path, mode: &str, scope: &str, id: Option<&str>) -> Self {
        let script = repo_root().join("tests/js/get_token.mjs");
        let mut args = vec![script.to_str().unwrap(), mode, scope];
        args.extend(id);
        Self::new(node, &args)
    }

    /// `tests/python/get_token.py MODE SCOPE [ID]` under `python`.
    pub fn python(python: &Path, mode: &str, scope: &str, id: Option<&str>) -> Self {
        let script = repo_root().join("tests/python/get_token.py");
        let mut args = vec![script.to_str().unwrap(), mode, scope];
        args.extend(id);
        Self::new(python, &args)
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    pub fn envs<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.command.envs(vars);
        self
    }

    /// The variables that point the client at `agent` over `protocol`.
    pub fn agent(self, agent: &TestAgent, protocol: Protocol) -> Self {
        self.envs(protocol.env(agent))
    }

    /// Trust `ca` (a PEM file) for HTTPS, in every client's own way.
    pub fn trust(self, ca: &Path) -> Self {
        self.env("NODE_EXTRA_CA_CERTS", ca)
            .env("REQUESTS_CA_BUNDLE", ca)
            .env("SSL_CERT_FILE", ca)
    }

    /// Runs the client; its standard output, or its error text and exit status.
    pub async fn output(mut self) -> Result<String, String> {
        let output = tokio::time::timeout(CLIENT_TIMEOUT, self.command.output())
            .await
            .unwrap_or_else(|_| panic!("{} gave no answer within {CLIENT_TIMEOUT:?}", self.name))
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.name));
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "{} failed ({}): {}{}",
                self.name,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                String::from_utf8_lossy(&output.stdout).trim(),
            ))
        }
    }

    /// Runs a `get_token` script; the `{"token", "expires_on"}` it printed.
    pub async fn token(self) -> Result<(String, u64), String> {
        let name = self.name.clone();
        let stdout = self.output().await?;
        let printed: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{name} printed no JSON ({e}): {stdout}"));
        Ok((
            printed["token"].as_str().unwrap().to_owned(),
            printed["expires_on"].as_u64().unwrap(),
        ))
    }
}

/// Where a TLS stack's broker reads its certificate and key, and the CA clients trust.
pub struct TlsFiles {
    pub dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub pki: Pki,
}

/// The standard stack serving HTTPS from a throwaway CA (the Entra-compatible endpoint's
/// clients insist on an https authority). `stack.http` trusts the CA.
pub async fn tls_stack() -> (Stack, TlsFiles) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("clients");
    let files = TlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        ca: dir.path().join("ca.crt"),
        dir,
        pki,
    };
    files.pki.install(&files.cert, &files.key);
    std::fs::write(&files.ca, &files.pki.ca_pem).unwrap();
    let (cert, key) = (files.cert.clone(), files.key.clone());
    let mut stack = Stack::start_with(move |cfg| {
        cfg.server.tls_cert = Some(cert);
        cfg.server.tls_key = Some(key);
    })
    .await;
    stack.http = files.pki.client();
    (stack, files)
}

/// azure-workload-identity's variables for a federated login at the broker's
/// Entra-compatible endpoint, with a fresh GitHub token for `client_id` in a file.
pub fn workload_env(
    stack: &Stack,
    files: &TlsFiles,
    client_id: &str,
) -> Vec<(&'static str, String)> {
    let token_file = files.dir.path().join("azure-identity-token");
    std::fs::write(&token_file, stack.github_token("main")).unwrap();
    vec![
        ("AZURE_TENANT_ID", TENANT.to_owned()),
        ("AZURE_CLIENT_ID", client_id.to_owned()),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            token_file.to_str().unwrap().to_owned(),
        ),
        ("AZURE_AUTHORITY_HOST", stack.broker.url()),
    ]
}

/// The audience the Azure CLI asks tokens for in the test cloud (its
/// `active_directory_resource_id`, as in Azure's public cloud).
pub const CLI_RESOURCE: &str = "https://management.core.windows.net/";
/// The one subscription the Resource Manager stand-in lists.
pub const SUBSCRIPTION: &str = "0b1f6471-1bf0-4dda-aec3-cb9272f09590";

/// A Resource Manager stand-in over HTTPS, enough for `az login`: it lists one
/// subscription and the tenant to a bearer token Entra (the emulator) issued for
/// [`CLI_RESOURCE`], and refuses anything else as ARM does.
pub struct ArmStandIn {
    pub url: String,
    /// `GET /subscriptions` answered with the list.
    pub listed: Arc<AtomicU64>,
}

impl ArmStandIn {
    pub async fn start(stack: &Stack, files: &TlsFiles) -> ArmStandIn {
        let dir = files.dir.path().join("arm");
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        files.pki.install(&cert, &key);
        let tls = wif_broker::tls::server_config(cert, key, Duration::from_secs(3600)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}/",
            listener.local_addr().unwrap().port()
        );
        let listed = Arc::new(AtomicU64::new(0));
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(stack.entra.jwks()).unwrap();
        let jwks = Arc::new(jwks);
        let (keys, count) = (jwks.clone(), listed.clone());
        let subscriptions = move |headers: HeaderMap| {
            let (keys, count) = (keys.clone(), count.clone());
            async move {
                if let Err(refused) = arm_authorize(&keys, &headers) {
                    return *refused;
                }
                count.fetch_add(1, Ordering::SeqCst);
                axum::Json(json!({"value": [{
                    "id": format!("/subscriptions/{SUBSCRIPTION}"),
                    "subscriptionId": SUBSCRIPTION,
                    "tenantId": TENANT,
                    "displayName": "wif-tests",
                    "state": "Enabled",
                    "subscriptionPolicies": {
                        "locationPlacementId": "Public_2014-09-01",
                        "quotaId": "PayAsYouGo_2014-09-01",
                        "spendingLimit": "Off"
                    },
                    "authorizationSource": "RoleBased"
                }]}))
                .into_response()
            }
        };
        let tenants = move |headers: HeaderMap| {
            let keys = jwks.clone();
            async move {
                if let Err(refused) = arm_authorize(&keys, &headers) {
                    return *refused;
                }
                axum::Json(json!({"value": [{
                    "id": format!("/tenants/{TENANT}"),
                    "tenantId": TENANT,
                    "tenantCategory": "Home"
                }]}))
                .into_response()
            }
        };
        let router = axum::Router::new()
            .route("/subscriptions", axum::routing::get(subscriptions))
            .route("/tenants", axum::routing::get(tenants))
            .fallback(|| async {
                arm_error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the Resource Manager stand-in serves only /subscriptions and /tenants",
                )
            });
        tokio::spawn(wif_broker::api::serve::serve(
            listener,
            router,
            Some(tls),
            std::future::pending(),
            wif_broker::api::serve::Limits::default(),
        ));
        ArmStandIn { url, listed }
    }

    pub fn listed(&self) -> u64 {
        self.listed.load(Ordering::SeqCst)
    }
}

/// ARM's error shape.
fn arm_error(status: StatusCode, code: &str, message: &str) -> axum::response::Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// ARM's check of the bearer token: signed by Entra, for the management audience. The
/// refusal is ARM's 401 `InvalidAuthenticationToken`.
fn arm_authorize(
    jwks: &jsonwebtoken::jwk::JwkSet,
    headers: &HeaderMap,
) -> Result<(), Box<axum::response::Response>> {
    let check = || -> Result<(), String> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or("the request has no bearer token")?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| "not a JWT")?;
        let jwk = header
            .kid
            .as_deref()
            .and_then(|kid| jwks.find(kid))
            .ok_or("unknown signing key")?;
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|_| "bad key")?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&[CLI_RESOURCE.trim_end_matches('/')]);
        // The test clock may run ahead of the system's; expiry is the emulator's business.
        validation.validate_exp = false;
        jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map(|_| ())
            .map_err(|e| format!("the token is not valid for ARM: {e}"))
    };
    check().map_err(|message| {
        Box::new(arm_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            &message,
        ))
    })
}

/// The Azure CLI with its own throwaway `AZURE_CONFIG_DIR`, the test cloud registered
/// and selected: Resource Manager at the stand-in, Entra at the broker's
/// Entra-compatible endpoint (trusted through the test CA).
pub struct AzCli {
    az: PathBuf,
    ca: PathBuf,
    config_dir: tempfile::TempDir,
}

impl AzCli {
    pub async fn new(az: &Path, stack: &Stack, files: &TlsFiles, arm: &ArmStandIn) -> AzCli {
        let cli = AzCli {
            az: az.to_owned(),
            ca: files.ca.clone(),
            config_dir: tempfile::tempdir().unwrap(),
        };
        let broker = stack.broker.url();
        cli.run(&[
            "cloud",
            "register",
            "--name",
            "WifTests",
            "--endpoint-resource-manager",
            &arm.url,
            "--endpoint-active-directory",
            &broker,
            "--endpoint-active-directory-resource-id",
            CLI_RESOURCE,
            "--skip-endpoint-discovery",
        ])
        .await
        .unwrap();
        cli.run(&["cloud", "set", "--name", "WifTests"])
            .await
            .unwrap();
        cli
    }

    /// `az ARGS` with [`AzCli::env`] and nothing else.
    pub fn command(&self, args: &[&str]) -> ClientRun {
        ClientRun::new(&self.az, args).envs(self.env())
    }

    /// The CLI's settings for an offline test, and `az` first on `PATH` (for SDK
    /// credentials that run `az` themselves).
    pub fn env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        let bin = self.az.parent().unwrap().to_owned();
        let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))
        .unwrap();
        let ca = self.ca.clone().into_os_string();
        vec![
            ("PATH", path),
            ("AZURE_CONFIG_DIR", self.config_dir.path().into()),
            ("REQUESTS_CA_BUNDLE", ca.clone()),
            ("SSL_CERT_FILE", ca),
            // No telemetry upload or survey prompt.
            ("AZURE_CORE_COLLECT_TELEMETRY", "false".into()),
            ("AZURE_CORE_SURVEY_MESSAGE", "false".into()),
            ("AZURE_CORE_NO_COLOR", "true".into()),
            // The broker is not a cloud MSAL knows: no instance discovery at
            // login.microsoftonline.com (az's setting for Azure Stack).
            ("AZURE_CORE_INSTANCE_DISCOVERY", "false".into()),
        ]
    }

    /// `az login --service-principal --federated-token` at the broker's Entra-compatible
    /// endpoint, as the deploy identity with a fresh GitHub token.
    pub async fn login_federated(&self, stack: &Stack, client_id: &str) -> Result<Value, String> {
        let token = stack.github_token("main");
        self.json(self.command(&[
            "login",
            "--service-principal",
            "--username",
            client_id,
            "--tenant",
            TENANT,
            "--federated-token",
            &token,
            "--output",
            "json",
        ]))
        .await
    }

    pub async fn run(&self, args: &[&str]) -> Result<String, String> {
        self.command(args).output().await
    }

    /// `az ARGS` parsed as JSON.
    pub async fn json(&self, command: ClientRun) -> Result<Value, String> {
        let stdout = command.output().await?;
        serde_json::from_str(&stdout).map_err(|e| format!("az printed no JSON ({e}): {stdout}"))
    }

    pub fn config_dir(&self) -> &Path {
        self.config_dir.path()
    }
}
