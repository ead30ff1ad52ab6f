//! Federated credentials: the "Add credential" wizard (scenarios that build the subject,
//! live validation with Entra's rules, a preview of the exact Graph JSON), edit and
//! delete.
//!
//! The wizard works without JavaScript (the server builds the subject from the submitted
//! fields); with it, `console.js` posts the form to `/ui/api/draft` as the admin types
//! and shows what the server answers: the same builders and the same rules
//! ([`crate::admin::Admin::check_credential`]) that the save will apply.

use crate::error::ErrorCode;
use crate::redact::untrusted;
use std::fmt::Write as _;

use crate::api::body::Capped;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Console;
use super::html::{self, Nav, esc, path_segment};
use super::session::{self, CSRF_HEADER, Form, Session, Signed};
use super::wizard::{self, Built, Rule, SCENARIOS, Scenario};
use crate::admin::{AdminError, CredentialInput, Expect};
use crate::api::ApiError;
use crate::api::admin::model::{ClaimsMatchingExpression, CredentialRequest};
use crate::clock::rfc3339;
use crate::policy::conditions::{Restrictions, StoredRateLimit, parse_time};
use crate::policy::{self, SubjectRule};
use crate::redact::Untrusted;

/// One problem with the draft: a wizard field (`gh_org`, ...) or a Graph field (`name`,
/// `issuer`, `subject`, ...).
#[derive(Debug, Clone, Serialize)]
pub struct DraftProblem {
    pub field: String,
    pub message: String,
}

/// What the wizard would save, and whether it may.
#[derive(Debug, Clone, Serialize)]
pub struct Draft {
    pub valid: bool,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub expression: Option<String>,
    /// The credential as Graph writes it (the body of a `POST .../federatedIdentityCredentials`).
    pub graph: String,
    pub problems: Vec<DraftProblem>,
    /// What may still go wrong although the broker would save it (not counted in `valid`).
    pub warnings: Vec<DraftProblem>,
}

/// What the wizard says of a valid draft, true whatever the identity's assertion source.
pub const VALID_TEXT: &str = "Valid: the broker can save this credential.";

/// With the `passthrough` assertion Entra receives the caller's own token, so it must
/// hold a matching federated credential itself; it cannot for an expression on an issuer
/// or a claim it does not support ([`crate::entra_setup::entra_cannot_hold`]). A warning,
/// not a problem: the broker may still save it.
pub fn passthrough_warnings(
    assertion: wif_config::AssertionSource,
    issuer: &str,
    expression: Option<&str>,
) -> Vec<DraftProblem> {
    if assertion != wif_config::AssertionSource::Passthrough {
        return Vec::new();
    }
    expression
        .and_then(|e| crate::entra_setup::entra_cannot_hold(issuer, e))
        .map(|message| DraftProblem {
            field: "expression".into(),
            message,
        })
        .into_iter()
        .collect()
}

/// The credential the form describes, for the store.
fn input_of(console: &Console, identity: &str, form: &Form, built: &Built) -> CredentialInput {
    let audience = form
        .optional("audience")
        .unwrap_or_else(|| console.app.admin.default_audience(identity));
    let (subject, expression) = match &built.rule {
        Rule::Subject(s) => (Some(s.clone()), None),
        Rule::Expression(e) => (None, Some(e.clone())),
    };
    CredentialInput {
        name: form.trimmed("name").to_owned(),
        issuer: built.issuer.clone(),
        subject,
        claims_matching_expression: expression,
        audiences: vec![audience],
        description: form.optional("description"),
        one_time_use: form.checked("one_time_use"),
        restrictions: Default::default(),
    }
}

/// The form's names of the least-privilege fields (docs/admin.md, "Least privilege").
const CONTROL_FIELDS: [&str; 8] = [
    "disabled",
    "allowed_scopes",
    "source_networks",
    "max_token_age",
    "not_before",
    "not_after",
    "rate_per_minute",
    "rate_burst",
];

/// A list field: entries separated by commas, spaces or new lines.
fn list(form: &Form, name: &str) -> Vec<String> {
    form.trimmed(name)
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The least-privilege controls the form describes; a field that does not parse is a
/// problem named after it.
fn restrictions_of(form: &Form) -> Result<Restrictions, Vec<DraftProblem>> {
    let mut problems = Vec::new();
    let mut number = |name: &str| -> Option<u64> {
        let text = form.trimmed(name);
        if text.is_empty() {
            return None;
        }
        text.parse()
            .map_err(|_| {
                problems.push(DraftProblem {
                    field: name.to_owned(),
                    message: format!("{name}: {:?} is not a whole number", Untrusted::new(text)),
                })
            })
            .ok()
    };
    let max_token_age_seconds = number("max_token_age");
    let per_minute = number("rate_per_minute");
    let burst = number("rate_burst");
    let mut time = |name: &str| -> Option<u64> {
        form.optional(name).and_then(|t| {
            parse_time(&t)
                .map_err(|message| {
                    problems.push(DraftProblem {
                        field: name.to_owned(),
                        message,
                    })
                })
                .ok()
        })
    };
    let not_before = time("not_before");
    let not_after = time("not_after");
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let restrictions = Restrictions {
        disabled: form.checked("disabled"),
        allowed_scopes: list(form, "allowed_scopes"),
        source_networks: list(form, "source_networks"),
        max_token_age_seconds,
        not_before,
        not_after,
        rate_limit: per_minute.map(|p| {
            StoredRateLimit {
                per_minute: clamp(p),
                burst: burst.map_or(0, clamp),
            }
            .normalized()
        }),
    };
    if problems.is_empty() {
        Ok(restrictions)
    } else {
        Err(problems)
    }
}

/// The form fields of stored controls, for the edit page.
fn control_pairs(r: &Restrictions) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut push = |name: &str, value: String| {
        if !value.is_empty() {
            pairs.push((name.to_owned(), value));
        }
    };
    push(
        "disabled",
        if r.disabled {
            "on".into()
        } else {
            String::new()
        },
    );
    push("allowed_scopes", r.allowed_scopes.join(", "));
    push("source_networks", r.source_networks.join(", "));
    push(
        "max_token_age",
        r.max_token_age_seconds
            .map(|n| n.to_string())
            .unwrap_or_default(),
    );
    push("not_before", r.not_before.map(rfc3339).unwrap_or_default());
    push("not_after", r.not_after.map(rfc3339).unwrap_or_default());
    if let Some(limit) = r.rate_limit {
        push("rate_per_minute", limit.per_minute.to_string());
        push("rate_burst", limit.burst.to_string());
    }
    pairs
}

/// The least-privilege fieldset of the wizard.
fn controls_fieldset(form: &Form) -> String {
    format!(
        "<fieldset class=\"controls\" data-testid=\"controls\"><legend>Least privilege (broker extensions Entra does not have)</legend>\
         {disabled}{scopes}{networks}{age}{from}{until}{rate}{burst}</fieldset>",
        disabled = checkbox(
            form,
            "disabled",
            "Disabled: admit nothing, keep the credential (<code>disabled</code>)"
        ),
        scopes = field(
            form,
            "allowed_scopes",
            "Allowed scopes",
            "https://storage.azure.com/.default",
            "Comma separated; <code>*</code> wildcards. Empty: the identity's, or any."
        ),
        networks = field(
            form,
            "source_networks",
            "Source networks",
            "10.0.0.0/8",
            "CIDR, comma separated. Empty: anywhere."
        ),
        age = field(
            form,
            "max_token_age",
            "Maximum token age (seconds)",
            "600",
            "Refuse tokens issued longer ago."
        ),
        from = field(
            form,
            "not_before",
            "Not before",
            "2026-12-01T08:00:00Z",
            "RFC 3339."
        ),
        until = field(
            form,
            "not_after",
            "Not after",
            "2026-12-15T18:00:00Z",
            "RFC 3339."
        ),
        rate = field(
            form,
            "rate_per_minute",
            "Exchanges per minute for each caller",
            "60",
            "On each broker replica. Empty: the [rate_limits] default."
        ),
        burst = field(
            form,
            "rate_burst",
            "Burst",
            "10",
            "Default: the rate per minute."
        ),
    )
}

/// The least-privilege fields of a request, as the Graph JSON preview shows them.
fn controls_request(r: &Restrictions) -> CredentialRequest {
    let some_list = |l: &Vec<String>| (!l.is_empty()).then(|| l.clone());
    CredentialRequest {
        disabled: r.disabled.then_some(true),
        allowed_scopes: some_list(&r.allowed_scopes),
        source_networks: some_list(&r.source_networks),
        max_token_age_seconds: r.max_token_age_seconds.map(Some),
        not_before: r.not_before.map(|t| Some(rfc3339(t))),
        not_after: r.not_after.map(|t| Some(rfc3339(t))),
        rate_limit: r.rate_limit.map(Some),
        ..Default::default()
    }
}

fn graph_json(input: &CredentialInput) -> String {
    let request = CredentialRequest {
        name: Some(input.name.clone()),
        issuer: Some(input.issuer.clone()),
        subject: input.subject.clone().map(Some),
        claims_matching_expression: input.claims_matching_expression.clone().map(|value| {
            Some(ClaimsMatchingExpression {
                value,
                language_version: 1,
            })
        }),
        audiences: Some(input.audiences.clone()),
        description: input.description.clone().map(Some),
        one_time_use: input.one_time_use.then_some(true),
        ..controls_request(&input.restrictions)
    };
    serde_json::to_string_pretty(&request).unwrap_or_default()
}

/// Builds and checks what the form describes. `editing` names the credential being
/// changed (it does not conflict with itself).
pub fn draft(
    console: &Console,
    identity: &policy::Identity,
    form: &Form,
    editing: Option<&str>,
) -> (Draft, Option<CredentialInput>) {
    let mut problems = Vec::new();
    let built = Scenario::from_fields(|n| form.get(n))
        .map_err(|p| vec![p])
        .and_then(|s| s.build());
    let built = match built {
        Ok(b) => Some(b),
        Err(ps) => {
            problems.extend(ps.into_iter().map(|p| DraftProblem {
                field: p.field.to_owned(),
                message: p.message,
            }));
            None
        }
    };
    let name = form.trimmed("name");
    let mut input = None;
    let mut graph = String::new();
    let restrictions = restrictions_of(form).unwrap_or_else(|mut ps| {
        problems.append(&mut ps);
        Restrictions::default()
    });
    if let Some(built) = &built {
        let mut candidate = input_of(console, &identity.name, form, built);
        candidate.restrictions = restrictions;
        problems.extend(
            console
                .app
                .admin
                .check_credential(&candidate)
                .into_iter()
                .map(|v| DraftProblem {
                    field: v.field.to_owned(),
                    message: v.message,
                }),
        );
        let registry = console.app.broker.registry();
        for other in registry
            .credentials_of(&identity.name)
            .filter(|c| Some(&*c.name) != editing)
        {
            if editing.is_none() && *other.name == *name {
                problems.push(DraftProblem {
                    field: "name".into(),
                    message: format!(
                        "identity {:?} already has a credential named {name:?}",
                        identity.name
                    ),
                });
            }
            if let (SubjectRule::Exact(s), Some(subject)) = (&other.rule, &candidate.subject)
                && *other.issuer == *candidate.issuer
                && **s == **subject
            {
                problems.push(DraftProblem {
                    field: "subject".into(),
                    message: format!(
                        "credential {:?} already has this issuer and subject",
                        other.name
                    ),
                });
            }
        }
        graph = graph_json(&candidate);
        input = Some(candidate);
    }
    let (subject, expression) = match built.as_ref().map(|b| &b.rule) {
        Some(Rule::Subject(s)) => (Some(s.clone()), None),
        Some(Rule::Expression(e)) => (None, Some(e.clone())),
        None => (None, None),
    };
    let warnings = built
        .as_ref()
        .map(|b| passthrough_warnings(identity.assertion, &b.issuer, expression.as_deref()))
        .unwrap_or_default();
    let draft = Draft {
        valid: problems.is_empty(),
        issuer: built.map(|b| b.issuer),
        subject,
        expression,
        graph,
        problems,
        warnings,
    };
    let input = if draft.valid { input } else { None };
    (draft, input)
}

/// `POST /ui/api/draft`: the live preview. JSON in the documented error shape on refusal.
pub async fn draft_endpoint(
    State(console): State<Console>,
    headers: axum::http::HeaderMap,
    Signed(session): Signed,
    body: Capped,
) -> Response {
    let form = Form::parse(&body.bytes);
    let presented = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .or_else(|| form.get(session::CSRF_FIELD));
    if !session::tokens_equal(&session.csrf, presented) {
        return ApiError::new(
            ErrorCode::CsrfTokenRequired,
            "the request did not carry the console's CSRF token",
        )
        .into_response();
    }
    let registry = console.app.broker.registry();
    let name = form.trimmed("identity");
    let Some(identity) = registry.identity(name) else {
        return ApiError::new(
            ErrorCode::NotFound,
            format!("no identity named {:?}", untrusted(name)),
        )
        .into_response();
    };
    let editing = form.optional("editing");
    let (draft, _) = draft(&console, identity, &form, editing.as_deref());
    Json(draft).into_response()
}

fn field(form: &Form, name: &str, label: &str, placeholder: &str, hint: &str) -> String {
    format!(
        "<label for=\"{name}\">{label}</label>\
         <input id=\"{name}\" name=\"{name}\" value=\"{}\" placeholder=\"{}\" spellcheck=\"false\" autocomplete=\"off\">{}",
        esc(form.get(name).unwrap_or_default()),
        esc(placeholder),
        if hint.is_empty() {
            String::new()
        } else {
            format!("<p class=\"hint\">{hint}</p>")
        }
    )
}

fn checkbox(form: &Form, name: &str, label: &str) -> String {
    format!(
        "<label class=\"check\"><input type=\"checkbox\" id=\"{name}\" name=\"{name}\"{}> {label}</label>",
        if form.checked(name) { " checked" } else { "" }
    )
}

fn select(form: &Form, name: &str, label: &str, options: &[(&str, &str)]) -> String {
    let current = form.get(name).unwrap_or_default();
    let mut out =
        format!("<label for=\"{name}\">{label}</label><select id=\"{name}\" name=\"{name}\">");
    for (value, text) in options {
        let _ = write!(
            out,
            "<option value=\"{value}\"{}>{text}</option>",
            if current == *value { " selected" } else { "" }
        );
    }
    out.push_str("</select>");
    out
}

fn scenario_fieldset(key: &str, legend: &str, inner: String) -> String {
    format!(
        "<fieldset class=\"scenario\" data-scenario=\"{key}\"><legend>{legend}</legend>{inner}</fieldset>"
    )
}

fn other_fields(form: &Form) -> String {
    let mode = form.get("other_mode").unwrap_or("subject");
    let radio = |value: &str, label: &str| {
        format!(
            "<label class=\"check\"><input type=\"radio\" name=\"other_mode\" value=\"{value}\"{}> {label}</label>",
            if mode == value { " checked" } else { "" }
        )
    };
    format!(
        "{}<div class=\"radios\">{}{}</div><div data-mode=\"subject\">{}</div><div data-mode=\"expression\">\
         <label for=\"other_expression\">Claims-matching expression (FFL)</label>\
         <textarea id=\"other_expression\" name=\"other_expression\" rows=\"3\" spellcheck=\"false\" placeholder=\"claims['sub'] matches 'organization:contoso:*' and claims['aud'] eq 'api://AzureADTokenExchange'\">{}</textarea>\
         <p class=\"hint\">Clauses <code>claims['NAME'] eq 'VALUE'</code> or <code>matches</code> (<code>*</code>, <code>?</code>) joined by <code>and</code>; nested claims as <code>claims['kubernetes.io']['namespace']</code>.</p></div>",
        field(
            form,
            "other_issuer",
            "Issuer",
            "https://app.terraform.io",
            "Compared with the token's <code>iss</code> exactly: case and a trailing '/' matter."
        ),
        radio("subject", "Exact subject"),
        radio("expression", "Expression"),
        field(
            form,
            "other_subject",
            "Subject",
            "organization:contoso:project:web:workspace:prod:run_phase:apply",
            "Compared with the token's <code>sub</code> exactly and case-sensitively."
        ),
        esc(form.get("other_expression").unwrap_or_default()),
    )
}

fn scenario_fields(form: &Form) -> String {
    let mut out = String::new();
    out.push_str(&scenario_fieldset(
        "github",
        "GitHub Actions",
        format!(
            "{}{}{}{}{}{}<div data-when=\"gh_ids\">{}{}</div>",
            field(form, "gh_issuer", "Issuer", wizard::GITHUB_ISSUER, "github.com: <code>https://token.actions.githubusercontent.com</code>; an enterprise with its own issuer adds <code>/SLUG</code>; GitHub Enterprise Server: <code>https://HOST/_services/token</code>."),
            field(form, "gh_org", "Organization (owner)", "contoso", ""),
            field(form, "gh_repo", "Repository", "app", ""),
            select(form, "gh_entity", "Entity", &[("branch", "Branch"), ("tag", "Tag"), ("environment", "Environment"), ("pull_request", "Pull request")]),
            field(form, "gh_value", "Branch, tag or environment", "main", "Wildcards <code>*</code> and <code>?</code> (e.g. <code>release/*</code>) make it an expression."),
            checkbox(form, "gh_ids", "Immutable form with owner and repository ids (<code>repo:ORG@ID/REPO@ID:…</code>)"),
            field(form, "gh_org_id", "Organization id", "1342004", ""),
            field(form, "gh_repo_id", "Repository id", "70107786", ""),
        ),
    ));
    out.push_str(&scenario_fieldset(
        "kubernetes",
        "Kubernetes service account",
        format!(
            "{}{}{}{}",
            field(form, "k8s_issuer", "Cluster issuer URL", "https://westeurope.oic.prod-aks.azure.com/TENANT/CLUSTER/", "The cluster's <code>--service-account-issuer</code>; AKS issuers end in '/', and it must be copied exactly."),
            field(form, "k8s_namespace", "Namespace", "payments", ""),
            field(form, "k8s_sa", "Service account", "api", ""),
            checkbox(form, "k8s_all", "Every service account in the namespace (an expression)"),
        ),
    ));
    out.push_str(&scenario_fieldset(
        "azure_devops",
        "Azure DevOps service connection",
        format!(
            "{}{}{}{}{}",
            field(form, "ado_org_id", "Organization id", "00000000-0000-0000-0000-000000000000", "The GUID in the issuer <code>https://vstoken.dev.azure.com/{org-guid}</code> the service connection shows."),
            field(form, "ado_org", "Organization", "contoso", ""),
            field(form, "ado_project", "Project", "web", ""),
            field(form, "ado_connection", "Service connection", "prod-connection", ""),
            field(form, "ado_issuer", "Issuer (instead of the organization id)", "", "Only <code>https://vstoken.dev.azure.com/{org-guid}</code>. A connection issued by <code>login.microsoftonline.com</code> has <code>/eid1/...</code> subjects: use <em>Other issuer</em>."),
        ),
    ));
    out.push_str(&scenario_fieldset(
        "gitlab",
        "GitLab CI",
        format!(
            "{}{}{}{}",
            field(
                form,
                "gl_issuer",
                "Instance URL (issuer)",
                wizard::GITLAB_ISSUER,
                ""
            ),
            field(form, "gl_project", "Project path", "group/project", ""),
            select(
                form,
                "gl_ref_type",
                "Ref type",
                &[("branch", "Branch"), ("tag", "Tag")]
            ),
            field(
                form,
                "gl_ref",
                "Branch or tag",
                "main",
                "Wildcards make it an expression."
            ),
        ),
    ));
    out.push_str(&scenario_fieldset(
        "other",
        "Other issuer",
        other_fields(form),
    ));
    out
}

fn problems_list(problems: &[DraftProblem]) -> String {
    let mut out = String::new();
    for p in problems {
        let _ = write!(
            out,
            "<li data-field=\"{}\"><b>{}</b>: {}</li>",
            esc(&p.field),
            esc(&p.field),
            esc(&p.message)
        );
    }
    out
}

/// Whether the wizard creates a credential or edits one.
enum Mode<'a> {
    Create,
    Edit(&'a str),
}

#[allow(clippy::too_many_arguments)]
fn wizard_page(
    console: &Console,
    session: &Session,
    identity: &policy::Identity,
    form: &Form,
    mode: Mode<'_>,
    error: Option<&ApiError>,
    status: StatusCode,
) -> Response {
    let seg = path_segment(&identity.name);
    let editing = match mode {
        Mode::Edit(name) => Some(name),
        Mode::Create => None,
    };
    let (draft, _) = draft(console, identity, form, editing);
    let can_save = session.can_write() && !identity.read_only;
    let save_disabled = if !session.can_write() {
        html::disabled_unless_admin(session)
    } else if identity.read_only || !draft.valid {
        " disabled"
    } else {
        ""
    };
    let (title, action, scenarios, hidden) = match mode {
        Mode::Create => {
            let current = form.get("scenario").unwrap_or("github");
            let mut radios = String::from(
                "<fieldset class=\"scenarios\"><legend>Where do the tokens come from?</legend>",
            );
            for (key, label) in SCENARIOS {
                let _ = write!(
                    radios,
                    "<label class=\"scenario-choice\"><input type=\"radio\" name=\"scenario\" value=\"{key}\" data-testid=\"scenario-{key}\"{}> {label}</label>",
                    if current == key { " checked" } else { "" }
                );
            }
            radios.push_str("</fieldset>");
            (
                format!("Add a credential to {}", identity.name),
                format!("/ui/identities/{seg}/credentials"),
                radios + &scenario_fields(form),
                String::new(),
            )
        }
        Mode::Edit(name) => (
            format!("Edit credential {name}"),
            format!("/ui/identities/{seg}/credentials/{}", path_segment(name)),
            scenario_fieldset("other", "Issuer and subject", other_fields(form)),
            format!(
                "<input type=\"hidden\" name=\"scenario\" value=\"other\"><input type=\"hidden\" name=\"editing\" value=\"{}\">",
                esc(name)
            ),
        ),
    };
    let name_attrs = if editing.is_some() {
        " readonly"
    } else {
        " required"
    };
    let rule_kind = if draft.expression.is_some() {
        "expression"
    } else {
        "subject"
    };
    let rule_text = draft
        .subject
        .as_deref()
        .or(draft.expression.as_deref())
        .unwrap_or_default();
    let body = format!(
        "<p class=\"crumbs\"><a href=\"/ui/identities\">Identities</a> › <a href=\"/ui/identities/{seg}\">{identity_name}</a> ›</p>\
         <h1>{title}</h1>{read_only}{error}\
         <div class=\"wizard\"><form method=\"post\" action=\"{action}\" id=\"wizard\" class=\"stacked\" data-draft=\"/ui/api/draft\" data-can-save=\"{can_save}\">\
         {csrf}<input type=\"hidden\" name=\"identity\" value=\"{identity_name}\">{hidden}{scenarios}\
         <fieldset class=\"common\"><legend>The credential</legend>\
         <label for=\"name\">Name</label><input id=\"name\" name=\"name\" value=\"{name}\" spellcheck=\"false\" autocomplete=\"off\" placeholder=\"github-main\"{name_attrs}>\
         <p class=\"hint\">3–120 letters, digits, '-' and '_'; unique on this identity; cannot be changed later.</p>\
         <label for=\"audience\">Audience</label><input id=\"audience\" name=\"audience\" value=\"{audience}\" spellcheck=\"false\">\
         <p class=\"hint\">The token's <code>aud</code> must include it. Entra's default for this identity's cloud is <code>{default_audience}</code>.</p>\
         <label for=\"description\">Description</label><input id=\"description\" name=\"description\" value=\"{description}\">\
         {once}</fieldset>{controls}\
         <div class=\"buttons\"><button type=\"submit\" class=\"primary\" id=\"save\" data-testid=\"save\"{save_disabled}>Save credential</button>\
         <a class=\"button\" href=\"/ui/identities/{seg}\">Cancel</a></div></form>\
         <aside class=\"preview\" aria-live=\"polite\"><h2>What tokens must carry</h2>\
         <p><span class=\"kind\" id=\"rule-kind\">{rule_kind}</span></p><p><code id=\"subject\" data-testid=\"subject\">{rule_text}</code></p>\
         <p class=\"muted\">issuer <code id=\"issuer\" data-testid=\"issuer\">{issuer}</code></p>\
         <h2>Checks</h2><p id=\"valid\" data-testid=\"valid\" class=\"{valid_class}\">{valid_text}</p>\
         <ul id=\"problems\" class=\"problems\" data-testid=\"problems\">{problems}</ul>\
         <ul id=\"warnings\" class=\"warnings\" data-testid=\"warnings\">{warnings}</ul>\
         <h2>Graph JSON that will be stored</h2><pre id=\"graph\" data-testid=\"graph\">{graph}</pre></aside></div>",
        identity_name = esc(&identity.name),
        title = esc(&title),
        read_only = if identity.read_only {
            "<p class=\"error\" data-testid=\"read-only\">This identity is declared in the config file: its credentials are read-only here. The wizard still shows what a credential would look like.</p>"
        } else if !session.can_write() {
            "<p class=\"error\" data-testid=\"read-only\">You are signed in with the reader role: try the wizard and its checks, but saving is for admins.</p>"
        } else {
            ""
        },
        error = error.map(html::error_box).unwrap_or_default(),
        action = esc(&action),
        can_save = can_save,
        csrf = html::csrf_field(session),
        name = esc(form.get("name").unwrap_or_default()),
        audience = esc(form.get("audience").unwrap_or_default()),
        default_audience = esc(&console.app.admin.default_audience(&identity.name)),
        description = esc(form.get("description").unwrap_or_default()),
        once = checkbox(
            form,
            "one_time_use",
            "Accept each token only once (<code>oneTimeUse</code>, a broker extension)"
        ),
        controls = controls_fieldset(form),
        rule_text = esc(rule_text),
        issuer = esc(draft.issuer.as_deref().unwrap_or_default()),
        valid_class = if draft.valid { "ok" } else { "bad" },
        valid_text = if draft.valid {
            VALID_TEXT
        } else {
            "Not valid yet:"
        },
        problems = problems_list(&draft.problems),
        warnings = problems_list(&draft.warnings),
        graph = esc(&draft.graph),
    );
    html::html(
        status,
        html::page(&title, Some(session), Nav::Identities, &body),
    )
}

fn identity_not_found(session: &Session, name: &str) -> Response {
    html::error_page(
        StatusCode::NOT_FOUND,
        Some(session),
        "No such identity",
        &format!("There is no identity named {:?}.", untrusted(name)),
    )
}

/// `GET /ui/identities/{name}/credentials/new`
pub async fn wizard_form(
    State(console): State<Console>,
    Signed(session): Signed,
    Path(name): Path<String>,
) -> Response {
    let registry = console.app.broker.registry();
    let Some(identity) = registry.identity(&name) else {
        return identity_not_found(&session, &name);
    };
    let mut form = Form::default();
    form.set_default("scenario", "github");
    form.set_default("gh_issuer", wizard::GITHUB_ISSUER);
    form.set_default("gh_entity", "branch");
    form.set_default("gl_issuer", wizard::GITLAB_ISSUER);
    form.set_default("gl_ref_type", "branch");
    form.set_default("other_mode", "subject");
    form.set_default("audience", &console.app.admin.default_audience(&name));
    wizard_page(
        &console,
        &session,
        identity,
        &form,
        Mode::Create,
        None,
        StatusCode::OK,
    )
}

/// `POST /ui/identities/{name}/credentials`
pub async fn create(
    State(console): State<Console>,
    Signed(session): Signed,
    Path(name): Path<String>,
    body: Result<Capped, ApiError>,
) -> Response {
    const ACTION: &str = "credential.create";
    let form = match session::checked_form(&console, &session, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let credential = form.optional("name");
    if let Some(r) = session::reader_refusal(
        &console,
        &session,
        ACTION,
        Some(&name),
        credential.as_deref(),
    ) {
        return r;
    }
    let registry = console.app.broker.registry();
    let Some(identity) = registry.identity(&name) else {
        return identity_not_found(&session, &name);
    };
    let (draft, input) = draft(&console, identity, &form, None);
    let input = input.ok_or_else(|| problems(&draft));
    let result = console
        .app
        .admin
        .create_credential(&session.actor(), &name, input)
        .await;
    match result {
        Ok(stored) => html::redirect(&format!(
            "/ui/identities/{}?notice=credential-created&credential={}",
            path_segment(&name),
            html::url_component(&stored.name)
        )),
        Err(e) => wizard_page(
            &console,
            &session,
            identity,
            &form,
            Mode::Create,
            Some(&e),
            e.status,
        ),
    }
}

/// A draft's problems as the refusal of the write it was for.
fn problems(draft: &Draft) -> ApiError {
    AdminError::Invalid(
        draft
            .problems
            .iter()
            .map(|p| crate::policy::rules::Violation {
                field: graph_field(&p.field),
                message: p.message.clone(),
            })
            .collect(),
    )
    .into()
}

/// The `'static` field name of a problem, for [`AdminError::Invalid`].
fn graph_field(field: &str) -> &'static str {
    const KNOWN: [&str; 39] = [
        "name",
        "issuer",
        "subject",
        "claimsMatchingExpression",
        "audiences",
        "description",
        "scenario",
        "gh_issuer",
        "gh_org",
        "gh_repo",
        "gh_entity",
        "gh_value",
        "gh_org_id",
        "gh_repo_id",
        "k8s_issuer",
        "k8s_namespace",
        "k8s_sa",
        "ado_org_id",
        "ado_org",
        "ado_project",
        "ado_connection",
        "ado_issuer",
        "gl_issuer",
        "gl_project",
        "gl_ref_type",
        "gl_ref",
        "other_issuer",
        "other_mode",
        "other_subject",
        "other_expression",
        "audience",
        "disabled",
        "allowed_scopes",
        "source_networks",
        "max_token_age",
        "not_before",
        "not_after",
        "rate_per_minute",
        "rate_burst",
    ];
    KNOWN
        .into_iter()
        .find(|k| *k == field)
        .unwrap_or("credential")
}

/// The stored credential, for the edit and delete pages.
async fn stored_credential(
    console: &Console,
    session: &Session,
    identity: &str,
    credential: &str,
) -> Result<crate::store::StoredCredential, Response> {
    let registry = console.app.broker.registry();
    match registry.identity(identity) {
        None => return Err(identity_not_found(session, identity)),
        Some(i) if i.read_only => {
            return Err(html::error_page(
                StatusCode::CONFLICT,
                Some(session),
                "Read-only credential",
                &format!(
                    "Identity {identity:?} is declared in the config file; its credentials are read-only here."
                ),
            ));
        }
        Some(_) => {}
    }
    let found = match console.app.broker.store() {
        Some(store) => store.get_credential(identity, credential).await,
        None => Ok(None),
    };
    match found {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(html::error_page(
            StatusCode::NOT_FOUND,
            Some(session),
            "No such credential",
            &format!(
                "Identity {:?} has no federated credential {:?}.",
                untrusted(identity),
                untrusted(credential)
            ),
        )),
        Err(e) => Err(html::error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(session),
            "Store unavailable",
            &crate::api::error::store_failure(&e),
        )),
    }
}

/// `GET /ui/identities/{name}/credentials/{credential}/edit`
pub async fn edit_form(
    State(console): State<Console>,
    Signed(session): Signed,
    Path((name, credential)): Path<(String, String)>,
) -> Response {
    let stored = match stored_credential(&console, &session, &name, &credential).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let registry = console.app.broker.registry();
    let Some(identity) = registry.identity(&name) else {
        return identity_not_found(&session, &name);
    };
    let mut pairs = vec![
        ("scenario".to_owned(), "other".to_owned()),
        ("name".to_owned(), stored.name.clone()),
        ("other_issuer".to_owned(), stored.issuer.clone()),
        (
            "audience".to_owned(),
            stored.audiences.first().cloned().unwrap_or_default(),
        ),
        (
            "description".to_owned(),
            stored.description.clone().unwrap_or_default(),
        ),
    ];
    match (&stored.subject, &stored.claims_matching_expression) {
        (_, Some(e)) => {
            pairs.push(("other_mode".into(), "expression".into()));
            pairs.push(("other_expression".into(), e.clone()));
        }
        (s, None) => {
            pairs.push(("other_mode".into(), "subject".into()));
            pairs.push(("other_subject".into(), s.clone().unwrap_or_default()));
        }
    }
    if stored.one_time_use {
        pairs.push(("one_time_use".into(), "on".into()));
    }
    pairs.extend(control_pairs(&stored.restrictions));
    let form = Form::from_pairs(pairs);
    wizard_page(
        &console,
        &session,
        identity,
        &form,
        Mode::Edit(&stored.name),
        None,
        StatusCode::OK,
    )
}

/// `POST /ui/identities/{name}/credentials/{credential}`
pub async fn update(
    State(console): State<Console>,
    Signed(session): Signed,
    Path((name, credential)): Path<(String, String)>,
    body: Result<Capped, ApiError>,
) -> Response {
    const ACTION: &str = "credential.update";
    let form = match session::checked_form(&console, &session, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Some(r) =
        session::reader_refusal(&console, &session, ACTION, Some(&name), Some(&credential))
    {
        return r;
    }
    let stored = match stored_credential(&console, &session, &name, &credential).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let registry = console.app.broker.registry();
    let Some(identity) = registry.identity(&name) else {
        return identity_not_found(&session, &name);
    };
    // The name is fixed: whatever the form says, this credential is edited.
    let mut pairs: Vec<(String, String)> = vec![
        ("name".into(), stored.name.clone()),
        ("scenario".into(), "other".into()),
    ];
    for key in [
        "csrf",
        "other_issuer",
        "other_mode",
        "other_subject",
        "other_expression",
        "audience",
        "description",
        "one_time_use",
    ]
    .into_iter()
    .chain(CONTROL_FIELDS)
    {
        if let Some(v) = form.get(key) {
            pairs.push((key.into(), v.into()));
        }
    }
    let form = Form::from_pairs(pairs);
    let (draft, input) = draft(&console, identity, &form, Some(&stored.name));
    let change = input.ok_or_else(|| problems(&draft)).map(|new| {
        move |current: &mut CredentialInput| {
            current.issuer = new.issuer;
            current.subject = new.subject;
            current.claims_matching_expression = new.claims_matching_expression;
            current.audiences = new.audiences;
            current.description = new.description;
            current.one_time_use = new.one_time_use;
            current.restrictions = new.restrictions;
            Ok(())
        }
    });
    let result = console
        .app
        .admin
        .update_credential(&session.actor(), &name, &stored.name, change, &Expect::Any)
        .await;
    match result {
        Ok(c) => html::redirect(&format!(
            "/ui/identities/{}?notice=credential-updated&credential={}",
            path_segment(&name),
            html::url_component(&c.name)
        )),
        Err(e) => wizard_page(
            &console,
            &session,
            identity,
            &form,
            Mode::Edit(&stored.name),
            Some(&e),
            e.status,
        ),
    }
}

/// `GET /ui/identities/{name}/credentials/{credential}/delete`: asks first.
pub async fn delete_form(
    State(console): State<Console>,
    Signed(session): Signed,
    Path((name, credential)): Path<(String, String)>,
) -> Response {
    let stored = match stored_credential(&console, &session, &name, &credential).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let seg = path_segment(&name);
    let rule = match (&stored.subject, &stored.claims_matching_expression) {
        (_, Some(e)) => format!("expression <code>{}</code>", esc(e)),
        (s, None) => format!(
            "subject <code>{}</code>",
            esc(s.as_deref().unwrap_or_default())
        ),
    };
    let body = format!(
        "<p class=\"crumbs\"><a href=\"/ui/identities\">Identities</a> › <a href=\"/ui/identities/{seg}\">{identity}</a> ›</p>\
         <h1>Delete credential {cred}?</h1>\
         <p>Tokens from <code>{issuer}</code> with {rule} will be refused from the next exchange on.</p>\
         <form method=\"post\" action=\"/ui/identities/{seg}/credentials/{cseg}/delete\">{csrf}\
         <div class=\"buttons\"><button type=\"submit\" class=\"danger\" data-testid=\"confirm-delete\"{disabled}>Delete</button>\
         <a class=\"button\" href=\"/ui/identities/{seg}\">Cancel</a></div></form>",
        identity = esc(&name),
        cred = esc(&stored.name),
        cseg = path_segment(&stored.name),
        issuer = esc(&stored.issuer),
        csrf = html::csrf_field(&session),
        disabled = html::disabled_unless_admin(&session),
    );
    html::html(
        StatusCode::OK,
        html::page("Delete credential", Some(&session), Nav::Identities, &body),
    )
}

/// `POST /ui/identities/{name}/credentials/{credential}/delete`
pub async fn delete(
    State(console): State<Console>,
    Signed(session): Signed,
    Path((name, credential)): Path<(String, String)>,
    body: Result<Capped, ApiError>,
) -> Response {
    const ACTION: &str = "credential.delete";
    if let Err(r) = session::checked_form(&console, &session, body).await {
        return r;
    }
    if let Some(r) =
        session::reader_refusal(&console, &session, ACTION, Some(&name), Some(&credential))
    {
        return r;
    }
    let result = console
        .app
        .admin
        .delete_credential(&session.actor(), &name, &credential, &Expect::Any)
        .await;
    match result {
        Ok(()) => html::redirect(&format!(
            "/ui/identities/{}?notice=credential-deleted&credential={}",
            path_segment(&name),
            html::url_component(&credential)
        )),
        Err(e) => html::error_page(e.status, Some(&session), "Not deleted", &e.description),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wif_config::AssertionSource;

    const K8S: &str = "https://westeurope.oic.prod-aks.azure.com/t/u/";
    const NS: &str = "claims['sub'] matches 'system:serviceaccount:apps:*'";

    #[test]
    fn passthrough_expressions_entra_cannot_hold_are_warned_about() {
        let w = passthrough_warnings(AssertionSource::Passthrough, K8S, Some(NS));
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].field, "expression");
        assert!(w[0].message.contains("Entra must hold the same credential"));
        assert!(w[0].message.contains("broker assertion"));

        // A claim Entra does not accept, on an issuer it accepts expressions for.
        let w = passthrough_warnings(
            AssertionSource::Passthrough,
            wizard::GITLAB_ISSUER,
            Some("claims['sub'] eq 'a' and claims['ref'] eq 'main'"),
        );
        assert_eq!(w.len(), 1);
        assert!(w[0].message.contains("ref"), "{}", w[0].message);
    }

    #[test]
    fn what_entra_accepts_or_other_sources_are_not_warned_about() {
        let gh = "claims['sub'] matches 'repo:c/r:ref:refs/heads/*' and claims['job_workflow_ref'] matches 'c/w/*'";
        for issuer in [
            wizard::GITHUB_ISSUER.to_owned(),
            format!("{}/contoso", wizard::GITHUB_ISSUER),
        ] {
            assert!(
                passthrough_warnings(AssertionSource::Passthrough, &issuer, Some(gh)).is_empty()
            );
        }
        assert!(
            passthrough_warnings(
                AssertionSource::Passthrough,
                "https://app.terraform.io",
                Some("claims['sub'] matches 'organization:o:*'")
            )
            .is_empty()
        );
        // Exact subjects are fine everywhere.
        assert!(passthrough_warnings(AssertionSource::Passthrough, K8S, None).is_empty());
        // Other sources: Entra only trusts the broker (or the host), never the caller.
        for source in [
            AssertionSource::Broker,
            AssertionSource::ManagedIdentity,
            AssertionSource::Certificate,
        ] {
            assert!(passthrough_warnings(source, K8S, Some(NS)).is_empty());
        }
    }

    #[test]
    fn the_valid_message_promises_nothing_of_entra() {
        assert!(!VALID_TEXT.contains("Entra"));
        assert!(
            !html::notice(Some("credential-created"), Some("x")).contains("no propagation delay")
        );
    }
}
