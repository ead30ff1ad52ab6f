//! End-to-end harness: real servers on loopback, talking real HTTP.
//!
//! A [`Stack`] is a broker plus the external parties it talks to, all faithful fakes
//! from `wif_broker::dev`: a GitHub-style issuer, an AKS-style issuer (its `iss` ends in
//! `/`), an Azure DevOps-style issuer, and the Entra emulator. The emulator holds the
//! federated credentials Entra would hold for the passthrough assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod agent;
pub mod ci;
pub mod clients;
pub mod k8s;
pub mod pg;
pub mod pki;
pub mod process;

use std::sync::Arc;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use wif_broker::clock::{OffsetClock, SharedClock};
use wif_broker::dev::entra::{AppRegistration, EmulatedFic, EntraEmulator};
use wif_broker::dev::issuer::{IssuerOptions, LocalIssuer};
use wif_broker::server::RunningBroker;
use wif_config::{BrokerConfig, FederatedCredentialConfig, IdentityConfig};

pub use wif_broker::dev::issuer::{
    azure_devops_claims, github_claims, github_pull_request_claims, kubernetes_claims,
};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// App registration used by CI: GitHub main and an Azure DevOps service connection.
pub const DEPLOY_CLIENT: &str = "3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6c";
/// User-assigned identity used by the `payments` namespace of the AKS cluster.
pub const PAYMENTS_CLIENT: &str = "8a7b6c5d-4e3f-4a1b-9c8d-7e6f5a4b3c2d";
/// An app whose broker credential Entra does not hold (to provoke AADSTS700213).
pub const UNSYNCED_CLIENT: &str = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6";

pub const REPO: &str = "contoso/app";
pub const MAIN_SUBJECT: &str = "repo:contoso/app:ref:refs/heads/main";
pub const RELEASE_SUBJECT: &str = "repo:contoso/app:ref:refs/heads/release";
pub const ADO_SUBJECT: &str = "sc://contoso/web/prod-connection";
pub const ARM: &str = "https://management.azure.com/.default";

pub struct Stack {
    pub clock: Arc<OffsetClock>,
    pub github: LocalIssuer,
    pub aks: LocalIssuer,
    pub ado: LocalIssuer,
    pub entra: EntraEmulator,
    pub broker: RunningBroker,
    pub config: BrokerConfig,
    pub http: reqwest::Client,
    /// Bearer tokens for the admin API (`admin` and `reader` roles).
    pub admin_token: String,
    pub reader_token: String,
    _dir: Arc<tempfile::TempDir>,
}

/// The response to one HTTP call.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("<no error code>")
    }
    pub fn description(&self) -> &str {
        self.body["error_description"].as_str().unwrap_or("")
    }
    pub fn access_token(&self) -> &str {
        self.body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token in {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Asserts an error answer in the documented shape and returns it.
    pub fn expect_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body {}",
            self.body
        );
        assert_eq!(
            self.error(),
            code,
            "unexpected error code; body {}",
            self.body
        );
        assert!(
            !self.description().is_empty(),
            "error without description: {}",
            self.body
        );
        assert!(
            self.body["request_id"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "error without request id: {}",
            self.body
        );
        self
    }
}

fn credential(
    name: &str,
    issuer: &str,
    subject: Option<&str>,
    expression: Option<&str>,
) -> FederatedCredentialConfig {
    FederatedCredentialConfig {
        name: name.into(),
        issuer: issuer.into(),
        subject: subject.map(str::to_owned),
        claims_matching_expression: expression.map(str::to_owned),
        audiences: vec![],
        description: None,
        ..Default::default()
    }
}

impl Stack {
    /// Starts the stack with the standard identities; `tweak` may change the config first.
    pub async fn start() -> Stack {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut BrokerConfig)) -> Stack {
        wif_broker::crypto::install_provider();
        let clock = OffsetClock::new();
        let shared: SharedClock = clock.clone();
        let github = LocalIssuer::start(shared.clone()).await.unwrap();
        let aks = LocalIssuer::start_with(
            shared.clone(),
            IssuerOptions {
                path: "/72f988bf-86f1-41af-91ab-2d7cd011db47/5c0e1a2b-3d4f-4a5b-8c6d-7e8f9a0b1c2d/"
                    .into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let ado = LocalIssuer::start_with(
            shared.clone(),
            IssuerOptions {
                path: "/5a6b7c8d-9e0f-4a1b-2c3d-4e5f6a7b8c9d".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let entra = EntraEmulator::start(shared.clone()).await.unwrap();
        entra.register_app(
            AppRegistration::new(TENANT, DEPLOY_CLIENT)
                .with_fic(EmulatedFic::new("github-main", &github.url(), MAIN_SUBJECT))
                .with_fic(EmulatedFic::new("ado-prod", &ado.url(), ADO_SUBJECT)),
        );
        entra.register_app(AppRegistration::new(TENANT, PAYMENTS_CLIENT).with_fic(
            EmulatedFic::new(
                "payments-api",
                &aks.url(),
                "system:serviceaccount:payments:api",
            ),
        ));
        // Entra holds a credential for this issuer, but not for the release branch.
        entra.register_app(AppRegistration::new(TENANT, UNSYNCED_CLIENT).with_fic(
            EmulatedFic::new(
                "github-production",
                &github.url(),
                "repo:contoso/app:environment:production",
            ),
        ));

        let dir = tempfile::tempdir().unwrap();
        let admin_token = "admin-token-for-tests".to_owned();
        let reader_token = "reader-token-for-tests".to_owned();
        let tokens_file = dir.path().join("admin-tokens");
        std::fs::write(
            &tokens_file,
            format!(
                "admin alice {}\nreader grafana {}\n",
                wif_broker::api::admin::auth::token_hash(&admin_token),
                wif_broker::api::admin::auth::token_hash(&reader_token)
            ),
        )
        .unwrap();
        let mut config = BrokerConfig::default();
        config.admin.tokens_file = Some(tokens_file);
        // Bound before `tweak`, so a tweak can name the broker's own URL (its issuer URL).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bound = listener.local_addr().unwrap().to_string();
        config.server.listen = bound.clone();
        config.store.url = "sqlite::memory:".into();
        // No load balancer to drain in tests: shutting down stops at once.
        config.server.drain_secs = 0;
        config.outbound.allow_loopback_http = true;
        config.entra.authority_host = entra.url();
        config.entra.initial_backoff_ms = 20;
        config.entra.max_backoff_ms = 2_000;
        config.entra.timeout_secs = 3;
        config.jwks.timeout_secs = 2;
        config.identities = vec![
            IdentityConfig {
                name: "deploy".into(),
                tenant_id: TENANT.parse().unwrap(),
                client_id: DEPLOY_CLIENT.parse().unwrap(),
                federated_credentials: vec![
                    credential("github-main", &github.url(), Some(MAIN_SUBJECT), None),
                    credential("ado-prod", &ado.url(), Some(ADO_SUBJECT), None),
                ],
                ..Default::default()
            },
            IdentityConfig {
                name: "payments".into(),
                tenant_id: TENANT.parse().unwrap(),
                client_id: PAYMENTS_CLIENT.parse().unwrap(),
                federated_credentials: vec![credential(
                    "payments-namespace",
                    &aks.url(),
                    None,
                    Some("claims['kubernetes.io']['namespace'] eq 'payments'"),
                )],
                ..Default::default()
            },
            IdentityConfig {
                name: "unsynced".into(),
                tenant_id: TENANT.parse().unwrap(),
                client_id: UNSYNCED_CLIENT.parse().unwrap(),
                federated_credentials: vec![credential(
                    "github-release",
                    &github.url(),
                    Some(RELEASE_SUBJECT),
                    None,
                )],
                ..Default::default()
            },
        ];
        tweak(&mut config);
        let broker = if config.server.listen == bound {
            RunningBroker::start_on(&config, shared, listener).await
        } else {
            drop(listener);
            RunningBroker::start(&config, shared).await
        }
        .unwrap();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap();
        Stack {
            clock,
            github,
            aks,
            ado,
            entra,
            broker,
            config,
            http,
            admin_token,
            reader_token,
            _dir: Arc::new(dir),
        }
    }

    /// An admin API call with `token` (None: unauthenticated) and an optional JSON body.
    pub async fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request.send().await.unwrap()).await
    }

    /// An admin API call as the `admin` role.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        self.call(Some(&self.admin_token), method, path, body).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.broker.url())
    }

    /// A GitHub Actions token for a push to `git_ref` of contoso/app.
    pub fn github_token(&self, git_ref: &str) -> String {
        self.github.mint(github_claims(REPO, git_ref)).unwrap()
    }

    /// `POST /v1/token` with the token as bearer and `scope` in a form body.
    pub async fn exchange(&self, token: &str, scope: &str) -> Answer {
        self.exchange_form(token, &[("scope", scope)]).await
    }

    pub async fn exchange_form(&self, token: &str, form: &[(&str, &str)]) -> Answer {
        let response = self
            .http
            .post(self.url("/v1/token"))
            .bearer_auth(token)
            .form(form)
            .send()
            .await
            .unwrap();
        answer(response).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        answer(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Claims of an access token issued by the emulator, after checking its signature.
    pub fn verify_access_token(&self, token: &str) -> Value {
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(self.entra.jwks()).unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.validate_aud = false;
        validation.validate_exp = false;
        jsonwebtoken::decode::<Value>(token, &key, &validation)
            .unwrap()
            .claims
    }
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    Answer {
        status,
        headers,
        body,
    }
}

/// Sums every sample of a Prometheus metric whose line contains all `labels`.
pub fn metric_value(exposition: &str, name: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
