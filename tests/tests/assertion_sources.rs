//! The assertion sources beyond passthrough, end to end: the broker as an issuer (one
//! Entra credential for many external subjects, key rotation), managed identity as a
//! federated credential through an emulated IMDS / App Service endpoint, and certificate
//! assertions. Entra is the emulator, which fetches the broker's discovery document and
//! JWKS over real HTTP as Entra would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use wif_broker::dev::entra::{AppRegistration, EmulatedCertificate, EmulatedFic, EntraEmulator};
use wif_broker::dev::imds::{HostIdentity, ManagedIdentityHost};
use wif_broker::entra::assertion::rsa::RsaKey;
use wif_broker::server::RunningBroker;
use wif_config::{
    AssertionSource, BrokerConfig, FederatedCredentialConfig, IdentityConfig,
    ManagedIdentityProtocol,
};
use wif_tests::{
    ADO_SUBJECT, Answer, MAIN_SUBJECT, REPO, Stack, TENANT, answer, azure_devops_claims,
    github_claims, kubernetes_claims,
};

/// One app registration for a whole fleet of workloads, through the broker's issuer.
const FLEET_CLIENT: &str = "6d2f4e1a-7b3c-4d5e-8f9a-0b1c2d3e4f5a";
const MI_APP_CLIENT: &str = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
/// The user-assigned identity attached to the broker's host.
const HOST_UAMI_CLIENT: &str = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a";
const HOST_UAMI_PRINCIPAL: &str = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
const CERT_CLIENT: &str = "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e";
const EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

fn credential(
    name: &str,
    issuer: &str,
    subject: Option<&str>,
    expr: Option<&str>,
) -> FederatedCredentialConfig {
    FederatedCredentialConfig {
        name: name.into(),
        issuer: issuer.into(),
        subject: subject.map(str::to_owned),
        claims_matching_expression: expr.map(str::to_owned),
        ..Default::default()
    }
}

fn identity(name: &str, client_id: &str, assertion: AssertionSource) -> IdentityConfig {
    IdentityConfig {
        name: name.into(),
        tenant_id: TENANT.parse().unwrap(),
        client_id: client_id.parse().unwrap(),
        assertion,
        ..Default::default()
    }
}

/// A broker whose `fleet` identity uses the broker assertion: GitHub (any branch of the
/// repository, by pattern), a Kubernetes namespace and an Azure DevOps service connection
/// all map onto it, and Entra holds a single credential trusting the broker.
async fn fleet_stack() -> (Stack, String) {
    let mut issuer_url = String::new();
    let stack = Stack::start_with(|cfg| {
        issuer_url = format!("http://{}", cfg.server.listen);
        cfg.broker_issuer.url = Some(issuer_url.clone());
        // Entra's emulator and the broker share the test clock; nothing else is changed.
        let github = cfg.identities[0].federated_credentials[0].issuer.clone();
        let ado = cfg.identities[0].federated_credentials[1].issuer.clone();
        let aks = cfg.identities[1].federated_credentials[0].issuer.clone();
        let mut fleet = identity("fleet", FLEET_CLIENT, AssertionSource::Broker);
        fleet.assertion_subject = Some("fleet-production".into());
        fleet.federated_credentials = vec![
            credential(
                "github-any-branch",
                &github,
                None,
                Some("claims['sub'] matches 'repo:contoso/app:ref:refs/heads/*'"),
            ),
            credential(
                "aks-payments",
                &aks,
                None,
                Some("claims['kubernetes.io']['namespace'] eq 'payments'"),
            ),
            credential("ado-prod", &ado, Some(ADO_SUBJECT), None),
        ];
        cfg.identities.push(fleet);
    })
    .await;
    assert_eq!(stack.broker.url(), issuer_url);
    stack
        .entra
        .register_app(
            AppRegistration::new(TENANT, FLEET_CLIENT).with_fic(EmulatedFic::new(
                "wif-broker",
                &issuer_url,
                "fleet-production",
            )),
        );
    (stack, issuer_url)
}

fn header_of(jwt: &str) -> Value {
    let segment = jwt.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
}

async fn exchange_as(stack: &Stack, token: &str, identity: &str, scope: &str) -> Answer {
    stack
        .exchange_form(token, &[("scope", scope), ("identity", identity)])
        .await
}

async fn jwks_kids(stack: &Stack) -> Vec<String> {
    let jwks = stack.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, 200, "{:?}", jwks.body);
    jwks.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// Replays an assertion at the emulator's token endpoint, as the broker would send it.
async fn replay(stack: &Stack, client_id: &str, assertion: &str) -> Answer {
    let response = stack
        .http
        .post(stack.entra.token_endpoint(TENANT))
        .form(&[
            ("client_id", client_id),
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("scope", "https://vault.azure.net/.default"),
        ])
        .send()
        .await
        .unwrap();
    answer(response).await
}

#[tokio::test]
async fn the_broker_publishes_its_discovery_document_and_keys() {
    let (stack, issuer_url) = fleet_stack().await;
    let discovery = stack.get("/.well-known/openid-configuration").await;
    assert_eq!(discovery.status, 200);
    assert_eq!(discovery.body["issuer"], issuer_url.as_str());
    assert_eq!(
        discovery.body["jwks_uri"],
        format!("{issuer_url}/.well-known/jwks.json").as_str()
    );
    assert_eq!(
        discovery.body["id_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
    assert_eq!(
        discovery.header("cache-control"),
        Some("public, max-age=3600")
    );
    let jwks = stack.get("/.well-known/jwks.json").await;
    let keys = jwks.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "one generated key to start with");
    assert_eq!(keys[0]["kty"], "RSA");
    assert_eq!(keys[0]["alg"], "RS256");
    assert!(keys[0].get("d").is_none(), "never the private part");

    // The admin API shows the one credential to create in Entra.
    let fleet = stack.admin("GET", "/v1/identities/fleet", None).await;
    assert_eq!(
        fleet.body["entraFederatedCredential"],
        json!({
            "issuer": issuer_url,
            "subject": "fleet-production",
            "audiences": [EXCHANGE_AUDIENCE],
        })
    );
}

#[tokio::test]
async fn an_api_registered_identity_uses_the_broker_assertion_at_once() {
    let (stack, issuer_url) = fleet_stack().await;
    const API_CLIENT: &str = "7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b";
    let created = stack
        .admin(
            "PUT",
            "/v1/identities/api-fleet",
            Some(
                json!({"tenantId": TENANT, "clientId": API_CLIENT, "assertion": "broker",
                "assertionSubject": "api-fleet-prod"}),
            ),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(
        created.body["entraFederatedCredential"]["subject"],
        "api-fleet-prod"
    );
    let credential = stack
        .admin(
            "POST",
            "/v1/identities/api-fleet/federatedIdentityCredentials",
            Some(json!({"name": "k8s-batch", "issuer": stack.aks.url(),
                "claimsMatchingExpression": {"value": "claims['sub'] matches 'system:serviceaccount:batch:*'", "languageVersion": 1},
                "audiences": [EXCHANGE_AUDIENCE]})),
        )
        .await;
    assert_eq!(credential.status, 201, "{:?}", credential.body);
    stack.entra.register_app(
        AppRegistration::new(TENANT, API_CLIENT).with_fic(EmulatedFic::new(
            "wif-broker",
            &issuer_url,
            "api-fleet-prod",
        )),
    );
    let token = stack
        .aks
        .mint(kubernetes_claims("batch", "nightly-report"))
        .unwrap();
    let granted = exchange_as(
        &stack,
        &token,
        "api-fleet",
        "https://vault.azure.net/.default",
    )
    .await;
    assert_eq!(granted.status, 200, "{:?}", granted.body);
    assert_eq!(
        stack.entra.last_assertion_claims().unwrap()["sub"],
        "api-fleet-prod"
    );

    // A subject without the broker assertion, and certificates, are refused at write time.
    stack
        .admin(
            "PUT",
            "/v1/identities/api-fleet",
            Some(json!({"tenantId": TENANT, "clientId": API_CLIENT, "assertionSubject": "x"})),
        )
        .await
        .expect_error(400, "invalid_request");
    stack
        .admin(
            "PUT",
            "/v1/identities/api-cert",
            Some(json!({"tenantId": TENANT, "clientId": CERT_CLIENT, "assertion": "certificate"})),
        )
        .await
        .expect_error(400, "invalid_request");
}

#[tokio::test]
async fn a_broker_that_is_not_an_issuer_says_so() {
    let stack = Stack::start().await;
    stack
        .get("/.well-known/jwks.json")
        .await
        .expect_error(404, "not_an_issuer");
    stack
        .get("/.well-known/openid-configuration")
        .await
        .expect_error(404, "not_an_issuer");
    // And refuses API identities that would need it.
    let refused = stack
        .admin(
            "PUT",
            "/v1/identities/fleet",
            Some(json!({"tenantId": TENANT, "clientId": FLEET_CLIENT, "assertion": "broker"})),
        )
        .await;
    refused.expect_error(400, "invalid_request");
    assert!(
        refused.description().contains("not an issuer")
            || refused.body.to_string().contains("[broker_issuer] url"),
        "{:?}",
        refused.body
    );
}

#[tokio::test]
async fn github_kubernetes_and_azure_devops_tokens_share_one_entra_credential() {
    let (stack, issuer_url) = fleet_stack().await;
    let tokens = [
        (
            "github feature branch",
            stack
                .github
                .mint(github_claims(REPO, "refs/heads/feature/login"))
                .unwrap(),
            "https://management.azure.com/.default",
        ),
        (
            "kubernetes payments pod",
            stack
                .aks
                .mint(kubernetes_claims("payments", "api"))
                .unwrap(),
            "https://vault.azure.net/.default",
        ),
        (
            "azure devops service connection",
            stack
                .ado
                .mint(azure_devops_claims("contoso", "web", "prod-connection"))
                .unwrap(),
            "https://storage.azure.com/.default",
        ),
    ];
    let kids = jwks_kids(&stack).await;
    for (who, token, scope) in &tokens {
        let before = stack.entra.issued_tokens();
        let granted = exchange_as(&stack, token, "fleet", scope).await;
        assert_eq!(granted.status, 200, "{who}: {:?}", granted.body);
        assert_eq!(
            stack.entra.issued_tokens(),
            before + 1,
            "{who}: Entra was asked"
        );
        let access = stack.verify_access_token(granted.access_token());
        assert_eq!(access["appid"], FLEET_CLIENT, "{who}");

        // What Entra saw: the broker's own short assertion, not the caller's token.
        let claims = stack.entra.last_assertion_claims().unwrap();
        assert_eq!(claims["iss"], issuer_url.as_str(), "{who}");
        assert_eq!(claims["sub"], "fleet-production", "{who}");
        assert_eq!(claims["aud"], EXCHANGE_AUDIENCE, "{who}");
        let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert!(lifetime <= 600, "{who}: assertion lives {lifetime} s");
        assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
        assert!(claims["nbf"].as_u64().is_some());
        let header = header_of(&stack.entra.last_assertion().unwrap());
        assert_eq!(header["alg"], "RS256");
        assert!(kids.contains(&header["kid"].as_str().unwrap().to_owned()));
    }
    // The pull-request token is not covered by any of the fleet's credentials.
    let pr = stack
        .github
        .mint(wif_tests::github_pull_request_claims(REPO))
        .unwrap();
    exchange_as(
        &stack,
        &pr,
        "fleet",
        "https://management.azure.com/.default",
    )
    .await
    .expect_error(403, "no_matching_credential");
}

#[tokio::test]
async fn entra_without_the_broker_credential_is_a_clear_error() {
    let (stack, _) = fleet_stack().await;
    // Entra's credential names another subject.
    stack.entra.remove_fic(TENANT, FLEET_CLIENT, "wif-broker");
    stack.entra.add_fic(
        TENANT,
        FLEET_CLIENT,
        EmulatedFic::new("wif-broker", &stack.broker.url(), "fleet-staging"),
    );
    let token = stack.github_token("refs/heads/main");
    let refused = exchange_as(
        &stack,
        &token,
        "fleet",
        "https://management.azure.com/.default",
    )
    .await;
    refused.expect_error(403, "entra_no_matching_federated_credential");
    assert!(
        refused.description().contains("AADSTS700213"),
        "{}",
        refused.description()
    );
    assert!(
        refused.description().contains("broker assertion"),
        "{}",
        refused.description()
    );
}

#[tokio::test]
async fn after_a_rotation_old_and_new_assertions_verify_until_the_old_ones_expire() {
    let (stack, _) = fleet_stack().await;
    let day: i64 = 86_400;
    let scope = |n: u32| format!("api://rotation-{n}/.default");
    let fresh = |stack: &Stack| stack.github_token("refs/heads/main");

    let first = jwks_kids(&stack).await;
    assert_eq!(first.len(), 1);
    let old_kid = first[0].clone();

    // 29 days on, the next key is published a day before it signs.
    stack.clock.advance(29 * day + 1);
    let kids = jwks_kids(&stack).await;
    assert_eq!(kids.len(), 2, "next key published ahead: {kids:?}");
    let new_kid = kids.iter().find(|k| **k != old_kid).unwrap().clone();
    let granted = exchange_as(&stack, &fresh(&stack), "fleet", &scope(1)).await;
    assert_eq!(granted.status, 200, "{:?}", granted.body);
    assert_eq!(
        header_of(&stack.entra.last_assertion().unwrap())["kid"],
        old_kid.as_str(),
        "the next key does not sign yet"
    );

    // The old key's last assertion, just before the switch.
    stack.clock.advance(day - 10);
    assert_eq!(
        exchange_as(&stack, &fresh(&stack), "fleet", &scope(2))
            .await
            .status,
        200
    );
    let last_old = stack.entra.last_assertion().unwrap();
    assert_eq!(header_of(&last_old)["kid"], old_kid.as_str());

    // After the switch the new key signs; both are published, both assertions verify.
    stack.clock.advance(20);
    assert_eq!(
        exchange_as(&stack, &fresh(&stack), "fleet", &scope(3))
            .await
            .status,
        200
    );
    let first_new = stack.entra.last_assertion().unwrap();
    assert_eq!(header_of(&first_new)["kid"], new_kid.as_str());
    assert_eq!(jwks_kids(&stack).await.len(), 2);
    assert_eq!(
        replay(&stack, FLEET_CLIENT, &last_old).await.status,
        200,
        "old key's last assertion still verifies"
    );
    assert_eq!(replay(&stack, FLEET_CLIENT, &first_new).await.status, 200);

    // Once the old key's last assertion has expired, the old key leaves the JWKS.
    stack.clock.advance(300 + 60);
    assert_eq!(jwks_kids(&stack).await, vec![new_kid.clone()]);
    let refused = replay(&stack, FLEET_CLIENT, &last_old).await;
    assert_ne!(refused.status, 200);
    assert_eq!(
        exchange_as(&stack, &fresh(&stack), "fleet", &scope(4))
            .await
            .status,
        200
    );
}

fn pem(label: &str, der_base64: &str) -> String {
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in der_base64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A fresh RSA key as PKCS#8 PEM.
fn rsa_key_pem() -> String {
    let key = RsaKey::generate().unwrap();
    pem("PRIVATE KEY", key.to_pkcs8_base64().unwrap().expose())
}

#[tokio::test]
async fn signing_keys_from_files_rotate_by_replacing_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let signing = dir.path().join("signing.pem");
    let next = dir.path().join("next.pem");
    let (first_pem, next_pem) = (rsa_key_pem(), rsa_key_pem());
    std::fs::write(&signing, &first_pem).unwrap();
    std::fs::write(&next, &next_pem).unwrap();
    let first_kid = RsaKey::from_pem(first_pem.as_bytes())
        .unwrap()
        .kid()
        .to_owned();
    let next_kid = RsaKey::from_pem(next_pem.as_bytes())
        .unwrap()
        .kid()
        .to_owned();

    let mut issuer_url = String::new();
    let stack = Stack::start_with(|cfg| {
        issuer_url = format!("http://{}", cfg.server.listen);
        cfg.broker_issuer.url = Some(issuer_url.clone());
        cfg.broker_issuer.signing_key_file = Some(signing.clone());
        cfg.broker_issuer.published_key_files = vec![next.clone(), dir.path().join("previous.pem")];
        cfg.broker_issuer.reload_secs = 1;
        let github = cfg.identities[0].federated_credentials[0].issuer.clone();
        let mut fleet = identity("fleet", FLEET_CLIENT, AssertionSource::Broker);
        fleet.federated_credentials = vec![credential("main", &github, Some(MAIN_SUBJECT), None)];
        cfg.identities.push(fleet);
    })
    .await;
    stack.entra.register_app(
        AppRegistration::new(TENANT, FLEET_CLIENT).with_fic(EmulatedFic::new(
            "wif-broker",
            &issuer_url,
            "fleet",
        )),
    );
    assert_eq!(
        jwks_kids(&stack).await,
        vec![first_kid.clone(), next_kid.clone()]
    );
    let token = stack.github_token("refs/heads/main");
    assert_eq!(
        exchange_as(&stack, &token, "fleet", "api://one/.default")
            .await
            .status,
        200
    );
    assert_eq!(
        header_of(&stack.entra.last_assertion().unwrap())["kid"],
        first_kid.as_str()
    );

    // The operator's rotation: next becomes signing, the old signing key becomes previous.
    std::fs::write(dir.path().join("previous.pem"), &first_pem).unwrap();
    std::fs::write(&signing, &next_pem).unwrap();
    std::fs::remove_file(&next).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        exchange_as(&stack, &token, "fleet", "api://two/.default")
            .await
            .status,
        200
    );
    assert_eq!(
        header_of(&stack.entra.last_assertion().unwrap())["kid"],
        next_kid.as_str()
    );
    let kids = jwks_kids(&stack).await;
    assert!(
        kids.contains(&first_kid) && kids.contains(&next_kid),
        "{kids:?}"
    );

    // Even if the operator drops the previous key at once, this broker keeps publishing
    // it until the assertions it signed have expired.
    std::fs::remove_file(dir.path().join("previous.pem")).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(jwks_kids(&stack).await.contains(&first_kid));
    stack.clock.advance(300 + 61);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(jwks_kids(&stack).await, vec![next_kid]);
}

/// A second broker on the stack's issuers and Entra emulator, with `change` applied.
async fn broker_beside(stack: &Stack, change: impl FnOnce(&mut BrokerConfig)) -> RunningBroker {
    let mut config = stack.config.clone();
    config.server.listen = "127.0.0.1:0".into();
    change(&mut config);
    RunningBroker::start(&config, stack.clock.clone())
        .await
        .unwrap()
}

/// A GitHub job on main asks `broker` for `scope` as `identity`.
async fn main_job_at(stack: &Stack, broker: &RunningBroker, identity: &str, scope: &str) -> Answer {
    let response = stack
        .http
        .post(format!("{}/v1/token", broker.url()))
        .bearer_auth(stack.github_token("refs/heads/main"))
        .form(&[("scope", scope), ("identity", identity)])
        .send()
        .await
        .unwrap();
    answer(response).await
}

async fn managed_identity_host(stack: &Stack) -> ManagedIdentityHost {
    let host = ManagedIdentityHost::start(&stack.entra, stack.clock.clone())
        .await
        .unwrap();
    host.attach(HostIdentity {
        tenant_id: TENANT.into(),
        client_id: HOST_UAMI_CLIENT.into(),
        principal_id: HOST_UAMI_PRINCIPAL.into(),
    });
    // A second identity on the host, so the broker must name the one it means.
    host.attach(HostIdentity {
        tenant_id: TENANT.into(),
        client_id: "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f".into(),
        principal_id: "4d5e6f7a-8b9c-4d0e-9f1a-2b3c4d5e6f7a".into(),
    });
    // Entra: the app trusts the host's identity (managed identity as FIC).
    stack
        .entra
        .register_app(
            AppRegistration::new(TENANT, MI_APP_CLIENT).with_fic(EmulatedFic::new(
                "broker-host",
                &EntraEmulator::v2_issuer(TENANT),
                HOST_UAMI_PRINCIPAL,
            )),
        );
    host
}

/// A broker beside the stack whose `mi-app` identity presents the host's managed-identity
/// token, with `managed` choosing how it is fetched.
async fn mi_broker(
    stack: &Stack,
    managed: impl FnOnce(&mut wif_config::ManagedIdentityConfig),
) -> RunningBroker {
    let github = stack.github.url();
    broker_beside(stack, |cfg| {
        managed(&mut cfg.managed_identity);
        let mut app = identity("mi-app", MI_APP_CLIENT, AssertionSource::ManagedIdentity);
        app.federated_credentials = vec![credential("main", &github, Some(MAIN_SUBJECT), None)];
        cfg.identities.push(app);
    })
    .await
}

#[tokio::test]
async fn a_managed_identity_token_from_imds_is_the_assertion() {
    let stack = Stack::start().await;
    let host = managed_identity_host(&stack).await;
    let broker = mi_broker(&stack, |mi| {
        mi.protocol = ManagedIdentityProtocol::Imds;
        mi.endpoint = Some(host.imds_endpoint());
        mi.client_id = Some(HOST_UAMI_CLIENT.into());
    })
    .await;
    let granted = main_job_at(
        &stack,
        &broker,
        "mi-app",
        "https://vault.azure.net/.default",
    )
    .await;
    assert_eq!(granted.status, 200, "{:?}", granted.body);
    assert_eq!(
        stack.verify_access_token(granted.access_token())["appid"],
        MI_APP_CLIENT
    );
    let claims = stack.entra.last_assertion_claims().unwrap();
    assert_eq!(claims["iss"], EntraEmulator::v2_issuer(TENANT).as_str());
    assert_eq!(claims["sub"], HOST_UAMI_PRINCIPAL);
    assert_eq!(claims["aud"], EXCHANGE_AUDIENCE);

    // The managed-identity token is cached: another scope, no second IMDS call.
    let granted = main_job_at(
        &stack,
        &broker,
        "mi-app",
        "https://storage.azure.com/.default",
    )
    .await;
    assert_eq!(granted.status, 200, "{:?}", granted.body);
    assert_eq!(host.requests(), 1);

    // Near its expiry it is fetched again.
    stack.clock.advance(86_400 - 300);
    let granted = main_job_at(
        &stack,
        &broker,
        "mi-app",
        "https://graph.microsoft.com/.default",
    )
    .await;
    assert_eq!(granted.status, 200, "{:?}", granted.body);
    assert_eq!(host.requests(), 2);
}

#[tokio::test]
async fn a_managed_identity_token_from_app_service_is_the_assertion() {
    let stack = Stack::start().await;
    let host = managed_identity_host(&stack).await;
    let broker = mi_broker(&stack, |mi| {
        mi.protocol = ManagedIdentityProtocol::AppService;
        mi.endpoint = Some(host.app_service_endpoint());
        mi.identity_header = Some(host.identity_header());
        mi.client_id = Some(HOST_UAMI_CLIENT.into());
    })
    .await;
    let granted = main_job_at(
        &stack,
        &broker,
        "mi-app",
        "https://vault.azure.net/.default",
    )
    .await;
    assert_eq!(granted.status, 200, "{:?}", granted.body);
    assert_eq!(
        stack.entra.last_assertion_claims().unwrap()["sub"],
        HOST_UAMI_PRINCIPAL
    );
}

#[tokio::test]
async fn a_managed_identity_endpoint_that_refuses_is_a_retryable_503() {
    let stack = Stack::start().await;
    let host = managed_identity_host(&stack).await;
    let broker = mi_broker(&stack, |mi| {
        mi.protocol = ManagedIdentityProtocol::AppService;
        mi.endpoint = Some(host.app_service_endpoint());
        mi.identity_header = Some("not-the-secret".into());
    })
    .await;
    let refused = main_job_at(
        &stack,
        &broker,
        "mi-app",
        "https://vault.azure.net/.default",
    )
    .await;
    refused.expect_error(503, "assertion_unavailable");
    assert!(refused.header("retry-after").is_some());
    assert!(
        refused.description().contains("401"),
        "{}",
        refused.description()
    );
    assert!(!refused.body.to_string().contains("not-the-secret"));
    assert_eq!(
        stack.entra.token_requests(),
        0,
        "Entra is not called without an assertion"
    );
}

/// A self-signed certificate for `key_pem`, as PEM and DER.
fn certificate(key_pem: &str) -> (String, Vec<u8>) {
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["wif-broker-app".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), cert.der().to_vec())
}

fn cert_identity(name: &str, github: &str, cert: &Path, key: &Path) -> IdentityConfig {
    let mut app = identity(name, CERT_CLIENT, AssertionSource::Certificate);
    app.certificate_file = Some(cert.to_owned());
    app.certificate_key_file = Some(key.to_owned());
    app.federated_credentials = vec![credential("main", github, Some(MAIN_SUBJECT), None)];
    app
}

#[tokio::test]
async fn a_certificate_assertion_is_accepted_and_a_wrong_thumbprint_refused() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("app.crt"), dir.path().join("app.key"));
    let key_pem = rsa_key_pem();
    let (cert_pem, cert_der) = certificate(&key_pem);
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, &key_pem).unwrap();
    let registered = EmulatedCertificate::from_der(&cert_der).unwrap();
    stack
        .entra
        .add_certificate(TENANT, CERT_CLIENT, registered.clone());

    let github = stack.github.url();
    let broker = broker_beside(&stack, |cfg| {
        cfg.identities
            .push(cert_identity("cert-app", &github, &cert_path, &key_path));
    })
    .await;
    let granted = main_job_at(
        &stack,
        &broker,
        "cert-app",
        "https://vault.azure.net/.default",
    )
    .await;
    assert_eq!(granted.status, 200, "{:?}", granted.body);
    assert_eq!(
        stack.verify_access_token(granted.access_token())["appid"],
        CERT_CLIENT
    );
    let claims = stack.entra.last_assertion_claims().unwrap();
    assert_eq!(claims["iss"], CERT_CLIENT);
    assert_eq!(claims["sub"], CERT_CLIENT);
    assert_eq!(claims["aud"], stack.entra.token_endpoint(TENANT).as_str());
    let header = header_of(&stack.entra.last_assertion().unwrap());
    assert_eq!(header["x5t#S256"], registered.x5t_s256.as_str());
    assert_eq!(header["x5t"], registered.x5t.as_str());

    // The certificate is renewed on disk but not yet uploaded to the app: Entra refuses
    // the new thumbprint.
    let renewed_key = rsa_key_pem();
    let (renewed_pem, renewed_der) = certificate(&renewed_key);
    std::fs::write(&key_path, &renewed_key).unwrap();
    std::fs::write(&cert_path, &renewed_pem).unwrap();
    let refused = main_job_at(
        &stack,
        &broker,
        "cert-app",
        "https://storage.azure.com/.default",
    )
    .await;
    refused.expect_error(401, "entra_assertion_rejected");
    assert!(
        refused.description().contains("AADSTS700027"),
        "{}",
        refused.description()
    );

    // Uploaded: the reloaded certificate is accepted without a restart.
    stack.entra.add_certificate(
        TENANT,
        CERT_CLIENT,
        EmulatedCertificate::from_der(&renewed_der).unwrap(),
    );
    let granted = main_job_at(
        &stack,
        &broker,
        "cert-app",
        "https://storage.azure.com/.default",
    )
    .await;
    assert_eq!(granted.status, 200, "{:?}", granted.body);
    let header = header_of(&stack.entra.last_assertion().unwrap());
    assert_ne!(header["x5t#S256"], registered.x5t_s256.as_str());
}

#[tokio::test]
async fn a_key_that_does_not_match_its_certificate_is_named() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("app.crt"), dir.path().join("other.key"));
    let (cert_pem, _) = certificate(&rsa_key_pem());
    std::fs::write(&cert_path, cert_pem).unwrap();
    std::fs::write(&key_path, rsa_key_pem()).unwrap();
    let github = stack.github.url();
    let broker = broker_beside(&stack, |cfg| {
        cfg.identities
            .push(cert_identity("cert-app", &github, &cert_path, &key_path));
    })
    .await;
    let refused = main_job_at(
        &stack,
        &broker,
        "cert-app",
        "https://vault.azure.net/.default",
    )
    .await;
    refused.expect_error(502, "assertion_misconfigured");
    assert!(
        refused
            .description()
            .contains("does not belong to the certificate"),
        "{}",
        refused.description()
    );
    assert_eq!(stack.entra.token_requests(), 0);
}
