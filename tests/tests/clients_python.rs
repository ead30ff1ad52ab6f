//! The real Python clients beyond `agent_sdk.rs`: MSAL's own `ManagedIdentityClient`
//! (system- and user-assigned) over every managed-identity protocol, `azure-identity`
//! over App Service 2017-09-01 (`MSI_ENDPOINT` + `MSI_SECRET`), and what credential chains
//! rely on: an identity the agent cannot serve is refused at once, the way Azure's IMDS
//! refuses it, and `DefaultAzureCredential` moves on to its next credential.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use wif_broker::clock::Clock;
use wif_tests::agent::{TestAgent, python};
use wif_tests::clients::{
    ArmStandIn, AzCli, ClientRun, DEPLOY_RESOURCE_ID, PAYMENTS_RESOURCE_ID, Protocol,
    agent_requests, assert_deploy_arm_token, az, tls_stack,
};
use wif_tests::{ARM, DEPLOY_CLIENT, PAYMENTS_CLIENT, Stack, answer};

#[tokio::test]
async fn msal_managed_identity_client_gets_tokens_over_every_protocol() {
    let Some(python) = python() else { return };
    let stack = Stack::start().await;
    let agent = TestAgent::start(&stack).await;
    let client_id = format!("client_id={DEPLOY_CLIENT}");
    let resource_id = format!("resource_id={DEPLOY_RESOURCE_ID}");
    // The agent takes object_id as the broker identity's name.
    let object_id = "object_id=deploy";

    for protocol in Protocol::ALL {
        for id in [
            None,
            Some(client_id.as_str()),
            Some(&resource_id),
            Some(object_id),
        ] {
            let context = format!("msal over {protocol:?} with {id:?}");
            let before = agent_requests(&stack, &agent, protocol.label(), "ok").await;
            let (token, expires_on) = ClientRun::python(&python, "msal-managed", ARM, id)
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
                "{context}"
            );
        }
        // Each form of user-assigned id reaches the broker as sent: naming an identity
        // this pod may not act as is refused, not answered with the default identity.
        for id in [
            format!("client_id={PAYMENTS_CLIENT}"),
            format!("resource_id={PAYMENTS_RESOURCE_ID}"),
            "object_id=payments".to_owned(),
        ] {
            let refused = ClientRun::python(&python, "msal-managed", ARM, Some(&id))
                .agent(&agent, protocol)
                .token()
                .await
                .unwrap_err();
            assert!(
                refused.contains("Identity not found"),
                "{id} over {protocol:?}: {refused}"
            );
        }
    }
}

#[tokio::test]
async fn azure_identity_gets_tokens_over_app_service_2017_and_as_user_assigned_identities() {
    let Some(python) = python() else { return };
    let stack = Stack::start().await;
    let agent = TestAgent::start(&stack).await;
    let client_id = format!("client_id={DEPLOY_CLIENT}");
    let resource_id = format!("resource_id={DEPLOY_RESOURCE_ID}");
    let runs = [
        (Protocol::AppService2017, None),
        (Protocol::AppService2017, Some(client_id.as_str())),
        (Protocol::AppService, Some(&client_id)),
        (Protocol::AppService, Some(&resource_id)),
        (Protocol::Imds, Some(&client_id)),
        (Protocol::Imds, Some(&resource_id)),
    ];
    for (protocol, id) in runs {
        let context = format!("ManagedIdentityCredential over {protocol:?} with {id:?}");
        let before = agent_requests(&stack, &agent, protocol.label(), "ok").await;
        let (token, _) = ClientRun::python(&python, "managed", ARM, id)
            .agent(&agent, protocol)
            .token()
            .await
            .unwrap_or_else(|e| panic!("{context}: {e}"));
        assert_deploy_arm_token(&stack, &token, &context);
        assert_eq!(
            agent_requests(&stack, &agent, protocol.label(), "ok").await,
            before + 1.0,
            "{context}"
        );
    }
}

/// The 2017-09-01 request as the older SDKs and tools send it, on the wire.
#[tokio::test]
async fn the_2017_protocol_takes_secret_and_clientid() {
    let stack = Stack::start().await;
    let agent = TestAgent::start(&stack).await;
    let request = |secret: &str, clientid: Option<&str>| {
        let mut query = vec![
            ("api-version", "2017-09-01"),
            ("resource", "https://management.azure.com/"),
        ];
        query.extend(clientid.map(|c| ("clientid", c)));
        stack
            .http
            .get(agent.identity_endpoint())
            .query(&query)
            .header("secret", secret)
            .send()
    };

    let ok = answer(
        request(wif_tests::agent::HEADER_SECRET, Some(DEPLOY_CLIENT))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["token_type"], "Bearer");
    assert_eq!(ok.body["resource"], "https://management.azure.com/");
    let expires_on: u64 = ok.body["expires_on"].as_str().unwrap().parse().unwrap();
    assert!(expires_on > stack.clock.now() + 300, "{}", ok.body);
    assert_eq!(
        stack.verify_access_token(ok.access_token())["appid"],
        DEPLOY_CLIENT
    );

    let wrong = answer(request("not-the-secret", None).await.unwrap()).await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(wrong.error(), "unauthorized");

    let other = answer(
        request(wif_tests::agent::HEADER_SECRET, Some(PAYMENTS_CLIENT))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(other.status, 400, "{}", other.body);
    assert_eq!(other.error(), "invalid_request");
    assert!(
        other.description().starts_with("Identity not found"),
        "{}",
        other.body
    );
    assert_eq!(stack.entra.token_requests(), 1);
}

#[tokio::test]
async fn an_identity_the_agent_cannot_serve_fails_at_once_and_the_chain_moves_on_to_az() {
    let Some(python) = python() else { return };
    let Some(az) = az() else { return };
    let (stack, files) = tls_stack().await;
    let agent = TestAgent::start_trusting(&stack, &files.ca).await;
    let payments = format!("client_id={PAYMENTS_CLIENT}");

    // Over each protocol: refused at once (one request, no retry), in IMDS's words.
    for protocol in [Protocol::AppService, Protocol::Imds] {
        let refused = ClientRun::python(&python, "msal-managed", ARM, Some(&payments))
            .agent(&agent, protocol)
            .token()
            .await
            .unwrap_err();
        assert!(refused.contains("Identity not found"), "{refused}");
        assert_eq!(
            agent_requests(&stack, &agent, protocol.label(), "invalid_request").await,
            1.0,
            "{protocol:?}"
        );
    }

    // DefaultAzureCredential: managed identity is unavailable, so the next credential in
    // the chain, the Azure CLI (logged in with a federated token at the broker), answers.
    let arm = ArmStandIn::start(&stack, &files).await;
    let cli = AzCli::new(&az, &stack, &files, &arm).await;
    cli.login_federated(&stack, DEPLOY_CLIENT).await.unwrap();
    let (token, _) = ClientRun::python(&python, "default-chain", ARM, Some(&payments))
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
