//! Attacks with crafted tokens: values that flood errors and logs, JSON that means one thing
//! to one parser and another to the next, and ECDSA's malleable signatures against
//! one-time-use credentials.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use wif_broker::clock;
use wif_broker::dev::issuer::{IssuerOptions, LocalIssuer};
use wif_broker::dev::jwt::{KeyKind, b64url};
use wif_broker::token::is_high_s_ecdsa;

use crate::support::*;

/// Most characters of an attacker's value that may appear anywhere (the cap is 128, plus
/// room for whatever surrounds it).
const CAP: usize = 130;

fn unsigned_with_header(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// Every audit event the broker stored, as text, once at least `min` are there.
async fn audit_text(http: &reqwest::Client, broker: &Broker, min: usize) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = admin(
            http,
            reqwest::Method::GET,
            &format!("{}/v1/audit", broker.url()),
            None,
        )
        .await;
        assert_eq!(got.status, 200, "{got:?}");
        let events = got.body["value"].as_array().map_or(0, Vec::len);
        if events >= min || std::time::Instant::now() > deadline {
            return got.text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_11500_character_kid_or_alg_is_capped_in_the_answer_the_audit_and_the_log() {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    let broker = Broker::start(
        &dir,
        &up.config(&dir, "[server]\nmax_token_bytes = 65536\n"),
        &[],
    )
    .await;
    let http = client();
    let claims = up.issuer.claims(json!({ "sub": MAIN_SUBJECT })).unwrap();
    // Control characters first: a log line must not be split or recoloured by a token.
    let kid = format!("\u{1b}[31mFORGED\nline{}", "Q".repeat(11_500));
    let long_kid = unsigned_with_header(&json!({"alg": "none", "typ": "JWT", "kid": kid}), &claims);
    let got = exchange(&http, &broker.url(), &long_kid, ARM).await;
    assert_eq!(got.status, 401, "{got:?}");
    assert_eq!(got.error(), "unknown_signing_key");
    let description = got.description();
    assert!(
        longest_run(description, 'Q') <= CAP && description.contains('…'),
        "the kid reached the caller uncut: {} chars of it",
        longest_run(description, 'Q')
    );
    assert!(
        !description.contains('\u{1b}') && !description.contains("FORGED\nline"),
        "{description}"
    );

    let long_alg = unsigned_with_header(&json!({"alg": "R".repeat(11_000), "typ": "JWT"}), &claims);
    let got = exchange(&http, &broker.url(), &long_alg, ARM).await;
    assert_eq!(got.status, 401, "{got:?}");
    assert_eq!(got.error(), "unsupported_algorithm");
    assert!(
        longest_run(got.description(), 'R') <= CAP,
        "the alg reached the caller uncut: {} chars of it",
        longest_run(got.description(), 'R')
    );

    let audit = audit_text(&http, &broker, 2).await;
    assert!(audit.contains("unknown_signing_key"), "{audit}");
    assert!(
        longest_run(&audit, 'Q') <= CAP,
        "an audit row holds the kid uncut"
    );
    assert!(
        longest_run(&audit, 'R') <= CAP,
        "an audit row holds the alg uncut"
    );
    let log = broker.output();
    assert!(
        log.contains("unknown_signing_key"),
        "the refusal was not logged\n{log}"
    );
    assert!(
        longest_run(&log, 'Q') <= CAP && longest_run(&log, 'R') <= CAP,
        "the log holds {} chars of the kid and {} of the alg",
        longest_run(&log, 'Q'),
        longest_run(&log, 'R')
    );
    assert!(
        !log.contains("\u{1b}[31mFORGED"),
        "a raw escape sequence reached the log"
    );
    assert!(
        !log.contains("FORGED\nline"),
        "a raw newline from the token reached the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_named_twice_in_a_signed_header_or_payload_is_refused() {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    let broker = Broker::start(&dir, &up.config(&dir, ""), &[]).await;
    let http = client();
    let key = up.issuer.current_key();
    let claims = up.issuer.claims(json!({ "sub": MAIN_SUBJECT })).unwrap();
    let claims_text = claims.to_string();
    let header = format!(r#"{{"alg":"RS256","typ":"JWT","kid":"{}"}}"#, key.kid());

    // A parser keeping the first `sub` sees a feature branch; one keeping the last, main.
    let payload = format!(
        r#"{{"sub":"repo:contoso/app:ref:refs/heads/feature",{}"#,
        &claims_text[1..]
    );
    let token = key.sign_json_text(&header, &payload).unwrap();
    let got = exchange(&http, &broker.url(), &token, ARM).await;
    assert_eq!(got.status, 401, "duplicate `sub` was accepted: {got:?}");
    assert_eq!(got.error(), "invalid_token");
    assert!(got.description().contains("twice"), "{got:?}");

    // The same name spelled with an escape (`\u0075` is `u`), another registered claim,
    // a claim only an expression would read, and nested objects: all refused alike.
    let twins = [
        format!(
            r#"{{"s\u0075b":"repo:contoso/app:ref:refs/heads/feature",{}"#,
            &claims_text[1..]
        ),
        format!(
            r#"{{"aud":"https://github.com/contoso",{}"#,
            &claims_text[1..]
        ),
        format!(
            r#"{{"repository":"contoso/other","repository":"contoso/app",{}"#,
            &claims_text[1..]
        ),
        format!(r#"{{"x":{{"a":1,"a":2}},{}"#, &claims_text[1..]),
    ];
    for payload in &twins {
        let token = key.sign_json_text(&header, payload).unwrap();
        let got = exchange(&http, &broker.url(), &token, ARM).await;
        assert_eq!(got.status, 401, "{payload}: {got:?}");
        assert_eq!(got.error(), "invalid_token", "{payload}: {got:?}");
        assert!(got.description().contains("twice"), "{got:?}");
    }

    // The header: `alg` named twice, the real one last.
    let header_twice = format!(
        r#"{{"alg":"none","alg":"RS256","typ":"JWT","kid":"{}"}}"#,
        key.kid()
    );
    let token = key.sign_json_text(&header_twice, &claims_text).unwrap();
    let got = exchange(&http, &broker.url(), &token, ARM).await;
    assert_eq!(got.status, 401, "duplicate `alg` was accepted: {got:?}");
    assert_eq!(got.error(), "invalid_token");

    assert_eq!(
        up.entra.token_requests(),
        0,
        "a refused token reached Entra"
    );

    // The same claims without duplicates are a good token: the refusals were for the twins.
    let token = key.sign_json_text(&header, &claims_text).unwrap();
    let got = exchange(&http, &broker.url(), &token, ARM).await;
    assert_eq!(got.status, 200, "{got:?}\n{}", broker.output());
    assert_eq!(up.entra.token_requests(), 1);
}

/// The order of the P-256 group, big-endian.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The same token with its ES256 signature `(r, s)` replaced by `(r, n - s)`, which verifies
/// just as well: what anyone holding the token can make without the key.
fn ecdsa_twin(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
    assert_eq!(bytes.len(), 64);
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(P256_N[i]) - i16::from(bytes[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        bytes[32 + i] = d as u8;
    }
    format!("{signed}.{}", b64url(&bytes))
}

fn signature_of(token: &str) -> &str {
    token.rsplit_once('.').unwrap().1
}

async fn ec_issuer() -> LocalIssuer {
    LocalIssuer::start_with(
        clock::system(),
        IssuerOptions {
            key_kind: KeyKind::EcP256,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ecdsa_twin_of_a_one_time_token_without_jti_is_refused_as_a_replay() {
    let up = Upstreams::start().await;
    let ec = ec_issuer().await;
    let dir = BrokerDir::new();
    let broker = Broker::start(&dir, &up.config(&dir, ""), &[]).await;
    let http = client();
    let created = admin(
        &http,
        reqwest::Method::PUT,
        &format!("{}/v1/identities/once-app", broker.url()),
        Some(json!({"tenantId": TENANT, "clientId": "9d2b1c3e-5a4f-4e8b-9c1d-0e2f3a4b5c6d"})),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let created = admin(
        &http,
        reqwest::Method::POST,
        &format!(
            "{}/v1/identities/once-app/federatedIdentityCredentials",
            broker.url()
        ),
        Some(json!({"name": "once", "issuer": ec.url(), "subject": MAIN_SUBJECT, "oneTimeUse": true})),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");

    let token = ec
        .mint(json!({ "sub": MAIN_SUBJECT, "jti": null }))
        .unwrap();
    let twin = ecdsa_twin(&token);
    assert_ne!(token, twin);
    assert_ne!(
        is_high_s_ecdsa(Algorithm::ES256, signature_of(&token)),
        is_high_s_ecdsa(Algorithm::ES256, signature_of(&twin)),
        "exactly one of the two signatures has a high s"
    );

    // The broker accepts the token and spends it before it calls Entra (which, like the
    // real one, takes only RS256 assertions, so an ES256 passthrough ends there).
    let first = exchange(&http, &broker.url(), &token, ARM).await;
    assert!(
        first.status == 200 || first.error().starts_with("entra_"),
        "the broker did not accept the token: {first:?}\n{}",
        broker.output()
    );
    let again = exchange(&http, &broker.url(), &twin, ARM).await;
    assert_eq!(
        again.status, 401,
        "the re-signed twin was accepted: {again:?}"
    );
    assert_eq!(again.error(), "token_replayed");
    let original = exchange(&http, &broker.url(), &token, ARM).await;
    assert_eq!(original.error(), "token_replayed", "{original:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_ecdsa_low_s_only_a_high_s_signature_is_refused() {
    let up = Upstreams::start().await;
    let ec = ec_issuer().await;
    let dir = BrokerDir::new();
    // A credential for the EC issuer that no token here matches: a verified token is then
    // answered `no_matching_credential`, without Entra.
    let extra = format!(
        "[[identities.federated_credentials]]\nname = \"ec-issuer\"\nissuer = \"{}\"\nsubject = \"repo:contoso/app:ref:refs/heads/never\"\n\n[tokens]\necdsa_low_s_only = true\n",
        ec.url()
    );
    let broker = Broker::start(&dir, &up.config(&dir, &extra), &[]).await;
    let http = client();
    let token = ec.mint(json!({ "sub": MAIN_SUBJECT })).unwrap();
    let twin = ecdsa_twin(&token);
    let (low, high) = if is_high_s_ecdsa(Algorithm::ES256, signature_of(&token)) {
        (twin, token)
    } else {
        (token, twin)
    };
    let got = exchange(&http, &broker.url(), &high, ARM).await;
    assert_eq!(got.status, 401, "a high-s signature was accepted: {got:?}");
    assert_eq!(got.error(), "invalid_signature");
    let got = exchange(&http, &broker.url(), &low, ARM).await;
    assert_eq!(
        got.error(),
        "no_matching_credential",
        "the low-s twin should verify: {got:?}\n{}",
        broker.output()
    );
}
