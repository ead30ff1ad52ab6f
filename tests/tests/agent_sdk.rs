//! Real Azure SDK clients get tokens through agent → broker → Entra emulator.
//!
//! The Python `azure-identity` SDK runs as a child process with only the environment a
//! pod's app container would have (`tests/python/get_token.py`); raw HTTP checks what the
//! SDKs cannot show: the guards, the token file being re-read, and the cache outliving
//! the broker. The Rust SDK has its own file (`agent_rust_sdk.rs`) because it reads
//! process environment variables.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use serde_json::Value;
use wif_broker::clock::Clock;
use wif_tests::agent::{HEADER_SECRET, PythonMode, TestAgent, python, python_get_token};
use wif_tests::clients::agent_requests;
use wif_tests::{ARM, DEPLOY_CLIENT, Stack, answer, metric_value};

const ARM_RESOURCE: &str = "https://management.azure.com";
const VAULT_RESOURCE: &str = "https://vault.azure.net";

/// Claims of a JWT, unverified (to read the `jti` of a token the test minted).
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn assert_deploy_token_for(stack: &Stack, token: &str, resource: &str) {
    let claims = stack.verify_access_token(token);
    assert_eq!(claims["aud"], resource, "claims: {claims}");
    assert_eq!(claims["appid"], DEPLOY_CLIENT, "claims: {claims}");
}

/// `GET /msi/token` as the App Service protocol, with `X-IDENTITY-HEADER: secret`.
async fn app_service(
    http: &reqwest::Client,
    agent: &TestAgent,
    secret: Option<&str>,
    resource: &str,
) -> wif_tests::Answer {
    let mut request = http
        .get(agent.identity_endpoint())
        .query(&[("api-version", "2019-08-01"), ("resource", resource)]);
    if let Some(secret) = secret {
        request = request.header("X-IDENTITY-HEADER", secret);
    }
    answer(request.send().await.unwrap()).await
}

/// `GET /metadata/identity/oauth2/token` as the IMDS protocol.
async fn imds(
    http: &reqwest::Client,
    agent: &TestAgent,
    metadata: bool,
    resource: &str,
) -> wif_tests::Answer {
    let mut request = http
        .get(format!("{}/metadata/identity/oauth2/token", agent.url()))
        .query(&[("api-version", "2018-02-01"), ("resource", resource)]);
    if metadata {
        request = request.header("Metadata", "true");
    }
    answer(request.send().await.unwrap()).await
}

/// An agent error in the shape the SDKs parse.
fn assert_agent_error(answer: &wif_tests::Answer, status: u16, code: &str) {
    assert_eq!(answer.status.as_u16(), status, "body {}", answer.body);
    assert_eq!(answer.error(), code, "body {}", answer.body);
    assert!(!answer.description().is_empty(), "body {}", answer.body);
}

#[tokio::test]
async fn python_managed_identity_credential_gets_an_arm_token_over_app_service() {
    let Some(python) = python() else { return };
    let stack = Stack::start().await;
    let agent = TestAgent::start(&stack).await;

    let (token, expires_on) = python_get_token(&python, PythonMode::ManagedAppService, &agent, ARM)
        .await
        .unwrap();

    assert_deploy_token_for(&stack, &token, ARM_RESOURCE);
    assert!(
        expires_on > stack.clock.now() + 300,
        "expires_on {expires_on}"
    );
    assert_eq!(stack.entra.token_requests(), 1);
}

#[tokio::test]
async fn python_managed_identity_credential_gets_an_arm_token_over_imds() {
    let Some(python) = python() else { return };
    let stack = Stack::start().await;
    let agent = TestAgent::start(&stack).await;

    let (token, expires_on) = python_get_token(&python, PythonMode::ManagedImds, &agent, ARM)
        .await
        .unwrap();

    assert_deploy_token_for(&stack, &token, ARM_RESOURCE);
    assert!(
        expires_on > stack.clock.now() + 300,
        "expires_on {expires_on}"
    );
    assert_eq!(agent_requests(&stack, &agent, "imds", "ok").await, 1.0);
}

#[tokio::test]
async fn python_default_azure_credential_gets_an_arm_token() {
    let Some(python) = python() else { return };
    let stack = Stack::start().await;
    let agent = TestAgent::start(&stack).await;

    let started = std::time::Instant::now();
    let (token, _) = python_get_token(&python, PythonMode::Default, &agent, ARM)
        .await
        .unwrap();

    assert_deploy_token_for(&stack, &token, ARM_RESOURCE);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "DefaultAzureCredential took {:?}",
        started.elapsed()
    );
    // The chain reached ManagedIdentityCredential, which chose App Service.
    assert_eq!(
        agent_requests(&stack, &agent, "app_service", "ok").await,
        1.0
    );
}

#[tokio::test]
async fn a_request_without_the_right_header_is_refused_and_nothing_is_exchanged() {
    let stack = Stack::start().await;
    // No token file at all: had any request reached an exchange, it would have failed
    // with 503 instead of the guard's answer.
    let agent = TestAgent::start_without_token(&stack).await;

    assert_agent_error(
        &app_service(&stack.http, &agent, None, ARM_RESOURCE).await,
        401,
        "unauthorized",
    );
    assert_agent_error(
        &app_service(
            &stack.http,
            &agent,
            Some("not-the-identity-header"),
            ARM_RESOURCE,
        )
        .await,
        401,
        "unauthorized",
    );
    assert_agent_error(
        &app_service(&stack.http, &agent, Some(""), ARM_RESOURCE).await,
        401,
        "unauthorized",
    );
    assert_agent_error(
        &imds(&stack.http, &agent, false, ARM_RESOURCE).await,
        400,
        "bad_request_102",
    );

    assert!(!agent.token_file().exists());
    assert_eq!(stack.entra.token_requests(), 0);
    let metrics = stack.metrics().await;
    assert_eq!(
        metric_value(&metrics, "wif_exchanges_total", &[]),
        0.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn the_rewritten_token_file_is_used_for_the_next_exchange() {
    let stack = Stack::start().await;
    let agent = TestAgent::start(&stack).await;
    let first_jti = claims(&std::fs::read_to_string(agent.token_file()).unwrap())["jti"].clone();

    let arm = app_service(&stack.http, &agent, Some(HEADER_SECRET), ARM_RESOURCE).await;
    assert_eq!(arm.status, 200, "body {}", arm.body);
    assert_deploy_token_for(&stack, arm.access_token(), ARM_RESOURCE);
    assert_eq!(
        stack.entra.last_assertion_claims().unwrap()["jti"],
        first_jti
    );

    // Kubelet rotates the projected token; the next exchange (a resource not cached
    // yet) presents the new one.
    let rotated = stack.github_token("main");
    let rotated_jti = claims(&rotated)["jti"].clone();
    assert_ne!(rotated_jti, first_jti);
    agent.rewrite_token(&rotated);

    let vault = imds(&stack.http, &agent, true, VAULT_RESOURCE).await;
    assert_eq!(vault.status, 200, "body {}", vault.body);
    assert_deploy_token_for(&stack, vault.access_token(), VAULT_RESOURCE);
    assert_eq!(stack.entra.token_requests(), 2);
    assert_eq!(
        stack.entra.last_assertion_claims().unwrap()["jti"],
        rotated_jti
    );
}

#[tokio::test]
async fn cached_tokens_keep_flowing_when_the_broker_stops() {
    let python = python();
    let stack = Stack::start().await;
    let agent = TestAgent::start(&stack).await;

    let first = app_service(&stack.http, &agent, Some(HEADER_SECRET), ARM_RESOURCE).await;
    assert_eq!(first.status, 200, "body {}", first.body);
    let cached = first.access_token().to_owned();
    assert_deploy_token_for(&stack, &cached, ARM_RESOURCE);

    let Stack {
        broker,
        entra,
        http,
        ..
    } = stack;
    broker.shutdown().await.unwrap();

    let again = app_service(&http, &agent, Some(HEADER_SECRET), ARM_RESOURCE).await;
    assert_eq!(again.status, 200, "body {}", again.body);
    assert_eq!(again.access_token(), cached);
    let over_imds = imds(&http, &agent, true, ARM_RESOURCE).await;
    assert_eq!(over_imds.status, 200, "body {}", over_imds.body);
    assert_eq!(over_imds.access_token(), cached);
    if let Some(python) = python {
        for mode in [PythonMode::ManagedAppService, PythonMode::ManagedImds] {
            let (token, _) = python_get_token(&python, mode, &agent, ARM).await.unwrap();
            assert_eq!(token, cached, "{mode:?}");
        }
    }

    // Nothing cached for Key Vault and no broker: a 503 the SDKs retry.
    let uncached = app_service(&http, &agent, Some(HEADER_SECRET), VAULT_RESOURCE).await;
    assert_agent_error(&uncached, 503, "temporarily_unavailable");
    assert!(
        uncached
            .header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "headers {:?}",
        uncached.headers
    );
    assert_eq!(entra.token_requests(), 1);
}

/// The probe a credential chain sends before trusting an IMDS endpoint (JavaScript's
/// `imdsMsi`): no query, no `Metadata` header, no retry, and a 1 s timeout, which the
/// agent meets by answering before it reads a token or calls anyone (here it has no token
/// to read at all). Any answer means "available".
#[tokio::test]
async fn the_imds_availability_probe_is_answered_at_once() {
    let stack = Stack::start().await;
    let agent = TestAgent::start_without_token(&stack).await;
    for path in [
        "/metadata/identity/oauth2/token",
        "/metadata/identity/oauth2/token/",
    ] {
        let probe = stack
            .http
            .get(format!("{}{path}", agent.url()))
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        let answered = answer(probe).await;
        assert_agent_error(&answered, 400, "bad_request_102");
    }
    assert_eq!(stack.entra.token_requests(), 0);
    assert_eq!(
        metric_value(&stack.metrics().await, "wif_exchanges_total", &[]),
        0.0
    );
}
