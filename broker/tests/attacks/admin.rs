//! An admin of the API tries to act as identities it does not own: it points an identity
//! at its own "authority host" with the broker assertion (or the broker's managed
//! identity) and another identity's assertion subject, to receive an assertion it could
//! replay at Entra. No request may reach its host, and the subject stays with its owner.

use reqwest::Method;
use serde_json::json;
use wif_broker::dev::issuer::github_claims;
use wif_broker::store::{StoredCredential, StoredIdentity};
use wif_config::AssertionSource;

use crate::support::*;

/// The config identity using the broker assertion, whose subject the attacker wants.
const FLEET_CLIENT: &str = "6d2f4e1a-7b3c-4d5e-8f9a-0b1c2d3e4f5a";
const FLEET_SUBJECT: &str = "fleet-production";
/// The attacker's own app registration.
const ATTACKER_CLIENT: &str = "0d9c8b7a-6f5e-4d3c-8b2a-190817161514";
const ATTACKER_REPO: &str = "attacker/tools";
const ATTACKER_SUBJECT: &str = "repo:attacker/tools:ref:refs/heads/main";

fn config(up: &Upstreams, dir: &BrokerDir) -> String {
    up.config(
        dir,
        &format!(
            r#"[broker_issuer]
url = "http://127.0.0.1:9/broker"

[managed_identity]
endpoint = "http://127.0.0.1:9/metadata/identity/oauth2/token"

[[identities]]
name = "fleet"
tenant_id = "{TENANT}"
client_id = "{FLEET_CLIENT}"
assertion = "broker"
assertion_subject = "{FLEET_SUBJECT}"
"#
        ),
    )
}

fn identity_body(extra: serde_json::Value) -> serde_json::Value {
    let mut body = json!({"tenantId": TENANT, "clientId": ATTACKER_CLIENT});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_admin_cannot_send_broker_or_managed_identity_assertions_to_its_own_host() {
    let up = Upstreams::start().await;
    let attacker = StandIn::start().await;
    let dir = BrokerDir::new();
    let broker = Broker::start(&dir, &config(&up, &dir), &[]).await;
    let http = client();
    let url = |path: &str| format!("{}{path}", broker.url());

    // The attack as reported: its own host, the broker assertion, the fleet's subject.
    for (assertion, subject) in [
        ("broker", Some(FLEET_SUBJECT)),
        ("broker", Some("x-own-subject")),
        ("broker", None),
        ("managed_identity", None),
        ("passthrough", None),
    ] {
        let mut body = identity_body(json!({
            "authorityHost": attacker.url(),
            "assertion": assertion,
        }));
        if let Some(subject) = subject {
            body["assertionSubject"] = json!(subject);
        }
        let put = admin(&http, Method::PUT, &url("/v1/identities/x"), Some(body)).await;
        assert_eq!(put.status, 400, "{assertion}: {put:?}");
        assert_eq!(put.error(), "invalid_request", "{put:?}");
        assert_eq!(put.body["details"][0]["field"], "authorityHost", "{put:?}");
        assert!(
            put.description().contains("API cannot add hosts"),
            "{put:?}"
        );
    }

    // Then its own credential and one exchange, as in the report: x does not exist.
    let cred = admin(
        &http,
        Method::POST,
        &url("/v1/identities/x/federatedIdentityCredentials"),
        Some(json!({"name": "mine", "issuer": up.issuer.url(), "subject": ATTACKER_SUBJECT})),
    )
    .await;
    assert_eq!(cred.status, 404, "{cred:?}");
    assert_eq!(cred.error(), "not_found", "{cred:?}");
    assert!(cred.description().contains("no identity"), "{cred:?}");
    let token = up
        .issuer
        .mint(github_claims(ATTACKER_REPO, "main"))
        .unwrap();
    let got = exchange(&http, &broker.url(), &token, ARM).await;
    assert_ne!(got.status, 200, "{got:?}");

    assert_eq!(
        attacker.hits(),
        0,
        "a request reached the attacker's host\n{}",
        broker.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_assertion_subject_belongs_to_one_identity() {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    let broker = Broker::start(&dir, &config(&up, &dir), &[]).await;
    let http = client();
    let url = |path: &str| format!("{}{path}", broker.url());
    let put = |name: &'static str, body: serde_json::Value| {
        let http = http.clone();
        let target = url(&format!("/v1/identities/{name}"));
        async move { admin(&http, Method::PUT, &target, Some(body)).await }
    };

    // A config identity's explicit subject, a config identity's name (its default
    // subject), and names equal to a config identity's subject: all refused.
    for (name, subject) in [
        ("x", Some(FLEET_SUBJECT)),
        ("x", Some("fleet")),
        ("x", Some("deploy")),
        ("fleet-production", None),
    ] {
        let mut body = identity_body(json!({"assertion": "broker"}));
        if let Some(subject) = subject {
            body["assertionSubject"] = json!(subject);
        }
        let got = put(name, body).await;
        assert_eq!(got.status, 409, "{name} {subject:?}: {got:?}");
        assert_eq!(got.error(), "conflict", "{got:?}");
        assert!(got.description().contains("assertion subject"), "{got:?}");
    }

    // Between API identities: the first keeps it.
    let first = put(
        "api-a",
        identity_body(json!({"assertion": "broker", "assertionSubject": "shared"})),
    )
    .await;
    assert_eq!(first.status, 201, "{first:?}");
    let second = put(
        "api-b",
        json!({"tenantId": TENANT, "clientId": "5e4d3c2b-1a09-4f8e-9d7c-6b5a49382716",
               "assertion": "broker", "assertionSubject": "shared"}),
    )
    .await;
    assert_eq!(second.status, 409, "{second:?}");
    // Nor may another identity be named after it (its default subject).
    let named = put(
        "shared",
        json!({"tenantId": TENANT, "clientId": "5e4d3c2b-1a09-4f8e-9d7c-6b5a49382716",
               "assertion": "broker"}),
    )
    .await;
    assert_eq!(named.status, 409, "{named:?}");
    // The owner may keep (re-put) its own subject.
    let again = put(
        "api-a",
        identity_body(json!({"assertion": "broker", "assertionSubject": "shared"})),
    )
    .await;
    assert_eq!(again.status, 200, "{again:?}");
}

/// Rows stored before the allow-list and the subject rule existed: the registry leaves
/// them out and the assertion source refuses their host, so nothing is sent.
#[tokio::test(flavor = "multi_thread")]
async fn rows_stored_before_the_fix_never_send_an_assertion_to_the_attacker() {
    let up = Upstreams::start().await;
    let attacker = StandIn::start().await;
    let dir = BrokerDir::new();
    {
        let store = wif_broker::store::open(&dir.sqlite_url()).await.unwrap();
        let rows = [
            (
                "x-broker",
                AssertionSource::Broker,
                Some(FLEET_SUBJECT),
                "0d9c8b7a-6f5e-4d3c-8b2a-190817161501",
            ),
            (
                "x-own",
                AssertionSource::Broker,
                Some("x-own"),
                "0d9c8b7a-6f5e-4d3c-8b2a-190817161502",
            ),
            (
                "x-mi",
                AssertionSource::ManagedIdentity,
                None,
                "0d9c8b7a-6f5e-4d3c-8b2a-190817161503",
            ),
        ];
        for (i, (name, assertion, subject, client_id)) in rows.into_iter().enumerate() {
            store
                .put_identity(&StoredIdentity {
                    name: name.into(),
                    tenant_id: TENANT.into(),
                    client_id: client_id.into(),
                    cloud: None,
                    authority_host: Some(attacker.url()),
                    assertion,
                    assertion_subject: subject.map(str::to_owned),
                    created_at: 1,
                    updated_at: 1,
                    restrictions: Default::default(),
                })
                .await
                .unwrap();
            store
                .create_credential(&StoredCredential {
                    id: format!("00000000-0000-4000-8000-00000000000{i}"),
                    identity: name.into(),
                    name: "mine".into(),
                    issuer: up.issuer.url(),
                    subject: Some(ATTACKER_SUBJECT.into()),
                    claims_matching_expression: None,
                    audiences: vec!["api://AzureADTokenExchange".into()],
                    description: None,
                    one_time_use: false,
                    created_at: 1,
                    updated_at: 1,
                    restrictions: Default::default(),
                })
                .await
                .unwrap();
        }
    }
    let broker = Broker::start(&dir, &config(&up, &dir), &[]).await;
    let http = client();
    for name in ["x-broker", "x-own", "x-mi"] {
        let token = up
            .issuer
            .mint(github_claims(ATTACKER_REPO, "main"))
            .unwrap();
        let got = http
            .post(format!("{}/v1/token", broker.url()))
            .bearer_auth(&token)
            .json(&json!({"scope": ARM, "identity": name}))
            .send()
            .await
            .unwrap();
        let got = answer(got).await;
        assert_ne!(got.status, 200, "{name}: {got:?}");
    }
    assert_eq!(
        attacker.hits(),
        0,
        "a request reached the attacker's host\n{}",
        broker.output()
    );
    assert!(
        broker
            .output()
            .contains("not allowed by this broker's config"),
        "the left-out rows are reported\n{}",
        broker.output()
    );
}
