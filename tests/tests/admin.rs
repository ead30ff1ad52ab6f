//! The admin plane end to end: Graph-shaped API over loopback, Entra's rules at write time,
//! immediate effect on exchanges, roles, audit, simulate, one-time-use credentials.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use wif_broker::dev::entra::{AppRegistration, EmulatedFic};
use wif_tests::*;

const API_CLIENT: &str = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b";
const FEATURE_SUBJECT: &str = "repo:contoso/app:ref:refs/heads/feature";

/// An API-registered identity that Entra knows, with a FIC for the feature branch.
async fn api_identity(stack: &Stack) {
    stack.entra.register_app(
        AppRegistration::new(TENANT, API_CLIENT).with_fic(EmulatedFic::new(
            "feature",
            &stack.github.url(),
            FEATURE_SUBJECT,
        )),
    );
    let created = stack
        .admin(
            "PUT",
            "/v1/identities/api-app",
            Some(json!({"tenantId": TENANT, "clientId": API_CLIENT})),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["source"], "api");
    assert_eq!(created.body["readOnly"], false);
}

fn credentials(identity: &str) -> String {
    format!("/v1/identities/{identity}/federatedIdentityCredentials")
}

#[tokio::test]
async fn a_credential_created_through_the_api_admits_its_job_at_once_and_a_deleted_one_stops() {
    let stack = Stack::start().await;
    api_identity(&stack).await;
    let token = stack.github_token("feature");
    stack
        .exchange(&token, ARM)
        .await
        .expect_error(403, "no_matching_credential");

    let created = stack
        .admin(
            "POST",
            &credentials("api-app"),
            Some(json!({
                "name": "feature-branch",
                "issuer": stack.github.url(),
                "subject": FEATURE_SUBJECT,
                "audiences": ["api://AzureADTokenExchange"],
                "description": "CI on the feature branch",
            })),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["name"], "feature-branch");
    assert!(created.body["id"].as_str().unwrap().len() >= 32);

    // No propagation delay: the very next exchange is admitted.
    let answer = stack.exchange(&token, ARM).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["identity"]["name"], "api-app");

    let deleted = stack
        .admin(
            "DELETE",
            &format!("{}/feature-branch", credentials("api-app")),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
    // Refused at once, although an Entra token for the identity is still cached.
    stack
        .exchange(&stack.github_token("feature"), ARM)
        .await
        .expect_error(403, "no_matching_credential");
}

#[tokio::test]
async fn identities_and_credentials_read_back_in_graph_shape() {
    let stack = Stack::start().await;
    api_identity(&stack).await;
    let body = json!({
        "name": "releases",
        "issuer": stack.github.url(),
        "claimsMatchingExpression": {"value": "claims['sub'] matches 'repo:contoso/app:ref:refs/heads/release/*'", "languageVersion": 1},
        "audiences": ["api://AzureADTokenExchange"],
    });
    assert_eq!(
        stack
            .admin("POST", &credentials("api-app"), Some(body))
            .await
            .status,
        201
    );

    let list = stack.admin("GET", "/v1/identities", None).await;
    let names: Vec<&str> = list.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"api-app") && names.contains(&"deploy"),
        "{names:?}"
    );
    let deploy = stack.admin("GET", "/v1/identities/deploy", None).await;
    assert_eq!(deploy.body["source"], "config");
    assert_eq!(deploy.body["readOnly"], true);

    let creds = stack.admin("GET", &credentials("api-app"), None).await;
    let first = &creds.body["value"][0];
    assert_eq!(first["name"], "releases");
    assert_eq!(first["subject"], Value::Null);
    assert_eq!(first["claimsMatchingExpression"]["languageVersion"], 1);
    let by_id = stack
        .admin(
            "GET",
            &format!(
                "{}/{}",
                credentials("api-app"),
                first["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(by_id.body, *first);
    let declared = stack.admin("GET", &credentials("deploy"), None).await;
    assert_eq!(declared.body["value"].as_array().unwrap().len(), 2);
    assert_eq!(declared.body["value"][0]["readOnly"], true);
}

#[tokio::test]
async fn every_broken_entra_rule_is_one_clear_error() {
    let stack = Stack::start().await;
    api_identity(&stack).await;
    let answer = stack
        .admin(
            "POST",
            &credentials("api-app"),
            Some(json!({
                "name": "x",
                "issuer": "http://token.actions.githubusercontent.com",
                "subject": "repo:a/b:ref:refs/heads/main",
                "claimsMatchingExpression": {"value": "claims['sub'] eq 'x'", "languageVersion": 1},
                "audiences": ["a", "b"],
                "description": "d".repeat(601),
            })),
        )
        .await;
    answer.expect_error(400, "invalid_request");
    let fields: Vec<&str> = answer.body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    for field in ["name", "issuer", "subject", "audiences", "description"] {
        assert!(
            fields.contains(&field),
            "no violation for {field}: {:?}",
            answer.body
        );
    }
    let bad_expression = stack
        .admin(
            "POST",
            &credentials("api-app"),
            Some(json!({
                "name": "expr",
                "issuer": "https://token.actions.githubusercontent.com",
                "claimsMatchingExpression": {"value": "claims['sub'] equals 'x'", "languageVersion": 1},
            })),
        )
        .await;
    bad_expression.expect_error(400, "invalid_request");
    assert!(
        bad_expression
            .description()
            .contains("expected `eq` or `matches`"),
        "{}",
        bad_expression.description()
    );

    let nul = stack
        .admin(
            "POST",
            &credentials("api-app"),
            Some(json!({"name": "nul", "issuer": stack.github.url(), "subject": "repo:a/b\u{0}"})),
        )
        .await;
    nul.expect_error(400, "invalid_request");
    assert_eq!(nul.body["details"][0]["field"], "subject");

    let bad_identity = stack
        .admin(
            "PUT",
            "/v1/identities/bad",
            Some(json!({"tenantId": "nope", "clientId": "not-a-guid"})),
        )
        .await;
    bad_identity.expect_error(400, "invalid_request");
    assert_eq!(bad_identity.body["details"].as_array().unwrap().len(), 2);
    let unknown_field = stack
        .admin(
            "PUT",
            "/v1/identities/bad",
            Some(json!({"tenantId": TENANT, "clientId": API_CLIENT, "secret": "x"})),
        )
        .await;
    unknown_field.expect_error(400, "invalid_request");
}

#[tokio::test]
async fn duplicates_unknowns_and_declared_entries_get_409_and_404() {
    let stack = Stack::start().await;
    api_identity(&stack).await;
    let cred = json!({"name": "one", "issuer": stack.github.url(), "subject": FEATURE_SUBJECT});
    assert_eq!(
        stack
            .admin("POST", &credentials("api-app"), Some(cred.clone()))
            .await
            .status,
        201
    );
    stack
        .admin("POST", &credentials("api-app"), Some(cred))
        .await
        .expect_error(409, "conflict");
    let same_subject =
        json!({"name": "two", "issuer": stack.github.url(), "subject": FEATURE_SUBJECT});
    let answer = stack
        .admin("POST", &credentials("api-app"), Some(same_subject))
        .await;
    answer.expect_error(409, "conflict");
    assert!(
        answer.description().contains("one"),
        "{}",
        answer.description()
    );

    stack
        .admin(
            "POST",
            &credentials("nobody"),
            Some(json!({"name": "xyz", "issuer": stack.github.url(), "subject": "s"})),
        )
        .await
        .expect_error(404, "not_found");
    stack
        .admin("GET", &format!("{}/missing", credentials("api-app")), None)
        .await
        .expect_error(404, "not_found");
    stack
        .admin("DELETE", "/v1/identities/nobody", None)
        .await
        .expect_error(404, "not_found");

    stack
        .admin(
            "PUT",
            "/v1/identities/deploy",
            Some(json!({"tenantId": TENANT, "clientId": API_CLIENT})),
        )
        .await
        .expect_error(409, "read_only");
    stack
        .admin("DELETE", "/v1/identities/deploy", None)
        .await
        .expect_error(409, "read_only");
    stack
        .admin(
            "POST",
            &credentials("deploy"),
            Some(json!({"name": "xyz", "issuer": stack.github.url(), "subject": "s"})),
        )
        .await
        .expect_error(409, "read_only");
    stack
        .admin(
            "PUT",
            "/v1/identities/copy",
            Some(json!({"tenantId": TENANT, "clientId": DEPLOY_CLIENT})),
        )
        .await
        .expect_error(409, "conflict");
}

#[tokio::test]
async fn there_is_no_twenty_credential_cap_but_a_configurable_limit() {
    let stack = Stack::start().await;
    api_identity(&stack).await;
    for i in 0..25 {
        let cred = json!({"name": format!("c{i:02}"), "issuer": stack.github.url(), "subject": format!("repo:contoso/app:environment:e{i}")});
        let answer = stack
            .admin("POST", &credentials("api-app"), Some(cred))
            .await;
        assert_eq!(answer.status, 201, "credential {i}: {:?}", answer.body);
    }
    let limited = Stack::start_with(|cfg| cfg.admin.max_credentials_per_identity = 2).await;
    api_identity(&limited).await;
    for i in 0..2 {
        let cred = json!({"name": format!("cred{i}"), "issuer": limited.github.url(), "subject": format!("s{i}")});
        assert_eq!(
            limited
                .admin("POST", &credentials("api-app"), Some(cred))
                .await
                .status,
            201
        );
    }
    let third = json!({"name": "cred2", "issuer": limited.github.url(), "subject": "s2"});
    limited
        .admin("POST", &credentials("api-app"), Some(third))
        .await
        .expect_error(409, "too_many_credentials");
}

#[tokio::test]
async fn patch_changes_a_credential_and_its_name_is_immutable() {
    let stack = Stack::start().await;
    api_identity(&stack).await;
    let cred = json!({"name": "moving", "issuer": stack.github.url(), "subject": "repo:contoso/app:ref:refs/heads/old"});
    assert_eq!(
        stack
            .admin("POST", &credentials("api-app"), Some(cred))
            .await
            .status,
        201
    );
    let path = format!("{}/moving", credentials("api-app"));
    let patched = stack
        .admin("PATCH", &path, Some(json!({"subject": FEATURE_SUBJECT})))
        .await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    assert_eq!(patched.body["subject"], FEATURE_SUBJECT);
    assert_eq!(
        stack
            .exchange(&stack.github_token("feature"), ARM)
            .await
            .status,
        200
    );
    stack
        .exchange(&stack.github_token("old"), ARM)
        .await
        .expect_error(403, "no_matching_credential");
    stack
        .admin("PATCH", &path, Some(json!({"name": "renamed"})))
        .await
        .expect_error(400, "invalid_request");
    // Switching to an expression needs the subject cleared in the same PATCH.
    let expression =
        json!({"value": "claims['sub'] matches 'repo:contoso/app:*'", "languageVersion": 1});
    stack
        .admin(
            "PATCH",
            &path,
            Some(json!({"claimsMatchingExpression": expression})),
        )
        .await
        .expect_error(400, "invalid_request");
    let switched = stack
        .admin(
            "PATCH",
            &path,
            Some(json!({"subject": null, "claimsMatchingExpression": expression})),
        )
        .await;
    assert_eq!(switched.status, 200, "{:?}", switched.body);
}

#[tokio::test]
async fn unauthenticated_and_reader_writes_are_refused_and_audited() {
    let stack = Stack::start().await;
    let body = json!({"tenantId": TENANT, "clientId": API_CLIENT});
    let anonymous = stack
        .call(None, "PUT", "/v1/identities/x-app", Some(body.clone()))
        .await;
    anonymous.expect_error(401, "unauthenticated");
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    stack
        .call(
            Some("guessed-token"),
            "PUT",
            "/v1/identities/x-app",
            Some(body.clone()),
        )
        .await
        .expect_error(401, "invalid_admin_token");
    let reader = stack.reader_token.clone();
    stack
        .call(
            Some(&reader),
            "PUT",
            "/v1/identities/x-app",
            Some(body.clone()),
        )
        .await
        .expect_error(403, "forbidden");
    stack
        .call(None, "GET", "/v1/identities", None)
        .await
        .expect_error(401, "unauthenticated");
    // Readers read.
    assert_eq!(
        stack
            .call(Some(&reader), "GET", "/v1/identities", None)
            .await
            .status,
        200
    );

    // Give the audit writer a moment, then find the refusals.
    let mut events = Vec::new();
    for _ in 0..50 {
        let audit = stack.admin("GET", "/v1/audit?kind=admin", None).await;
        events = audit.body["value"].as_array().unwrap().clone();
        if events.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let outcomes: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert!(
        outcomes.contains(&("anonymous", "unauthenticated")),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("anonymous", "invalid_admin_token")),
        "{outcomes:?}"
    );
    assert!(outcomes.contains(&("grafana", "forbidden")), "{outcomes:?}");
    assert!(events.iter().all(|e| e["action"] == "identity.put"));
}

/// An attacker without a token announces a large body and sends it slowly: the broker
/// answers 401 from the headers alone, without waiting for (or reading) the body. Were the
/// body read before the caller is authenticated, the answer would wait for the rest of it,
/// which never comes.
#[tokio::test]
async fn an_unauthenticated_write_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start().await;
    for (method, path) in [
        ("PUT", "/v1/identities/slow".to_owned()),
        ("POST", credentials("deploy")),
        ("POST", "/v1/simulate".to_owned()),
    ] {
        let mut socket = tokio::net::TcpStream::connect(stack.broker.addr)
            .await
            .unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{{"
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        // Far shorter than the request deadline, far longer than a 401 takes.
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(10), socket.read(&mut answer))
                .await
                .unwrap_or_else(|_| panic!("{method} {path}: no answer while the body is pending"))
                .unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(
            answer.starts_with("HTTP/1.1 401"),
            "{method} {path}: {answer}"
        );
        assert!(
            answer.contains("unauthenticated"),
            "{method} {path}: {answer}"
        );
    }
}

/// A name the caller made up is repeated in a not-found answer only capped: a path of
/// thousands of characters does not come back whole (nor reach the log whole).
#[tokio::test]
async fn a_long_unknown_name_comes_back_capped() {
    let stack = Stack::start().await;
    let long = "x".repeat(4000);
    for (method, path) in [
        ("GET", format!("/v1/identities/{long}")),
        ("GET", format!("/v1/identities/{long}/entraSetup")),
        ("DELETE", format!("/v1/identities/{long}")),
        ("PATCH", format!("{}/{long}", credentials(&long))),
    ] {
        let body = (method == "PATCH").then(|| json!({"description": "x"}));
        let answer = stack.admin(method, &path, body).await;
        assert_eq!(answer.status, 404, "{method}: {:?}", answer.body);
        let text = answer.body.to_string();
        assert!(text.len() < 1000, "{method}: {} bytes", text.len());
        assert!(text.contains('…'), "{method}: {text}");
    }
}

#[tokio::test]
async fn admin_writes_are_audited_with_the_callers_identity() {
    let stack = Stack::start().await;
    api_identity(&stack).await;
    let mut events = Vec::new();
    for _ in 0..50 {
        let audit = stack
            .admin("GET", "/v1/audit?kind=admin&outcome=ok", None)
            .await;
        events = audit.body["value"].as_array().unwrap().clone();
        if !events.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["actor"], "alice");
    assert_eq!(events[0]["role"], "admin");
    assert_eq!(events[0]["action"], "identity.put");
    assert_eq!(events[0]["identity"], "api-app");
}

#[tokio::test]
async fn exchanges_are_in_the_audit_trail_with_filters_and_paging() {
    let stack = Stack::start().await;
    for _ in 0..3 {
        assert_eq!(
            stack
                .exchange(&stack.github_token("main"), ARM)
                .await
                .status,
            200
        );
    }
    let refused = stack.github.mint(github_pull_request_claims(REPO)).unwrap();
    let _ = stack.exchange(&refused, ARM).await;
    let mut page = Value::Null;
    for _ in 0..50 {
        page = stack
            .admin(
                "GET",
                "/v1/audit?kind=exchange&identity=deploy&limit=2",
                None,
            )
            .await
            .body;
        if page["value"].as_array().is_some_and(|v| v.len() == 2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let first = page["value"].as_array().unwrap().clone();
    assert_eq!(first.len(), 2);
    assert!(
        first
            .iter()
            .all(|e| e["outcome"] == "ok" && e["identity"] == "deploy")
    );
    assert!(
        first
            .iter()
            .all(|e| e.get("token_sha256").is_some() && e.to_string().find("eyJ").is_none())
    );
    let cursor = page["nextCursor"].as_str().unwrap().to_owned();
    let rest = stack
        .admin(
            "GET",
            &format!("/v1/audit?kind=exchange&identity=deploy&limit=2&after={cursor}"),
            None,
        )
        .await;
    assert_eq!(rest.body["value"].as_array().unwrap().len(), 1);
    let denied = stack
        .admin("GET", "/v1/audit?outcome=no_matching_credential", None)
        .await;
    let denied = denied.body["value"].as_array().unwrap();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["subject"], "repo:contoso/app:pull_request");
    stack
        .admin("GET", "/v1/audit?bogus=1", None)
        .await
        .expect_error(400, "invalid_request");
}

#[tokio::test]
async fn a_one_time_use_credential_refuses_the_same_token_twice() {
    let stack = Stack::start().await;
    api_identity(&stack).await;
    let cred = json!({"name": "once", "issuer": stack.github.url(), "subject": FEATURE_SUBJECT, "oneTimeUse": true});
    let created = stack
        .admin("POST", &credentials("api-app"), Some(cred))
        .await;
    assert_eq!(created.body["oneTimeUse"], true);
    let token = stack.github_token("feature");
    assert_eq!(stack.exchange(&token, ARM).await.status, 200);
    stack
        .exchange(&token, ARM)
        .await
        .expect_error(401, "token_replayed");
    // A fresh token from the same job is a new token.
    assert_eq!(
        stack
            .exchange(&stack.github_token("feature"), ARM)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn simulate_names_the_failing_expression_clause() {
    let stack = Stack::start().await;
    api_identity(&stack).await;
    let cred = json!({
        "name": "releases-by-bots",
        "issuer": stack.github.url(),
        "claimsMatchingExpression": {
            "value": "claims['sub'] matches 'repo:contoso/app:ref:refs/heads/*' and claims['actor'] eq 'release-bot'",
            "languageVersion": 1,
        },
    });
    assert_eq!(
        stack
            .admin("POST", &credentials("api-app"), Some(cred))
            .await
            .status,
        201
    );
    let token = stack.github_token("feature"); // actor is octocat
    let answer = stack
        .call(
            Some(&stack.reader_token),
            "POST",
            "/v1/simulate",
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let body = &answer.body;
    assert_eq!(body["outcome"], "no_matching_credential");
    let checks: Vec<(&str, &str)> = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        checks,
        vec![
            ("parse", "passed"),
            ("issuer", "passed"),
            ("keys", "passed"),
            ("signature", "passed"),
            ("times", "passed"),
            ("match", "failed")
        ]
    );
    let miss = body["nearMisses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["credential"] == "releases-by-bots")
        .unwrap();
    assert_eq!(miss["failed"], "expression");
    assert_eq!(miss["clauseIndex"], 2);
    assert_eq!(miss["clause"], "claims['actor'] eq 'release-bot'");
    assert!(
        miss["detail"].as_str().unwrap().contains("octocat"),
        "{miss}"
    );
    assert_eq!(stack.entra.token_requests(), 0, "simulate called Entra");

    // Rules can be tried before any job runs: issuer and claims, no token.
    let claims = json!({"sub": "repo:contoso/app:ref:refs/heads/feature", "actor": "release-bot", "aud": "api://AzureADTokenExchange"});
    let dry = stack
        .admin(
            "POST",
            "/v1/simulate",
            Some(json!({"issuer": stack.github.url(), "claims": claims})),
        )
        .await;
    assert_eq!(dry.body["outcome"], "ok", "{:?}", dry.body);
    assert_eq!(dry.body["identity"], "api-app");
    assert_eq!(dry.body["matches"][0]["credential"], "releases-by-bots");

    // A trailing slash on the issuer is called out.
    let slash = stack
        .admin(
            "POST",
            "/v1/simulate",
            Some(json!({"issuer": format!("{}/", stack.github.url()), "claims": claims})),
        )
        .await;
    assert_eq!(slash.body["outcome"], "unknown_issuer");
    assert!(
        slash.body["nearMisses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["failed"] == "issuer")
    );
}

#[tokio::test]
async fn simulate_reports_a_bad_signature_and_an_expired_token() {
    let stack = Stack::start().await;
    let token = stack.github_token("main");
    let forged = format!("{}x", &token[..token.len() - 1]);
    let answer = stack
        .admin("POST", "/v1/simulate", Some(json!({"token": forged})))
        .await;
    assert_eq!(
        answer.body["outcome"], "invalid_signature",
        "{:?}",
        answer.body
    );
    assert_eq!(
        answer.body["checks"].as_array().unwrap().last().unwrap()["name"],
        "signature"
    );
    stack.clock.advance(3600);
    let late = stack
        .admin("POST", "/v1/simulate", Some(json!({"token": token})))
        .await;
    assert_eq!(late.body["outcome"], "token_expired");
    let last = late.body["checks"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["name"].as_str(), last["result"].as_str()),
        (Some("times"), Some("failed"))
    );
}

#[tokio::test]
async fn the_served_openapi_document_is_the_checked_in_one() {
    let stack = Stack::start().await;
    let served = stack
        .http
        .get(stack.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.headers()["content-type"], "application/json");
    let served = served.text().await.unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    assert_eq!(served, std::fs::read_to_string(path).unwrap());
}

#[tokio::test]
async fn oidc_admin_tokens_need_the_audience_and_a_role() {
    let stack = Stack::start_with(|cfg| {
        // Any OIDC issuer will do; here the local issuer stands in for Entra.
        cfg.admin.oidc_issuer = Some(cfg.identities[0].federated_credentials[0].issuer.clone());
        cfg.admin.oidc_audience = Some("api://wif-broker-admin".into());
        cfg.admin.oidc_admin_role = Some("WifBroker.Admin".into());
        cfg.admin.oidc_reader_role = Some("WifBroker.Reader".into());
    })
    .await;
    let token = |roles: Value, aud: &str| {
        stack
            .github
            .mint(json!({"sub": "00000000-aaaa-bbbb-cccc-000000000001", "preferred_username": "carol@contoso.com", "roles": roles, "aud": aud}))
            .unwrap()
    };
    let body = json!({"tenantId": TENANT, "clientId": API_CLIENT});
    let admin = token(json!(["WifBroker.Admin"]), "api://wif-broker-admin");
    let created = stack
        .call(
            Some(&admin),
            "PUT",
            "/v1/identities/oidc-app",
            Some(body.clone()),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);

    let reader = token(json!(["WifBroker.Reader"]), "api://wif-broker-admin");
    assert_eq!(
        stack
            .call(Some(&reader), "GET", "/v1/identities/oidc-app", None)
            .await
            .status,
        200
    );
    stack
        .call(Some(&reader), "DELETE", "/v1/identities/oidc-app", None)
        .await
        .expect_error(403, "forbidden");

    let no_role = token(json!(["Something.Else"]), "api://wif-broker-admin");
    stack
        .call(Some(&no_role), "GET", "/v1/identities", None)
        .await
        .expect_error(403, "forbidden");
    let wrong_audience = token(json!(["WifBroker.Admin"]), "api://AzureADTokenExchange");
    stack
        .call(Some(&wrong_audience), "GET", "/v1/identities", None)
        .await
        .expect_error(401, "invalid_admin_token");
    // A job token from the same issuer is not an admin token.
    stack
        .call(
            Some(&stack.github_token("main")),
            "GET",
            "/v1/identities",
            None,
        )
        .await
        .expect_error(401, "invalid_admin_token");

    let mut events = Vec::new();
    for _ in 0..50 {
        events = stack
            .admin("GET", "/v1/audit?kind=admin&outcome=ok", None)
            .await
            .body["value"]
            .as_array()
            .unwrap()
            .clone();
        if !events.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(events[0]["actor"], "carol@contoso.com");
}
