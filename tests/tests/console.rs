//! The admin console at `/ui/`, end to end.
//!
//! Over plain HTTP (a client that follows no redirects and keeps cookies by hand): an
//! unauthenticated page redirects to sign-in, the cookies carry their attributes (and
//! `Secure` over TLS), a form POST without the CSRF token is refused and changes nothing,
//! a reader's write is refused and audited, values are escaped, sign-out ends the session.
//!
//! In a browser: `tests/browser/console.spec.mjs` drives Debian's Chromium with
//! playwright-core through sign-in, the "Add credential" wizard, "Test it", a reader's
//! refused save, deletion and the activity page, checks layout facts from the DOM (nothing
//! wider than the window, charts across the page) at 1280×900 and at a phone's 390 px,
//! and writes a screenshot of each page at both widths to `target/console-screenshots/`. Under `CI=true` a missing node, Chromium or
//! playwright-core is a failure; elsewhere the browser test says why it skips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use wif_tests::pki::Pki;
use wif_tests::*;

const WEB_CLIENT: &str = "5b1d7a3c-2e4f-4a6b-8c9d-0e1f2a3b4c5d";

/// One HTTP answer, with the body as text.
#[derive(Debug)]
struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The `Set-Cookie` header for `name`.
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }

    /// The value of the first hidden `csrf` field.
    fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start = self
            .body
            .find(marker)
            .unwrap_or_else(|| panic!("no csrf field in {}", self.body))
            + marker.len();
        let end = self.body[start..].find('"').unwrap();
        self.body[start..start + end].to_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

/// A browser-like client without a browser: cookies by hand, no redirects followed.
struct Client {
    base: String,
    http: reqwest::Client,
    cookies: Vec<(String, String)>,
}

impl Client {
    fn new(base: String, http: reqwest::ClientBuilder) -> Self {
        Self {
            base,
            http: http
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            cookies: Vec::new(),
        }
    }

    fn plain(stack: &Stack) -> Self {
        Self::new(stack.broker.url(), reqwest::Client::builder().no_proxy())
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let request = if self.cookies.is_empty() {
            request
        } else {
            request.header("cookie", self.cookie_header())
        };
        let response = request.send().await.unwrap();
        let page = Page {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        };
        for value in page.headers.get_all(SET_COOKIE) {
            let value = value.to_str().unwrap();
            let (pair, attributes) = value.split_once(';').unwrap_or((value, ""));
            let (name, v) = pair.split_once('=').unwrap();
            self.cookies.retain(|(k, _)| k != name);
            if !attributes.contains("Max-Age=0") {
                self.cookies.push((name.to_owned(), v.to_owned()));
            }
        }
        page
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let request = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(request).await
    }

    /// Signs in with `token` through the sign-in form.
    async fn sign_in(&mut self, token: &str) -> Page {
        let login = self.get("/ui/login").await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.body);
        let csrf = login.csrf();
        self.post(
            "/ui/login",
            &[
                ("csrf", &csrf),
                ("next", "/ui/identities"),
                ("token", token),
            ],
        )
        .await
    }

    /// The CSRF token of this session, from any page.
    async fn csrf(&mut self) -> String {
        let page = self.get("/ui/identities").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        page.csrf()
    }
}

fn assert_console_headers(page: &Page) {
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
}

/// Pages load nothing from anywhere but the broker.
fn assert_no_external_resources(page: &Page) {
    for attribute in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "<script>",
        " style=",
    ] {
        assert!(
            !page.body.contains(attribute),
            "the page has {attribute:?}:\n{}",
            page.body
        );
    }
}

async fn audit(stack: &Stack, query: &str) -> Vec<Value> {
    let answer = stack
        .admin("GET", &format!("/v1/audit?{query}"), None)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["value"].as_array().cloned().unwrap_or_default()
}

/// Waits until the audit trail in the store has an event `pred` accepts (events are
/// written in the background).
async fn audited_event(stack: &Stack, query: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        if let Some(event) = audit(stack, query).await.into_iter().find(|e| pred(e)) {
            return event;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no such audit event for {query}: {:?}",
        audit(stack, query).await
    );
}

#[tokio::test]
async fn an_admin_signs_in_and_forms_without_the_csrf_token_are_refused() {
    let stack = Stack::start().await;
    let mut browser = Client::plain(&stack);

    // Not signed in: pages redirect to the sign-in page, which says where to come back.
    let page = browser.get("/ui/identities?q=deploy").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(
        page.location(),
        "/ui/login?next=%2Fui%2Fidentities%3Fq%3Ddeploy"
    );
    assert_console_headers(&page);
    let page = browser.get("/ui/").await;
    assert_eq!(
        (page.status, page.location()),
        (StatusCode::SEE_OTHER, "/ui/identities")
    );

    // The sign-in form sets its double-submit cookie, HttpOnly and SameSite=Strict.
    let login = browser.get("/ui/login").await;
    assert_eq!(login.status, StatusCode::OK);
    assert_console_headers(&login);
    assert_no_external_resources(&login);
    let cookie = login.set_cookie("wif_ui_login").unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    let login_csrf = login.csrf();

    // Sign-in without the form's token, or with another one, is refused before the
    // token is even looked at.
    let page = browser
        .post("/ui/login", &[("token", &stack.admin_token)])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert!(page.body.contains("CSRF"), "{}", page.body);
    let page = browser
        .post(
            "/ui/login",
            &[("csrf", "0000"), ("token", &stack.admin_token)],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.set_cookie("wif_ui_session").is_none());

    // A wrong token: 401 and the form again, with the reason.
    let page = browser
        .post(
            "/ui/login",
            &[("csrf", &login_csrf), ("token", "not-an-admin-token")],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.body);
    assert!(page.body.contains("not accepted"), "{}", page.body);
    assert!(page.set_cookie("wif_ui_session").is_none());

    // The admin token: a session cookie, HttpOnly, SameSite=Strict, scoped to /ui.
    let page = browser.sign_in(&stack.admin_token).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location(), "/ui/identities");
    let session = page.set_cookie("wif_ui_session").unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age="] {
        assert!(session.contains(attribute), "{session}");
    }
    assert!(
        !session.contains(&stack.admin_token),
        "the token is never in a cookie"
    );
    let list = browser.get("/ui/identities").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(
        list.body.contains("data-identity=\"deploy\""),
        "{}",
        list.body
    );
    assert!(list.body.contains("alice"), "the signed-in admin is named");
    assert_no_external_resources(&list);
    let csrf = list.csrf();
    let missing = browser.get("/ui/no-such-page").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("Not found"), "{}", missing.body);
    assert_console_headers(&missing);
    audited_event(&stack, "kind=admin", |e| {
        e["action"] == "console.sign_in" && e["actor"] == "alice" && e["outcome"] == "ok"
    })
    .await;

    // A state-changing form without the CSRF token, or with a wrong one: 403, nothing
    // written.
    let identity = [
        ("name", "web"),
        ("tenant_id", TENANT),
        ("client_id", WEB_CLIENT),
        ("cloud", ""),
        ("authority_host", ""),
    ];
    let page = browser.post("/ui/identities", &identity).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert!(page.body.contains("CSRF"), "{}", page.body);
    let mut wrong = identity.to_vec();
    wrong.push(("csrf", "f00d"));
    assert_eq!(
        browser.post("/ui/identities", &wrong).await.status,
        StatusCode::FORBIDDEN
    );
    stack
        .admin("GET", "/v1/identities/web", None)
        .await
        .expect_error(404, "not_found");

    // With it: created through the admin plane, audited with the admin's name.
    let mut right = identity.to_vec();
    right.push(("csrf", &csrf));
    let page = browser.post("/ui/identities", &right).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(
        page.location(),
        "/ui/identities/web?notice=identity-created"
    );
    let created = stack.admin("GET", "/v1/identities/web", None).await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert_eq!(created.body["clientId"], WEB_CLIENT);
    audited_event(&stack, "kind=admin&identity=web", |e| {
        e["action"] == "identity.put" && e["actor"] == "alice" && e["outcome"] == "ok"
    })
    .await;

    // The wizard's live validation: JSON, CSRF-checked, the same rules as a save.
    let draft = [
        ("identity", "web"),
        ("scenario", "github"),
        ("gh_issuer", "https://token.actions.githubusercontent.com"),
        ("gh_org", "contoso"),
        ("gh_repo", "app"),
        ("gh_entity", "environment"),
        ("gh_value", "production"),
        ("name", "x"),
    ];
    let page = browser.post("/ui/api/draft", &draft).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let refused = page.json();
    assert_eq!(refused["error"], "csrf_token_required", "{refused}");
    assert!(
        refused["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    let mut with_csrf = draft.to_vec();
    with_csrf.push(("csrf", &csrf));
    let answer = browser.post("/ui/api/draft", &with_csrf).await.json();
    assert_eq!(
        answer["subject"], "repo:contoso/app:environment:production",
        "{answer}"
    );
    assert_eq!(
        answer["valid"], false,
        "a one-letter name breaks Entra's rule: {answer}"
    );
    assert!(
        answer["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["field"] == "name"),
        "{answer}"
    );
    let graph: Value = serde_json::from_str(answer["graph"].as_str().unwrap()).unwrap();
    assert_eq!(
        graph,
        json!({"name": "x", "issuer": "https://token.actions.githubusercontent.com",
               "subject": "repo:contoso/app:environment:production",
               "audiences": ["api://AzureADTokenExchange"]})
    );

    // Values are escaped wherever they are shown.
    let created = stack
        .admin(
            "POST",
            "/v1/identities/web/federatedIdentityCredentials",
            Some(json!({"name": "escaped", "issuer": stack.github.url(),
                "subject": "repo:contoso/app:ref:refs/heads/<b>x</b>",
                "description": "<script>alert(1)</script>"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let detail = browser.get("/ui/identities/web").await;
    assert!(
        detail
            .body
            .contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        detail.body
    );
    assert!(
        detail.body.contains("refs/heads/&lt;b&gt;x&lt;/b&gt;"),
        "{}",
        detail.body
    );
    assert!(!detail.body.contains("<script>alert(1)"));
    assert!(!detail.body.contains("<b>x</b>"));

    // Editing a credential: from a subject to an expression, through the same rules.
    let edit = browser
        .get("/ui/identities/web/credentials/escaped/edit")
        .await;
    assert_eq!(edit.status, StatusCode::OK, "{}", edit.body);
    assert!(
        edit.body.contains("refs/heads/&lt;b&gt;x&lt;/b&gt;"),
        "{}",
        edit.body
    );
    let github = stack.github.url();
    let mut change = vec![
        ("csrf", csrf.as_str()),
        ("other_issuer", github.as_str()),
        ("other_mode", "expression"),
        (
            "other_expression",
            "claims['sub'] matches 'repo:contoso/app:*'",
        ),
        ("audience", "api://AzureADTokenExchange"),
        ("description", "edited"),
        ("name", "renamed-is-ignored"),
    ];
    let page = browser
        .post("/ui/identities/web/credentials/escaped", &change)
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let stored = stack
        .admin(
            "GET",
            "/v1/identities/web/federatedIdentityCredentials/escaped",
            None,
        )
        .await;
    assert_eq!(stored.body["subject"], Value::Null, "{}", stored.body);
    assert_eq!(
        stored.body["claimsMatchingExpression"]["value"],
        "claims['sub'] matches 'repo:contoso/app:*'"
    );
    assert_eq!(stored.body["description"], "edited");
    change[3] = ("other_expression", "claims['sub'] equals 'x'");
    let page = browser
        .post("/ui/identities/web/credentials/escaped", &change)
        .await;
    assert_eq!(
        page.status,
        StatusCode::BAD_REQUEST,
        "a broken expression is refused"
    );
    assert!(
        page.body.contains("FFL has only the operators"),
        "{}",
        page.body
    );

    // Editing and deleting an identity.
    let page = browser
        .post(
            "/ui/identities/web",
            &[
                ("csrf", &csrf),
                ("tenant_id", TENANT),
                ("client_id", WEB_CLIENT),
                ("cloud", "usgov"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let web = stack.admin("GET", "/v1/identities/web", None).await;
    assert_eq!(web.body["cloud"], "usgov", "{}", web.body);

    // Declarative identities are read-only and say where they come from.
    let deploy = browser.get("/ui/identities/deploy").await;
    assert!(
        deploy.body.contains("Declared in the broker's config file"),
        "{}",
        deploy.body
    );
    assert!(deploy.body.contains("read-only (config file)"));

    let page = browser
        .post("/ui/identities/web/delete", &[("csrf", &csrf)])
        .await;
    assert_eq!(page.location(), "/ui/identities?notice=identity-deleted");
    stack
        .admin("GET", "/v1/identities/web", None)
        .await
        .expect_error(404, "not_found");

    // Sign-out ends the session on the server: the old cookie no longer works.
    let old = browser.cookie_header();
    let page = browser.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!(
        (page.status, page.location()),
        (StatusCode::SEE_OTHER, "/ui/login")
    );
    assert!(
        page.set_cookie("wif_ui_session")
            .unwrap()
            .contains("Max-Age=0")
    );
    let replay = browser
        .http
        .get(format!("{}/ui/identities", browser.base))
        .header("cookie", old)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_reader_sees_everything_and_changes_nothing() {
    let stack = Stack::start().await;
    let put = stack
        .admin(
            "PUT",
            "/v1/identities/web",
            Some(json!({"tenantId": TENANT, "clientId": WEB_CLIENT})),
        )
        .await;
    assert_eq!(put.status, 201, "{}", put.body);
    let created = stack
        .admin(
            "POST",
            "/v1/identities/web/federatedIdentityCredentials",
            Some(json!({
                "name": "main",
                "issuer": stack.github.url(),
                "subject": "repo:contoso/web:ref:refs/heads/main",
                "audiences": ["api://AzureADTokenExchange"],
                "description": "kept",
            })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let mut reader = Client::plain(&stack);
    assert_eq!(
        reader.sign_in(&stack.reader_token).await.status,
        StatusCode::SEE_OTHER
    );
    let csrf = reader.csrf().await;

    // The pages show the buttons, disabled.
    let wizard = reader.get("/ui/identities/web/credentials/new").await;
    assert_eq!(wizard.status, StatusCode::OK);
    let save = &wizard.body[wizard.body.find("id=\"save\"").unwrap()..];
    assert!(
        save[..save.find('>').unwrap()].contains("disabled"),
        "{save}"
    );

    // And the server refuses the POST, with the right CSRF token, and audits the attempt.
    let page = reader
        .post(
            "/ui/identities/web/credentials",
            &[
                ("csrf", &csrf),
                ("identity", "web"),
                ("scenario", "github"),
                ("gh_issuer", &stack.github.url()),
                ("gh_org", "contoso"),
                ("gh_repo", "app"),
                ("gh_entity", "branch"),
                ("gh_value", "staging"),
                ("name", "github-staging"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert!(page.body.contains("reader role"), "{}", page.body);
    let listed = stack
        .admin(
            "GET",
            "/v1/identities/web/federatedIdentityCredentials",
            None,
        )
        .await;
    let names: Vec<&Value> = listed.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["name"])
        .collect();
    assert_eq!(names, [&json!("main")], "nothing was written");
    audited_event(&stack, "kind=admin&identity=web", |e| {
        e["action"] == "credential.create" && e["actor"] == "grafana" && e["outcome"] == "forbidden"
    })
    .await;
    for (path, form) in [
        ("/ui/identities/web/delete", vec![("csrf", csrf.as_str())]),
        (
            "/ui/identities",
            vec![
                ("csrf", csrf.as_str()),
                ("name", "other"),
                ("tenant_id", TENANT),
                ("client_id", "6b1d7a3c-2e4f-4a6b-8c9d-0e1f2a3b4c5d"),
            ],
        ),
    ] {
        assert_eq!(
            reader.post(path, &form).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    assert_eq!(
        stack.admin("GET", "/v1/identities/web", None).await.status,
        200
    );
    // Editing and deleting the credential, and editing the identity, are refused too.
    let before_identity = stack.admin("GET", "/v1/identities/web", None).await.body;
    let credential_path = "/v1/identities/web/federatedIdentityCredentials/main";
    let before_credential = stack.admin("GET", credential_path, None).await.body;
    let github = stack.github.url();
    for (path, form) in [
        (
            "/ui/identities/web/credentials/main",
            vec![
                ("csrf", csrf.as_str()),
                ("scenario", "other"),
                ("other_issuer", github.as_str()),
                ("other_mode", "subject"),
                ("other_subject", "repo:contoso/app:ref:refs/heads/evil"),
                ("audience", "api://AzureADTokenExchange"),
                ("description", "changed by a reader"),
            ],
        ),
        (
            "/ui/identities/web/credentials/main/delete",
            vec![("csrf", csrf.as_str())],
        ),
        (
            "/ui/identities/web",
            vec![
                ("csrf", csrf.as_str()),
                ("tenant_id", TENANT),
                ("client_id", WEB_CLIENT),
                ("cloud", "usgov"),
            ],
        ),
    ] {
        assert_eq!(
            reader.post(path, &form).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    let after_credential = stack.admin("GET", credential_path, None).await;
    assert_eq!(
        after_credential.status, 200,
        "the credential is still there"
    );
    assert_eq!(after_credential.body, before_credential, "nothing changed");
    assert_eq!(
        stack.admin("GET", "/v1/identities/web", None).await.body,
        before_identity,
        "the identity did not change"
    );

    // Reading is allowed: "Test it" with claims, and the activity page.
    let page = reader
        .post(
            "/ui/test",
            &[
                ("csrf", &csrf),
                ("mode", "claims"),
                ("issuer", &stack.github.url()),
                ("claims", &json!({"sub": MAIN_SUBJECT}).to_string()),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("data-outcome=\"ok\""), "{}", page.body);
    assert_eq!(reader.get("/ui/activity").await.status, StatusCode::OK);

    // An identity may be named `new`: its page is not the create form, which is at `+new`.
    let put = stack
        .admin(
            "PUT",
            "/v1/identities/new",
            Some(json!({"tenantId": TENANT, "clientId": "7c1d7a3c-2e4f-4a6b-8c9d-0e1f2a3b4c5d"})),
        )
        .await;
    assert_eq!(put.status, 201, "{}", put.body);
    let detail = reader.get("/ui/identities/new").await;
    assert_eq!(detail.status, StatusCode::OK);
    assert!(
        detail.body.contains("7c1d7a3c-2e4f-4a6b-8c9d-0e1f2a3b4c5d"),
        "{}",
        detail.body
    );
    assert!(!detail.body.contains("data-testid=\"identity-form\""));
    let form = reader.get("/ui/identities/+new").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(
        form.body.contains("data-testid=\"identity-form\""),
        "{}",
        form.body
    );
    assert!(
        reader
            .get("/ui/identities")
            .await
            .body
            .contains("href=\"/ui/identities/+new\"")
    );
}

#[tokio::test]
async fn over_tls_the_cookies_are_secure() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let pki = Pki::new("console");
    pki.install(&cert, &key);
    let stack = Stack::start_with(move |cfg| {
        cfg.server.tls_cert = Some(cert);
        cfg.server.tls_key = Some(key);
    })
    .await;
    assert!(stack.broker.url().starts_with("https://"));
    wif_broker::crypto::install_provider();
    let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();
    let mut browser = Client::new(
        stack.broker.url(),
        reqwest::Client::builder().no_proxy().tls_certs_only([ca]),
    );
    // Over TLS the sign-in cookie carries the `__Host-` prefix: Secure, Path=/, no Domain,
    // so no other host (nor a plain-http page) can plant one.
    let login = browser.get("/ui/login").await;
    let cookie = login.set_cookie("__Host-wif_ui_login").unwrap();
    assert!(
        cookie.ends_with("; Secure") && cookie.contains("Path=/;") && !cookie.contains("Domain"),
        "{cookie}"
    );
    assert!(login.set_cookie("wif_ui_login").is_none());
    let page = browser.sign_in(&stack.admin_token).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let session = page.set_cookie("wif_ui_session").unwrap();
    assert!(
        session.contains("HttpOnly") && session.ends_with("; Secure"),
        "{session}"
    );
}

// ----- the browser ----------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What the browser test needs, or why it cannot run (a failure under `CI=true`).
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let chromium = std::env::var_os("WIF_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let node = PathBuf::from("node");
    let playwright = repo_root().join("tests/browser/node_modules/playwright-core/package.json");
    let problem = if !chromium.exists() {
        Some(format!(
            "{} is missing (apt-get install chromium, or set WIF_TEST_CHROMIUM)",
            chromium.display()
        ))
    } else if !std::process::Command::new(&node)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        Some("node is not on PATH".to_owned())
    } else if !playwright.exists() {
        Some("playwright-core is not installed (run `npm ci` in tests/browser)".to_owned())
    } else {
        None
    };
    match problem {
        None => Some((node, chromium)),
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and the browser test cannot run: {why}")
        }
        Some(why) => {
            eprintln!("skipping the browser test of the console: {why}");
            None
        }
    }
}

#[tokio::test]
async fn an_admin_registers_and_tests_a_credential_in_a_browser() {
    let Some((node, chromium)) = browser_tools() else {
        return;
    };
    let stack = Stack::start().await;

    // Real exchanges first, for the activity page: granted, denied, upstream error.
    stack
        .exchange(&stack.github_token("main"), ARM)
        .await
        .access_token();
    let pull_request = stack.github.mint(github_pull_request_claims(REPO)).unwrap();
    stack
        .exchange(&pull_request, ARM)
        .await
        .expect_error(403, "no_matching_credential");
    stack
        .exchange(&stack.github_token("release"), ARM)
        .await
        .expect_error(403, "entra_no_matching_federated_credential");
    // Refused before the token was read (no subject), and refused for the identity the
    // caller named.
    stack
        .exchange("not-a-jwt", ARM)
        .await
        .expect_error(401, "invalid_token");
    stack
        .exchange_form(
            &stack.github_token("main"),
            &[("scope", ARM), ("identity", "payments")],
        )
        .await
        .expect_error(403, "identity_not_allowed");
    for outcome in [
        "ok",
        "no_matching_credential",
        "entra_no_matching_federated_credential",
        "invalid_token",
        "identity_not_allowed",
    ] {
        audited_event(&stack, "kind=exchange", |e| e["outcome"] == outcome).await;
    }

    let screenshots = repo_root().join("target/console-screenshots");
    let _ = std::fs::remove_dir_all(&screenshots);
    std::fs::create_dir_all(&screenshots).unwrap();
    let script = repo_root().join("tests/browser/console.spec.mjs");
    let mut command = tokio::process::Command::new(node);
    command
        .arg(&script)
        .current_dir(repo_root().join("tests/browser"))
        .env("WIF_UI_URL", stack.broker.url())
        .env("WIF_UI_ADMIN_TOKEN", &stack.admin_token)
        .env("WIF_UI_READER_TOKEN", &stack.reader_token)
        .env("WIF_UI_TENANT", TENANT)
        .env("WIF_UI_CLIENT_ID", WEB_CLIENT)
        .env("WIF_UI_GITHUB_ISSUER", stack.github.url())
        .env("WIF_UI_TOKEN_MATCH", stack.github_token("staging"))
        .env("WIF_UI_TOKEN_PR", &pull_request)
        .env("WIF_UI_CHROMIUM", &chromium)
        .env("WIF_UI_SCREENSHOTS", &screenshots)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(240), command.output())
        .await
        .expect("the browser test did not finish within 240 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );

    // What the browser did is what the broker holds.
    let web = stack.admin("GET", "/v1/identities/web", None).await;
    assert_eq!(
        web.status, 200,
        "the browser created identity web: {}",
        web.body
    );
    let credentials = stack
        .admin(
            "GET",
            "/v1/identities/web/federatedIdentityCredentials",
            None,
        )
        .await;
    assert_eq!(
        credentials.body["value"],
        json!([]),
        "the browser deleted its credential"
    );
    let created = audited_event(&stack, "kind=admin&identity=web", |e| {
        e["action"] == "credential.create" && e["outcome"] == "ok"
    })
    .await;
    assert_eq!(created["actor"], "alice");
    assert_eq!(created["credential"], "github-staging");
    audited_event(&stack, "kind=admin&identity=web", |e| {
        e["action"] == "credential.create" && e["actor"] == "grafana" && e["outcome"] == "forbidden"
    })
    .await;
    audited_event(&stack, "kind=admin&identity=web", |e| {
        e["action"] == "credential.delete" && e["actor"] == "alice" && e["outcome"] == "ok"
    })
    .await;
    for page in [
        "sign-in",
        "identities",
        "identity",
        "wizard",
        "test-match",
        "test-pull-request",
        "reader-wizard",
        "deleted",
        "activity",
        "sign-in-phone",
        "identities-phone",
        "wizard-phone",
        "test-pull-request-phone",
        "activity-phone",
    ] {
        let file = screenshots.join(format!("{page}.png"));
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "no screenshot {}", file.display());
    }
}
