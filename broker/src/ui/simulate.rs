//! "Test it": paste a token, or an issuer and claims, and see what an exchange would
//! decide: which credentials match and, for near misses, which check or expression clause
//! failed. It runs [`crate::simulate::simulate`], the same code as `POST /v1/simulate`:
//! nothing is sent to Entra, no one-time-use token is spent, nothing changes. Readers may
//! use it. The pasted token is never logged or stored.

use std::fmt::Write as _;

use crate::api::ApiError;
use crate::api::body::Capped;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::Console;
use super::html::{self, Nav, esc, path_segment};
use super::session::{self, Form, Session, Signed};
use crate::api::admin::model::{SimulateRequest, SimulateResponse};
use crate::policy::{self, SubjectRule};

#[derive(Debug, Default, Deserialize)]
pub struct TestQuery {
    identity: Option<String>,
}

fn identity_options(console: &Console, selected: &str) -> String {
    let registry = console.app.broker.registry();
    let mut out = format!(
        "<option value=\"\"{}>(any: the one the token may act as)</option>",
        if selected.is_empty() { " selected" } else { "" }
    );
    for i in registry.identities() {
        let _ = write!(
            out,
            "<option value=\"{name}\"{sel}>{name}</option>",
            name = esc(&i.name),
            sel = if i.name == selected { " selected" } else { "" }
        );
    }
    out
}

fn form_html(console: &Console, session: &Session, form: &Form) -> String {
    let mode = form.get("mode").unwrap_or("token");
    let radio = |value: &str, label: &str| {
        format!(
            "<label class=\"check\"><input type=\"radio\" name=\"mode\" value=\"{value}\" data-testid=\"mode-{value}\"{}> {label}</label>",
            if mode == value { " checked" } else { "" }
        )
    };
    format!(
        "<form method=\"post\" action=\"/ui/test\" class=\"stacked\" id=\"test-form\">{csrf}\
         <div class=\"radios\">{r1}{r2}</div>\
         <div data-mode=\"token\"><label for=\"token\">Token (a JWT)</label>\
         <textarea id=\"token\" name=\"token\" rows=\"5\" spellcheck=\"false\" autocomplete=\"off\" placeholder=\"eyJhbGciOi...\">{token}</textarea>\
         <p class=\"hint\">Its signature and times are checked against the issuer's keys, as in an exchange.</p></div>\
         <div data-mode=\"claims\"><label for=\"issuer\">Issuer</label>\
         <input id=\"issuer\" name=\"issuer\" value=\"{issuer}\" spellcheck=\"false\" placeholder=\"https://token.actions.githubusercontent.com\">\
         <label for=\"claims\">Claims (JSON)</label>\
         <textarea id=\"claims\" name=\"claims\" rows=\"6\" spellcheck=\"false\" placeholder='{{\"sub\": \"repo:contoso/app:ref:refs/heads/main\", \"aud\": \"api://AzureADTokenExchange\"}}'>{claims}</textarea>\
         <p class=\"hint\">To try rules before any job has run: signature and times are skipped.</p></div>\
         <label for=\"identity\">Identity the workload would ask for</label><select id=\"identity\" name=\"identity\">{options}</select>\
         <label for=\"scope\">Scope it would ask for (optional)</label>\
         <input id=\"scope\" name=\"scope\" value=\"{scope}\" spellcheck=\"false\" placeholder=\"https://storage.azure.com/.default\">\
         <label for=\"source_address\">Address it would come from (optional)</label>\
         <input id=\"source_address\" name=\"source_address\" value=\"{source}\" spellcheck=\"false\" placeholder=\"10.1.2.3\">\
         <p class=\"hint\">Given these, the scope and source-network limits are judged too.</p>\
         <div class=\"buttons\"><button type=\"submit\" class=\"primary\" data-testid=\"run-test\">Test</button></div></form>",
        csrf = html::csrf_field(session),
        r1 = radio("token", "A token"),
        r2 = radio("claims", "Issuer and claims"),
        token = esc(form.get("token").unwrap_or_default()),
        issuer = esc(form.get("issuer").unwrap_or_default()),
        claims = esc(form.get("claims").unwrap_or_default()),
        options = identity_options(console, form.trimmed("identity")),
        scope = esc(form.get("scope").unwrap_or_default()),
        source = esc(form.get("source_address").unwrap_or_default()),
    )
}

fn page(
    console: &Console,
    session: &Session,
    form: &Form,
    result: &str,
    status: StatusCode,
) -> Response {
    let body = format!(
        "<h1>Test it</h1><p class=\"muted\">What would an exchange decide for this token, and why? \
         Nothing is sent to Entra and nothing changes.</p><div class=\"two\">{}<section class=\"result\" data-testid=\"result\">{result}</section></div>",
        form_html(console, session, form)
    );
    html::html(
        status,
        html::page("Test it", Some(session), Nav::Test, &body),
    )
}

/// `GET /ui/test?identity=`
pub async fn form(
    State(console): State<Console>,
    Signed(session): Signed,
    Query(query): Query<TestQuery>,
) -> Response {
    let mut form = Form::default();
    if let Some(identity) = &query.identity {
        form.set_default("identity", identity);
    }
    page(&console, &session, &form, "", StatusCode::OK)
}

/// What a credential expects, for the near-miss table.
fn expects(credential: Option<&policy::Credential>) -> String {
    credential
        .map(|c| {
            let rule = match &c.rule {
                SubjectRule::Exact(s) => format!("subject <code class=\"subject\">{}</code>", esc(s)),
                SubjectRule::Expression(e) => format!("expression <code class=\"subject\">{}</code>", esc(&e.to_string())),
            };
            format!("{rule}<br><span class=\"muted\">issuer <code>{}</code>, audience <code>{}</code></span>", esc(&c.issuer), esc(&c.audience))
        })
        .unwrap_or_default()
}

/// Every credential by (identity, name), built once per answer.
fn by_identity_and_name<'a>(
    credentials: impl IntoIterator<Item = &'a std::sync::Arc<policy::Credential>>,
) -> std::collections::HashMap<(&'a str, &'a str), &'a policy::Credential> {
    credentials
        .into_iter()
        .map(|c| ((c.identity.name.as_str(), &*c.name), c.as_ref()))
        .collect()
}

/// The answer, as HTML.
pub fn render(console: &Console, answer: &SimulateResponse) -> String {
    let mut out = String::new();
    if answer.outcome == "ok" {
        let _ = write!(
            out,
            "<p class=\"verdict ok\" data-testid=\"verdict\" data-outcome=\"ok\"><b>Match</b>: {}</p>",
            esc(&answer.description)
        );
    } else {
        let _ = write!(
            out,
            "<p class=\"verdict bad\" data-testid=\"verdict\" data-outcome=\"{code}\"><b>No match</b> — <code>{code}</code>: {desc}</p>",
            code = esc(&answer.outcome),
            desc = esc(&answer.description)
        );
    }
    out.push_str("<h2>Checks, in the order an exchange makes them</h2><table class=\"list checks\" data-testid=\"checks\"><thead><tr><th>Check</th><th>Result</th><th>Detail</th></tr></thead><tbody>");
    for c in &answer.checks {
        let _ = write!(
            out,
            "<tr><td>{}</td><td><span class=\"result-{r}\">{r}</span></td><td>{}</td></tr>",
            esc(&c.name),
            esc(c.detail.as_deref().unwrap_or_default()),
            r = esc(&c.result),
        );
    }
    out.push_str("</tbody></table>");
    out.push_str("<h2>Matching credentials</h2>");
    if answer.matches.is_empty() {
        out.push_str("<p class=\"muted\" data-testid=\"matches\">None.</p>");
    } else {
        out.push_str("<ul data-testid=\"matches\">");
        for m in &answer.matches {
            let _ = write!(
                out,
                "<li class=\"match\"><a href=\"/ui/identities/{}\">{}</a> / {}</li>",
                path_segment(&m.identity),
                esc(&m.identity),
                esc(&m.credential)
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("<h2>Near misses</h2>");
    if answer.near_misses.is_empty() {
        out.push_str("<p class=\"muted\" data-testid=\"near-misses\">None.</p>");
    } else {
        out.push_str("<table class=\"list near\" data-testid=\"near-misses\"><thead><tr><th>Identity / credential</th><th>Failed check</th><th>Why</th><th>The credential expects</th></tr></thead><tbody>");
        let registry = console.app.broker.registry();
        let credentials = by_identity_and_name(registry.credentials());
        for m in &answer.near_misses {
            let clause = m
                .clause
                .as_deref()
                .map(|c| {
                    format!(
                        "<br>clause {}: <code>{}</code>",
                        m.clause_index.unwrap_or(0),
                        esc(c)
                    )
                })
                .unwrap_or_default();
            let _ = write!(
                out,
                "<tr class=\"near-miss\" data-credential=\"{cred}\" data-failed=\"{failed}\"><td>{identity} / {cred}</td><td><b>{failed}</b></td><td>{detail}{clause}</td><td>{expects}</td></tr>",
                identity = esc(&m.identity),
                cred = esc(&m.credential),
                failed = esc(&m.failed),
                detail = esc(&m.detail),
                expects = expects(
                    credentials
                        .get(&(m.identity.as_str(), m.credential.as_str()))
                        .copied()
                ),
            );
        }
        out.push_str("</tbody></table>");
    }
    out
}

/// `POST /ui/test`
pub async fn run(
    State(console): State<Console>,
    Signed(session): Signed,
    body: Result<Capped, ApiError>,
) -> Response {
    let form = match session::checked_form(&console, &session, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let identity = form.optional("identity");
    let (scope, source_address) = (form.optional("scope"), form.optional("source_address"));
    let request = if form.get("mode") == Some("claims") {
        let claims = match serde_json::from_str::<serde_json::Value>(form.trimmed("claims")) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            Ok(_) | Err(_) => {
                let message = "<p class=\"error\" data-testid=\"error\">The claims must be a JSON object, e.g. <code>{\"sub\": \"...\"}</code>.</p>";
                return page(&console, &session, &form, message, StatusCode::BAD_REQUEST);
            }
        };
        SimulateRequest {
            token: None,
            issuer: form.optional("issuer"),
            claims: Some(claims),
            identity,
            scope,
            source_address,
        }
    } else {
        SimulateRequest {
            token: Some(form.trimmed("token").to_owned()),
            issuer: None,
            claims: None,
            identity,
            scope,
            source_address,
        }
    };
    match crate::simulate::simulate(&console.app.broker, request).await {
        Ok(answer) => {
            let result = render(&console, &answer);
            page(&console, &session, &form, &result, StatusCode::OK)
        }
        Err(e) => {
            let result = html::error_box(&e);
            page(&console, &session, &form, &result, e.status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Registry;

    /// Two identities, each with a credential named `main`: the near-miss table must
    /// show each identity's own, found by (identity, name).
    fn registry() -> Registry {
        let mut text = String::new();
        for (name, client) in [("deploy", "1"), ("web", "2")] {
            text.push_str(&format!(
                "[[identities]]\nname = \"{name}\"\ntenant_id = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"\n\
                 client_id = \"3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6{client}\"\n\
                 [[identities.federated_credentials]]\nname = \"main\"\n\
                 issuer = \"https://token.actions.githubusercontent.com\"\nsubject = \"repo:c/{name}:ref:refs/heads/main\"\n"
            ));
        }
        let cfg = wif_config::BrokerConfig::from_toml(&text, "test").unwrap();
        Registry::from_config(&cfg).unwrap()
    }

    #[test]
    fn near_misses_show_the_credential_of_their_own_identity() {
        let registry = registry();
        let by_key = by_identity_and_name(registry.credentials());
        assert_eq!(by_key.len(), 2);
        let web = expects(by_key.get(&("web", "main")).copied());
        assert!(web.contains("repo:c/web:ref:refs/heads/main"), "{web}");
        assert!(expects(by_key.get(&("web", "other")).copied()).is_empty());
    }

    #[test]
    fn credentials_are_grouped_by_identity_once() {
        let registry = registry();
        let grouped = super::super::identities::credentials_by_identity(registry.credentials());
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped["deploy"].len(), 1);
        assert_eq!(grouped["deploy"][0].identity.name, "deploy");
        assert!(!grouped.contains_key("nobody"));
    }
}
