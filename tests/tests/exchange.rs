//! The exchange path end to end: real broker, real local issuers, the Entra emulator, all
//! over loopback HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::json;
use wif_broker::dev::entra::Fault;
use wif_broker::dev::issuer::LocalIssuer;
use wif_broker::dev::jwt;
use wif_tests::*;

#[tokio::test]
async fn a_github_job_on_main_gets_a_token_for_management_azure_com() {
    let stack = Stack::start().await;
    let answer = stack.exchange(&stack.github_token("main"), ARM).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["token_type"], "Bearer");
    assert_eq!(answer.body["scope"], ARM);
    assert_eq!(answer.body["identity"]["name"], "deploy");
    assert_eq!(answer.body["identity"]["client_id"], DEPLOY_CLIENT);
    assert_eq!(answer.body["identity"]["tenant_id"], TENANT);
    let expires_in = answer.body["expires_in"].as_u64().unwrap();
    assert!(
        expires_in > 3000 && expires_in <= 3599,
        "expires_in {expires_in}"
    );
    let expires_on = answer.body["expires_on"].as_u64().unwrap();
    assert!(expires_on > wif_broker::clock::Clock::now(stack.clock.as_ref()));
    assert_eq!(answer.header("cache-control"), Some("no-store"));

    let claims = stack.verify_access_token(answer.access_token());
    assert_eq!(claims["aud"], "https://management.azure.com");
    assert_eq!(claims["tid"], TENANT);
    assert_eq!(claims["appid"], DEPLOY_CLIENT);
    // Passthrough: Entra saw the job's own token as the assertion.
    let assertion = stack.entra.last_assertion_claims().unwrap();
    assert_eq!(assertion["sub"], MAIN_SUBJECT);
    assert_eq!(stack.entra.token_requests(), 1);
}

#[tokio::test]
async fn a_second_request_is_answered_from_the_cache() {
    let stack = Stack::start().await;
    let first = stack.exchange(&stack.github_token("main"), ARM).await;
    let second = stack
        .exchange(&stack.github_token("main"), "https://management.azure.com")
        .await;
    assert_eq!(second.status, 200);
    assert_eq!(first.access_token(), second.access_token());
    assert_eq!(stack.entra.token_requests(), 1);
    let metrics = stack.metrics().await;
    assert_eq!(
        metric_value(&metrics, "wif_token_cache_hits_total", &[]),
        1.0
    );
    assert_eq!(
        metric_value(&metrics, "wif_token_cache_misses_total", &[]),
        1.0
    );
    // Another scope is another cache entry.
    let vault = stack
        .exchange(&stack.github_token("main"), "https://vault.azure.net")
        .await;
    assert_eq!(vault.status, 200);
    assert_eq!(
        stack.verify_access_token(vault.access_token())["aud"],
        "https://vault.azure.net"
    );
    assert_eq!(stack.entra.token_requests(), 2);
}

#[tokio::test]
async fn the_rfc8693_endpoint_exchanges_too() {
    let stack = Stack::start().await;
    let response = stack
        .http
        .post(stack.url("/oauth2/token"))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", &stack.github_token("main")),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("resource", "https://management.azure.com"),
        ])
        .send()
        .await
        .unwrap();
    let answer = answer(response).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        answer.body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(answer.body["token_type"], "Bearer");
    assert_eq!(
        stack.verify_access_token(answer.access_token())["appid"],
        DEPLOY_CLIENT
    );

    let wrong_grant = stack
        .http
        .post(stack.url("/oauth2/token"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    answer_of(wrong_grant)
        .await
        .expect_error(400, "unsupported_grant_type");
}

async fn answer_of(r: reqwest::Response) -> Answer {
    answer(r).await
}

#[tokio::test]
async fn a_json_body_works_like_a_form() {
    let stack = Stack::start().await;
    let response = stack
        .http
        .post(stack.url("/v1/token"))
        .bearer_auth(stack.github_token("main"))
        .json(&json!({"resource": "https://management.azure.com", "identity": "deploy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await.status, 200);
}

#[tokio::test]
async fn a_pull_request_job_is_refused_with_no_matching_credential() {
    let stack = Stack::start().await;
    let token = stack.github.mint(github_pull_request_claims(REPO)).unwrap();
    stack
        .exchange(&token, ARM)
        .await
        .expect_error(403, "no_matching_credential");
    assert_eq!(stack.entra.token_requests(), 0);
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let stack = Stack::start().await;
    let mut claims = github_claims(REPO, "main");
    claims["aud"] = json!("https://github.com/contoso");
    let token = stack.github.mint(claims).unwrap();
    let answer = stack.exchange(&token, ARM).await;
    answer.expect_error(401, "invalid_audience");
    assert!(
        answer.description().contains("api://AzureADTokenExchange"),
        "{}",
        answer.description()
    );
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused() {
    let stack = Stack::start().await;
    let now = wif_broker::clock::Clock::now(stack.clock.as_ref());
    let mut claims = github_claims(REPO, "main");
    claims["iat"] = json!(now - 900);
    claims["nbf"] = json!(now - 900);
    claims["exp"] = json!(now - 600);
    let expired = stack.github.mint(claims).unwrap();
    stack
        .exchange(&expired, ARM)
        .await
        .expect_error(401, "token_expired");

    let mut claims = github_claims(REPO, "main");
    claims["nbf"] = json!(now + 600);
    claims["exp"] = json!(now + 900);
    let early = stack.github.mint(claims).unwrap();
    stack
        .exchange(&early, ARM)
        .await
        .expect_error(401, "token_not_yet_valid");
    assert_eq!(stack.entra.token_requests(), 0);
}

#[tokio::test]
async fn a_token_that_expires_as_time_moves_on_is_refused() {
    let stack = Stack::start().await;
    let token = stack.github_token("main");
    stack.clock.advance(3600);
    stack
        .exchange(&token, ARM)
        .await
        .expect_error(401, "token_expired");
}

#[tokio::test]
async fn a_token_without_iat_is_refused_by_entra_as_a_passthrough_assertion() {
    // The broker checks `iat` only when present (a SPIFFE JWT-SVID needs none), but Entra
    // requires it of an assertion: forwarded as is, the token is refused by Entra.
    let stack = Stack::start().await;
    let mut claims = github_claims(REPO, "main");
    claims["iat"] = serde_json::Value::Null; // null removes the default claim
    let token = stack.github.mint(claims).unwrap();
    let answer = stack.exchange(&token, ARM).await;
    answer.expect_error(401, "entra_assertion_rejected");
    assert!(
        answer.description().contains("AADSTS70023"),
        "{}",
        answer.description()
    );
    assert_eq!(stack.entra.token_requests(), 1);
}

#[tokio::test]
async fn a_token_living_longer_than_25_hours_is_refused() {
    let stack = Stack::start().await;
    let now = wif_broker::clock::Clock::now(stack.clock.as_ref());
    let mut claims = github_claims(REPO, "main");
    claims["exp"] = json!(now + 25 * 3600 + 60);
    let token = stack.github.mint(claims).unwrap();
    stack
        .exchange(&token, ARM)
        .await
        .expect_error(401, "token_lifetime_too_long");
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_refused() {
    let stack = Stack::start().await;
    let claims = stack.github.claims(github_claims(REPO, "main")).unwrap();
    let token = jwt::unsigned_token(&claims);
    let answer = stack.exchange(&token, ARM).await;
    answer.expect_error(401, "unsupported_algorithm");
    assert!(answer.description().contains("never accepted"));
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_issuers_public_key_is_refused() {
    let stack = Stack::start().await;
    let key = stack.github.current_key();
    let public_pem = key.public_key_pem().unwrap();
    let claims = stack.github.claims(github_claims(REPO, "main")).unwrap();
    let token = jwt::hmac_token(public_pem.as_bytes(), Some(key.kid()), &claims);
    stack
        .exchange(&token, ARM)
        .await
        .expect_error(401, "unsupported_algorithm");
    assert_eq!(stack.entra.token_requests(), 0);
}

#[tokio::test]
async fn a_tampered_payload_is_refused() {
    let stack = Stack::start().await;
    let token = stack.github.mint(github_pull_request_claims(REPO)).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload = jwt::decode_segment(parts[1]).unwrap();
    payload["sub"] = json!(MAIN_SUBJECT);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        jwt::b64url(serde_json::to_string(&payload).unwrap().as_bytes()),
        parts[2]
    );
    stack
        .exchange(&forged, ARM)
        .await
        .expect_error(401, "invalid_signature");
    assert_eq!(stack.entra.token_requests(), 0);
}

#[tokio::test]
async fn an_unknown_issuer_is_refused_without_contacting_any_issuer() {
    let stack = Stack::start().await;
    let stranger = LocalIssuer::start(stack.clock.clone()).await.unwrap();
    let before = (
        stack.github.request_count(),
        stack.aks.request_count(),
        stack.ado.request_count(),
    );
    let token = stranger.mint(github_claims(REPO, "main")).unwrap();
    stack
        .exchange(&token, ARM)
        .await
        .expect_error(401, "unknown_issuer");
    // A token naming a registered issuer's discovery URL as its own `iss` is also unknown.
    let mut claims = github_claims(REPO, "main");
    claims["iss"] = json!(format!("{}/", stack.github.url()));
    let slash = stranger.mint(claims).unwrap();
    stack
        .exchange(&slash, ARM)
        .await
        .expect_error(401, "unknown_issuer");
    assert_eq!(
        stranger.request_count(),
        0,
        "the broker fetched from an untrusted issuer"
    );
    assert_eq!(
        (
            stack.github.request_count(),
            stack.aks.request_count(),
            stack.ado.request_count()
        ),
        before
    );
    assert_eq!(stack.entra.token_requests(), 0);
}

#[tokio::test]
async fn oversized_tokens_and_bodies_are_refused() {
    let stack = Stack::start().await;
    let mut claims = github_claims(REPO, "main");
    claims["padding"] = json!("x".repeat(20 * 1024));
    let big = stack.github.mint(claims).unwrap();
    stack
        .exchange(&big, ARM)
        .await
        .expect_error(413, "token_too_large");

    let response = stack
        .http
        .post(stack.url("/v1/token"))
        .bearer_auth(stack.github_token("main"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("scope={}", "a".repeat(100 * 1024)))
        .send()
        .await
        .unwrap();
    answer(response).await.expect_error(413, "body_too_large");

    let response = stack
        .http
        .post(stack.url("/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("subject_token={}", "a".repeat(100 * 1024)))
        .send()
        .await
        .unwrap();
    answer(response).await.expect_error(413, "body_too_large");
}

#[tokio::test]
async fn malformed_requests_get_clear_errors() {
    let stack = Stack::start().await;
    let no_token = stack
        .http
        .post(stack.url("/v1/token"))
        .form(&[("scope", ARM)])
        .send()
        .await
        .unwrap();
    let no_token = answer(no_token).await;
    no_token.expect_error(401, "missing_token");
    assert_eq!(no_token.header("www-authenticate"), Some("Bearer"));
    stack
        .exchange("not-a-jwt", ARM)
        .await
        .expect_error(401, "invalid_token");
    stack
        .exchange("a.b.c", ARM)
        .await
        .expect_error(401, "invalid_token");
    let token = stack.github_token("main");
    stack
        .exchange_form(&token, &[])
        .await
        .expect_error(400, "invalid_scope");
    stack
        .exchange(&token, "https://a/.default https://b/.default")
        .await
        .expect_error(400, "invalid_scope");
    stack
        .exchange_form(&token, &[("scope", ARM), ("scopes", ARM)])
        .await
        .expect_error(400, "invalid_request");
    let bad_json = stack
        .http
        .post(stack.url("/v1/token"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    answer(bad_json).await.expect_error(400, "invalid_request");
    stack.get("/nope").await.expect_error(404, "not_found");
    let wrong_method = stack.get("/v1/token").await;
    wrong_method.expect_error(405, "method_not_allowed");
}

#[tokio::test]
async fn request_ids_are_echoed_and_appear_in_errors() {
    let stack = Stack::start().await;
    let response = stack
        .http
        .post(stack.url("/v1/token"))
        .header("x-request-id", "ci-run-42")
        .form(&[("scope", ARM)])
        .send()
        .await
        .unwrap();
    let answer = answer(response).await;
    assert_eq!(answer.header("x-request-id"), Some("ci-run-42"));
    assert_eq!(answer.body["request_id"], "ci-run-42");
    // An unreasonable id is replaced, not echoed.
    let response = stack
        .http
        .get(stack.url("/healthz"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(id, "bad id with spaces");
    assert!(!id.is_empty());
}

#[tokio::test]
async fn a_rotated_signing_key_is_picked_up() {
    let stack = Stack::start().await;
    assert_eq!(
        stack
            .exchange(&stack.github_token("main"), ARM)
            .await
            .status,
        200
    );
    let fetches = stack.github.request_count();
    stack.github.rotate_key();
    stack.github.retire_old_keys();
    let answer = stack
        .exchange(&stack.github_token("main"), "https://vault.azure.net")
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert!(
        stack.github.request_count() > fetches,
        "the new kid caused no refetch"
    );

    // A forged kid refetches at most once per cooldown.
    let forged_key = wif_broker::dev::jwt::SigningKey::generate(
        wif_broker::dev::jwt::KeyKind::Rsa2048,
        "forged-1",
    )
    .unwrap();
    let claims = stack.github.claims(github_claims(REPO, "main")).unwrap();
    stack
        .exchange(&forged_key.sign(&claims).unwrap(), ARM)
        .await
        .expect_error(401, "unknown_signing_key");
    let after_first = stack.github.request_count();
    let forged_key2 = forged_key.with_kid("forged-2");
    for _ in 0..5 {
        stack
            .exchange(&forged_key2.sign(&claims).unwrap(), ARM)
            .await
            .expect_error(401, "unknown_signing_key");
    }
    assert_eq!(
        stack.github.request_count(),
        after_first,
        "unknown kids hammered the issuer"
    );
}

#[tokio::test]
async fn a_kubernetes_pod_in_the_allowed_namespace_gets_a_token_and_others_do_not() {
    let stack = Stack::start().await;
    let token = stack
        .aks
        .mint(kubernetes_claims("payments", "api"))
        .unwrap();
    let answer = stack
        .exchange(&token, "https://vault.azure.net/.default")
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["identity"]["name"], "payments");
    assert!(stack.aks.url().ends_with('/'));

    let other = stack
        .aks
        .mint(kubernetes_claims("marketing", "api"))
        .unwrap();
    stack
        .exchange(&other, "https://vault.azure.net/.default")
        .await
        .expect_error(403, "no_matching_credential");
}

#[tokio::test]
async fn an_azure_devops_service_connection_works() {
    let stack = Stack::start().await;
    let token = stack
        .ado
        .mint(azure_devops_claims("contoso", "web", "prod-connection"))
        .unwrap();
    let answer = stack.exchange(&token, ARM).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["identity"]["name"], "deploy");
    let wrong = stack
        .ado
        .mint(azure_devops_claims("contoso", "web", "dev-connection"))
        .unwrap();
    stack
        .exchange(&wrong, ARM)
        .await
        .expect_error(403, "no_matching_credential");
}

#[tokio::test]
async fn a_thousand_concurrent_cold_requests_cause_exactly_one_entra_call() {
    let stack = Stack::start().await;
    // Slow Entra down so every request is waiting while the first one is in flight.
    stack
        .entra
        .push_fault(Fault::Delay(Duration::from_millis(500)));
    let token = stack.github_token("main");
    let requests = (0..1000).map(|_| stack.exchange(&token, ARM));
    let answers = futures::future::join_all(requests).await;
    assert!(
        answers.iter().all(|a| a.status == 200),
        "some requests failed"
    );
    let first = answers[0].access_token();
    assert!(answers.iter().all(|a| a.access_token() == first));
    assert_eq!(stack.entra.token_requests(), 1);
}

#[tokio::test]
async fn entra_throttling_then_success_recovers() {
    let stack = Stack::start().await;
    stack.entra.push_fault(Fault::Status {
        status: 429,
        retry_after: Some(1),
        aadsts: None,
    });
    stack.entra.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
        aadsts: None,
    });
    let answer = stack.exchange(&stack.github_token("main"), ARM).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(stack.entra.token_requests(), 3);
    let metrics = stack.metrics().await;
    assert_eq!(
        metric_value(&metrics, "wif_entra_requests_total", &["outcome=\"retry\""]),
        2.0
    );
}

#[tokio::test]
async fn entra_down_still_serves_cached_tokens_and_otherwise_answers_503() {
    let stack = Stack::start().await;
    let cached = stack.exchange(&stack.github_token("main"), ARM).await;
    assert_eq!(cached.status, 200);
    stack.entra.set_down(true);
    let again = stack.exchange(&stack.github_token("main"), ARM).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.access_token(), cached.access_token());

    let uncached = stack
        .exchange(&stack.github_token("main"), "https://vault.azure.net")
        .await;
    uncached.expect_error(503, "entra_unavailable");
    let retry_after: u64 = uncached.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1);

    stack.entra.set_down(false);
    assert_eq!(
        stack
            .exchange(&stack.github_token("main"), "https://vault.azure.net")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_cached_token_is_never_handed_out_with_under_five_minutes_left() {
    let stack = Stack::start().await;
    let first = stack.exchange(&stack.github_token("main"), ARM).await;
    // 3599 s tokens: 56 minutes on, under 5 minutes remain.
    stack.clock.advance(56 * 60);
    stack.entra.set_down(true);
    let answer = stack.exchange(&stack.github_token("main"), ARM).await;
    answer.expect_error(503, "entra_unavailable");
    stack.entra.set_down(false);
    let fresh = stack.exchange(&stack.github_token("main"), ARM).await;
    assert_eq!(fresh.status, 200);
    assert_ne!(fresh.access_token(), first.access_token());
    assert!(fresh.body["expires_in"].as_u64().unwrap() > 300);
}

#[tokio::test]
async fn a_token_in_the_refresh_window_is_served_and_refreshed_in_the_background() {
    let stack = Stack::start().await;
    let first = stack.exchange(&stack.github_token("main"), ARM).await;
    // 50 minutes on: 9 minutes left, inside the default 15-minute refresh window.
    stack.clock.advance(50 * 60);
    let during = stack.exchange(&stack.github_token("main"), ARM).await;
    assert_eq!(during.status, 200);
    assert_eq!(during.access_token(), first.access_token());
    let mut refreshed = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let next = stack.exchange(&stack.github_token("main"), ARM).await;
        if next.access_token() != first.access_token() {
            refreshed = Some(next);
            break;
        }
    }
    let refreshed = refreshed.expect("the background refresh never landed");
    assert!(refreshed.body["expires_in"].as_u64().unwrap() > 3000);
    assert_eq!(stack.entra.token_requests(), 2);
}

#[tokio::test]
async fn the_issuer_going_down_keeps_verifying_with_cached_keys() {
    let stack = Stack::start().await;
    assert_eq!(
        stack
            .exchange(&stack.github_token("main"), ARM)
            .await
            .status,
        200
    );
    stack.github.set_available(false);
    let fetches = stack.github.request_count();
    // A new token from the job still verifies against the cached keys (and the Entra
    // token is cached, so Entra, which would need the issuer too, is not asked).
    let answer = stack.exchange(&stack.github_token("main"), ARM).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    // Verification really happens: a token from the down issuer with a bad signature fails.
    let token = stack.github_token("main");
    let forged = format!("{}x", &token[..token.len() - 1]);
    stack
        .exchange(&forged, ARM)
        .await
        .expect_error(401, "invalid_signature");
    // Hours later, still within max-stale, the broker's keys keep serving (refreshes fail
    // quietly). The cached Entra token has run out by then, and Entra itself needs the
    // issuer to check a passthrough assertion, so the refusal now comes from Entra, past
    // the broker's own verification.
    stack.clock.advance(2 * 3600);
    let later = stack.exchange(&stack.github_token("main"), ARM).await;
    later.expect_error(401, "entra_assertion_rejected");
    assert!(later.description().contains("AADSTS50027"));
    assert!(
        stack.github.request_count() > fetches,
        "no background refresh was attempted"
    );
}

#[tokio::test]
async fn an_issuer_that_never_answered_gives_a_503_with_retry_after() {
    let stack = Stack::start().await;
    stack.github.set_available(false);
    let answer = stack.exchange(&stack.github_token("main"), ARM).await;
    answer.expect_error(503, "issuer_unavailable");
    assert!(answer.header("retry-after").is_some());
    // The failure is remembered briefly: callers are answered at once, and the down
    // issuer is not asked again for every request.
    let asked = stack.github.request_count();
    for _ in 0..5 {
        stack
            .exchange(&stack.github_token("main"), ARM)
            .await
            .expect_error(503, "issuer_unavailable");
    }
    assert_eq!(stack.github.request_count(), asked);
}

#[tokio::test]
async fn entra_missing_the_federated_credential_reaches_the_caller_as_aadsts700213() {
    let stack = Stack::start().await;
    let token = stack.github_token("release");
    let answer = stack.exchange(&token, ARM).await;
    answer.expect_error(403, "entra_no_matching_federated_credential");
    assert!(
        answer.description().contains("AADSTS700213"),
        "{}",
        answer.description()
    );
    assert!(answer.description().contains("federated credential"));
    let metrics = stack.metrics().await;
    assert_eq!(
        metric_value(&metrics, "wif_entra_errors_total", &["AADSTS700213"]),
        1.0
    );
}

#[tokio::test]
async fn a_caller_may_name_only_identities_its_token_may_act_as() {
    let stack = Stack::start().await;
    let token = stack.github_token("main");
    let by_name = stack
        .exchange_form(&token, &[("scope", ARM), ("identity", "deploy")])
        .await;
    assert_eq!(by_name.status, 200);
    let by_client = stack
        .exchange_form(&token, &[("scope", ARM), ("client_id", DEPLOY_CLIENT)])
        .await;
    assert_eq!(by_client.status, 200);
    stack
        .exchange_form(&token, &[("scope", ARM), ("identity", "payments")])
        .await
        .expect_error(403, "identity_not_allowed");
    stack
        .exchange_form(&token, &[("scope", ARM), ("identity", "no-such-identity")])
        .await
        .expect_error(403, "identity_not_allowed");
}

#[tokio::test]
async fn a_token_matching_several_identities_must_name_one() {
    let stack = Stack::start_with(|cfg| {
        let issuer = cfg.identities[0].federated_credentials[0].issuer.clone();
        let mut extra = cfg.identities[0].federated_credentials[0].clone();
        extra.name = "also-main".into();
        extra.issuer = issuer;
        cfg.identities[1].federated_credentials.push(extra);
    })
    .await;
    let token = stack.github_token("main");
    let answer = stack.exchange(&token, ARM).await;
    answer.expect_error(400, "identity_required");
    assert!(answer.description().contains("deploy") && answer.description().contains("payments"));
    assert_eq!(
        stack
            .exchange_form(&token, &[("scope", ARM), ("identity", "deploy")])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let stack = Stack::start().await;
    assert_eq!(stack.get("/healthz").await.status, 200);
    assert_eq!(stack.get("/readyz").await.body["status"], "ready");
    let _ = stack.exchange(&stack.github_token("main"), ARM).await;
    let _ = stack.exchange("a.b.c", ARM).await;
    let metrics = stack.metrics().await;
    let github = stack.github.url();
    assert_eq!(
        metric_value(
            &metrics,
            "wif_exchanges_total",
            &["outcome=\"ok\"", &github]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "wif_exchanges_total",
            &["outcome=\"invalid_token\""]
        ),
        1.0
    );
    assert!(metric_value(&metrics, "wif_jwks_fetches_total", &["outcome=\"ok\""]) >= 1.0);
    assert!(metrics.contains("wif_exchange_duration_seconds_bucket"));
    assert_eq!(
        metric_value(&metrics, "wif_entra_requests_total", &["outcome=\"ok\""]),
        1.0
    );
}

#[tokio::test]
async fn during_an_entra_outage_the_refresh_window_does_not_hammer_entra() {
    let stack = Stack::start().await;
    let first = stack.exchange(&stack.github_token("main"), ARM).await;
    stack.clock.advance(50 * 60);
    stack.entra.set_down(true);
    for _ in 0..5 {
        let during = stack.exchange(&stack.github_token("main"), ARM).await;
        assert_eq!(during.access_token(), first.access_token());
    }
    // Wait for the one background refresh (with its retries) to give up.
    let mut failed = 0.0;
    for _ in 0..100 {
        failed = metric_value(
            &stack.metrics().await,
            "wif_token_cache_refreshes_total",
            &["error"],
        );
        if failed >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(failed, 1.0, "the background refresh never finished");
    let attempts = stack.entra.token_requests();
    for _ in 0..5 {
        let during = stack.exchange(&stack.github_token("main"), ARM).await;
        assert_eq!(during.access_token(), first.access_token());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stack.entra.token_requests(),
        attempts,
        "a failed refresh was retried at once"
    );
}

#[tokio::test]
async fn a_token_presented_again_is_recognised_but_still_expires() {
    let stack = Stack::start().await;
    let token = stack.github_token("main");
    assert_eq!(stack.exchange(&token, ARM).await.status, 200);
    // The same token again: recognised by its hash, answered without a second check of
    // its signature (the cached Entra token answers too).
    assert_eq!(stack.exchange(&token, ARM).await.status, 200);
    // Its expiry is still checked on every request.
    stack.clock.advance(3600);
    stack
        .exchange(&token, ARM)
        .await
        .expect_error(401, "token_expired");
    // A remembered token with one changed byte is a new token, verified from scratch.
    let token = stack.github_token("main");
    assert_eq!(stack.exchange(&token, ARM).await.status, 200);
    let forged = format!("{}x", &token[..token.len() - 1]);
    stack
        .exchange(&forged, ARM)
        .await
        .expect_error(401, "invalid_signature");
}
