//! Where signing keys come from: discovery, an explicit `jwks_uri`, a file, inline JSON;
//! and the limits on what an issuer may send. A token whose subject no credential
//! registers is answered `no_matching_credential` only after its signature verified, so
//! these tests use such tokens to see verification without involving Entra.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use wif_broker::dev::issuer::{IssuerOptions, LocalIssuer};
use wif_broker::dev::jwt::KeyKind;
use wif_config::IssuerConfig;
use wif_tests::*;

fn unregistered_branch(issuer: &LocalIssuer) -> String {
    issuer.mint(github_claims(REPO, "feature-x")).unwrap()
}

fn forged(token: &str) -> String {
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut sig = sig.to_owned();
    let last = if sig.ends_with('A') { 'B' } else { 'A' };
    sig.pop();
    sig.push(last);
    format!("{head}.{sig}")
}

#[tokio::test]
async fn keys_come_from_discovery_by_default() {
    let stack = Stack::start().await;
    stack
        .exchange(&unregistered_branch(&stack.github), ARM)
        .await
        .expect_error(403, "no_matching_credential");
    // Discovery document, then the JWKS it names.
    assert_eq!(stack.github.request_count(), 2);
    stack
        .exchange(&forged(&unregistered_branch(&stack.github)), ARM)
        .await
        .expect_error(401, "invalid_signature");
    assert_eq!(
        stack.github.request_count(),
        2,
        "cached keys were fetched again"
    );
}

#[tokio::test]
async fn an_explicit_jwks_uri_skips_discovery() {
    let mut uri = String::new();
    let stack = Stack::start_with(|cfg| {
        let github = cfg.identities[0].federated_credentials[0].issuer.clone();
        uri = format!("{github}/.well-known/jwks");
        cfg.issuers.push(IssuerConfig {
            url: github,
            jwks_uri: Some(uri.clone()),
            ..Default::default()
        });
    })
    .await;
    assert_eq!(uri, stack.github.jwks_uri());
    stack
        .exchange(&unregistered_branch(&stack.github), ARM)
        .await
        .expect_error(403, "no_matching_credential");
    assert_eq!(stack.github.request_count(), 1);
}

#[tokio::test]
async fn keys_from_a_file_need_no_network_and_are_reread_after_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let issuer = LocalIssuer::start(wif_broker::clock::system())
        .await
        .unwrap();
    std::fs::write(&path, issuer.jwks().to_string()).unwrap();
    let (url, file) = (issuer.url(), path.clone());
    let stack = Stack::start_with(move |cfg| {
        cfg.issuers.push(IssuerConfig {
            url,
            jwks_file: Some(file),
            ..Default::default()
        });
    })
    .await;
    issuer.set_available(false);
    let token = issuer.mint(github_claims(REPO, "main")).unwrap();
    // Trusted through [[issuers]] alone: no credential names it, so verified but unmatched.
    stack
        .exchange(&token, ARM)
        .await
        .expect_error(403, "no_matching_credential");
    stack
        .exchange(&forged(&token), ARM)
        .await
        .expect_error(401, "invalid_signature");

    issuer.rotate_key();
    std::fs::write(&path, issuer.jwks().to_string()).unwrap();
    let rotated = issuer.mint(github_claims(REPO, "main")).unwrap();
    stack
        .exchange(&rotated, ARM)
        .await
        .expect_error(403, "no_matching_credential");
    assert_eq!(
        issuer.request_count(),
        0,
        "a file-backed issuer was contacted"
    );
}

#[tokio::test]
async fn inline_keys_verify_and_unknown_kids_are_refused_without_fetching() {
    let issuer = LocalIssuer::start(wif_broker::clock::system())
        .await
        .unwrap();
    let (url, inline) = (issuer.url(), issuer.jwks().to_string());
    let stack = Stack::start_with(move |cfg| {
        cfg.issuers.push(IssuerConfig {
            url,
            jwks_inline: Some(inline),
            ..Default::default()
        });
    })
    .await;
    let token = issuer.mint(github_claims(REPO, "main")).unwrap();
    stack
        .exchange(&token, ARM)
        .await
        .expect_error(403, "no_matching_credential");
    issuer.rotate_key();
    let rotated = issuer.mint(github_claims(REPO, "main")).unwrap();
    stack
        .exchange(&rotated, ARM)
        .await
        .expect_error(401, "unknown_signing_key");
    assert_eq!(issuer.request_count(), 0);
}

#[tokio::test]
async fn ec_and_eddsa_issuers_verify_and_an_issuer_may_narrow_its_algorithms() {
    for (kind, narrowed) in [(KeyKind::EcP256, "RS256"), (KeyKind::Ed25519, "ES256")] {
        let issuer = LocalIssuer::start_with(
            wif_broker::clock::system(),
            IssuerOptions {
                key_kind: kind,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let url = issuer.url();
        let stack = Stack::start_with(|cfg| {
            cfg.issuers.push(IssuerConfig {
                url: url.clone(),
                ..Default::default()
            })
        })
        .await;
        let token = issuer.mint(github_claims(REPO, "main")).unwrap();
        stack
            .exchange(&token, ARM)
            .await
            .expect_error(403, "no_matching_credential");
        stack
            .exchange(&forged(&token), ARM)
            .await
            .expect_error(401, "invalid_signature");

        let narrow = Stack::start_with(|cfg| {
            cfg.issuers.push(IssuerConfig {
                url: url.clone(),
                algorithms: Some(vec![narrowed.into()]),
                ..Default::default()
            })
        })
        .await;
        narrow
            .exchange(&token, ARM)
            .await
            .expect_error(401, "unsupported_algorithm");
    }
}

#[tokio::test]
async fn an_issuer_sending_more_than_the_size_cap_is_not_trusted() {
    let stack = Stack::start_with(|cfg| cfg.jwks.max_response_bytes = 600).await;
    // Three RSA keys make the JWKS larger than 600 bytes (the discovery document is not).
    stack.github.rotate_key();
    stack.github.rotate_key();
    let answer = stack.exchange(&stack.github_token("main"), ARM).await;
    answer.expect_error(503, "issuer_unavailable");
    // The reason (the size limit) is for the operator's log, not for an anonymous caller.
    assert!(
        !answer.description().contains("600 bytes"),
        "{}",
        answer.description()
    );
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_not_trusted() {
    // A server whose discovery claims to be someone else, pointing at real keys.
    let real = LocalIssuer::start(wif_broker::clock::system())
        .await
        .unwrap();
    let jwks_uri = real.jwks_uri();
    let app = axum::Router::new().route(
        "/.well-known/openid-configuration",
        axum::routing::get(move || {
            let jwks_uri = jwks_uri.clone();
            async move { axum::Json(json!({"issuer": "https://token.actions.githubusercontent.com", "jwks_uri": jwks_uri})) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let issuer_url = url.clone();
    let stack = Stack::start_with(move |cfg| {
        cfg.issuers.push(IssuerConfig {
            url: issuer_url,
            ..Default::default()
        })
    })
    .await;
    let mut claims = github_claims(REPO, "main");
    claims["iss"] = json!(url);
    let token = real.mint(claims).unwrap();
    let answer = stack.exchange(&token, ARM).await;
    answer.expect_error(503, "issuer_unavailable");
    // The reason (the mismatch) is for the operator's log, not for an anonymous caller.
    assert!(
        !answer
            .description()
            .contains("discovery document names issuer")
    );
    assert_eq!(
        real.request_count(),
        0,
        "keys were fetched from a mismatched discovery"
    );
}
