//! The Azure CLI from PyPI (pinned in `.ci/run`) logs in through the agent
//! (`az login --identity`, over each managed-identity protocol, system- and user-assigned)
//! and at the broker's Entra-compatible endpoint (`az login --service-principal
//! --federated-token`), then hands out tokens (`az account get-access-token`).
//!
//! The CLI runs with a throwaway `AZURE_CONFIG_DIR` and a registered test cloud: Entra is
//! the broker (HTTPS, throwaway CA), Resource Manager a stand-in that lists one
//! subscription to a token Entra issued for it (the CLI lists subscriptions at login).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use wif_tests::agent::TestAgent;
use wif_tests::clients::{
    ArmStandIn, AzCli, CLI_RESOURCE, DEPLOY_RESOURCE_ID, Protocol, SUBSCRIPTION, TlsFiles, az,
    tls_stack,
};
use wif_tests::{DEPLOY_CLIENT, Stack, TENANT};

/// A TLS stack, an agent in front of it, the ARM stand-in and a CLI set up for them.
async fn setup(az: &std::path::Path) -> (Stack, TlsFiles, TestAgent, ArmStandIn, AzCli) {
    let (stack, files) = tls_stack().await;
    let agent = TestAgent::start_trusting(&stack, &files.ca).await;
    let arm = ArmStandIn::start(&stack, &files).await;
    let cli = AzCli::new(az, &stack, &files, &arm).await;
    (stack, files, agent, arm, cli)
}

/// The account `az login` printed: the stand-in's subscription in the test tenant.
fn assert_logged_in(accounts: &Value, context: &str) {
    let account = &accounts[0];
    assert_eq!(account["id"], SUBSCRIPTION, "{context}: {accounts}");
    assert_eq!(account["tenantId"], TENANT, "{context}: {accounts}");
    assert_eq!(account["user"]["type"], "servicePrincipal", "{context}");
}

/// `az account get-access-token` (for `resource`, else the cloud's management audience)
/// gives a token Entra issued to the deploy identity.
async fn assert_access_token(
    cli: &AzCli,
    stack: &Stack,
    protocol: Option<(&TestAgent, Protocol)>,
    resource: Option<&str>,
    context: &str,
) {
    let mut args = vec!["account", "get-access-token", "--output", "json"];
    if let Some(resource) = resource {
        args.extend(["--resource", resource]);
    }
    let mut command = cli.command(&args);
    if let Some((agent, protocol)) = protocol {
        command = command.agent(agent, protocol);
    }
    let printed = cli
        .json(command)
        .await
        .unwrap_or_else(|e| panic!("{context}: {e}"));
    assert_eq!(printed["tokenType"], "Bearer", "{context}: {printed}");
    assert_eq!(printed["subscription"], SUBSCRIPTION, "{context}");
    let claims = stack.verify_access_token(printed["accessToken"].as_str().unwrap());
    let audience = resource.unwrap_or(CLI_RESOURCE).trim_end_matches('/');
    assert_eq!(claims["aud"], audience, "{context}: {claims}");
    assert_eq!(claims["appid"], DEPLOY_CLIENT, "{context}: {claims}");
}

/// `az login --identity ID_ARGS` then `az account get-access-token`, both with `protocol`'s
/// variables (the CLI asks the endpoint again for every token).
async fn login_with_identity(
    cli: &AzCli,
    stack: &Stack,
    agent: &TestAgent,
    protocol: Protocol,
    id_args: &[&str],
) {
    let context = format!(
        "az login --identity {} over {protocol:?}",
        id_args.join(" ")
    );
    let mut args = vec!["login", "--identity", "--output", "json"];
    args.extend(id_args);
    let accounts = cli
        .json(cli.command(&args).agent(agent, protocol))
        .await
        .unwrap_or_else(|e| panic!("{context}: {e}"));
    assert_logged_in(&accounts, &context);
    assert_access_token(cli, stack, Some((agent, protocol)), None, &context).await;
}

#[tokio::test]
async fn az_login_identity_over_app_service_system_and_user_assigned() {
    let Some(az) = az() else { return };
    let (stack, _files, agent, arm, cli) = setup(&az).await;
    for id_args in [
        &[][..],
        &["--client-id", DEPLOY_CLIENT][..],
        // The agent takes an object id as the broker identity's name.
        &["--object-id", "deploy"][..],
        &["--resource-id", DEPLOY_RESOURCE_ID][..],
    ] {
        login_with_identity(&cli, &stack, &agent, Protocol::AppService, id_args).await;
    }
    assert_eq!(arm.listed(), 4);
}

#[tokio::test]
async fn az_login_identity_over_imds_and_app_service_2017() {
    let Some(az) = az() else { return };
    let (stack, _files, agent, arm, cli) = setup(&az).await;
    for id_args in [&[][..], &["--resource-id", DEPLOY_RESOURCE_ID][..]] {
        login_with_identity(&cli, &stack, &agent, Protocol::Imds, id_args).await;
    }
    for id_args in [&[][..], &["--client-id", DEPLOY_CLIENT][..]] {
        login_with_identity(&cli, &stack, &agent, Protocol::AppService2017, id_args).await;
    }
    assert_eq!(arm.listed(), 4);
}

#[tokio::test]
async fn az_login_with_a_federated_token_at_the_entra_compatible_endpoint() {
    let Some(az) = az() else { return };
    let (stack, _files, _agent, arm, cli) = setup(&az).await;
    let accounts = cli.login_federated(&stack, DEPLOY_CLIENT).await.unwrap();
    assert_logged_in(&accounts, "az login --federated-token");
    assert_eq!(arm.listed(), 1);
    assert_access_token(&cli, &stack, None, None, "management").await;
    assert_access_token(
        &cli,
        &stack,
        None,
        Some("https://management.azure.com/"),
        "ARM",
    )
    .await;
}
