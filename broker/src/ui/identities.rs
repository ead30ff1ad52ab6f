//! Identities: the list with search, the detail page with its federated credentials,
//! and create / edit / delete. Declarative identities (from the config file) are shown
//! read-only with where they come from. Writes go through [`crate::admin::Admin`] and are
//! audited with the signed-in admin, exactly like the admin API's.

use crate::error::ErrorCode;
use crate::redact::untrusted;
use std::fmt::Write as _;

use crate::api::body::Capped;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use wif_config::Cloud;

use super::Console;
use super::html::{self, Nav, esc, path_segment};
use super::session::{self, Form, Session, Signed};
use crate::admin::Expect;
use crate::admin::IdentityInput;
use crate::api::ApiError;
use crate::policy::{self, SubjectRule};

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    q: Option<String>,
    notice: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct NoticeQuery {
    notice: Option<String>,
    credential: Option<String>,
}

fn matches_search(
    identity: &policy::Identity,
    credentials: &[&policy::Credential],
    q: &str,
) -> bool {
    let q = q.to_lowercase();
    let hit = |s: &str| s.to_lowercase().contains(&q);
    hit(&identity.name)
        || hit(&identity.client_id)
        || hit(&identity.tenant_id)
        || credentials.iter().any(|c| {
            hit(&c.name)
                || hit(&c.issuer)
                || match &c.rule {
                    SubjectRule::Exact(s) => hit(s),
                    SubjectRule::Expression(e) => hit(&e.to_string()),
                }
        })
}

fn source_badge(identity: &policy::Identity) -> &'static str {
    if identity.read_only {
        "<span class=\"badge badge-config\" title=\"Declared in the config file; read-only here\">config file</span>"
    } else {
        "<span class=\"badge badge-api\" title=\"Registered through the admin API or this console\">API</span>"
    }
}

/// The credentials of each identity, by identity name, in registry order: one pass over
/// all credentials instead of one per identity.
pub fn credentials_by_identity<'a>(
    credentials: impl IntoIterator<Item = &'a std::sync::Arc<policy::Credential>>,
) -> std::collections::HashMap<&'a str, Vec<&'a policy::Credential>> {
    let mut by_identity: std::collections::HashMap<&str, Vec<&policy::Credential>> =
        std::collections::HashMap::new();
    for c in credentials {
        by_identity
            .entry(c.identity.name.as_str())
            .or_default()
            .push(c.as_ref());
    }
    by_identity
}

/// `GET /ui/identities?q=`
pub async fn list(
    State(console): State<Console>,
    Signed(session): Signed,
    Query(query): Query<ListQuery>,
) -> Response {
    let registry = console.app.broker.registry();
    let q = query.q.as_deref().map(str::trim).unwrap_or_default();
    let mut rows = String::new();
    let mut shown = 0usize;
    let mut total = 0usize;
    let by_identity = credentials_by_identity(registry.credentials());
    for identity in registry.identities() {
        total += 1;
        let credentials: &[&policy::Credential] = by_identity
            .get(identity.name.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if !q.is_empty() && !matches_search(identity, credentials, q) {
            continue;
        }
        shown += 1;
        let _ = write!(
            rows,
            "<tr data-identity=\"{name}\"><td><a href=\"/ui/identities/{seg}\">{name}</a></td><td>{badge}</td>\
             <td><code>{client}</code></td><td><code>{tenant}</code></td><td class=\"num\">{count}</td></tr>",
            name = esc(&identity.name),
            seg = path_segment(&identity.name),
            badge = source_badge(identity),
            client = esc(&identity.client_id),
            tenant = esc(&identity.tenant_id),
            count = credentials.len(),
        );
    }
    if rows.is_empty() {
        rows = if total == 0 {
            "<tr><td colspan=\"5\" class=\"muted\">No identities yet. Create one, or declare them in the config file.</td></tr>".to_owned()
        } else {
            format!(
                "<tr><td colspan=\"5\" class=\"muted\">No identity matches {}.</td></tr>",
                esc(q)
            )
        };
    }
    let body = format!(
        "{notice}<div class=\"heading\"><h1>Identities</h1>\
         <a class=\"button primary{new_disabled}\" href=\"/ui/identities/+new\" data-testid=\"new-identity\"{new_aria}>New identity</a></div>\
         <p class=\"muted\">Entra app registrations and user-assigned managed identities, and who may act as them.</p>\
         <form class=\"search\" method=\"get\" action=\"/ui/identities\" role=\"search\">\
         <input type=\"search\" name=\"q\" value=\"{q}\" placeholder=\"Search names, client ids, issuers, subjects\" aria-label=\"Search\">\
         <button type=\"submit\">Search</button></form>\
         <p class=\"muted\">{shown} of {total}</p>\
         <table class=\"list\" data-testid=\"identities\"><thead><tr><th>Name</th><th>Source</th><th>Client id</th><th>Tenant</th><th class=\"num\">Credentials</th></tr></thead>\
         <tbody>{rows}</tbody></table>",
        notice = html::notice(query.notice.as_deref(), None),
        new_disabled = if session.can_write() { "" } else { " disabled" },
        new_aria = if session.can_write() {
            ""
        } else {
            " aria-disabled=\"true\" tabindex=\"-1\""
        },
        q = esc(q),
        total = wif_cli::output::count(total, "identity", "identities"),
    );
    html::html(
        StatusCode::OK,
        html::page("Identities", Some(&session), Nav::Identities, &body),
    )
}

fn not_found(session: &Session, name: &str) -> Response {
    html::error_page(
        StatusCode::NOT_FOUND,
        Some(session),
        "No such identity",
        &format!("There is no identity named {:?}.", untrusted(name)),
    )
}

/// How a credential decides, for display.
pub fn rule_cell(rule: &SubjectRule) -> String {
    match rule {
        SubjectRule::Exact(s) => format!(
            "<span class=\"kind\">subject</span> <code class=\"subject\">{}</code>",
            esc(s)
        ),
        SubjectRule::Expression(e) => format!(
            "<span class=\"kind\">expression</span> <code class=\"subject\">{}</code>",
            esc(&e.to_string())
        ),
    }
}

/// Badges for a credential's or identity's least-privilege controls (docs/admin.md).
pub fn control_badges(r: &crate::policy::conditions::Restrictions) -> String {
    let mut out = String::new();
    let mut badge = |class: &str, text: String| {
        let _ = write!(
            out,
            " <span class=\"badge{class}\" data-testid=\"control\">{}</span>",
            esc(&text)
        );
    };
    if r.disabled {
        badge(" danger", "disabled".into());
    }
    if !r.allowed_scopes.is_empty() {
        badge("", format!("scopes: {}", r.allowed_scopes.join(", ")));
    }
    if !r.source_networks.is_empty() {
        badge("", format!("from: {}", r.source_networks.join(", ")));
    }
    if let Some(age) = r.max_token_age_seconds {
        badge("", format!("tokens at most {age} s old"));
    }
    if let Some(from) = r.not_before {
        badge("", format!("from {}", crate::clock::rfc3339(from)));
    }
    if let Some(until) = r.not_after {
        badge("", format!("until {}", crate::clock::rfc3339(until)));
    }
    if let Some(limit) = r.rate_limit {
        badge(
            "",
            format!("{}/min, bursts of {}", limit.per_minute, limit.burst),
        );
    }
    out
}

fn assertion_text(identity: &policy::Identity) -> String {
    match identity.assertion {
        wif_config::AssertionSource::Broker => format!(
            "broker (the subject Entra's credential names: {})",
            identity
                .assertion_subject
                .as_deref()
                .unwrap_or(&identity.name)
        ),
        other => other.as_str().to_owned(),
    }
}

/// `GET /ui/identities/{name}`
pub async fn detail(
    State(console): State<Console>,
    Signed(session): Signed,
    Path(name): Path<String>,
    Query(query): Query<NoticeQuery>,
) -> Response {
    let registry = console.app.broker.registry();
    let Some(identity) = registry.identity(&name) else {
        return not_found(&session, &name);
    };
    let seg = path_segment(&identity.name);
    let writable = session.can_write() && !identity.read_only;
    let disabled = if writable { "" } else { " disabled" };
    let aria = if writable {
        ""
    } else {
        " aria-disabled=\"true\" tabindex=\"-1\""
    };
    let provenance = if identity.read_only {
        format!(
            "<p class=\"provenance\" data-testid=\"provenance\">Declared in the broker's config file \
             (<code>[[identities]] name = \"{}\"</code>, with its \
             <code>[[identities.federated_credentials]]</code>). Read-only here and through the API: \
             change the file to change it.</p>",
            esc(&identity.name)
        )
    } else {
        let when = |t: Option<u64>| t.map(crate::clock::rfc3339).unwrap_or_else(|| "?".into());
        format!(
            "<p class=\"provenance\" data-testid=\"provenance\">Registered through the admin API or this console; \
             created {}, last changed {}.</p>",
            esc(&when(identity.created_at)),
            esc(&when(identity.updated_at))
        )
    };
    let credentials: Vec<&policy::Credential> = registry
        .credentials_of(&identity.name)
        .map(|c| c.as_ref())
        .collect();
    let mut rows = String::new();
    for c in &credentials {
        let actions = if identity.read_only {
            "<span class=\"muted\">read-only (config file)</span>".to_owned()
        } else {
            let cseg = path_segment(&c.name);
            format!(
                "<a class=\"button small{disabled}\" href=\"/ui/identities/{seg}/credentials/{cseg}/edit\"{aria}>Edit</a> \
                 <a class=\"button small danger{disabled}\" href=\"/ui/identities/{seg}/credentials/{cseg}/delete\" data-testid=\"delete-{name}\"{aria}>Delete</a>",
                name = esc(&c.name)
            )
        };
        let _ = write!(
            rows,
            "<tr data-credential=\"{name}\"><td>{name}</td><td><code>{issuer}</code></td><td>{rule}</td>\
             <td><code>{aud}</code></td><td>{desc}{once}{controls}</td><td class=\"actions\">{actions}</td></tr>",
            name = esc(&c.name),
            issuer = esc(&c.issuer),
            rule = rule_cell(&c.rule),
            aud = esc(&c.audience),
            desc = esc(c.description.as_deref().unwrap_or_default()),
            once = if c.one_time_use {
                " <span class=\"badge\">one-time use</span>"
            } else {
                ""
            },
            controls = control_badges(&c.conditions.restrictions),
        );
    }
    if rows.is_empty() {
        rows = "<tr><td colspan=\"6\" class=\"muted\" data-testid=\"no-credentials\">No federated credentials: no token can act as this identity yet.</td></tr>".to_owned();
    }
    let cloud = identity
        .cloud
        .map(|c| match c {
            Cloud::Public => "public",
            Cloud::UsGov => "usgov",
            Cloud::China => "china",
        })
        .unwrap_or("(from the authority host)");
    let body = format!(
        "{notice}<p class=\"crumbs\"><a href=\"/ui/identities\">Identities</a> ›</p>\
         <div class=\"heading\"><h1>{name} {badge}</h1><div class=\"buttons\">\
         <a class=\"button{disabled}\" href=\"/ui/identities/{seg}/edit\"{aria}>Edit</a>\
         <a class=\"button danger{disabled}\" href=\"/ui/identities/{seg}/delete\"{aria}>Delete</a></div></div>\
         {provenance}\
         <dl class=\"props\"><dt>Tenant</dt><dd><code>{tenant}</code></dd><dt>Client id</dt><dd><code>{client}</code></dd>\
         <dt>Cloud</dt><dd>{cloud}</dd><dt>Authority host</dt><dd><code>{authority}</code></dd>\
         <dt>Assertion</dt><dd>{assertion}</dd>\
         <dt>Least privilege</dt><dd data-testid=\"identity-controls\">{controls}</dd></dl>\
         <div class=\"heading\"><h2>Federated credentials</h2><div class=\"buttons\">\
         <a class=\"button\" href=\"/ui/test?identity={q}\">Test it</a>\
         <a class=\"button primary{disabled}\" href=\"/ui/identities/{seg}/credentials/new\" data-testid=\"add-credential\"{aria}>Add credential</a></div></div>\
         <table class=\"list\" data-testid=\"credentials\"><thead><tr><th>Name</th><th>Issuer</th><th>Matches</th><th>Audience</th><th>Description</th><th></th></tr></thead>\
         <tbody>{rows}</tbody></table>{entra}",
        entra = entra_section(&console, identity, &credentials),
        notice = html::notice(query.notice.as_deref(), query.credential.as_deref()),
        name = esc(&identity.name),
        badge = source_badge(identity),
        tenant = esc(&identity.tenant_id),
        client = esc(&identity.client_id),
        authority = esc(&identity.authority_host),
        assertion = esc(&assertion_text(identity)),
        controls = match control_badges(&identity.conditions.restrictions) {
            b if b.is_empty() => "none (any scope, the default rate)".to_owned(),
            b => b,
        },
        q = esc(&html::url_component(&identity.name)),
    );
    html::html(
        StatusCode::OK,
        html::page(&identity.name, Some(&session), Nav::Identities, &body),
    )
}

/// What Entra must hold for this identity (the same as `wif-broker entra plan`).
fn entra_section(
    console: &Console,
    identity: &policy::Identity,
    credentials: &[&policy::Credential],
) -> String {
    let views: Vec<_> = credentials
        .iter()
        .map(|c| crate::api::admin::credential_view(c))
        .collect();
    let setup = crate::entra_setup::plan(
        &crate::api::admin::identity_view(&console.app, identity),
        &views,
    );
    let mut out = format!(
        "<section data-testid=\"entra-setup\"><h2>In Entra</h2>\
         <p class=\"muted\">What the app registration or managed identity <code>{client}</code> must hold for this identity to work \
         ({count} federated credential(s); Entra allows {max}). <code>wif-broker entra plan</code> prints the same.</p>",
        client = esc(&setup.client_id),
        count = setup.federated_identity_credentials.len(),
        max = crate::entra_setup::ENTRA_MAX_CREDENTIALS,
    );
    for c in &setup.federated_identity_credentials {
        let graph = serde_json::to_string_pretty(&c.graph).unwrap_or_default();
        let _ = write!(
            out,
            "<h3>{name}</h3><pre><code>{graph}</code></pre><pre><code>{app}</code></pre>",
            name = esc(c.graph.name.as_deref().unwrap_or_default()),
            graph = esc(&graph),
            app = esc(&c.az_app_command),
        );
        if let Some(cmd) = &c.az_identity_command {
            let _ = write!(out, "<pre><code>{}</code></pre>", esc(cmd));
        }
    }
    if !setup.broker_only.is_empty() {
        out.push_str("<p>Only through the broker assertion:</p><ul data-testid=\"broker-only\">");
        for b in &setup.broker_only {
            let _ = write!(
                out,
                "<li><code>{}</code>: {}</li>",
                esc(&b.credential),
                esc(&b.reason)
            );
        }
        out.push_str("</ul>");
    }
    for note in &setup.notes {
        let _ = write!(out, "<p class=\"muted\">{}</p>", esc(note));
    }
    out.push_str("</section>");
    out
}

/// The identity form's values, as typed.
#[derive(Debug, Default)]
struct IdentityFields {
    name: String,
    tenant_id: String,
    client_id: String,
    cloud: String,
    authority_host: String,
    /// Least privilege (docs/admin.md): refuse every exchange for the identity.
    disabled: bool,
    /// Comma separated scope patterns; empty: any.
    allowed_scopes: String,
}

impl IdentityFields {
    fn from_form(form: &Form) -> Self {
        Self {
            name: form.trimmed("name").to_owned(),
            tenant_id: form.trimmed("tenant_id").to_owned(),
            client_id: form.trimmed("client_id").to_owned(),
            cloud: form.trimmed("cloud").to_owned(),
            authority_host: form.trimmed("authority_host").to_owned(),
            disabled: form.checked("disabled"),
            allowed_scopes: form.trimmed("allowed_scopes").to_owned(),
        }
    }

    /// As stored: the cloud and authority host only when they were given.
    fn of(identity: &crate::store::StoredIdentity) -> Self {
        let cloud = identity
            .cloud
            .and_then(|c| serde_json::to_value(c).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Self {
            name: identity.name.clone(),
            tenant_id: identity.tenant_id.clone(),
            client_id: identity.client_id.clone(),
            cloud,
            authority_host: identity.authority_host.clone().unwrap_or_default(),
            disabled: identity.restrictions.disabled,
            allowed_scopes: identity.restrictions.allowed_scopes.join(", "),
        }
    }

    /// The identity as written; an edit keeps the assertion source and subject (and the
    /// rate limit, which the form does not show) as they are.
    fn input(
        &self,
        assertion: wif_config::AssertionSource,
        assertion_subject: Option<String>,
        restrictions: crate::policy::conditions::Restrictions,
    ) -> Result<IdentityInput, ApiError> {
        let cloud = match self.cloud.as_str() {
            "" => None,
            other => Some(
                serde_json::from_value::<Cloud>(serde_json::Value::String(other.to_owned()))
                    .map_err(|_| {
                        ApiError::new(
                            ErrorCode::InvalidRequest,
                            format!("cloud {other:?} is not public, usgov or china"),
                        )
                    })?,
            ),
        };
        Ok(IdentityInput {
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            cloud,
            authority_host: (!self.authority_host.is_empty()).then(|| self.authority_host.clone()),
            assertion,
            assertion_subject,
            restrictions: crate::policy::conditions::Restrictions {
                disabled: self.disabled,
                allowed_scopes: self
                    .allowed_scopes
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned)
                    .collect(),
                ..restrictions
            },
        })
    }
}

fn identity_form(
    session: &Session,
    action: &str,
    fields: &IdentityFields,
    editing: bool,
    error: Option<&ApiError>,
) -> String {
    let cloud_option = |value: &str, label: &str| {
        format!(
            "<option value=\"{value}\"{}>{label}</option>",
            if fields.cloud == value {
                " selected"
            } else {
                ""
            }
        )
    };
    let name_input = if editing {
        format!(
            "<input id=\"name\" name=\"name\" value=\"{}\" readonly>",
            esc(&fields.name)
        )
    } else {
        format!(
            "<input id=\"name\" name=\"name\" value=\"{}\" required maxlength=\"120\" pattern=\"[A-Za-z0-9][A-Za-z0-9_\\-]*\" spellcheck=\"false\">",
            esc(&fields.name)
        )
    };
    format!(
        "{error}<form method=\"post\" action=\"{action}\" class=\"stacked\" data-testid=\"identity-form\">{csrf}\
         <label for=\"name\">Name</label>{name_input}\
         <p class=\"hint\">Letters, digits, '-' and '_'; how workloads name it (<code>identity</code> in an exchange).</p>\
         <label for=\"tenant_id\">Tenant id</label>\
         <input id=\"tenant_id\" name=\"tenant_id\" value=\"{tenant}\" required spellcheck=\"false\" placeholder=\"00000000-0000-0000-0000-000000000000 or contoso.onmicrosoft.com\">\
         <label for=\"client_id\">Client id</label>\
         <input id=\"client_id\" name=\"client_id\" value=\"{client}\" required spellcheck=\"false\" placeholder=\"the application (client) id, a GUID\">\
         <label for=\"cloud\">Cloud</label><select id=\"cloud\" name=\"cloud\">{o0}{o1}{o2}{o3}</select>\
         <label for=\"authority_host\">Authority host (instead of a cloud)</label>\
         <input id=\"authority_host\" name=\"authority_host\" value=\"{authority}\" spellcheck=\"false\" placeholder=\"https://login.microsoftonline.com\">\
         <p class=\"hint\">The assertion source stays as it is (new identities use <code>passthrough</code>); other sources are set through the API or the config file.</p>\
         <label for=\"allowed_scopes\">Allowed scopes (broker extension)</label>\
         <input id=\"allowed_scopes\" name=\"allowed_scopes\" value=\"{scopes}\" spellcheck=\"false\" placeholder=\"https://storage.azure.com/.default\">\
         <p class=\"hint\">Comma separated, <code>*</code> wildcards: the scopes this identity's tokens may be asked for, unless a credential names its own. Empty: any.</p>\
         <label class=\"check\"><input type=\"checkbox\" id=\"disabled\" name=\"disabled\" data-testid=\"identity-disabled\"{disabled_checked}> Disabled: refuse every exchange and drop its cached tokens, keep the identity</label>\
         <div class=\"buttons\"><button type=\"submit\" class=\"primary\" data-testid=\"save\"{disabled}>Save</button>\
         <a class=\"button\" href=\"/ui/identities\">Cancel</a></div></form>",
        error = error.map(html::error_box).unwrap_or_default(),
        action = esc(action),
        csrf = html::csrf_field(session),
        tenant = esc(&fields.tenant_id),
        client = esc(&fields.client_id),
        o0 = cloud_option("", "(default: public)"),
        o1 = cloud_option("public", "public"),
        o2 = cloud_option("usgov", "usgov"),
        o3 = cloud_option("china", "china"),
        authority = esc(&fields.authority_host),
        scopes = esc(&fields.allowed_scopes),
        disabled_checked = if fields.disabled { " checked" } else { "" },
        disabled = html::disabled_unless_admin(session),
    )
}

fn form_page(session: &Session, title: &str, status: StatusCode, form: String) -> Response {
    let body = format!(
        "<p class=\"crumbs\"><a href=\"/ui/identities\">Identities</a> ›</p><h1>{}</h1>{form}",
        esc(title)
    );
    html::html(
        status,
        html::page(title, Some(session), Nav::Identities, &body),
    )
}

/// `GET /ui/identities/+new` (`+` is in no identity name, so an identity may be named `new`)
pub async fn new_form(Signed(session): Signed) -> Response {
    let form = identity_form(
        &session,
        "/ui/identities",
        &IdentityFields::default(),
        false,
        None,
    );
    form_page(&session, "New identity", StatusCode::OK, form)
}

/// `POST /ui/identities`
pub async fn create(
    State(console): State<Console>,
    Signed(session): Signed,
    body: Result<Capped, ApiError>,
) -> Response {
    const ACTION: &str = "identity.put";
    let form = match session::checked_form(&console, &session, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let fields = IdentityFields::from_form(&form);
    if let Some(r) = session::reader_refusal(&console, &session, ACTION, Some(&fields.name), None) {
        return r;
    }
    let exists = console
        .app
        .broker
        .registry()
        .identity(&fields.name)
        .is_some();
    let input = if exists {
        Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "an identity named {:?} already exists; open it to edit it",
                fields.name
            ),
        ))
    } else {
        fields.input(
            wif_config::AssertionSource::default(),
            None,
            Default::default(),
        )
    };
    let result = console
        .app
        .admin
        .put_identity(&session.actor(), &fields.name, input, &Expect::Any)
        .await;
    match result {
        Ok(_) => html::redirect(&format!(
            "/ui/identities/{}?notice=identity-created",
            path_segment(&fields.name)
        )),
        Err(e) => form_page(
            &session,
            "New identity",
            e.status,
            identity_form(&session, "/ui/identities", &fields, false, Some(&e)),
        ),
    }
}

fn read_only_refusal(session: &Session, name: &str) -> Response {
    html::error_page(
        StatusCode::CONFLICT,
        Some(session),
        "Read-only identity",
        &format!("Identity {name:?} is declared in the config file and is read-only here."),
    )
}

/// `GET /ui/identities/{name}/edit`
pub async fn edit_form(
    State(console): State<Console>,
    Signed(session): Signed,
    Path(name): Path<String>,
) -> Response {
    let registry = console.app.broker.registry();
    let Some(identity) = registry.identity(&name) else {
        return not_found(&session, &name);
    };
    if identity.read_only {
        return read_only_refusal(&session, &name);
    }
    let stored = match console.app.broker.store() {
        Some(store) => store.get_identity(&name).await,
        None => Ok(None),
    };
    let fields = match stored {
        Ok(Some(stored)) => IdentityFields::of(&stored),
        Ok(None) => return not_found(&session, &name),
        Err(e) => {
            return html::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(&session),
                "Store unavailable",
                &crate::api::error::store_failure(&e),
            );
        }
    };
    let action = format!("/ui/identities/{}", path_segment(&name));
    let form = identity_form(&session, &action, &fields, true, None);
    form_page(&session, &format!("Edit {name}"), StatusCode::OK, form)
}

/// `POST /ui/identities/{name}`
pub async fn update(
    State(console): State<Console>,
    Signed(session): Signed,
    Path(name): Path<String>,
    body: Result<Capped, ApiError>,
) -> Response {
    const ACTION: &str = "identity.put";
    let form = match session::checked_form(&console, &session, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Some(r) = session::reader_refusal(&console, &session, ACTION, Some(&name), None) {
        return r;
    }
    let mut fields = IdentityFields::from_form(&form);
    fields.name = name.clone();
    let registry = console.app.broker.registry();
    let Some(current) = registry.identity(&name) else {
        return not_found(&session, &name);
    };
    let (assertion, subject) = (current.assertion, current.assertion_subject.clone());
    // The console's form leaves the least-privilege controls as they are.
    let restrictions = current.conditions.restrictions.clone();
    let input = fields.input(assertion, subject, restrictions);
    let result = console
        .app
        .admin
        .put_identity(&session.actor(), &name, input, &Expect::Any)
        .await;
    match result {
        Ok(_) => html::redirect(&format!(
            "/ui/identities/{}?notice=identity-updated",
            path_segment(&name)
        )),
        Err(e) => {
            let action = format!("/ui/identities/{}", path_segment(&name));
            form_page(
                &session,
                &format!("Edit {name}"),
                e.status,
                identity_form(&session, &action, &fields, true, Some(&e)),
            )
        }
    }
}

/// `GET /ui/identities/{name}/delete`: asks first.
pub async fn delete_form(
    State(console): State<Console>,
    Signed(session): Signed,
    Path(name): Path<String>,
) -> Response {
    let registry = console.app.broker.registry();
    let Some(identity) = registry.identity(&name) else {
        return not_found(&session, &name);
    };
    if identity.read_only {
        return read_only_refusal(&session, &name);
    }
    let count = wif_cli::output::count(
        registry.credentials_of(&name).count(),
        "federated credential",
        "federated credentials",
    );
    let body = format!(
        "<p class=\"crumbs\"><a href=\"/ui/identities\">Identities</a> › <a href=\"/ui/identities/{seg}\">{name}</a> ›</p>\
         <h1>Delete identity {name}?</h1>\
         <p>This deletes the identity and its {count}. Workloads using it are refused from the next exchange on.</p>\
         <form method=\"post\" action=\"/ui/identities/{seg}/delete\">{csrf}\
         <div class=\"buttons\"><button type=\"submit\" class=\"danger\" data-testid=\"confirm-delete\"{disabled}>Delete</button>\
         <a class=\"button\" href=\"/ui/identities/{seg}\">Cancel</a></div></form>",
        seg = path_segment(&name),
        name = esc(&name),
        csrf = html::csrf_field(&session),
        disabled = html::disabled_unless_admin(&session),
    );
    html::html(
        StatusCode::OK,
        html::page("Delete identity", Some(&session), Nav::Identities, &body),
    )
}

/// `POST /ui/identities/{name}/delete`
pub async fn delete(
    State(console): State<Console>,
    Signed(session): Signed,
    Path(name): Path<String>,
    body: Result<Capped, ApiError>,
) -> Response {
    const ACTION: &str = "identity.delete";
    if let Err(r) = session::checked_form(&console, &session, body).await {
        return r;
    }
    if let Some(r) = session::reader_refusal(&console, &session, ACTION, Some(&name), None) {
        return r;
    }
    let result = console
        .app
        .admin
        .delete_identity(&session.actor(), &name, &Expect::Any)
        .await;
    match result {
        Ok(()) => html::redirect("/ui/identities?notice=identity-deleted"),
        Err(e) => html::error_page(e.status, Some(&session), "Not deleted", &e.description),
    }
}
