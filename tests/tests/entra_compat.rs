//! The Entra-compatible endpoints: `GET /{tenant}/v2.0/.well-known/openid-configuration`
//! and `POST /{tenant}/oauth2/v2.0/token`. Raw HTTP checks the wire shapes; the real
//! Python `WorkloadIdentityCredential` and plain MSAL, pointed at the broker over HTTPS
//! (both insist on an https authority), get tokens unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use wif_broker::dev::issuer::LocalIssuer;
use wif_tests::agent::python;
use wif_tests::clients::{TlsFiles, tls_stack};
use wif_tests::*;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn token_path(tenant: &str) -> String {
    format!("/{tenant}/oauth2/v2.0/token")
}

async fn entra_token(stack: &Stack, tenant: &str, form: &[(&str, &str)]) -> Answer {
    let response = stack
        .http
        .post(stack.url(&token_path(tenant)))
        .form(form)
        .send()
        .await
        .unwrap();
    answer(response).await
}

fn client_credentials<'a>(assertion: &'a str, client_id: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("client_id", client_id),
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion),
        ("scope", ARM),
    ]
}

/// Asserts Entra's error shape, the OAuth `error`, and the broker code leading the
/// description; the correlation id is the request id.
fn expect_entra_error(answer: &Answer, status: u16, error: &str, broker_code: &str) {
    assert_eq!(answer.status.as_u16(), status, "body {}", answer.body);
    assert_eq!(answer.body["error"], error, "body {}", answer.body);
    let description = answer.description();
    assert!(
        description.starts_with(&format!("{broker_code}: ")),
        "description should start with {broker_code}: {description}"
    );
    assert_eq!(answer.body["error_codes"], serde_json::json!([]));
    assert!(answer.body["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(!answer.body["trace_id"].as_str().unwrap().is_empty());
    assert_eq!(
        answer.body["correlation_id"].as_str().unwrap(),
        answer.header("x-request-id").unwrap()
    );
}

#[tokio::test]
async fn the_entra_token_endpoint_answers_in_entras_shape() {
    let stack = Stack::start().await;
    let token = stack.github_token("main");
    let answer = entra_token(&stack, TENANT, &client_credentials(&token, DEPLOY_CLIENT)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["token_type"], "Bearer");
    let expires_in = answer.body["expires_in"].as_u64().unwrap();
    assert!(expires_in > 300, "{}", answer.body);
    assert_eq!(answer.body["ext_expires_in"].as_u64(), Some(expires_in));
    let claims = stack.verify_access_token(answer.access_token());
    assert_eq!(claims["aud"], "https://management.azure.com");
    assert_eq!(claims["appid"], DEPLOY_CLIENT);
    assert_eq!(answer.header("cache-control"), Some("no-store"));

    let discovery = stack
        .get(&format!("/{TENANT}/v2.0/.well-known/openid-configuration"))
        .await;
    assert_eq!(discovery.status, 200, "{}", discovery.body);
    assert_eq!(
        discovery.body["token_endpoint"],
        stack.url(&token_path(TENANT))
    );
    assert_eq!(
        discovery.body["issuer"],
        stack.url(&format!("/{TENANT}/v2.0"))
    );
    assert!(discovery.body["authorization_endpoint"].is_string());
    assert!(discovery.body["jwks_uri"].is_string());
}

#[tokio::test]
async fn the_entra_token_endpoint_refuses_in_entras_shape() {
    let stack = Stack::start().await;
    let token = stack.github_token("main");

    let mut form = client_credentials(&token, DEPLOY_CLIENT);
    form[1].1 = "authorization_code";
    let wrong_grant = entra_token(&stack, TENANT, &form).await;
    expect_entra_error(
        &wrong_grant,
        400,
        "unsupported_grant_type",
        "unsupported_grant_type",
    );

    let mut form = client_credentials(&token, DEPLOY_CLIENT);
    form[2].1 = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer";
    let wrong_type = entra_token(&stack, TENANT, &form).await;
    expect_entra_error(&wrong_type, 400, "invalid_request", "invalid_request");

    let stranger = LocalIssuer::start(stack.clock.clone()).await.unwrap();
    let unknown = stranger.mint(github_claims(REPO, "main")).unwrap();
    let refused = entra_token(&stack, TENANT, &client_credentials(&unknown, DEPLOY_CLIENT)).await;
    expect_entra_error(&refused, 401, "invalid_client", "unknown_issuer");

    let other_tenant = "11111111-2222-3333-4444-555555555555";
    let mismatch = entra_token(
        &stack,
        other_tenant,
        &client_credentials(&token, DEPLOY_CLIENT),
    )
    .await;
    expect_entra_error(&mismatch, 400, "invalid_request", "tenant_mismatch");
    // Without a valid token the tenant is not even looked at: nothing about identities leaks.
    let forged = format!("{}x", &token[..token.len() - 1]);
    let hidden = entra_token(
        &stack,
        other_tenant,
        &client_credentials(&forged, DEPLOY_CLIENT),
    )
    .await;
    expect_entra_error(&hidden, 401, "invalid_client", "invalid_signature");

    // A release-branch token matches no credential of the deploy identity.
    let release = stack.github_token("release");
    let not_allowed =
        entra_token(&stack, TENANT, &client_credentials(&release, DEPLOY_CLIENT)).await;
    assert_eq!(not_allowed.status, 400, "{}", not_allowed.body);
    assert_eq!(not_allowed.body["error"], "unauthorized_client");

    assert_eq!(
        stack.entra.token_requests(),
        0,
        "no refused request reaches Entra"
    );
}

/// Runs `get_token.py MODE SCOPE` with only azure-workload-identity's variables (and the
/// test CA); returns the token or the SDK's error.
async fn python_token(
    python: &Path,
    mode: &str,
    stack: &Stack,
    files: &TlsFiles,
) -> Result<String, String> {
    let token_file = files.dir.path().join("azure-identity-token");
    std::fs::write(&token_file, stack.github_token("main")).unwrap();
    let home = files.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/get_token.py");
    let mut command = tokio::process::Command::new(python);
    command
        .env_clear()
        .arg(script)
        .arg(mode)
        .arg(ARM)
        .env("HOME", &home)
        .env("AZURE_TENANT_ID", TENANT)
        .env("AZURE_CLIENT_ID", DEPLOY_CLIENT)
        .env("AZURE_FEDERATED_TOKEN_FILE", &token_file)
        .env("AZURE_AUTHORITY_HOST", stack.broker.url())
        .env("REQUESTS_CA_BUNDLE", &files.ca)
        .env("SSL_CERT_FILE", &files.ca)
        .kill_on_drop(true);
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .unwrap_or_else(|_| panic!("get_token.py {mode} gave no answer within 120 s"))
        .unwrap();
    if !output.status.success() {
        return Err(format!(
            "{} (exit {})",
            String::from_utf8_lossy(&output.stderr).trim(),
            output.status
        ));
    }
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "get_token.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    Ok(printed["token"].as_str().unwrap().to_owned())
}

fn assert_deploy_arm_token(stack: &Stack, token: &str) {
    let claims = stack.verify_access_token(token);
    assert_eq!(claims["aud"], "https://management.azure.com", "{claims}");
    assert_eq!(claims["appid"], DEPLOY_CLIENT, "{claims}");
}

#[tokio::test]
async fn workload_identity_credential_gets_a_token_from_the_broker() {
    let Some(python) = python() else { return };
    let (stack, files) = tls_stack().await;
    assert!(stack.broker.url().starts_with("https://"));
    let token = python_token(&python, "workload", &stack, &files)
        .await
        .unwrap_or_else(|e| panic!("WorkloadIdentityCredential failed: {e}"));
    assert_deploy_arm_token(&stack, &token);
    let token = python_token(&python, "workload-env", &stack, &files)
        .await
        .unwrap_or_else(|e| panic!("WorkloadIdentityCredential from the environment failed: {e}"));
    assert_deploy_arm_token(&stack, &token);
}

#[tokio::test]
async fn msal_confidential_client_gets_a_token_from_the_broker() {
    let Some(python) = python() else { return };
    let (stack, files) = tls_stack().await;
    let token = python_token(&python, "msal", &stack, &files)
        .await
        .unwrap_or_else(|e| panic!("msal failed: {e}"));
    assert_deploy_arm_token(&stack, &token);
}
