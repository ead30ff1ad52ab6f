//! Smaller gaps, one attack each against the real broker: a forged `Host` in the
//! Entra-compatible discovery document, a planted sign-in cookie, the SQLite file's mode,
//! identity names differing only in case, unknown `/oauth2/token` parameters, a console
//! session outliving a fractional-`exp` admin token, and database text in error bodies.

use std::str::FromStr;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use sqlx::ConnectOptions;
use wif_broker::dev::issuer::github_claims;

use crate::support::*;

const OTHER_CLIENT: &str = "5e4d3c2b-1a09-4f8e-9d7c-6b5a49382716";

/// A client that shows redirects instead of following them.
fn browser() -> reqwest::Client {
    wif_broker::crypto::install_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The value `name` is set to by the response's `Set-Cookie` headers.
fn set_cookie(answer: &Answer, name: &str) -> Option<String> {
    answer
        .headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
        .filter(|v| !v.is_empty())
}

/// The first hidden `csrf` field of a page.
fn csrf_field(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).expect("a csrf field") + marker.len();
    page[start..].split('"').next().unwrap().to_owned()
}

/// Signs in at the console as a browser would; the session cookie on success.
async fn console_sign_in(http: &reqwest::Client, broker: &str, token: &str) -> Answer {
    let form = send(http.get(format!("{broker}/ui/login"))).await;
    assert_eq!(form.status, 200, "{form:?}");
    let id = set_cookie(&form, "wif_ui_login").expect("the sign-in cookie");
    let csrf = csrf_field(&form.text);
    let response = http
        .post(format!("{broker}/ui/login"))
        .header("cookie", format!("wif_ui_login={id}"))
        .form(&[("csrf", csrf.as_str()), ("token", token)])
        .send()
        .await
        .unwrap();
    answer(response).await
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_does_not_reflect_a_forged_host_header() {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    let broker = Broker::start(&dir, &up.config(&dir, ""), &[]).await;
    let http = client();
    let path = format!("/{TENANT}/v2.0/.well-known/openid-configuration");

    let forged = send(
        http.get(format!("{}{path}", broker.url()))
            .header("host", "evil.example"),
    )
    .await;
    assert_eq!(forged.status, 400, "{forged:?}");
    assert!(forged.body.get("token_endpoint").is_none(), "{forged:?}");
    assert!(
        forged.body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("unknown_host"),
        "{forged:?}"
    );

    // Its own address still works (unchanged SDK use on loopback).
    let own = send(http.get(format!("{}{path}", broker.url()))).await;
    assert_eq!(own.status, 200, "{own:?}");
    assert_eq!(
        own.body["token_endpoint"],
        format!("{}/{TENANT}/oauth2/v2.0/token", broker.url())
    );

    // With [server] public_url, that is what every document names, whatever the Host.
    let dir = BrokerDir::new();
    let broker = Broker::start(
        &dir,
        &up.config(&dir, "").replace(
            "[outbound]",
            "[server]\npublic_url = \"https://wif.contoso.example\"\n\n[outbound]",
        ),
        &[],
    )
    .await;
    let forged = send(
        http.get(format!("{}{path}", broker.url()))
            .header("host", "evil.example"),
    )
    .await;
    assert_eq!(forged.status, 200, "{forged:?}");
    assert_eq!(
        forged.body["token_endpoint"],
        format!("https://wif.contoso.example/{TENANT}/oauth2/v2.0/token")
    );
    assert!(!forged.text.contains("evil.example"), "{forged:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planted_sign_in_cookie_does_not_sign_a_browser_in() {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    let broker = Broker::start(&dir, &up.config(&dir, ""), &[]).await;
    let http = browser();

    // Login CSRF: the attacker plants `wif_ui_login=X` and posts a form with csrf=X and
    // its own token, so the victim's browser would work in the attacker's session.
    let planted = "a".repeat(64);
    let response = http
        .post(format!("{}/ui/login", broker.url()))
        .header("cookie", format!("wif_ui_login={planted}"))
        .form(&[("csrf", planted.as_str()), ("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    let refused = answer(response).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(
        set_cookie(&refused, "wif_ui_session").is_none(),
        "{refused:?}"
    );

    // A form the server issued, posted from another site, is refused too.
    let form = send(http.get(format!("{}/ui/login", broker.url()))).await;
    let id = set_cookie(&form, "wif_ui_login").unwrap();
    assert_ne!(
        id,
        csrf_field(&form.text),
        "the cookie is not the form's token"
    );
    let response = http
        .post(format!("{}/ui/login", broker.url()))
        .header("cookie", format!("wif_ui_login={id}"))
        .header("sec-fetch-site", "cross-site")
        .form(&[
            ("csrf", csrf_field(&form.text).as_str()),
            ("token", ADMIN_TOKEN),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await.status, 403);

    // The real form still signs in.
    let signed = console_sign_in(&http, &broker.url(), ADMIN_TOKEN).await;
    assert_eq!(signed.status, 303, "{signed:?}");
    assert!(
        set_cookie(&signed, "wif_ui_session").is_some(),
        "{signed:?}"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn the_sqlite_file_holding_generated_keys_is_private_to_the_broker() {
    use std::os::unix::fs::PermissionsExt;
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    let broker = Broker::start(
        &dir,
        &up.config(
            &dir,
            "[broker_issuer]\nurl = \"http://127.0.0.1:9/broker\"\n",
        ),
        &[],
    )
    .await;
    // The JWKS is served from the generated keys, which are in the store by now.
    let jwks = send(client().get(format!("{}/.well-known/jwks.json", broker.url()))).await;
    assert_eq!(jwks.status, 200, "{jwks:?}");
    for file in ["wif.db", "wif.db-wal", "wif.db-shm"] {
        let Ok(meta) = std::fs::metadata(dir.path(file)) else {
            assert_ne!(file, "wif.db", "the database exists");
            continue;
        };
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{file} is readable by others"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_names_differing_only_in_case_cannot_coexist() {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    // A row stored before the rule, clashing with the config's `deploy`.
    {
        let store = wif_broker::store::open(&dir.sqlite_url()).await.unwrap();
        store
            .put_identity(&wif_broker::store::StoredIdentity {
                name: "DEPLOY".into(),
                tenant_id: TENANT.into(),
                client_id: "0d9c8b7a-6f5e-4d3c-8b2a-190817161599".into(),
                cloud: None,
                authority_host: None,
                assertion: wif_config::AssertionSource::Passthrough,
                assertion_subject: None,
                created_at: 1,
                updated_at: 1,
                restrictions: Default::default(),
            })
            .await
            .unwrap();
    }
    let broker = Broker::start(&dir, &up.config(&dir, ""), &[]).await;
    let http = client();
    let put = |name: &str, client_id: &str| {
        let http = http.clone();
        let url = format!("{}/v1/identities/{name}", broker.url());
        let body = json!({"tenantId": TENANT, "clientId": client_id});
        async move { admin(&http, Method::PUT, &url, Some(body)).await }
    };

    let listed = admin(
        &http,
        Method::GET,
        &format!("{}/v1/identities", broker.url()),
        None,
    )
    .await;
    assert!(!listed.text.contains("\"DEPLOY\""), "{listed:?}");
    assert!(
        broker.output().contains("compared without regard to case"),
        "{}",
        broker.output()
    );

    // Against the config's `deploy`.
    let got = put("Deploy", OTHER_CLIENT).await;
    assert_eq!(got.status, 409, "{got:?}");
    // Between API identities.
    assert_eq!(put("web", OTHER_CLIENT).await.status, 201);
    let got = put("WEB", "0d9c8b7a-6f5e-4d3c-8b2a-190817161598").await;
    assert_eq!(got.status, 409, "{got:?}");
    assert!(got.description().contains("case"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_token_refuses_unknown_parameters() {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    let broker = Broker::start(&dir, &up.config(&dir, ""), &[]).await;
    let http = client();
    let token = up.main_job_token();
    let base = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", token.as_str()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("scope", ARM),
    ];
    for extra in [
        ("audience", "api://other"),
        ("actor_token", "x"),
        ("scopes", ARM),
    ] {
        let mut form = base.to_vec();
        form.push(extra);
        let got = send(
            http.post(format!("{}/oauth2/token", broker.url()))
                .form(&form),
        )
        .await;
        assert_eq!(got.status, 400, "{extra:?}: {got:?}");
        assert_eq!(got.error(), "invalid_request", "{got:?}");
        assert!(got.description().contains(extra.0), "{got:?}");
    }
    let got = send(
        http.post(format!("{}/oauth2/token", broker.url()))
            .form(&base),
    )
    .await;
    assert_eq!(got.status, 200, "{got:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_console_session_ends_with_a_fractional_exp_admin_token() {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    let config = up.config(&dir, "").replace(
        "[admin]\n",
        &format!(
            "[admin]\noidc_issuer = \"{}\"\noidc_audience = \"api://wif-admin\"\noidc_admin_role = \"wif.admin\"\n",
            up.issuer.url()
        ),
    );
    let broker = Broker::start(&dir, &config, &[]).await;
    let http = browser();
    let clock = wif_broker::clock::system();
    let now = clock.now();
    let exp = now as f64 + 4.5;
    let token = up
        .issuer
        .mint(json!({"sub": "alice", "aud": "api://wif-admin", "roles": ["wif.admin"], "exp": exp}))
        .unwrap();
    let signed = console_sign_in(&http, &broker.url(), &token).await;
    assert_eq!(signed.status, 303, "{signed:?}\n{}", broker.output());
    let session = set_cookie(&signed, "wif_ui_session").unwrap();
    let page = |http: reqwest::Client, session: String| {
        let url = format!("{}/ui/identities", broker.url());
        async move {
            http.get(url)
                .header("cookie", format!("wif_ui_session={session}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(page(http.clone(), session.clone()).await, 200);
    // Past the token's exp (by the wall clock the broker also uses).
    while clock.now() < now + 6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        page(http.clone(), session).await,
        303,
        "the session outlived the admin token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn database_errors_do_not_reach_the_caller() {
    let up = Upstreams::start().await;
    let dir = BrokerDir::new();
    let broker = Broker::start(&dir, &up.config(&dir, ""), &[]).await;
    let http = client();
    let url = |p: &str| format!("{}{p}", broker.url());
    let put = admin(
        &http,
        Method::PUT,
        &url("/v1/identities/once"),
        Some(json!({"tenantId": TENANT, "clientId": OTHER_CLIENT})),
    )
    .await;
    assert_eq!(put.status, 201, "{put:?}");
    let cred = admin(
        &http,
        Method::POST,
        &url("/v1/identities/once/federatedIdentityCredentials"),
        Some(json!({"name": "other", "issuer": up.issuer.url(),
                    "subject": "repo:contoso/other:ref:refs/heads/main", "oneTimeUse": true})),
    )
    .await;
    assert_eq!(cred.status, 201, "{cred:?}");

    // Someone holds the database's write lock: the replay check cannot record the token.
    let mut lock = sqlx::sqlite::SqliteConnectOptions::from_str(&dir.sqlite_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut lock)
        .await
        .unwrap();

    let token = up
        .issuer
        .mint(github_claims("contoso/other", "main"))
        .unwrap();
    let got = exchange(&http, &broker.url(), &token, ARM).await;
    drop(lock);
    assert_eq!(got.status, 503, "{got:?}");
    assert_eq!(got.error(), "store_unavailable", "{got:?}");
    let text = got.text.to_lowercase();
    for internal in ["locked", "sqlite", "database", "within", "sql"] {
        assert!(!text.contains(internal), "{internal:?} in {got:?}");
    }
    assert!(
        !got.body["request_id"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
    );
    // The detail is in the log, under the same request id.
    let request_id = got.body["request_id"].as_str().unwrap().to_owned();
    let logged = broker
        .output()
        .lines()
        .any(|l| l.contains(&request_id) && l.contains("internal failure"));
    assert!(logged, "{}", broker.output());
}
