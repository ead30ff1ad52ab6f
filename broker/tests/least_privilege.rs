//! Least privilege (docs/admin.md, "Least privilege" and "Rate limits"): the controls the
//! broker adds to identities and credentials, each allowed and refused over `/v1/token`,
//! RFC 8693 and the Entra-compatible endpoint of a real `wif-broker serve`, with its own
//! refusal code, its audit event, no Entra call for a refusal, and `simulate` naming the
//! control. Disable is checked across two replicas on one PostgreSQL (and through a real
//! `wif-agent serve` in front of one of them), rate limits per replica.
//!
//! The issuer and Entra are the in-process emulators. PostgreSQL is expected at
//! 127.0.0.1:5432, database `test`, user `postgres` (trust); each test that needs it works
//! in a schema of its own. When PostgreSQL cannot be reached those tests print a notice
//! and pass, except under `CI=true`, where they fail. `wif-agent` is the workspace's own
//! binary, built here when it is missing. Every wait is bounded.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)] // the attack suite's harness: not every helper is used here
#[path = "attacks/support.rs"]
mod support;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::{Answer, Broker, BrokerDir, CLIENT, REPO, TENANT, Upstreams};
use wif_broker::dev::entra::{AppRegistration, EmulatedFic};
use wif_broker::dev::issuer::github_claims;
use wif_tests::pg::Schema as PgSchema;

const STORAGE: &str = "https://storage.azure.com/.default";
const ARM: &str = "https://management.azure.com/.default";
/// A second app registration, for the identity-wide rate limit.
const BUSY_CLIENT: &str = "6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
/// The address the trusted proxy connects from (a loopback address of its own).
const PROXY: &str = "127.0.0.2";
/// Longest anything the tests wait for may take.
const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// One broker with one API-registered identity

fn subject(branch: &str) -> String {
    format!("repo:{REPO}:ref:refs/heads/{branch}")
}

/// The endpoints an exchange may come through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Native,
    Rfc8693,
    EntraCompat,
}

const ENDPOINTS: [Endpoint; 3] = [Endpoint::Native, Endpoint::Rfc8693, Endpoint::EntraCompat];

impl Endpoint {
    /// As audit events name it.
    fn audited(self) -> &'static str {
        match self {
            Endpoint::Native => "/v1/token",
            Endpoint::Rfc8693 => "/oauth2/token",
            Endpoint::EntraCompat => "/{tenant}/oauth2/v2.0/token",
        }
    }
}

struct Ctx {
    up: Upstreams,
    broker: Broker,
    http: reqwest::Client,
    /// Connects from [`PROXY`], the trusted proxy.
    via_proxy: reqwest::Client,
    _dir: BrokerDir,
}

/// A client whose connections come from `local`.
fn client_from(local: &str) -> reqwest::Client {
    wif_broker::crypto::install_provider();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .local_address(local.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The broker config for `store_url`, with `extra` appended.
fn config(up: &Upstreams, dir: &BrokerDir, store_url: &str, extra: &str) -> String {
    format!(
        r#"[store]
url = "{store_url}"
poll_interval_ms = 200

[admin]
tokens_file = "{tokens}"

[entra]
authority_host = "{entra}"
max_retries = 0
timeout_secs = 5

[outbound]
allow_loopback_http = true

{extra}
"#,
        tokens = dir.path("admin-tokens").display(),
        entra = up.entra.url(),
    )
}

impl Ctx {
    /// A broker on SQLite with `extra` config, and identity `app` (client [`CLIENT`])
    /// registered through the admin API.
    async fn start(extra: &str) -> Self {
        let up = Upstreams::start().await;
        let dir = BrokerDir::new();
        let toml = config(&up, &dir, &dir.sqlite_url(), extra);
        let broker = Broker::start(&dir, &toml, &[]).await;
        let ctx = Self {
            up,
            broker,
            http: support::client(),
            via_proxy: client_from(PROXY),
            _dir: dir,
        };
        ctx.put_identity("app", CLIENT, json!({})).await;
        ctx
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.broker.url())
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        support::admin(&self.http, method, &self.url(path), body).await
    }

    /// Creates or replaces identity `name` with `extra` fields.
    async fn put_identity(&self, name: &str, client: &str, extra: Value) -> Answer {
        let mut body = json!({ "tenantId": TENANT, "clientId": client });
        merge(&mut body, extra);
        let answer = self
            .admin(Method::PUT, &format!("/v1/identities/{name}"), Some(body))
            .await;
        assert!(
            matches!(answer.status, 200 | 201),
            "PUT identity: {}",
            answer.text
        );
        answer
    }

    /// Credential `branch` of `identity` trusting jobs on `branch`, with `extra` fields;
    /// Entra (the emulator) trusts the same subject.
    async fn credential(&self, identity: &str, client: &str, branch: &str, extra: Value) {
        let mut body = json!({
            "name": branch,
            "issuer": self.up.issuer.url(),
            "subject": subject(branch),
            "audiences": ["api://AzureADTokenExchange"],
        });
        merge(&mut body, extra);
        let answer = self
            .admin(
                Method::POST,
                &format!("/v1/identities/{identity}/federatedIdentityCredentials"),
                Some(body),
            )
            .await;
        assert_eq!(answer.status, 201, "create credential: {}", answer.text);
        self.up.entra.add_fic(
            TENANT,
            client,
            EmulatedFic::new(branch, &self.up.issuer.url(), &subject(branch)),
        );
    }

    async fn patch_credential(&self, identity: &str, name: &str, body: Value) {
        let answer = self
            .admin(
                Method::PATCH,
                &format!("/v1/identities/{identity}/federatedIdentityCredentials/{name}"),
                Some(body),
            )
            .await;
        assert_eq!(answer.status, 200, "PATCH credential: {}", answer.text);
    }

    /// A fresh token of a job on `branch`.
    fn token(&self, branch: &str) -> String {
        self.up.issuer.mint(github_claims(REPO, branch)).unwrap()
    }

    /// One exchange of `token` for `scope` through `endpoint`, from `http` with `headers`.
    async fn exchange(
        &self,
        http: &reqwest::Client,
        endpoint: Endpoint,
        token: &str,
        scope: &str,
        client_id: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = match endpoint {
            Endpoint::Native => http
                .post(self.url("/v1/token"))
                .bearer_auth(token)
                .json(&json!({ "scope": scope })),
            Endpoint::Rfc8693 => http.post(self.url("/oauth2/token")).form(&[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", token),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ("scope", scope),
            ]),
            Endpoint::EntraCompat => http
                .post(self.url(&format!("/{TENANT}/oauth2/v2.0/token")))
                .form(&[
                    ("client_id", client_id),
                    ("grant_type", "client_credentials"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", token),
                    ("scope", scope),
                ]),
        };
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        support::send(request).await
    }

    /// Exchanges on every endpoint succeed.
    async fn allowed(
        &self,
        http: &reqwest::Client,
        branch: &str,
        scope: &str,
        headers: &[(&str, &str)],
    ) {
        for endpoint in ENDPOINTS {
            let answer = self
                .exchange(http, endpoint, &self.token(branch), scope, CLIENT, headers)
                .await;
            assert_eq!(
                answer.status, 200,
                "{endpoint:?} for {branch} should be allowed: {}",
                answer.text
            );
            assert!(answer.body["access_token"].is_string(), "{}", answer.text);
        }
    }

    /// Exchanges on every endpoint are refused with `code` (the Entra-compatible endpoint
    /// in Entra's shape, the code first in its description), without any call to Entra;
    /// each refusal is audited; `simulate` names `control`.
    async fn refused(&self, refusal: Refusal<'_>) {
        let Refusal {
            http,
            branch,
            scope,
            headers,
            code,
            control,
            source_address,
        } = refusal;
        let entra_calls = self.up.entra.token_requests();
        for endpoint in ENDPOINTS {
            let answer = self
                .exchange(http, endpoint, &self.token(branch), scope, CLIENT, headers)
                .await;
            expect_refusal(&answer, endpoint, code);
        }
        assert_eq!(
            self.up.entra.token_requests(),
            entra_calls,
            "a {code} refusal called Entra"
        );
        self.audited(code, &ENDPOINTS.map(Endpoint::audited)).await;
        let mut request = json!({ "token": self.token(branch), "scope": scope });
        if let Some(address) = source_address {
            request["sourceAddress"] = address.into();
        }
        let answer = self
            .admin(Method::POST, "/v1/simulate", Some(request))
            .await;
        assert_eq!(answer.status, 200, "simulate: {}", answer.text);
        assert_eq!(answer.body["outcome"], code, "simulate: {}", answer.text);
        let failed: Vec<&str> = answer.body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["result"] == "failed")
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            failed,
            [control],
            "simulate's failed checks: {}",
            answer.text
        );
    }

    /// Waits until the audit trail holds `code` refusals from every one of `endpoints`.
    async fn audited(&self, code: &str, endpoints: &[&str]) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let answer = self
                .admin(
                    Method::GET,
                    &format!("/v1/audit?kind=exchange&outcome={code}&limit=1000"),
                    None,
                )
                .await;
            assert_eq!(answer.status, 200, "audit: {}", answer.text);
            let events = answer.body["value"].as_array().cloned().unwrap_or_default();
            if endpoints
                .iter()
                .all(|e| events.iter().any(|ev| ev["endpoint"] == *e))
            {
                for event in &events {
                    assert!(event["reason"].as_str().is_some_and(|r| !r.is_empty()));
                }
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "no {code} audit events from {endpoints:?} within {PATIENCE:?}: {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// What [`Ctx::refused`] sends and expects.
struct Refusal<'a> {
    http: &'a reqwest::Client,
    branch: &'a str,
    scope: &'a str,
    headers: &'a [(&'a str, &'a str)],
    code: &'a str,
    control: &'a str,
    /// Given to `simulate` to judge source networks.
    source_address: Option<&'a str>,
}

fn merge(into: &mut Value, extra: Value) {
    if let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) {
        into.extend(extra);
    }
}

/// A refusal with `code` in the endpoint's shape: 403 (or 429 with `Retry-After`) and the
/// broker's JSON; Entra's shape on the Entra-compatible endpoint.
fn expect_refusal(answer: &Answer, endpoint: Endpoint, code: &str) {
    let limited = code == "rate_limited";
    match endpoint {
        Endpoint::Native | Endpoint::Rfc8693 => {
            let status = if limited { 429 } else { 403 };
            assert_eq!(answer.status, status, "{endpoint:?}: {}", answer.text);
            assert_eq!(answer.error(), code, "{endpoint:?}: {}", answer.text);
            assert!(!answer.description().is_empty());
            assert!(
                answer.body["request_id"]
                    .as_str()
                    .is_some_and(|r| !r.is_empty())
            );
        }
        Endpoint::EntraCompat => {
            let (status, error) = if limited {
                (429, "temporarily_unavailable")
            } else {
                (400, "unauthorized_client")
            };
            assert_eq!(answer.status, status, "{endpoint:?}: {}", answer.text);
            assert_eq!(answer.error(), error, "{endpoint:?}: {}", answer.text);
            assert!(
                answer.description().starts_with(&format!("{code}: ")),
                "{endpoint:?}: {}",
                answer.text
            );
        }
    }
    if limited {
        let retry: u64 = answer.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1, "Retry-After {retry}");
    }
}

// ---------------------------------------------------------------------------------------
// Each control on one broker

#[tokio::test]
async fn allowed_scopes_refuse_other_resources_before_entra() {
    let ctx = Ctx::start("").await;
    ctx.credential(
        "app",
        CLIENT,
        "pull-request",
        json!({ "allowedScopes": [STORAGE] }),
    )
    .await;
    ctx.allowed(&ctx.http, "pull-request", STORAGE, &[]).await;
    // The resource without `/.default` is the same scope.
    ctx.allowed(&ctx.http, "pull-request", "https://storage.azure.com", &[])
        .await;
    ctx.refused(Refusal {
        http: &ctx.http,
        branch: "pull-request",
        scope: ARM,
        headers: &[],
        code: "scope_not_allowed",
        control: "allowedScopes",
        source_address: None,
    })
    .await;

    // An identity's scopes apply to its credentials that name none; wildcards.
    ctx.put_identity(
        "app",
        CLIENT,
        json!({ "allowedScopes": ["https://*.vault.azure.net/.default"] }),
    )
    .await;
    ctx.credential("app", CLIENT, "main", json!({})).await;
    ctx.allowed(
        &ctx.http,
        "main",
        "https://contoso.vault.azure.net/.default",
        &[],
    )
    .await;
    let answer = ctx
        .exchange(
            &ctx.http,
            Endpoint::Native,
            &ctx.token("main"),
            ARM,
            CLIENT,
            &[],
        )
        .await;
    expect_refusal(&answer, Endpoint::Native, "scope_not_allowed");
    assert!(
        answer.description().contains("identity \"app\""),
        "{}",
        answer.text
    );
    // The credential's own list wins over the identity's.
    ctx.allowed(&ctx.http, "pull-request", STORAGE, &[]).await;
    let shown = ctx
        .admin(
            Method::GET,
            "/v1/identities/app/federatedIdentityCredentials/pull-request",
            None,
        )
        .await;
    assert_eq!(
        shown.body["allowedScopes"],
        json!([STORAGE]),
        "{}",
        shown.text
    );
}

#[tokio::test]
async fn source_networks_honour_a_trusted_proxy_and_ignore_anyone_elses_forwarded_for() {
    let ctx = Ctx::start(&format!("[server]\ntrusted_proxies = [\"{PROXY}/32\"]\n")).await;
    ctx.credential(
        "app",
        CLIENT,
        "office",
        json!({ "sourceNetworks": ["10.9.0.0/16"] }),
    )
    .await;
    // Through the trusted proxy, from inside the network.
    let inside = [("x-forwarded-for", "10.9.4.2")];
    ctx.allowed(&ctx.via_proxy, "office", ARM, &inside).await;
    // A client that prepends an address of its own does not get through the proxy.
    let spoofed_chain = [("x-forwarded-for", "10.9.4.2, 203.0.113.50")];
    ctx.refused(Refusal {
        http: &ctx.via_proxy,
        branch: "office",
        scope: ARM,
        headers: &spoofed_chain,
        code: "source_not_allowed",
        control: "sourceNetworks",
        source_address: Some("203.0.113.50"),
    })
    .await;
    // Directly (not through the proxy), the same header is ignored: the socket's peer
    // (127.0.0.1) is the client.
    for endpoint in ENDPOINTS {
        let answer = ctx
            .exchange(
                &ctx.http,
                endpoint,
                &ctx.token("office"),
                ARM,
                CLIENT,
                &inside,
            )
            .await;
        expect_refusal(&answer, endpoint, "source_not_allowed");
        assert!(
            answer.description().contains("127.0.0.1"),
            "{}",
            answer.text
        );
    }
    // Both addresses are in the audit trail: the forwarded one, and the peer's.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let events = ctx.audited("source_not_allowed", &["/v1/token"]).await;
        let seen = |address: &str| events.iter().any(|e| e["source_address"] == address);
        if seen("127.0.0.1") && seen("203.0.113.50") {
            break;
        }
        assert!(Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // simulate judges an address inside the network as passing.
    let answer = ctx
        .admin(
            Method::POST,
            "/v1/simulate",
            Some(json!({ "token": ctx.token("office"), "sourceAddress": "10.9.0.1" })),
        )
        .await;
    assert_eq!(answer.body["outcome"], "ok", "{}", answer.text);
}

#[tokio::test]
async fn a_maximum_token_age_refuses_old_tokens() {
    let ctx = Ctx::start("").await;
    ctx.credential(
        "app",
        CLIENT,
        "deploy",
        json!({ "maxTokenAgeSeconds": 120 }),
    )
    .await;
    ctx.allowed(&ctx.http, "deploy", ARM, &[]).await;
    let now = wif_broker::clock::system();
    let old = |ctx: &Ctx| {
        let t = now.now();
        let mut claims = github_claims(REPO, "deploy");
        claims["iat"] = (t - 600).into();
        claims["nbf"] = (t - 600).into();
        claims["exp"] = (t + 600).into();
        ctx.up.issuer.mint(claims).unwrap()
    };
    let entra_calls = ctx.up.entra.token_requests();
    for endpoint in ENDPOINTS {
        let answer = ctx
            .exchange(&ctx.http, endpoint, &old(&ctx), ARM, CLIENT, &[])
            .await;
        expect_refusal(&answer, endpoint, "token_too_old");
    }
    assert_eq!(ctx.up.entra.token_requests(), entra_calls);
    ctx.audited("token_too_old", &ENDPOINTS.map(Endpoint::audited))
        .await;
    let answer = ctx
        .admin(
            Method::POST,
            "/v1/simulate",
            Some(json!({ "token": old(&ctx) })),
        )
        .await;
    assert_eq!(answer.body["outcome"], "token_too_old", "{}", answer.text);
    assert!(
        answer.body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "maxTokenAge" && c["result"] == "failed"),
        "{}",
        answer.text
    );
}

#[tokio::test]
async fn validity_dates_bound_temporary_access() {
    let ctx = Ctx::start("").await;
    ctx.credential(
        "app",
        CLIENT,
        "later",
        json!({ "notBefore": "2999-01-01T00:00:00Z" }),
    )
    .await;
    ctx.credential(
        "app",
        CLIENT,
        "over",
        json!({ "notBefore": "2020-01-01T00:00:00Z", "notAfter": "2021-01-01T00:00:00Z" }),
    )
    .await;
    for (branch, code) in [
        ("later", "credential_not_yet_valid"),
        ("over", "credential_expired"),
    ] {
        ctx.refused(Refusal {
            http: &ctx.http,
            branch,
            scope: ARM,
            headers: &[],
            code,
            control: "validity",
            source_address: None,
        })
        .await;
    }
    // The window opens; clearing notAfter ends the time limit.
    ctx.patch_credential(
        "app",
        "later",
        json!({ "notBefore": "2020-01-01T00:00:00Z" }),
    )
    .await;
    ctx.allowed(&ctx.http, "later", ARM, &[]).await;
    ctx.patch_credential("app", "over", json!({ "notAfter": null }))
        .await;
    ctx.allowed(&ctx.http, "over", ARM, &[]).await;
    // A date that is not RFC 3339 is refused in the documented shape.
    let answer = ctx
        .admin(
            Method::PATCH,
            "/v1/identities/app/federatedIdentityCredentials/over",
            Some(json!({ "notAfter": "next tuesday" })),
        )
        .await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert_eq!(answer.error(), "invalid_request");
    assert_eq!(
        answer.body["details"][0]["field"], "notAfter",
        "{}",
        answer.text
    );
}

#[tokio::test]
async fn disabling_a_credential_or_an_identity_refuses_at_once_and_enabling_restores() {
    let ctx = Ctx::start("").await;
    ctx.credential("app", CLIENT, "main", json!({})).await;
    ctx.allowed(&ctx.http, "main", ARM, &[]).await;
    ctx.patch_credential("app", "main", json!({ "disabled": true }))
        .await;
    ctx.refused(Refusal {
        http: &ctx.http,
        branch: "main",
        scope: ARM,
        headers: &[],
        code: "credential_disabled",
        control: "disabled",
        source_address: None,
    })
    .await;
    ctx.patch_credential("app", "main", json!({ "disabled": false }))
        .await;
    ctx.allowed(&ctx.http, "main", ARM, &[]).await;

    ctx.put_identity("app", CLIENT, json!({ "disabled": true }))
        .await;
    ctx.refused(Refusal {
        http: &ctx.http,
        branch: "main",
        scope: ARM,
        headers: &[],
        code: "identity_disabled",
        control: "disabled",
        source_address: None,
    })
    .await;
    let shown = ctx.admin(Method::GET, "/v1/identities/app", None).await;
    assert_eq!(shown.body["disabled"], true, "{}", shown.text);
    ctx.put_identity("app", CLIENT, json!({})).await;
    // The cached token went with the disable: the next exchange asks Entra again.
    let before = ctx.up.entra.token_requests();
    ctx.allowed(&ctx.http, "main", ARM, &[]).await;
    assert!(ctx.up.entra.token_requests() > before);
}

#[tokio::test]
async fn controls_from_the_config_file_apply_too() {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    let extra = format!(
        r#"[[identities]]
name = "deploy"
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
allowed_scopes = ["{STORAGE}"]

[[identities.federated_credentials]]
name = "main"
issuer = "{issuer}"
subject = "{main}"
source_networks = ["127.0.0.0/8"]
max_token_age_secs = 300
not_before = "2020-01-01T00:00:00Z"
rate_limit = {{ per_minute = 60, burst = 5 }}

[[identities.federated_credentials]]
name = "off"
issuer = "{issuer}"
subject = "{off}"
disabled = true
"#,
        issuer = up.issuer.url(),
        main = subject("main"),
        off = subject("off"),
    );
    let toml = config(&up, &dir, &dir.sqlite_url(), &extra);
    let broker = Broker::start(&dir, &toml, &[]).await;
    up.entra.add_fic(
        TENANT,
        CLIENT,
        EmulatedFic::new("off", &up.issuer.url(), &subject("off")),
    );
    let http = support::client();
    let ok = support::exchange(&http, &broker.url(), &up.main_job_token(), STORAGE).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let scope = support::exchange(&http, &broker.url(), &up.main_job_token(), ARM).await;
    assert_eq!(scope.error(), "scope_not_allowed", "{}", scope.text);
    let off_token = up.issuer.mint(github_claims(REPO, "off")).unwrap();
    let off = support::exchange(&http, &broker.url(), &off_token, STORAGE).await;
    assert_eq!(off.error(), "credential_disabled", "{}", off.text);
    let shown = support::admin(
        &http,
        Method::GET,
        &format!(
            "{}/v1/identities/deploy/federatedIdentityCredentials/main",
            broker.url()
        ),
        None,
    )
    .await;
    assert_eq!(
        shown.body["sourceNetworks"],
        json!(["127.0.0.0/8"]),
        "{}",
        shown.text
    );
    assert_eq!(
        shown.body["rateLimit"],
        json!({"perMinute": 60, "burst": 5})
    );
    assert_eq!(shown.body["notBefore"], "2020-01-01T00:00:00Z");
}

// ---------------------------------------------------------------------------------------
// Rate limits

/// Exchanges on `endpoint` until one is refused 429; returns how many were allowed
/// before it, and its `Retry-After`.
async fn until_limited(ctx: &Ctx, endpoint: Endpoint, branch: &str, client: &str) -> (u32, u64) {
    for allowed in 0..20 {
        let answer = ctx
            .exchange(&ctx.http, endpoint, &ctx.token(branch), ARM, client, &[])
            .await;
        if answer.status != 200 {
            expect_refusal(&answer, endpoint, "rate_limited");
            let retry_after = answer.headers["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            return (allowed, retry_after);
        }
    }
    panic!("{endpoint:?}: never rate limited");
}

/// Waits `Retry-After` and exchanges again until allowed (bounded).
async fn recovers(ctx: &Ctx, branch: &str, client: &str, mut retry_after: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_secs(retry_after)).await;
        let answer = ctx
            .exchange(
                &ctx.http,
                Endpoint::Native,
                &ctx.token(branch),
                ARM,
                client,
                &[],
            )
            .await;
        if answer.status == 200 {
            return;
        }
        expect_refusal(&answer, Endpoint::Native, "rate_limited");
        retry_after = answer.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(Instant::now() < deadline, "still limited: {}", answer.text);
    }
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_recover() {
    // Each caller (issuer and subject): 6 a minute, 2 at once; a credential may set its own.
    let ctx = Ctx::start("[rate_limits]\nsubject_per_minute = 6\nsubject_burst = 2\n").await;
    // One caller per endpoint: each is allowed its burst (at least 2, more only when a
    // slow exchange let the bucket refill), then refused.
    let callers = [
        (Endpoint::Native, "main"),
        (Endpoint::Rfc8693, "exchange"),
        (Endpoint::EntraCompat, "compat"),
    ];
    for (endpoint, branch) in callers {
        ctx.credential("app", CLIENT, branch, json!({})).await;
        let (allowed, retry_after) = until_limited(&ctx, endpoint, branch, CLIENT).await;
        assert!(allowed >= 2, "{endpoint:?}: only {allowed} allowed");
        assert!(retry_after <= 10, "Retry-After {retry_after}");
    }
    let events = ctx
        .audited("rate_limited", &ENDPOINTS.map(Endpoint::audited))
        .await;
    for (endpoint, branch) in callers {
        assert!(
            events
                .iter()
                .any(|e| e["endpoint"] == endpoint.audited() && e["credential"] == branch),
            "{events:?}"
        );
    }
    // Each caller has a bucket of its own.
    ctx.credential("app", CLIENT, "release", json!({})).await;
    let other = ctx
        .exchange(
            &ctx.http,
            Endpoint::Native,
            &ctx.token("release"),
            ARM,
            CLIENT,
            &[],
        )
        .await;
    assert_eq!(other.status, 200, "{}", other.text);
    let (_, retry_after) = until_limited(&ctx, Endpoint::Native, "main", CLIENT).await;
    recovers(&ctx, "main", CLIENT, retry_after).await;

    // An identity's own limit is shared by all its callers.
    ctx.up
        .entra
        .register_app(AppRegistration::new(TENANT, BUSY_CLIENT));
    ctx.put_identity(
        "busy",
        BUSY_CLIENT,
        json!({ "rateLimit": { "perMinute": 1 } }),
    )
    .await;
    ctx.credential("busy", BUSY_CLIENT, "busy-a", json!({}))
        .await;
    ctx.credential("busy", BUSY_CLIENT, "busy-b", json!({}))
        .await;
    let first = ctx
        .exchange(
            &ctx.http,
            Endpoint::Native,
            &ctx.token("busy-a"),
            ARM,
            BUSY_CLIENT,
            &[],
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let second = ctx
        .exchange(
            &ctx.http,
            Endpoint::Native,
            &ctx.token("busy-b"),
            ARM,
            BUSY_CLIENT,
            &[],
        )
        .await;
    expect_refusal(&second, Endpoint::Native, "rate_limited");
    assert!(second.description().contains("identity"), "{}", second.text);
    // simulate never spends from a bucket, and says so.
    let answer = ctx
        .admin(
            Method::POST,
            "/v1/simulate",
            Some(json!({ "token": ctx.token("busy-b") })),
        )
        .await;
    assert_eq!(answer.body["outcome"], "ok", "{}", answer.text);
    assert!(
        answer.body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "rateLimit" && c["result"] == "skipped"),
        "{}",
        answer.text
    );
    let metrics = ctx.metrics().await;
    for limit in ["subject", "identity"] {
        assert!(
            metrics.contains(&format!("wif_rate_limited_total{{limit=\"{limit}\"}}")),
            "no {limit} rate-limit metric in:\n{metrics}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Two replicas on one PostgreSQL

/// Two brokers (A, then B) on one PostgreSQL schema, each with its own directory.
struct Replicas {
    ctx: Ctx,
    b: Broker,
    _b_dir: BrokerDir,
    _schema: PgSchema,
}

impl Replicas {
    async fn start(extra: &str) -> Option<Self> {
        let schema = PgSchema::create("wif_least_privilege").await?;
        let up = Upstreams::start().await;
        let a_dir = BrokerDir::new();
        let b_dir = BrokerDir::new();
        let a = Broker::start(&a_dir, &config(&up, &a_dir, &schema.url(), extra), &[]).await;
        let b = Broker::start(&b_dir, &config(&up, &b_dir, &schema.url(), extra), &[]).await;
        let ctx = Ctx {
            up,
            broker: a,
            http: support::client(),
            via_proxy: client_from(PROXY),
            _dir: a_dir,
        };
        ctx.put_identity("app", CLIENT, json!({})).await;
        ctx.credential("app", CLIENT, "main", json!({})).await;
        // B learns of the credential at its next version poll.
        let seen_at_b = format!(
            "{}/v1/identities/app/federatedIdentityCredentials/main",
            b.url()
        );
        let deadline = Instant::now() + PATIENCE;
        while support::admin(&ctx.http, Method::GET, &seen_at_b, None)
            .await
            .status
            != 200
        {
            assert!(Instant::now() < deadline, "B never saw the credential");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(Self {
            ctx,
            b,
            _b_dir: b_dir,
            _schema: schema,
        })
    }

    /// `/v1/token` at replica A.
    async fn at_a(&self) -> Answer {
        let ctx = &self.ctx;
        support::exchange(&ctx.http, &ctx.broker.url(), &ctx.token("main"), ARM).await
    }

    /// `/v1/token` at replica B.
    async fn at_b(&self) -> Answer {
        support::exchange(&self.ctx.http, &self.b.url(), &self.ctx.token("main"), ARM).await
    }
}

/// `wif-agent`, next to `wif-broker` in the target directory; built when missing.
fn agent_binary() -> PathBuf {
    let broker = PathBuf::from(env!("CARGO_BIN_EXE_wif-broker"));
    let agent = broker.with_file_name("wif-agent");
    if !agent.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "-p", "wif-agent", "--bin", "wif-agent"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build -p wif-agent failed");
    }
    assert!(agent.exists(), "no wif-agent at {}", agent.display());
    agent
}

/// A real `wif-agent serve` in front of `broker`, refreshing on every hit (so it asks the
/// broker again each time it serves from its cache), exchanging `token`.
struct Agent {
    _child: tokio::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

const AGENT_SECRET: &str = "least-privilege-identity-header-secret";

impl Agent {
    async fn start(broker: &str, token: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "broker = \"{broker}\"\nrefresh_before_secs = 1000000\nretries = 0\nidentity = \"app\"\n"
            ),
        )
        .unwrap();
        let port = support::free_port();
        let child = tokio::process::Command::new(agent_binary())
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--token-file")
            .arg(&token_file)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env_clear()
            .env("WIF_AGENT_IDENTITY_HEADER", AGENT_SECRET)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let agent = Self {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + PATIENCE;
        while support::client()
            .get(format!("{}/healthz", agent.url))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "wif-agent did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        agent
    }

    /// A token for ARM through the App Service managed-identity protocol.
    async fn token(&self, http: &reqwest::Client) -> Answer {
        support::send(
            http.get(format!(
                "{}/msi/token?api-version=2019-08-01&resource=https://management.azure.com",
                self.url
            ))
            .header("X-IDENTITY-HEADER", AGENT_SECRET),
        )
        .await
    }
}

#[tokio::test]
async fn disable_on_one_replica_is_refused_on_the_other_and_its_cached_tokens_go() {
    let Some(replicas) = Replicas::start("").await else {
        return;
    };
    let ctx = &replicas.ctx;
    // B has a cached token for the identity, and so does an agent in front of B.
    let first = replicas.at_b().await;
    assert_eq!(first.status, 200, "{}", first.text);
    let cached = replicas.at_b().await;
    assert_eq!(
        cached.body["access_token"], first.body["access_token"],
        "B's cache"
    );
    let agent = Agent::start(&replicas.b.url(), &ctx.token("main")).await;
    let from_agent = agent.token(&ctx.http).await;
    assert_eq!(from_agent.status, 200, "agent: {}", from_agent.text);

    // Disabled at A; B refuses within its version poll.
    ctx.put_identity("app", CLIENT, json!({ "disabled": true }))
        .await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = replicas.at_b().await;
        if answer.status != 200 {
            expect_refusal(&answer, Endpoint::Native, "identity_disabled");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still serves a disabled identity"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The agent serves its cached token at most while its refresh is refused, then never.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = agent.token(&ctx.http).await;
        if answer.status != 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent still serves a revoked token"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        let answer = agent.token(&ctx.http).await;
        assert_ne!(answer.status, 200, "the agent served a revoked token again");
    }

    // Enabled again: B's cached token did not survive, B asks Entra anew.
    ctx.put_identity("app", CLIENT, json!({})).await;
    let deadline = Instant::now() + PATIENCE;
    let again = loop {
        let answer = replicas.at_b().await;
        if answer.status == 200 {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "B does not see the identity enabled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(
        again.body["access_token"], first.body["access_token"],
        "B served the token it had cached before the disable"
    );
}

#[tokio::test]
async fn each_replica_enforces_its_own_bucket() {
    let Some(replicas) =
        Replicas::start("[rate_limits]\nsubject_per_minute = 1\nsubject_burst = 2\n").await
    else {
        return;
    };
    for _ in 0..2 {
        let answer = replicas.at_a().await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    expect_refusal(&replicas.at_a().await, Endpoint::Native, "rate_limited");
    // B's bucket for the same caller is full: limits are per replica (docs/admin.md).
    for _ in 0..2 {
        let answer = replicas.at_b().await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    expect_refusal(&replicas.at_b().await, Endpoint::Native, "rate_limited");
}

// ---------------------------------------------------------------------------------------
// The console

/// The console over plain HTTP: cookies kept by hand, no redirect followed.
struct Ui {
    base: String,
    http: reqwest::Client,
    cookies: Vec<(String, String)>,
}

impl Ui {
    fn new(base: String) -> Self {
        Self {
            base,
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            cookies: Vec::new(),
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> (u16, String) {
        let cookies: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let request = if cookies.is_empty() {
            request
        } else {
            request.header("cookie", cookies.join("; "))
        };
        let response = request.send().await.unwrap();
        for value in response.headers().get_all("set-cookie") {
            let value = value.to_str().unwrap();
            let pair = value.split(';').next().unwrap();
            let (name, v) = pair.split_once('=').unwrap();
            self.cookies.retain(|(k, _)| k != name);
            if !value.contains("Max-Age=0") {
                self.cookies.push((name.to_owned(), v.to_owned()));
            }
        }
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn get(&mut self, path: &str) -> (u16, String) {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let request = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(request).await
    }

    fn csrf_of(page: &str) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start = page.find(marker).expect("a csrf field") + marker.len();
        page[start..start + page[start..].find('"').unwrap()].to_owned()
    }

    /// Signs in with the admin token; returns the session's CSRF token.
    async fn sign_in(&mut self) -> String {
        let (_, login) = self.get("/ui/login").await;
        let csrf = Self::csrf_of(&login);
        let (status, body) = self
            .post(
                "/ui/login",
                &[
                    ("csrf", &csrf),
                    ("next", "/ui/identities"),
                    ("token", support::ADMIN_TOKEN),
                ],
            )
            .await;
        assert_eq!(status, 303, "sign-in: {body}");
        let (status, page) = self.get("/ui/identities").await;
        assert_eq!(status, 200, "{page}");
        Self::csrf_of(&page)
    }
}

#[tokio::test]
async fn the_console_sets_shows_and_tests_the_controls() {
    let ctx = Ctx::start("").await;
    let mut ui = Ui::new(ctx.broker.url());
    let csrf = ui.sign_in().await;
    let issuer = ctx.up.issuer.url();
    let console_subject = subject("console");
    let mut wizard = vec![
        ("csrf", csrf.as_str()),
        ("identity", "app"),
        ("scenario", "other"),
        ("name", "console"),
        ("other_issuer", issuer.as_str()),
        ("other_mode", "subject"),
        ("other_subject", console_subject.as_str()),
        ("audience", "api://AzureADTokenExchange"),
        ("allowed_scopes", STORAGE),
        ("max_token_age", "600"),
        ("not_after", "2999-01-01T00:00:00Z"),
    ];
    // A date that is not RFC 3339 is a problem of the form, nothing is saved.
    let mut bad = wizard.clone();
    bad.retain(|(k, _)| *k != "not_after");
    bad.push(("not_after", "soon"));
    let (status, page) = ui.post("/ui/identities/app/credentials", &bad).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("RFC 3339"), "{page}");
    let (status, page) = ui.post("/ui/identities/app/credentials", &wizard).await;
    assert_eq!(status, 303, "{page}");
    ctx.up.entra.add_fic(
        TENANT,
        CLIENT,
        EmulatedFic::new("console", &issuer, &console_subject),
    );
    let shown = ctx
        .admin(
            Method::GET,
            "/v1/identities/app/federatedIdentityCredentials/console",
            None,
        )
        .await;
    assert_eq!(
        shown.body["allowedScopes"],
        json!([STORAGE]),
        "{}",
        shown.text
    );
    assert_eq!(shown.body["maxTokenAgeSeconds"], 600);
    assert_eq!(shown.body["notAfter"], "2999-01-01T00:00:00Z");
    let refused = ctx
        .exchange(
            &ctx.http,
            Endpoint::Native,
            &ctx.token("console"),
            ARM,
            CLIENT,
            &[],
        )
        .await;
    expect_refusal(&refused, Endpoint::Native, "scope_not_allowed");

    // The edit page shows the controls; saving it keeps them, and can disable.
    let (status, edit) = ui.get("/ui/identities/app/credentials/console/edit").await;
    assert_eq!(status, 200, "{edit}");
    assert!(edit.contains("value=\"2999-01-01T00:00:00Z\""), "{edit}");
    assert!(edit.contains(&format!("value=\"{STORAGE}\"")), "{edit}");
    wizard.push(("disabled", "on"));
    let (status, page) = ui
        .post("/ui/identities/app/credentials/console", &wizard)
        .await;
    assert_eq!(status, 303, "{page}");
    let answer = ctx
        .exchange(
            &ctx.http,
            Endpoint::Native,
            &ctx.token("console"),
            STORAGE,
            CLIENT,
            &[],
        )
        .await;
    expect_refusal(&answer, Endpoint::Native, "credential_disabled");
    let (_, detail) = ui.get("/ui/identities/app").await;
    assert!(detail.contains(">disabled</span>"), "{detail}");

    // "Test it" names the control.
    let token = ctx.token("console");
    let (status, tested) = ui
        .post(
            "/ui/test",
            &[
                ("csrf", &csrf),
                ("mode", "token"),
                ("token", &token),
                ("scope", ARM),
            ],
        )
        .await;
    assert_eq!(status, 200, "{tested}");
    assert!(tested.contains("credential_disabled"), "{tested}");

    // The identity form's kill switch.
    let (status, page) = ui
        .post(
            "/ui/identities/app",
            &[
                ("csrf", &csrf),
                ("name", "app"),
                ("tenant_id", TENANT),
                ("client_id", CLIENT),
                ("disabled", "on"),
            ],
        )
        .await;
    assert_eq!(status, 303, "{page}");
    let answer = ctx
        .exchange(
            &ctx.http,
            Endpoint::Native,
            &ctx.token("console"),
            STORAGE,
            CLIENT,
            &[],
        )
        .await;
    expect_refusal(&answer, Endpoint::Native, "identity_disabled");
    let shown = ctx.admin(Method::GET, "/v1/identities/app", None).await;
    assert_eq!(shown.body["disabled"], true, "{}", shown.text);
}
