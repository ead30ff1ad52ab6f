//! Attacks through issuers and their keys: an issuer that hangs, an outage used to lock a
//! new key out, a JWKS of many keys against tokens without `kid`, and a discovery document
//! sending the broker to fetch keys elsewhere. Fetch failures reach the caller only as a
//! stable code; the reason stays in the log.

use std::time::{Duration, Instant};

use serde_json::json;
use wif_broker::clock;
use wif_broker::dev::issuer::{IssuerOptions, LocalIssuer, github_claims};
use wif_broker::dev::jwt::{KeyKind, SigningKey, unsigned_token};

use crate::support::*;

/// A federated credential of `deploy` for `issuer` that no token in these tests matches:
/// a token that verifies is then answered `403 no_matching_credential`, without Entra.
fn unmatched_credential(name: &str, issuer: &str) -> String {
    format!(
        "[[identities.federated_credentials]]\nname = \"{name}\"\nissuer = \"{issuer}\"\nsubject = \"repo:contoso/app:ref:refs/heads/never\"\n\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_issuer_gets_one_fetch_and_every_waiting_caller_its_failure_at_once() {
    let up = Upstreams::start().await;
    let silent = SilentServer::start().await;
    let dir = BrokerDir::new();
    let extra = format!(
        "{}[jwks]\ntimeout_secs = 2\n",
        unmatched_credential("hanging", &silent.url)
    );
    let broker = Broker::start(&dir, &up.config(&dir, &extra), &[]).await;
    let http = client();
    let claims = up
        .issuer
        .claims(json!({ "iss": silent.url, "sub": MAIN_SUBJECT }))
        .unwrap();
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (http, url, token) = (http.clone(), broker.url(), unsigned_token(&claims));
        callers.spawn(async move {
            let got = exchange(&http, &url, &token, ARM).await;
            (got, started.elapsed())
        });
    }
    let mut slowest = Duration::ZERO;
    while let Some(done) = callers.join_next().await {
        let (got, elapsed) = done.unwrap();
        assert_eq!(got.status, 503, "{got:?}");
        assert_eq!(got.error(), "issuer_unavailable");
        assert!(got.headers.contains_key("retry-after"), "{got:?}");
        assert!(
            !got.description().contains(&silent.url) && !got.description().contains("timed out"),
            "the fetch failure's detail reached the caller: {}",
            got.description()
        );
        slowest = slowest.max(elapsed);
    }
    // Ten fetches one after another would take 10 x 2 s; one shared fetch takes ~2 s.
    assert!(
        slowest < Duration::from_secs(10),
        "the last caller waited {slowest:?}: callers queued behind one fetch after another"
    );
    assert!(
        silent.requests() <= 1,
        "the hanging issuer got {} requests for 10 concurrent callers",
        silent.requests()
    );
    // The reason is for the operator.
    assert!(
        broker.output().contains("fetching signing keys failed"),
        "{}",
        broker.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_kid_during_an_outage_is_issuer_unavailable_and_accepted_soon_after_recovery() {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    // Default [jwks]: refetch_cooldown_secs = 60.
    let broker = Broker::start(&dir, &up.config(&dir, ""), &[]).await;
    let http = client();
    let got = exchange(&http, &broker.url(), &up.main_job_token(), ARM).await;
    assert_eq!(got.status, 200, "{got:?}\n{}", broker.output());

    // The issuer goes down and, meanwhile, rotates to a key the broker has never seen.
    up.issuer.set_available(false);
    up.issuer.rotate_key();
    let token = up.main_job_token();
    let got = exchange(&http, &broker.url(), &token, ARM).await;
    assert_eq!(
        got.status, 503,
        "an outage looked like a bad token: {got:?}"
    );
    assert_eq!(got.error(), "issuer_unavailable");
    assert!(got.headers.contains_key("retry-after"), "{got:?}");
    assert!(
        !got.description().contains("HTTP") && !got.description().contains(&up.issuer.url()),
        "the fetch failure's detail reached the caller: {}",
        got.description()
    );
    assert!(
        broker.output().contains("answered HTTP 503"),
        "the reason is not in the log\n{}",
        broker.output()
    );

    // Back up, publishing the new key: accepted within the failure back-off (5 s), not
    // after the 60 s unknown-kid cooldown.
    up.issuer.set_available(true);
    let back = Instant::now();
    loop {
        let got = exchange(&http, &broker.url(), &token, ARM).await;
        if got.status == 200 {
            break;
        }
        assert_eq!(
            got.error(),
            "issuer_unavailable",
            "after {:?}: {got:?}",
            back.elapsed()
        );
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "the new key is still refused {:?} after the issuer came back",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_without_kid_is_tried_against_at_most_two_keys_of_a_101_key_jwks() {
    let up = Upstreams::start().await;
    let ec = LocalIssuer::start_with(
        clock::system(),
        IssuerOptions {
            key_kind: KeyKind::EcP256,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let decoys: Vec<SigningKey> = (0..99)
        .map(|i| SigningKey::generate(KeyKind::EcP256, &format!("decoy-{i}")).unwrap())
        .collect();
    for key in &decoys {
        ec.publish_key(key.clone());
    }
    let last = SigningKey::generate(KeyKind::EcP256, "last").unwrap();
    ec.publish_key(last.clone());
    assert_eq!(ec.published_keys().len(), 101);
    let dir = BrokerDir::new();
    // max_keys above 101, so the last key is among the keys the broker holds.
    let extra = format!(
        "{}[jwks]\nmax_keys = 200\n",
        unmatched_credential("ec-issuer", &ec.url())
    );
    let broker = Broker::start(&dir, &up.config(&dir, &extra), &[]).await;
    let http = client();
    let claims = ec.claims(github_claims(REPO, "main")).unwrap();
    let no_kid = json!({"alg": "ES256", "typ": "JWT"});

    let by_last = last.sign_with_header(&no_kid, &claims).unwrap();
    let got = exchange(&http, &broker.url(), &by_last, ARM).await;
    assert_eq!(got.status, 401, "all 101 keys were tried: {got:?}");
    assert_eq!(got.error(), "invalid_signature");

    // The first two keys of the JWKS are candidates.
    for key in [ec.current_key(), decoys[0].clone()] {
        let token = key.sign_with_header(&no_kid, &claims).unwrap();
        let got = exchange(&http, &broker.url(), &token, ARM).await;
        assert_eq!(
            got.error(),
            "no_matching_credential",
            "key {} should verify: {got:?}",
            key.kid()
        );
    }
    // With its `kid`, the last key verifies like any other.
    let with_kid = last.sign(&claims).unwrap();
    let got = exchange(&http, &broker.url(), &with_kid, ARM).await;
    assert_eq!(got.error(), "no_matching_credential", "{got:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_discovery_naming_a_jwks_uri_on_another_origin_is_refused_unless_allowed() {
    let up = Upstreams::start().await;
    // Keys on one origin, and a discovery document on another pointing at them.
    let keys = LocalIssuer::start(clock::system()).await.unwrap();
    let jwks_uri = keys.jwks_uri();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let document = json!({"issuer": issuer, "jwks_uri": jwks_uri});
    let app = axum::Router::new().route(
        "/.well-known/openid-configuration",
        axum::routing::get(move || {
            let document = document.clone();
            async move { axum::Json(document) }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let token = keys
        .mint(json!({ "iss": issuer, "sub": MAIN_SUBJECT }))
        .unwrap();
    let http = client();

    let dir = BrokerDir::new();
    let extra = unmatched_credential("elsewhere", &issuer);
    let broker = Broker::start(&dir, &up.config(&dir, &extra), &[]).await;
    let got = exchange(&http, &broker.url(), &token, ARM).await;
    assert_eq!(got.status, 503, "{got:?}");
    assert_eq!(got.error(), "issuer_unavailable");
    assert_eq!(
        keys.request_count(),
        0,
        "keys were fetched from another origin"
    );
    assert!(
        broker.output().contains("not on the issuer's origin"),
        "{}",
        broker.output()
    );

    // An operator who means it says so for this issuer.
    let dir = BrokerDir::new();
    let extra = format!(
        "{}[[issuers]]\nurl = \"{issuer}\"\nallow_cross_origin_jwks_uri = true\n",
        unmatched_credential("elsewhere", &issuer)
    );
    let broker = Broker::start(&dir, &up.config(&dir, &extra), &[]).await;
    let got = exchange(&http, &broker.url(), &token, ARM).await;
    assert_eq!(got.error(), "no_matching_credential", "{got:?}");
    assert!(keys.request_count() >= 1);
    server.abort();
}
