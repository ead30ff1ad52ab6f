//! The Rust `azure_identity` crate's `ManagedIdentityCredential` gets a token through
//! agent → broker → Entra emulator.
//!
//! The crate reads `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` from the process environment and
//! offers no option for them; setting variables in this multi-threaded test process would
//! need `unsafe` (forbidden here). So the test runs this binary again as a child process
//! with those variables set, and only the child (`rust_sdk_child`) calls the SDK.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use azure_core::credentials::TokenCredential;
use serde_json::{Value, json};
use wif_broker::clock::Clock;
use wif_tests::agent::{HEADER_SECRET, TestAgent};
use wif_tests::{ARM, DEPLOY_CLIENT, Stack, metric_value};

/// Set in the child's environment: the scope it asks for.
const CHILD_SCOPE: &str = "WIF_RUST_SDK_CHILD_SCOPE";
/// Prefix of the child's one line of output.
const MARKER: &str = "WIF_RUST_SDK_TOKEN ";

/// Set in the child's environment, optionally: the user-assigned client id it names.
const CHILD_CLIENT_ID: &str = "WIF_RUST_SDK_CHILD_CLIENT_ID";

/// Runs `rust_sdk_child` with the App Service variables for `agent`; what it printed.
async fn child_token(agent: &TestAgent, client_id: Option<&str>) -> Value {
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "rust_sdk_child",
            "--exact",
            "--include-ignored",
            "--nocapture",
        ])
        .env_clear()
        .env("IDENTITY_ENDPOINT", agent.identity_endpoint())
        .env("IDENTITY_HEADER", HEADER_SECRET)
        .env(CHILD_SCOPE, ARM)
        .kill_on_drop(true);
    if let Some(client_id) = client_id {
        command.env(CHILD_CLIENT_ID, client_id);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the child test gave no answer within 60 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the child test failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(MARKER))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_else(|| panic!("the child printed no token:\n{stdout}"))
}

#[tokio::test]
async fn rust_managed_identity_credential_gets_an_arm_token_over_app_service() {
    let stack = Stack::start().await;
    let agent = TestAgent::start(&stack).await;

    for client_id in [None, Some(DEPLOY_CLIENT)] {
        let printed = child_token(&agent, client_id).await;
        let claims = stack.verify_access_token(printed["token"].as_str().unwrap());
        assert_eq!(claims["aud"], "https://management.azure.com");
        assert_eq!(claims["appid"], DEPLOY_CLIENT);
        // The SDK parsed the agent's `expires_on` (a string of epoch seconds).
        let expires_on = printed["expires_on"].as_u64().unwrap();
        assert_eq!(Some(expires_on), claims["exp"].as_u64());
        assert!(expires_on > stack.clock.now() + 300);
    }
    // The request naming the client id was not answered from the system-assigned one's
    // cache entry: the SDK sent the id, and the agent asked the broker again.
    let metrics = stack
        .http
        .get(format!("{}/metrics", agent.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric_value(
            &metrics,
            "wif_agent_broker_calls_total",
            &["outcome=\"ok\""]
        ),
        2.0,
        "{metrics}"
    );
}

/// Runs only as the child of the test above (which sets its environment).
#[tokio::test]
#[ignore = "run by rust_managed_identity_credential_gets_an_arm_token_over_app_service"]
async fn rust_sdk_child() {
    let Ok(scope) = std::env::var(CHILD_SCOPE) else {
        return;
    };
    let options = std::env::var(CHILD_CLIENT_ID).ok().map(|client_id| {
        azure_identity::ManagedIdentityCredentialOptions {
            user_assigned_id: Some(azure_identity::UserAssignedId::ClientId(client_id)),
            ..Default::default()
        }
    });
    let credential = azure_identity::ManagedIdentityCredential::new(options).unwrap();
    let token = credential.get_token(&[scope.as_str()], None).await.unwrap();
    println!(
        "{MARKER}{}",
        json!({
            "token": token.token.secret(),
            "expires_on": token.expires_on.unix_timestamp(),
        })
    );
}
