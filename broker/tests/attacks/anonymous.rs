//! An anonymous caller floods the broker with forged and malformed tokens, requests with
//! no token or unknown parameters, and admin calls carrying no valid admin token, each
//! carrying kilobytes of junk. It must not fill
//! the disk or the log: every refusal is accounted for (recorded, or counted into a
//! summary event), and what the broker writes does not grow with what the caller sends.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use wif_broker::dev::jwt::b64url;

use crate::support::*;

/// A JWT with the given header and payload and a signature of junk.
fn forged(header: &Value, payload: &Value) -> String {
    format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(payload.to_string().as_bytes()),
        b64url(&[7u8; 256])
    )
}

fn claims(iss: &str) -> Value {
    let now = wif_broker::clock::system().now();
    json!({"iss": iss, "sub": MAIN_SUBJECT, "aud": "api://AzureADTokenExchange",
           "iat": now, "exp": now + 300})
}

/// All audit events the broker stored, oldest first.
async fn all_audit_events(http: &reqwest::Client, broker: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = String::new();
    loop {
        let got = admin(
            http,
            reqwest::Method::GET,
            &format!("{broker}/v1/audit?limit=1000{after}"),
            None,
        )
        .await;
        assert_eq!(got.status, 200, "{got:?}");
        events.extend(got.body["value"].as_array().unwrap().iter().cloned());
        match got.body["nextCursor"].as_str() {
            Some(cursor) => after = format!("&after={cursor}"),
            None => return events,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_junk_tokens_and_admin_calls_neither_fills_the_disk_nor_the_log() {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    let config = up.config(&dir, "");
    let mut broker = Broker::start(&dir, &config, &[]).await;
    let http = client();
    let url = broker.url();
    // One genuine exchange first, so the store holds a row and its files their first pages.
    let ok = exchange(&http, &url, &up.main_job_token(), ARM).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log_before = broker.log_bytes();
    let store_before = dir.store_bytes();

    let junk = "k".repeat(11_500);
    let iss = up.issuer.url();
    let attacks: Vec<(&str, reqwest::RequestBuilder)> = (0..2000)
        .map(|i| match i % 7 {
            // A registered issuer, an 11,500-character kid, a signature of junk.
            0 => (
                "exchange",
                http.post(format!("{url}/v1/token"))
                    .bearer_auth(forged(&json!({"alg": "RS256", "kid": junk}), &claims(&iss)))
                    .form(&[("scope", ARM)]),
            ),
            // The same with an 11,500-character algorithm.
            1 => (
                "exchange",
                http.post(format!("{url}/v1/token"))
                    .bearer_auth(forged(
                        &json!({"alg": format!("RS256{junk}"), "kid": "k"}),
                        &claims(&iss),
                    ))
                    .form(&[("scope", ARM)]),
            ),
            // An issuer nobody registered, named by 11,500 characters.
            2 => (
                "exchange",
                http.post(format!("{url}/v1/token"))
                    .bearer_auth(forged(
                        &json!({"alg": "RS256", "kid": "k"}),
                        &claims(&format!("https://{junk}.example")),
                    ))
                    .form(&[("scope", ARM)]),
            ),
            // Not a JWT at all, through the RFC 8693 endpoint.
            3 => (
                "exchange",
                http.post(format!("{url}/oauth2/token")).form(&[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    ("subject_token", &format!("x{junk}")),
                    ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                    ("scope", ARM),
                ]),
            ),
            // No token at all.
            4 => (
                "exchange",
                http.post(format!("{url}/v1/token")).form(&[("scope", ARM)]),
            ),
            // A parameter nobody knows, named by 2,000 characters.
            5 => (
                "exchange",
                http.post(format!("{url}/v1/token"))
                    .bearer_auth("junk")
                    .form(&[("scope", ARM), (&junk[..2000], "x")]),
            ),
            // An admin write without a valid admin token, for an identity with a long name.
            _ => (
                "admin",
                http.put(format!("{url}/v1/identities/{}", &junk[..2000]))
                    .bearer_auth(format!("not-an-admin-{i}"))
                    .json(&json!({"tenantId": TENANT, "clientId": CLIENT})),
            ),
        })
        .collect();
    let mut refused: HashMap<(&str, String), u64> = HashMap::new();
    let mut answers = futures::stream::iter(attacks)
        .map(|(kind, request)| async move { (kind, send(request).await) })
        .buffer_unordered(16);
    while let Some((kind, got)) = answers.next().await {
        assert!(
            (400..500).contains(&got.status),
            "a junk request was not refused with a 4xx: {got:?}"
        );
        *refused.entry((kind, got.error().to_owned())).or_default() += 1;
    }
    assert_eq!(refused.values().sum::<u64>(), 2000);

    // The log grew by a bounded amount: no line per refusal, no field of 11,500 characters.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let logged = broker.log_bytes() - log_before;
    assert!(
        logged < 128 * 1024,
        "2,000 junk requests made the broker log {logged} bytes"
    );
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("wif_audit_sampled_total{"),
        "no sampled refusals in the metrics:\n{metrics}"
    );

    // Stopping the broker writes the summaries of the open windows; a new broker on the same
    // store shows every refusal accounted for, in a handful of bounded rows.
    broker.terminate().await;
    assert!(broker.exit(Duration::from_secs(30)).await.success());
    let grown = dir.store_bytes().saturating_sub(store_before);
    assert!(
        grown < 1024 * 1024,
        "2,000 junk requests grew the store by {grown} bytes"
    );
    let broker = Broker::start(&dir, &config, &[]).await;
    let events = all_audit_events(&http, &broker.url()).await;
    let junk_events: Vec<&Value> = events.iter().filter(|e| e["outcome"] != "ok").collect();
    assert!(
        junk_events.len() <= 60,
        "{} audit rows for 2,000 junk requests",
        junk_events.len()
    );
    for event in &junk_events {
        let size = event.to_string().len();
        assert!(size < 4096, "an audit event of {size} bytes: {event}");
    }
    let mut accounted: HashMap<(&str, String), u64> = HashMap::new();
    for event in &junk_events {
        let kind = if event["kind"] == "admin" {
            "admin"
        } else {
            "exchange"
        };
        let outcome = event["outcome"].as_str().unwrap().to_owned();
        *accounted.entry((kind, outcome)).or_default() += event["count"].as_u64().unwrap_or(1);
    }
    assert_eq!(
        accounted, refused,
        "every refusal is recorded or counted in a summary"
    );
    assert!(
        junk_events
            .iter()
            .any(|e| e["count"].as_u64().is_some_and(|n| n > 100)),
        "no summary event: {junk_events:?}"
    );
    // Refusals before the token is even read are in the trail and the metrics too.
    for code in ["missing_token", "invalid_request"] {
        assert!(
            refused.contains_key(&("exchange", code.to_owned())),
            "no {code} refusal: {refused:?}"
        );
        assert!(
            metrics.contains(&format!("outcome=\"{code}\"")),
            "{code} is not counted in wif_exchanges_total:\n{metrics}"
        );
    }
}
