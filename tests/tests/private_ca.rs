//! Issuers and Entra authorities behind a private CA: trusted only through the `ca_file`
//! the operator configures for them, never by default.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{Value, json};
use wif_broker::dev::jwt::{KeyKind, SigningKey};
use wif_config::IssuerConfig;
use wif_tests::pki::Pki;
use wif_tests::*;

/// An HTTPS server on loopback with a certificate from `pki`, serving `routes(url)`.
async fn https_server(
    pki: &Pki,
    dir: &tempfile::TempDir,
    routes: impl FnOnce(&str) -> axum::Router,
) -> String {
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    pki.install(&cert, &key);
    let tls = wif_broker::tls::server_config(cert, key, Duration::from_secs(3600)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(wif_broker::api::serve::serve(
        listener,
        routes(&url),
        Some(tls),
        std::future::pending(),
        wif_broker::api::serve::Limits::default(),
    ));
    url
}

/// An issuer at `url`: discovery and JWKS for `key`.
fn issuer_routes(key: &SigningKey, url: &str) -> axum::Router {
    let jwks = wif_broker::dev::jwt::jwks(std::slice::from_ref(key));
    let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/keys")});
    axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || async move { axum::Json(discovery) }),
        )
        .route(
            "/keys",
            axum::routing::get(move || async move { axum::Json(jwks) }),
        )
}

fn token_from(key: &SigningKey, issuer: &str) -> String {
    let now = wif_broker::clock::Clock::now(&wif_broker::clock::SystemClock);
    let mut claims = github_claims(REPO, "main");
    let extra = json!({"iss": issuer, "aud": "api://AzureADTokenExchange", "iat": now, "nbf": now, "exp": now + 300});
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    key.sign(&claims).unwrap()
}

#[tokio::test]
async fn an_issuer_behind_a_private_ca_is_trusted_only_with_its_ca_file() {
    wif_broker::crypto::install_provider();
    let pki = Pki::new("issuer");
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(KeyKind::Rsa2048, "private-1").unwrap();
    let url = https_server(&pki, &dir, |url| issuer_routes(&key, url)).await;
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).unwrap();

    let with_ca = Stack::start_with(|cfg| {
        cfg.issuers.push(IssuerConfig {
            url: url.clone(),
            ca_file: Some(ca_path.clone()),
            ..Default::default()
        })
    })
    .await;
    let token = token_from(&key, &url);
    // Verified (the subject is simply not registered for this issuer).
    with_ca
        .exchange(&token, ARM)
        .await
        .expect_error(403, "no_matching_credential");

    let without_ca = Stack::start_with(|cfg| {
        cfg.issuers.push(IssuerConfig {
            url: url.clone(),
            ..Default::default()
        })
    })
    .await;
    let answer = without_ca.exchange(&token, ARM).await;
    answer.expect_error(503, "issuer_unavailable");
}

/// A token endpoint that answers like Entra does on success.
fn entra_routes() -> axum::Router {
    axum::Router::new().route(
        "/{tenant}/oauth2/v2.0/token",
        axum::routing::post(|| async {
            axum::Json::<Value>(json!({
                "token_type": "Bearer",
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": "private-cloud-access-token",
            }))
        }),
    )
}

#[tokio::test]
async fn an_entra_authority_behind_a_private_ca_is_reached_only_with_its_ca_file() {
    wif_broker::crypto::install_provider();
    let pki = Pki::new("azure-stack");
    let dir = tempfile::tempdir().unwrap();
    let authority = https_server(&pki, &dir, |_| entra_routes()).await;
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).unwrap();

    let with_ca = Stack::start_with(|cfg| {
        cfg.entra.authority_host = authority.clone();
        cfg.entra.ca_file = Some(ca_path.clone());
    })
    .await;
    let answer = with_ca.exchange(&with_ca.github_token("main"), ARM).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.access_token(), "private-cloud-access-token");

    let without_ca = Stack::start_with(|cfg| {
        cfg.entra.authority_host = authority.clone();
        cfg.entra.max_retries = 1;
    })
    .await;
    let answer = without_ca
        .exchange(&without_ca.github_token("main"), ARM)
        .await;
    answer.expect_error(503, "entra_unavailable");
}
