//! The local issuer and the Entra emulator, exercised over real loopback HTTP the way the
//! broker and the SDKs will talk to them.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use wif_broker::clock::{Clock, OffsetClock, SharedClock, system};
use wif_broker::dev::entra::{AppRegistration, EmulatedFic, EntraEmulator, Fault, JWT_BEARER};
use wif_broker::dev::issuer::{
    IssuerOptions, LocalIssuer, azure_devops_claims, github_claims, github_pull_request_claims,
    kubernetes_claims,
};
use wif_broker::dev::jwt::{self, KeyKind, SigningKey};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "8d3c1f2a-5b6e-4c7d-9e0f-1a2b3c4d5e6f";
const REPO: &str = "contoso/app";
const MAIN_SUB: &str = "repo:contoso/app:ref:refs/heads/main";
const ARM: &str = "https://management.azure.com/.default";

fn http() -> reqwest::Client {
    wif_broker::crypto::install_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Validation that checks only the signature and algorithm.
fn signature_only(alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims = HashSet::new();
    validation
}

fn verify_with_jwks(token: &str, jwks: &Value) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let kid = header.kid.clone().unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("kid {kid} not in {jwks}"));
    let jwk: Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = DecodingKey::from_jwk(&jwk).unwrap();
    jsonwebtoken::decode::<Value>(token, &key, &signature_only(header.alg))
        .unwrap()
        .claims
}

fn payload(token: &str) -> Value {
    jwt::decode_segment(token.split('.').nth(1).unwrap()).unwrap()
}

/// A GitHub-like issuer, an Entra emulator, and one app trusting `contoso/app` on main.
struct Stack {
    clock: Arc<OffsetClock>,
    issuer: LocalIssuer,
    entra: EntraEmulator,
    http: reqwest::Client,
}

impl Stack {
    async fn start() -> Self {
        Self::start_with(IssuerOptions::default()).await
    }

    async fn start_with(opts: IssuerOptions) -> Self {
        let http = http();
        let clock = OffsetClock::new();
        let shared: SharedClock = clock.clone();
        let issuer = LocalIssuer::start_with(shared.clone(), opts).await.unwrap();
        let entra = EntraEmulator::start(shared).await.unwrap();
        entra.register_app(
            AppRegistration::new(TENANT, CLIENT).with_fic(EmulatedFic::new(
                "github-main",
                &issuer.url(),
                MAIN_SUB,
            )),
        );
        Self {
            clock,
            issuer,
            entra,
            http,
        }
    }

    fn main_token(&self) -> String {
        self.issuer.mint(github_claims(REPO, "main")).unwrap()
    }

    async fn exchange(&self, assertion: &str) -> reqwest::Response {
        self.exchange_as(TENANT, CLIENT, assertion, ARM).await
    }

    async fn exchange_as(
        &self,
        tenant: &str,
        client: &str,
        assertion: &str,
        scope: &str,
    ) -> reqwest::Response {
        self.http
            .post(self.entra.token_endpoint(tenant))
            .form(&[
                ("client_id", client),
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", assertion),
                ("scope", scope),
            ])
            .send()
            .await
            .unwrap()
    }

    /// Exchanges `assertion` and checks Entra's error shape with the given status, OAuth
    /// error and AADSTS code; returns the body.
    async fn refused(&self, assertion: &str, status: u16, error: &str, code: u32) -> Value {
        let response = self.exchange(assertion).await;
        assert_entra_error(response, status, error, code).await
    }
}

async fn assert_entra_error(
    response: reqwest::Response,
    status: u16,
    error: &str,
    code: u32,
) -> Value {
    let actual_status = response.status().as_u16();
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(actual_status, status, "{body:#}");
    assert!(content_type.starts_with("application/json"));
    assert_eq!(body["error"], error, "{body:#}");
    assert_eq!(body["error_codes"], json!([code]), "{body:#}");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    let timestamp = body["timestamp"].as_str().unwrap();
    // "YYYY-MM-DD HH:MM:SSZ"
    assert_eq!(timestamp.len(), 20, "{timestamp}");
    assert_eq!(&timestamp[4..5], "-");
    assert_eq!(&timestamp[10..11], " ");
    assert!(timestamp.ends_with('Z'));
    let trace_id = body["trace_id"].as_str().unwrap();
    let correlation_id = body["correlation_id"].as_str().unwrap();
    uuid::Uuid::parse_str(trace_id).unwrap();
    uuid::Uuid::parse_str(correlation_id).unwrap();
    assert!(description.contains(&format!("Trace ID: {trace_id}")));
    assert!(description.contains(&format!("Correlation ID: {correlation_id}")));
    assert!(description.contains(&format!("Timestamp: {timestamp}")));
    assert!(
        body["error_uri"]
            .as_str()
            .unwrap()
            .ends_with(&format!("?code={code}"))
    );
    body
}

#[test]
fn handles_are_cheap_shareable_values() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<LocalIssuer>();
    check::<EntraEmulator>();
    check::<SigningKey>();
}

// ---------------------------------------------------------------------------------------
// Local issuer

#[tokio::test]
async fn issuer_serves_discovery_and_jwks() {
    let http = http();
    let issuer = LocalIssuer::start(system()).await.unwrap();
    assert_eq!(issuer.url(), format!("http://{}", issuer.addr()));

    let discovery: Value = http
        .get(format!("{}/.well-known/openid-configuration", issuer.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], issuer.url());
    assert_eq!(discovery["jwks_uri"], issuer.jwks_uri());
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
    assert_eq!(discovery["response_types_supported"], json!(["id_token"]));
    assert_eq!(discovery["subject_types_supported"], json!(["public"]));

    let jwks: Value = http
        .get(issuer.jwks_uri())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks, issuer.jwks());
    let key = &jwks["keys"][0];
    assert_eq!(key["kid"], issuer.current_key().kid());
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["alg"], "RS256");

    let k8s_style: Value = http
        .get(format!("{}/openid/v1/jwks", issuer.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(k8s_style, jwks);

    let missing = http
        .get(format!("{}/nothing-here", issuer.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(issuer.request_count(), 4);
    issuer.shutdown().await;
}

#[tokio::test]
async fn an_aks_style_issuer_keeps_its_trailing_slash() {
    let http = http();
    let issuer = LocalIssuer::start_with(
        system(),
        IssuerOptions {
            path: "/72f988bf/0b3c8d4e-aks/".into(),
            key_kind: KeyKind::Rsa2048,
        },
    )
    .await
    .unwrap();
    let url = issuer.url();
    assert!(url.ends_with("/72f988bf/0b3c8d4e-aks/"), "{url}");
    let base = url.trim_end_matches('/');
    assert_eq!(
        issuer.discovery_url(),
        format!("{base}/.well-known/openid-configuration")
    );

    let discovery: Value = http
        .get(issuer.discovery_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], url);
    assert_eq!(discovery["jwks_uri"], format!("{base}/openid/v1/jwks"));
    for path in ["/openid/v1/jwks", "/.well-known/jwks"] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let token = issuer.mint(kubernetes_claims("payments", "api")).unwrap();
    let claims = payload(&token);
    assert_eq!(claims["iss"], url);
    assert_eq!(claims["sub"], "system:serviceaccount:payments:api");
    assert_eq!(claims["kubernetes.io"]["namespace"], "payments");
    assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], "api");
    assert!(claims["kubernetes.io"]["pod"]["uid"].is_string());
}

#[tokio::test]
async fn minted_tokens_verify_with_jsonwebtoken_for_every_key_kind() {
    let http = http();
    for (kind, alg) in [
        (KeyKind::Rsa2048, Algorithm::RS256),
        (KeyKind::EcP256, Algorithm::ES256),
        (KeyKind::Ed25519, Algorithm::EdDSA),
    ] {
        let issuer = LocalIssuer::start_with(
            system(),
            IssuerOptions {
                path: String::new(),
                key_kind: kind,
            },
        )
        .await
        .unwrap();
        assert_eq!(issuer.current_key().alg(), kind.alg());
        let token = issuer.mint(github_claims(REPO, "main")).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, alg);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.kid.as_deref(), Some(issuer.current_key().kid()));

        let jwks: Value = http
            .get(issuer.jwks_uri())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let claims = verify_with_jwks(&token, &jwks);
        assert_eq!(claims["sub"], MAIN_SUB, "{kind:?}");

        // A token signed by another key of the same kind does not verify.
        let stranger = SigningKey::generate(kind, issuer.current_key().kid()).unwrap();
        let forged = issuer
            .mint_with_key(&stranger, github_claims(REPO, "main"))
            .unwrap();
        let jwk: Jwk = serde_json::from_value(issuer.current_key().public_jwk()).unwrap();
        let key = DecodingKey::from_jwk(&jwk).unwrap();
        assert!(jsonwebtoken::decode::<Value>(&forged, &key, &signature_only(alg)).is_err());
        issuer.shutdown().await;
    }
}

#[tokio::test]
async fn minting_applies_defaults_and_null_removes_a_claim() {
    let clock = OffsetClock::new();
    let issuer = LocalIssuer::start(clock.clone()).await.unwrap();
    let now = clock.now();

    let claims = payload(&issuer.mint(json!({ "sub": "x" })).unwrap());
    assert_eq!(claims["iss"], issuer.url());
    assert_eq!(claims["aud"], "api://AzureADTokenExchange");
    assert!(claims["iat"].as_u64().unwrap().abs_diff(now) <= 1);
    assert_eq!(claims["nbf"], claims["iat"]);
    assert_eq!(
        claims["exp"].as_u64().unwrap(),
        claims["iat"].as_u64().unwrap() + 300
    );
    uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).unwrap();

    let claims = payload(
        &issuer
            .mint(json!({ "sub": "x", "iat": null, "aud": ["a", "b"] }))
            .unwrap(),
    );
    assert!(claims.get("iat").is_none());
    assert_eq!(claims["aud"], json!(["a", "b"]));

    clock.advance(3600);
    let later = payload(&issuer.mint(json!({})).unwrap());
    assert!(later["iat"].as_u64().unwrap() >= now + 3600);

    assert!(issuer.mint(json!("not an object")).is_err());
}

#[tokio::test]
async fn platform_claims_read_like_the_real_tokens() {
    let github = github_claims("contoso/app", "refs/tags/v1.2.0");
    assert_eq!(github["sub"], "repo:contoso/app:ref:refs/tags/v1.2.0");
    assert_eq!(github["ref_type"], "tag");
    assert_eq!(github["repository_owner"], "contoso");
    assert_eq!(github["event_name"], "push");
    assert_eq!(github["sha"].as_str().unwrap().len(), 40);
    assert_eq!(
        github["job_workflow_ref"],
        "contoso/app/.github/workflows/ci.yml@refs/tags/v1.2.0"
    );
    let main = github_claims("contoso/app", "main");
    assert_eq!(main["sub"], MAIN_SUB);
    assert_eq!(main["ref"], "refs/heads/main");
    assert_eq!(main["ref_type"], "branch");

    let pr = github_pull_request_claims("contoso/app");
    assert_eq!(pr["sub"], "repo:contoso/app:pull_request");
    assert_eq!(pr["event_name"], "pull_request");

    let ado = azure_devops_claims("contoso", "web", "prod-arm");
    assert_eq!(ado["sub"], "sc://contoso/web/prod-arm");
}

#[tokio::test]
async fn rotation_publishes_both_kids_until_old_keys_retire() {
    let http = http();
    let issuer = LocalIssuer::start(system()).await.unwrap();
    let old = issuer.current_key();
    let old_token = issuer.mint(github_claims(REPO, "main")).unwrap();

    let new = issuer.rotate_key();
    assert_ne!(new.kid(), old.kid());
    assert_eq!(issuer.current_key().kid(), new.kid());
    let new_token = issuer.mint(github_claims(REPO, "main")).unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&new_token)
            .unwrap()
            .kid
            .as_deref(),
        Some(new.kid())
    );

    let jwks: Value = http
        .get(issuer.jwks_uri())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, vec![old.kid(), new.kid()]);
    verify_with_jwks(&old_token, &jwks);
    verify_with_jwks(&new_token, &jwks);

    issuer.retire_old_keys();
    let jwks: Value = http
        .get(issuer.jwks_uri())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(jwks["keys"][0]["kid"], new.kid());
}

#[tokio::test]
async fn an_unavailable_issuer_answers_503_everywhere() {
    let http = http();
    let issuer = LocalIssuer::start(system()).await.unwrap();
    issuer.set_available(false);
    for url in [issuer.discovery_url(), issuer.jwks_uri()] {
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 503, "{url}");
    }
    issuer.set_available(true);
    let response = http.get(issuer.jwks_uri()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(issuer.request_count(), 3);
}

#[tokio::test]
async fn a_shut_down_issuer_refuses_connections() {
    let http = http();
    let issuer = LocalIssuer::start(system()).await.unwrap();
    let url = issuer.jwks_uri();
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    issuer.shutdown().await;
    issuer.shutdown().await; // idempotent
    assert!(http.get(&url).send().await.is_err());
}

#[test]
fn attack_tokens_are_what_they_claim() {
    wif_broker::crypto::install_provider();
    let key = SigningKey::generate(KeyKind::Rsa2048, "k1").unwrap();
    let pem = key.public_key_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert!(pem.trim_end().ends_with("-----END PUBLIC KEY-----"));

    let claims = json!({ "sub": "attacker" });
    let hs = jwt::hmac_token(pem.as_bytes(), Some("k1"), &claims);
    let header = jsonwebtoken::decode_header(&hs).unwrap();
    assert_eq!(header.alg, Algorithm::HS256);
    assert_eq!(header.kid.as_deref(), Some("k1"));
    let decoded = jsonwebtoken::decode::<Value>(
        &hs,
        &DecodingKey::from_secret(pem.as_bytes()),
        &signature_only(Algorithm::HS256),
    )
    .unwrap();
    assert_eq!(decoded.claims, claims);

    let none = jwt::unsigned_token(&claims);
    assert!(none.ends_with('.'));
    assert_eq!(
        jwt::decode_segment(none.split('.').next().unwrap()).unwrap()["alg"],
        "none"
    );

    let lying = key
        .sign_with_header(&json!({ "alg": "RS256", "kid": "other" }), &claims)
        .unwrap();
    assert_eq!(
        jwt::decode_segment(lying.split('.').next().unwrap()).unwrap(),
        json!({ "alg": "RS256", "kid": "other" })
    );
    assert_eq!(jwt::b64url(&[0xfb, 0xff]), "-_8");
}

// ---------------------------------------------------------------------------------------
// Entra emulator: the happy path

#[tokio::test]
async fn a_github_job_on_main_gets_a_token_for_management_azure_com() {
    let stack = Stack::start().await;
    let assertion = stack.main_token();
    let response = stack.exchange(&assertion).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);

    let access_token = body["access_token"].as_str().unwrap();
    let jwks: Value = stack
        .http
        .get(format!(
            "{}/{TENANT}/discovery/v2.0/keys",
            stack.entra.url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks, stack.entra.jwks());
    let claims = verify_with_jwks(access_token, &jwks);
    let app = stack.entra.app(TENANT, CLIENT).unwrap();
    assert_eq!(claims["aud"], "https://management.azure.com");
    assert_eq!(claims["iss"], format!("https://sts.windows.net/{TENANT}/"));
    assert_eq!(claims["tid"], TENANT);
    assert_eq!(claims["appid"], CLIENT);
    assert_eq!(claims["azp"], CLIENT);
    assert_eq!(claims["oid"], app.object_id.as_str());
    assert_eq!(claims["sub"], app.object_id.as_str());
    assert_eq!(claims["ver"], "1.0");
    assert!(claims["uti"].is_string());
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat.abs_diff(stack.clock.now()) <= 1);
    assert_eq!(claims["nbf"].as_u64().unwrap(), iat);
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 3599);

    assert_eq!(stack.entra.token_requests(), 1);
    assert_eq!(stack.entra.issued_tokens(), 1);
    assert_eq!(
        stack.entra.last_assertion_claims().unwrap(),
        payload(&assertion)
    );
    // The emulator looked the keys up at the issuer, as Entra does.
    assert_eq!(stack.issuer.request_count(), 2);
}

#[tokio::test]
async fn the_audience_drops_default_and_a_trailing_slash_and_lifetime_is_configurable() {
    let stack = Stack::start().await;
    stack.entra.set_token_lifetime(7200);
    let response = stack
        .exchange_as(
            TENANT,
            CLIENT,
            &stack.main_token(),
            "https://vault.azure.net//.default",
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["expires_in"], 7200);
    let claims = payload(body["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], "https://vault.azure.net");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        7200
    );
}

#[tokio::test]
async fn a_kubernetes_issuer_with_a_trailing_slash_and_a_rotated_key_is_accepted() {
    let stack = Stack::start_with(IssuerOptions {
        path: "/oidc/cluster-1/".into(),
        key_kind: KeyKind::Rsa2048,
    })
    .await;
    stack.entra.add_fic(
        TENANT,
        CLIENT,
        EmulatedFic::new(
            "payments-api",
            &stack.issuer.url(),
            "system:serviceaccount:payments:api",
        ),
    );
    stack.issuer.rotate_key();
    let token = stack
        .issuer
        .mint(kubernetes_claims("payments", "api"))
        .unwrap();
    let response = stack.exchange(&token).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

#[tokio::test]
async fn the_client_request_id_comes_back_as_the_correlation_id() {
    let stack = Stack::start().await;
    let correlation = uuid::Uuid::new_v4().to_string();
    let response = stack
        .http
        .post(stack.entra.token_endpoint(TENANT))
        .header("client-request-id", &correlation)
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let body = assert_entra_error(response, 401, "invalid_client", 7000218).await;
    assert_eq!(body["correlation_id"], correlation.as_str());
}

// ---------------------------------------------------------------------------------------
// Entra emulator: refusals, one per AADSTS code

#[tokio::test]
async fn an_unknown_tenant_is_90002() {
    let stack = Stack::start().await;
    let response = stack
        .exchange_as(
            "00000000-0000-0000-0000-000000000001",
            CLIENT,
            &stack.main_token(),
            ARM,
        )
        .await;
    assert_entra_error(response, 400, "invalid_request", 90002).await;
}

#[tokio::test]
async fn an_unknown_client_is_700016() {
    let stack = Stack::start().await;
    let response = stack
        .exchange_as(
            TENANT,
            "00000000-0000-0000-0000-000000000002",
            &stack.main_token(),
            ARM,
        )
        .await;
    assert_entra_error(response, 400, "unauthorized_client", 700016).await;
}

#[tokio::test]
async fn a_scope_without_default_is_1002012_and_a_wrong_grant_is_70003() {
    let stack = Stack::start().await;
    let response = stack
        .exchange_as(
            TENANT,
            CLIENT,
            &stack.main_token(),
            "https://management.azure.com/user_impersonation",
        )
        .await;
    assert_entra_error(response, 400, "invalid_scope", 1002012).await;

    let response = stack
        .http
        .post(stack.entra.token_endpoint(TENANT))
        .form(&[
            ("client_id", CLIENT),
            ("grant_type", "password"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &stack.main_token()),
            ("scope", ARM),
        ])
        .send()
        .await
        .unwrap();
    assert_entra_error(response, 400, "unsupported_grant_type", 70003).await;
    assert_eq!(stack.entra.token_requests(), 2);
    assert_eq!(stack.entra.issued_tokens(), 0);
}

#[tokio::test]
async fn malformed_and_wrongly_signed_assertions_are_50027() {
    let stack = Stack::start().await;
    stack
        .refused("not-a-jwt", 400, "invalid_request", 50027)
        .await;

    let claims = stack.issuer.claims(github_claims(REPO, "main")).unwrap();
    stack
        .refused(&jwt::unsigned_token(&claims), 400, "invalid_request", 50027)
        .await;

    // HS256 keyed with the issuer's public key: the algorithm-confusion attack.
    let pem = stack.issuer.current_key().public_key_pem().unwrap();
    let hs = jwt::hmac_token(
        pem.as_bytes(),
        Some(stack.issuer.current_key().kid()),
        &claims,
    );
    stack.refused(&hs, 400, "invalid_request", 50027).await;

    // Right kid, wrong key.
    let impostor =
        SigningKey::generate(KeyKind::Rsa2048, stack.issuer.current_key().kid()).unwrap();
    let forged = stack
        .issuer
        .mint_with_key(&impostor, github_claims(REPO, "main"))
        .unwrap();
    stack.refused(&forged, 401, "invalid_client", 50027).await;
    assert_eq!(stack.entra.issued_tokens(), 0);
}

#[tokio::test]
async fn an_es256_assertion_is_50027() {
    let stack = Stack::start_with(IssuerOptions {
        path: String::new(),
        key_kind: KeyKind::EcP256,
    })
    .await;
    let body = stack
        .refused(&stack.main_token(), 400, "invalid_request", 50027)
        .await;
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("ES256")
    );
}

#[tokio::test]
async fn an_issuer_without_a_credential_is_700211_and_a_trailing_slash_mismatch_is_70021() {
    let stack = Stack::start().await;
    let other = LocalIssuer::start(stack.clock.clone()).await.unwrap();
    let token = other.mint(github_claims(REPO, "main")).unwrap();
    stack.refused(&token, 400, "invalid_request", 700211).await;

    let slashed = LocalIssuer::start_with(
        stack.clock.clone(),
        IssuerOptions {
            path: "/".into(),
            key_kind: KeyKind::Rsa2048,
        },
    )
    .await
    .unwrap();
    // The credential names the issuer without the slash its tokens carry.
    stack.entra.add_fic(
        TENANT,
        CLIENT,
        EmulatedFic::new("no-slash", slashed.url().trim_end_matches('/'), MAIN_SUB),
    );
    let token = slashed.mint(github_claims(REPO, "main")).unwrap();
    let body = stack.refused(&token, 400, "invalid_request", 70021).await;
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("Assertion Issuer")
    );
}

#[tokio::test]
async fn an_entra_issued_token_as_assertion_is_700222() {
    let stack = Stack::start().await;
    let token = stack
        .issuer
        .mint(json!({ "iss": format!("https://sts.windows.net/{TENANT}/"), "sub": "x" }))
        .unwrap();
    stack.refused(&token, 400, "invalid_request", 700222).await;
}

#[tokio::test]
async fn an_issuer_whose_discovery_fails_is_refused_with_a_discovery_message() {
    let stack = Stack::start().await;
    let token = stack.main_token();
    stack.issuer.set_available(false);
    let body = stack.refused(&token, 401, "invalid_client", 50027).await;
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("discovery"),
        "{body}"
    );
}

#[tokio::test]
async fn an_unpublished_kid_is_7000272() {
    let stack = Stack::start().await;
    let unpublished = SigningKey::generate(KeyKind::Rsa2048, "never-published").unwrap();
    let token = stack
        .issuer
        .mint_with_key(&unpublished, github_claims(REPO, "main"))
        .unwrap();
    stack.refused(&token, 401, "invalid_client", 7000272).await;

    let without_kid = stack
        .issuer
        .current_key()
        .sign_with_header(
            &json!({ "alg": "RS256", "typ": "JWT" }),
            &stack.issuer.claims(github_claims(REPO, "main")).unwrap(),
        )
        .unwrap();
    stack
        .refused(&without_kid, 401, "invalid_client", 7000272)
        .await;
}

#[tokio::test]
async fn a_key_beyond_the_first_100_in_the_jwks_is_7000272() {
    let stack = Stack::start().await;
    let decoy = stack.issuer.current_key();
    for i in 0..99 {
        stack
            .issuer
            .publish_key(decoy.with_kid(&format!("decoy-{i}")));
    }
    // 100 keys published: a new key lands 101st.
    stack.issuer.rotate_key();
    assert_eq!(stack.issuer.published_keys().len(), 101);
    stack
        .refused(&stack.main_token(), 401, "invalid_client", 7000272)
        .await;

    // Once the decoys are gone it verifies.
    stack.issuer.retire_old_keys();
    let response = stack.exchange(&stack.main_token()).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_missing_iat_or_a_lifetime_over_25_hours_is_70023() {
    let stack = Stack::start().await;
    let mut claims = github_claims(REPO, "main");
    claims["iat"] = Value::Null;
    let token = stack.issuer.mint(claims).unwrap();
    stack.refused(&token, 400, "invalid_request", 70023).await;

    let now = stack.clock.now();
    let mut claims = github_claims(REPO, "main");
    claims["exp"] = json!(now + 25 * 3600 + 1);
    claims["iat"] = json!(now);
    let token = stack.issuer.mint(claims).unwrap();
    stack.refused(&token, 400, "invalid_request", 70023).await;

    // Exactly 25 hours is allowed.
    let mut claims = github_claims(REPO, "main");
    claims["exp"] = json!(now + 25 * 3600);
    claims["iat"] = json!(now);
    let response = stack.exchange(&stack.issuer.mint(claims).unwrap()).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn an_expired_or_not_yet_valid_assertion_is_700024() {
    let stack = Stack::start().await;
    // The long CI job: the token was fine when minted, and then time passed.
    let token = stack.main_token();
    stack.clock.advance(301);
    let body = stack.refused(&token, 400, "invalid_request", 700024).await;
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("not within its valid time range")
    );
    stack.clock.advance(-301);

    let now = stack.clock.now();
    let mut claims = github_claims(REPO, "main");
    claims["nbf"] = json!(now + 120);
    let early = stack.issuer.mint(claims).unwrap();
    stack.refused(&early, 400, "invalid_request", 700024).await;

    // With Entra-like leeway the same token is accepted.
    stack.entra.set_nbf_leeway(300);
    let response = stack.exchange(&early).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_wrong_audience_is_700212() {
    let stack = Stack::start().await;
    let mut claims = github_claims(REPO, "main");
    claims["aud"] = json!("api://SomethingElse");
    let token = stack.issuer.mint(claims).unwrap();
    stack.refused(&token, 400, "invalid_request", 700212).await;
}

#[tokio::test]
async fn a_wrong_subject_is_700213_and_a_case_mismatch_is_7002138() {
    let stack = Stack::start().await;
    let token = stack
        .issuer
        .mint(github_claims(REPO, "refs/heads/feature"))
        .unwrap();
    stack.refused(&token, 400, "invalid_request", 700213).await;

    let token = stack.issuer.mint(github_pull_request_claims(REPO)).unwrap();
    stack.refused(&token, 400, "invalid_request", 700213).await;

    let token = stack
        .issuer
        .mint(github_claims("Contoso/App", "main"))
        .unwrap();
    stack.refused(&token, 400, "invalid_request", 7002138).await;
}

#[tokio::test]
async fn removing_a_credential_takes_effect_at_once() {
    let stack = Stack::start().await;
    assert_eq!(stack.exchange(&stack.main_token()).await.status(), 200);
    assert!(stack.entra.remove_fic(TENANT, CLIENT, "github-main"));
    assert!(!stack.entra.remove_fic(TENANT, CLIENT, "github-main"));
    stack
        .refused(&stack.main_token(), 400, "invalid_request", 700211)
        .await;
}

// ---------------------------------------------------------------------------------------
// Entra emulator: faults

#[tokio::test]
async fn a_throttled_request_carries_retry_after_and_the_next_one_succeeds() {
    let stack = Stack::start().await;
    stack.entra.push_fault(Fault::Status {
        status: 429,
        retry_after: Some(2),
        aadsts: None,
    });
    assert_eq!(stack.entra.pending_faults(), 1);
    let token = stack.main_token();
    let response = stack.exchange(&token).await;
    assert_eq!(response.headers()[reqwest::header::RETRY_AFTER], "2");
    assert_entra_error(response, 429, "temporarily_unavailable", 50196).await;
    assert_eq!(stack.entra.pending_faults(), 0);

    let response = stack.exchange(&token).await;
    assert_eq!(response.status(), 200);
    assert_eq!(stack.entra.token_requests(), 2);
    assert_eq!(stack.entra.issued_tokens(), 1);
    // The faulted request never reached the issuer.
    assert_eq!(stack.issuer.request_count(), 2);
}

#[tokio::test]
async fn queued_faults_are_consumed_in_order() {
    let stack = Stack::start().await;
    stack.entra.push_fault(Fault::Status {
        status: 500,
        retry_after: None,
        aadsts: None,
    });
    stack.entra.push_fault(Fault::Status {
        status: 400,
        retry_after: None,
        aadsts: Some(70021),
    });
    let token = stack.main_token();
    let response = stack.exchange(&token).await;
    assert!(
        response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .is_none()
    );
    assert_entra_error(response, 500, "server_error", 90033).await;
    let response = stack.exchange(&token).await;
    assert_entra_error(response, 400, "invalid_request", 70021).await;
    assert_eq!(stack.exchange(&token).await.status(), 200);
}

#[tokio::test]
async fn a_down_entra_answers_503_with_retry_after_until_it_is_back() {
    let stack = Stack::start().await;
    stack.entra.set_down(true);
    let token = stack.main_token();
    for _ in 0..2 {
        let response = stack.exchange(&token).await;
        assert_eq!(response.headers()[reqwest::header::RETRY_AFTER], "1");
        assert_entra_error(response, 503, "server_error", 90033).await;
    }
    stack.entra.set_down(false);
    assert_eq!(stack.exchange(&token).await.status(), 200);
    assert_eq!(stack.entra.token_requests(), 3);
    assert_eq!(stack.entra.issued_tokens(), 1);
}

#[tokio::test]
async fn an_unreachable_entra_drops_the_connection_without_answering() {
    let stack = Stack::start().await;
    stack.entra.push_fault(Fault::Unreachable);
    let token = stack.main_token();
    let result = stack
        .http
        .post(stack.entra.token_endpoint(TENANT))
        .form(&[
            ("client_id", CLIENT),
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", token.as_str()),
            ("scope", ARM),
        ])
        .send()
        .await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(stack.entra.token_requests(), 1);
    assert_eq!(stack.exchange(&token).await.status(), 200);
    assert_eq!(stack.entra.token_requests(), 2);
}

#[tokio::test]
async fn a_delayed_request_is_answered_late_but_normally() {
    let stack = Stack::start().await;
    stack
        .entra
        .push_fault(Fault::Delay(Duration::from_millis(300)));
    let started = Instant::now();
    let response = stack.exchange(&stack.main_token()).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_slow_request() {
    let stack = Stack::start().await;
    stack
        .entra
        .push_fault(Fault::Delay(Duration::from_secs(3600)));
    let entra = stack.entra.clone();
    let request = stack.http.post(entra.token_endpoint(TENANT)).form(&[
        ("client_id", CLIENT),
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", stack.main_token().as_str()),
        ("scope", ARM),
    ]);
    let slow = tokio::spawn(async move { request.send().await.is_err() });
    while entra.token_requests() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), entra.shutdown())
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    // The slow caller sees its connection cut.
    assert!(
        tokio::time::timeout(Duration::from_secs(5), slow)
            .await
            .unwrap()
            .unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// Entra emulator: what MSAL reads

#[tokio::test]
async fn msal_metadata_points_back_at_the_emulator() {
    let stack = Stack::start().await;
    let url = stack.entra.url();
    let discovery: Value = stack
        .http
        .get(format!(
            "{url}/{TENANT}/v2.0/.well-known/openid-configuration"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], format!("{url}/{TENANT}/v2.0"));
    assert_eq!(
        discovery["token_endpoint"],
        stack.entra.token_endpoint(TENANT)
    );
    assert_eq!(
        discovery["authorization_endpoint"],
        format!("{url}/{TENANT}/oauth2/v2.0/authorize")
    );
    let jwks: Value = stack
        .http
        .get(discovery["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks, stack.entra.jwks());

    let unknown = stack
        .http
        .get(format!(
            "{url}/00000000-0000-0000-0000-000000000009/v2.0/.well-known/openid-configuration"
        ))
        .send()
        .await
        .unwrap();
    assert_entra_error(unknown, 400, "invalid_request", 90002).await;

    let instance: Value = stack
        .http
        .get(format!("{url}/common/discovery/instance"))
        .query(&[
            ("api-version", "1.1"),
            (
                "authorization_endpoint",
                &format!("{url}/{TENANT}/oauth2/v2.0/authorize"),
            ),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        instance["tenant_discovery_endpoint"],
        format!("{url}/{TENANT}/v2.0/.well-known/openid-configuration")
    );
    let host = stack.entra.addr().to_string();
    assert_eq!(instance["metadata"][0]["preferred_network"], host.as_str());
    assert_eq!(instance["metadata"][0]["aliases"], json!([host]));
    // Metadata requests are not token requests.
    assert_eq!(stack.entra.token_requests(), 0);
}

#[tokio::test]
async fn the_dev_stack_shows_the_broker_assertion_with_one_entra_credential() {
    use wif_broker::dev::stack::{DEMO_FLEET_CLIENT, DEMO_FLEET_IDENTITY, DEMO_SCOPE, DevStack};
    let clock = system();
    let stack = DevStack::start("127.0.0.1:0", clock.clone()).await.unwrap();
    let url = format!("{}/v1/token", stack.broker.url());
    let exchange = |token: String| {
        let request = http()
            .post(&url)
            .bearer_auth(token)
            .form(&[("scope", DEMO_SCOPE)]);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let feature = stack
        .demo_token_for(clock.now(), "refs/heads/feature/login")
        .unwrap();
    let answer = exchange(feature).await;
    assert_eq!(answer["identity"]["name"], DEMO_FLEET_IDENTITY, "{answer}");
    assert_eq!(answer["identity"]["client_id"], DEMO_FLEET_CLIENT);
    let assertion = stack.entra.last_assertion_claims().unwrap();
    assert_eq!(assertion["iss"], stack.broker.url().as_str());
    assert_eq!(assertion["sub"], DEMO_FLEET_IDENTITY);

    // The printed demo token (main) still selects the demo identity on its own.
    let answer = exchange(stack.demo_token(clock.now()).unwrap()).await;
    assert_eq!(answer["identity"]["name"], "demo", "{answer}");
}

/// The dev issuer's minting endpoint answers bad input in the documented error shape.
#[tokio::test]
async fn the_dev_issuer_refuses_bad_claims_clearly() {
    let issuer = LocalIssuer::start_minting(system()).await.unwrap();
    let http = http();
    let url = format!("{}/dev/token", issuer.url());
    for (content_type, body, status) in [
        ("text/plain", "{}", 415),
        ("application/json", "[1]", 400),
        ("application/json", "{not json", 400),
    ] {
        let answer = http
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status, "{content_type} {body}");
        let error: Value = answer.json().await.unwrap();
        assert_eq!(error["error"], "invalid_request", "{error}");
        assert!(
            error["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{error}"
        );
        assert!(
            error["request_id"].as_str().is_some_and(|d| !d.is_empty()),
            "{error}"
        );
    }
    let minted: Value = http
        .post(&url)
        .json(&json!({"sub": "repo:contoso/demo:ref:refs/heads/feature/x", "jti": null}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token_claims = payload(minted["token"].as_str().unwrap());
    assert_eq!(
        token_claims["sub"],
        "repo:contoso/demo:ref:refs/heads/feature/x"
    );
    assert_eq!(token_claims["iss"], issuer.url());
    assert!(token_claims.get("jti").is_none(), "{token_claims}");
    assert_eq!(minted["claims"], token_claims);

    // Only the dev stack's issuer mints.
    let plain = LocalIssuer::start(system()).await.unwrap();
    let refused = http
        .post(format!("{}/dev/token", plain.url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 405);
}
