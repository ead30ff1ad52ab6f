//! The real JavaScript clients, `@azure/identity` and `@azure/msal-node` (pinned in
//! `tests/js/package-lock.json`), get tokens through agent → broker → Entra emulator over
//! every managed-identity protocol, and from the broker's Entra-compatible endpoint.
//! `tests/js/get_token.mjs` runs each client with only the variables a workload would have.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use wif_broker::clock::Clock;
use wif_tests::agent::TestAgent;
use wif_tests::clients::{
    ArmStandIn, AzCli, ClientRun, DEPLOY_RESOURCE_ID, PAYMENTS_RESOURCE_ID, Protocol,
    agent_requests, assert_deploy_arm_token, az, node, tls_stack, workload_env,
};
use wif_tests::{ARM, DEPLOY_CLIENT, PAYMENTS_CLIENT, Stack};

#[tokio::test]
async fn js_managed_identity_credential_and_msal_node_get_tokens_over_every_protocol() {
    let Some(node) = node() else { return };
    let stack = Stack::start().await;
    let agent = TestAgent::start(&stack).await;
    let client_id = format!("client_id={DEPLOY_CLIENT}");
    let resource_id = format!("resource_id={DEPLOY_RESOURCE_ID}");

    for protocol in Protocol::ALL {
        // App Service 2017-09-01 (MSAL's "Machine Learning" source) takes only a client id.
        let ids: Vec<Option<&str>> = match protocol {
            Protocol::AppService2017 => vec![None, Some(&client_id)],
            _ => vec![None, Some(&client_id), Some(&resource_id)],
        };
        for mode in ["identity-managed", "msal-managed"] {
            for id in &ids {
                let context = format!("{mode} over {protocol:?} with {id:?}");
                let before = agent_requests(&stack, &agent, protocol.label(), "ok").await;
                let (token, expires_on) = ClientRun::js(&node, mode, ARM, *id)
                    .agent(&agent, protocol)
                    .token()
                    .await
                    .unwrap_or_else(|e| panic!("{context}: {e}"));
                assert_deploy_arm_token(&stack, &token, &context);
                assert!(
                    expires_on > stack.clock.now() + 300,
                    "{context}: expires_on {expires_on}"
                );
                assert_eq!(
                    agent_requests(&stack, &agent, protocol.label(), "ok").await,
                    before + 1.0,
                    "{context}: one request, answered over {}",
                    protocol.label()
                );
            }
        }
    }
    // The ids reach the broker as sent (`msi_res_id` over IMDS, `mi_res_id` over App
    // Service, `clientid` over 2017-09-01): naming an identity this pod may not act as is
    // refused, not answered with the default identity.
    let payments_resource = format!("resource_id={PAYMENTS_RESOURCE_ID}");
    let payments_client = format!("client_id={PAYMENTS_CLIENT}");
    for (protocol, payments) in [
        (Protocol::AppService, &payments_resource),
        (Protocol::Imds, &payments_resource),
        (Protocol::AppService2017, &payments_client),
    ] {
        let refused = ClientRun::js(&node, "msal-managed", ARM, Some(payments))
            .agent(&agent, protocol)
            .token()
            .await
            .unwrap_err();
        assert!(
            refused.contains("Identity not found"),
            "{protocol:?}: {refused}"
        );
    }
    // At most one exchange per way of naming the deploy identity (none, client id,
    // resource id): the other requests were answered from the caches.
    assert!(
        stack.entra.token_requests() <= 3,
        "{}",
        stack.entra.token_requests()
    );
}

#[tokio::test]
async fn js_default_azure_credential_gets_a_token_from_the_agent() {
    let Some(node) = node() else { return };
    let stack = Stack::start().await;
    let agent = TestAgent::start(&stack).await;
    for protocol in [Protocol::AppService, Protocol::Imds] {
        let (token, _) = ClientRun::js(&node, "identity-default", ARM, None)
            .agent(&agent, protocol)
            .token()
            .await
            .unwrap_or_else(|e| panic!("DefaultAzureCredential over {protocol:?}: {e}"));
        assert_deploy_arm_token(&stack, &token, &format!("{protocol:?}"));
        assert_eq!(
            agent_requests(&stack, &agent, protocol.label(), "ok").await,
            1.0
        );
    }
}

#[tokio::test]
async fn js_identity_the_agent_cannot_serve_fails_at_once_and_the_chain_moves_on_to_az() {
    let Some(node) = node() else { return };
    let Some(az) = az() else { return };
    let (stack, files) = tls_stack().await;
    let agent = TestAgent::start_trusting(&stack, &files.ca).await;
    let payments = format!("client_id={PAYMENTS_CLIENT}");

    // The pod's token may not act as the payments identity: IMDS's "Identity not found",
    // which the credential reports without retrying (one request).
    let refused = ClientRun::js(&node, "identity-managed", ARM, Some(&payments))
        .agent(&agent, Protocol::Imds)
        .token()
        .await
        .unwrap_err();
    assert!(refused.contains("Identity not found"), "{refused}");
    assert_eq!(
        agent_requests(&stack, &agent, "imds", "invalid_request").await,
        1.0
    );

    // DefaultAzureCredential: managed identity is unavailable, so the next credential in
    // the chain, the Azure CLI (logged in with a federated token at the broker), answers.
    let arm = ArmStandIn::start(&stack, &files).await;
    let cli = AzCli::new(&az, &stack, &files, &arm).await;
    cli.login_federated(&stack, DEPLOY_CLIENT).await.unwrap();
    let (token, _) = ClientRun::js(&node, "identity-default", ARM, Some(&payments))
        .agent(&agent, Protocol::Imds)
        .envs(cli.env())
        .token()
        .await
        .unwrap_or_else(|e| panic!("the chain did not move on to the Azure CLI: {e}"));
    assert_deploy_arm_token(&stack, &token, "DefaultAzureCredential via az");
    assert_eq!(
        agent_requests(&stack, &agent, "imds", "invalid_request").await,
        2.0
    );
    assert_eq!(agent_requests(&stack, &agent, "imds", "ok").await, 0.0);
}

#[tokio::test]
async fn js_workload_identity_credential_and_msal_node_get_tokens_from_the_entra_compatible_endpoint()
 {
    let Some(node) = node() else { return };
    let (stack, files) = tls_stack().await;
    assert!(stack.broker.url().starts_with("https://"));
    for mode in ["identity-workload", "msal-confidential"] {
        let (token, _) = ClientRun::js(&node, mode, ARM, None)
            .envs(workload_env(&stack, &files, DEPLOY_CLIENT))
            .trust(&files.ca)
            .token()
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_deploy_arm_token(&stack, &token, mode);
    }
}
