//! The admin API: identities and federated credentials (Graph-shaped), simulate, audit.
//!
//! Handlers authenticate the caller, translate the wire format, and call
//! [`crate::admin::Admin`] (writes), the registry (reads), [`crate::simulate`] or the
//! store (audit). Every write, and every refused attempt to write, is one audit event
//! with the caller's identity.

pub mod auth;
/// The admin API's wire types, shared with the CLI ([`wif_proto::admin`]).
pub use wif_proto::admin as model;

use crate::error::ErrorCode;
use crate::redact::untrusted;
use std::collections::HashMap;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use self::auth::{Principal, Role};
use self::model::{
    ClaimsMatchingExpression, Collection, Credential, CredentialRequest, EntraCredential, Identity,
    IdentityRequest, RateLimit, SimulateRequest, SimulateResponse,
};
use super::body::CappedJson;
use super::{ApiError, AppState};
use crate::admin::{Actor, AdminError, CredentialInput, Expect, IdentityInput};
use crate::policy::conditions::{Restrictions, parse_time};
use crate::policy::rules::Violation;
use crate::policy::{self, SubjectRule};
use crate::store::{AuditQuery, PutOutcome, StoredCredential};

pub use crate::clock::rfc3339;

// ----- optimistic concurrency -----------------------------------------------------------

pub use crate::admin::etag;

fn with_etag(mut response: Response, tag: &str) -> Response {
    if let Ok(value) = header::HeaderValue::from_str(tag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// What `If-Match` (or `If-None-Match: *`) asks of a write; the admin layer checks it
/// ([`crate::admin::Expect`]).
fn expect(headers: &HeaderMap) -> Expect {
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == b"*")
    {
        return Expect::Absent;
    }
    match headers.get(header::IF_MATCH) {
        None => Expect::Any,
        Some(wanted) => Expect::Matching(wanted.to_str().unwrap_or_default().to_owned()),
    }
}

pub(crate) fn identity_view(state: &AppState, i: &policy::Identity) -> Identity {
    // With the broker assertion, the one federated credential Entra needs.
    let entra_credential = match (i.assertion, state.broker.issuer()) {
        (wif_config::AssertionSource::Broker, Some(issuer)) => Some(EntraCredential {
            issuer: issuer.url().to_owned(),
            subject: i
                .assertion_subject
                .clone()
                .unwrap_or_else(|| i.name.clone()),
            audiences: vec![
                i.cloud
                    .unwrap_or(wif_config::Cloud::Public)
                    .default_audience()
                    .to_owned(),
            ],
        }),
        _ => None,
    };
    Identity {
        entra_federated_credential: entra_credential,
        name: i.name.clone(),
        tenant_id: i.tenant_id.clone(),
        client_id: i.client_id.clone(),
        cloud: i.cloud,
        authority_host: i.authority_host.clone(),
        assertion: i.assertion,
        assertion_subject: i.assertion_subject.clone(),
        source: if i.read_only { "config" } else { "api" }.into(),
        read_only: i.read_only,
        disabled: i.conditions.restrictions.disabled,
        allowed_scopes: i.conditions.restrictions.allowed_scopes.clone(),
        rate_limit: i.conditions.restrictions.rate_limit,
        created_date_time: i.created_at.map(rfc3339),
        last_modified_date_time: i.updated_at.map(rfc3339),
    }
}

fn expression(text: String) -> ClaimsMatchingExpression {
    ClaimsMatchingExpression {
        value: text,
        language_version: 1,
    }
}

pub(crate) fn credential_view(c: &policy::Credential) -> Credential {
    let (subject, claims_matching_expression) = match &c.rule {
        SubjectRule::Exact(s) => (Some(s.to_string()), None),
        SubjectRule::Expression(e) => (None, Some(expression(e.to_string()))),
    };
    let r = &c.conditions.restrictions;
    Credential {
        disabled: r.disabled,
        allowed_scopes: r.allowed_scopes.clone(),
        source_networks: r.source_networks.clone(),
        max_token_age_seconds: r.max_token_age_seconds,
        not_before: r.not_before.map(rfc3339),
        not_after: r.not_after.map(rfc3339),
        rate_limit: r.rate_limit,
        id: c.id.to_string(),
        name: c.name.to_string(),
        issuer: c.issuer.to_string(),
        subject,
        claims_matching_expression,
        audiences: vec![c.audience.to_string()],
        description: c.description.as_deref().map(str::to_owned),
        one_time_use: c.one_time_use,
        read_only: c.identity.read_only,
    }
}

fn stored_view(c: StoredCredential) -> Credential {
    let r = c.restrictions;
    Credential {
        disabled: r.disabled,
        allowed_scopes: r.allowed_scopes,
        source_networks: r.source_networks,
        max_token_age_seconds: r.max_token_age_seconds,
        not_before: r.not_before.map(rfc3339),
        not_after: r.not_after.map(rfc3339),
        rate_limit: r.rate_limit,
        id: c.id,
        name: c.name,
        issuer: c.issuer,
        subject: c.subject,
        claims_matching_expression: c.claims_matching_expression.map(expression),
        audiences: c.audiences,
        description: c.description,
        one_time_use: c.one_time_use,
        read_only: false,
    }
}

/// `current` with the least-privilege fields `request` gives (a PATCH changes only those
/// present; `null` clears).
fn restrictions_changed(
    mut current: Restrictions,
    request: &CredentialRequest,
) -> Result<Restrictions, Violation> {
    let time = |field: &'static str, text: &Option<String>| {
        text.as_deref()
            .map(parse_time)
            .transpose()
            .map_err(|message| Violation { field, message })
    };
    if let Some(disabled) = request.disabled {
        current.disabled = disabled;
    }
    if let Some(scopes) = &request.allowed_scopes {
        current.allowed_scopes = scopes.clone();
    }
    if let Some(networks) = &request.source_networks {
        current.source_networks = networks.clone();
    }
    if let Some(age) = request.max_token_age_seconds {
        current.max_token_age_seconds = age;
    }
    if let Some(from) = &request.not_before {
        current.not_before = time("notBefore", from)?;
    }
    if let Some(until) = &request.not_after {
        current.not_after = time("notAfter", until)?;
    }
    if let Some(limit) = request.rate_limit {
        current.rate_limit = limit.map(RateLimit::normalized);
    }
    Ok(current)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// What an admin route asks of its caller: the action its audit events and metrics name,
/// and the role it needs.
pub trait Action: Send + Sync + 'static {
    const NAME: &'static str;
    const ROLE: Role;
}

macro_rules! actions {
    ($($(#[$doc:meta])* $ty:ident = $name:literal, $role:ident;)*) => {$(
        $(#[$doc])*
        pub struct $ty;
        impl Action for $ty {
            const NAME: &'static str = $name;
            const ROLE: Role = Role::$role;
        }
    )*};
}

actions! {
    IdentityList = "identity.list", Reader;
    IdentityGet = "identity.get", Reader;
    IdentityPut = "identity.put", Admin;
    IdentityDelete = "identity.delete", Admin;
    CredentialList = "credential.list", Reader;
    EntraSetup = "identity.entra_setup", Reader;
    CredentialGet = "credential.get", Reader;
    CredentialCreate = "credential.create", Admin;
    CredentialUpdate = "credential.update", Admin;
    CredentialDelete = "credential.delete", Admin;
    Simulate = "simulate", Reader;
    AuditRead = "audit.read", Reader;
}

/// The authenticated caller of an admin route, allowed the route's [`Action`]. As an
/// extractor it runs before the body extractor, so the body of a request whose caller is
/// refused is never read.
pub struct Caller<A>(pub Principal, std::marker::PhantomData<A>);

impl<A: Action> FromRequestParts<AppState> for Caller<A> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let who = caller(state, &parts.headers, A::ROLE, A::NAME).await?;
        Ok(Caller(who, std::marker::PhantomData))
    }
}

/// Authenticates and checks the role. Refused writes are audited here.
async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    needed: Role,
    action: &'static str,
) -> Result<Principal, ApiError> {
    let authenticated = state
        .auth
        .authenticate(bearer(headers), &state.broker)
        .await;
    let result = match &authenticated {
        Ok(p) if p.role >= needed => Ok(p.clone()),
        Ok(p) => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "{} has the {} role; this needs {}",
                p.name,
                p.role.as_str(),
                needed.as_str()
            ),
        )),
        Err(e) => Err(ApiError::from(e.clone())),
    };
    if let Err(e) = &result {
        if needed == Role::Admin {
            let actor = authenticated.ok().map(|p| actor(&p));
            state
                .admin
                .record(action, actor.as_ref(), None, None, Err(e));
        } else {
            state
                .broker
                .metrics()
                .admin_request(action, e.code.as_str());
        }
    }
    result
}

/// The admin layer's name for an authenticated caller of this request.
fn actor(who: &Principal) -> Actor {
    Actor::new(who.name.clone(), who.role.as_str())
}

// ----- identities -----------------------------------------------------------------------

/// List identities: declared in the config file and registered through the API.
#[utoipa::path(get, path = "/v1/identities", tag = "admin",
    responses((status = 200, description = "the identities, a page at a time", body = Collection<Identity>), (status = 401, body = super::error::ErrorBody, description = "no or invalid admin token"),
        (status = 403, body = super::error::ErrorBody, description = "the caller lacks the role"),),
    security(("admin_token" = [])))]
pub async fn list_identities(
    State(state): State<AppState>,
    Caller(..): Caller<IdentityList>,
) -> Result<Response, ApiError> {
    let registry = state.broker.registry();
    let value = registry
        .identities()
        .map(|i| identity_view(&state, i))
        .collect();
    Ok(Json(Collection {
        value,
        next_cursor: None,
    })
    .into_response())
}

/// Show one identity.
#[utoipa::path(get, path = "/v1/identities/{name}", tag = "admin",
    params(("name" = String, Path, description = "identity name")),
    responses((status = 200, description = "the identity", body = Identity, headers(("ETag" = String, description = "the version of the identity, for If-Match"))), (status = 401, body = super::error::ErrorBody, description = "no or invalid admin token"),
        (status = 403, body = super::error::ErrorBody, description = "the caller lacks the role"), (status = 404, description = "no such identity", body = super::error::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn get_identity(
    State(state): State<AppState>,
    Caller(..): Caller<IdentityGet>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let registry = state.broker.registry();
    let identity = registry.identity(&name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("no identity named {:?}", untrusted(&name)),
        )
    })?;
    let view = identity_view(&state, identity);
    let read_only = identity.read_only;
    drop(registry);
    let response = Json(view).into_response();
    if read_only {
        return Ok(response);
    }
    Ok(match identity_etag(&state, &name).await {
        Ok(Some(tag)) => with_etag(response, &tag),
        _ => response,
    })
}

/// The ETag of an API-registered identity as the store holds it now (`None`: no such
/// row, as for identities from the config file).
async fn identity_etag(state: &AppState, name: &str) -> Result<Option<String>, ApiError> {
    Ok(state.admin.identity_etag(name).await?)
}

/// The ETag of an API-registered credential (by name or id) as the store holds it now.
async fn credential_etag(
    state: &AppState,
    identity: &str,
    credential: &str,
) -> Result<Option<String>, ApiError> {
    Ok(state.admin.credential_etag(identity, credential).await?)
}

/// Create or replace an identity (admin role).
#[utoipa::path(put, path = "/v1/identities/{name}", tag = "admin",
    params(("name" = String, Path, description = "identity name"), ("If-Match" = Option<String>, Header, description = "an ETag from a GET: write only if the identity is unchanged (412 `precondition_failed` otherwise)"), ("If-None-Match" = Option<String>, Header, description = "`*`: create only, 412 `precondition_failed` if the identity exists")),
    request_body = IdentityRequest,
    responses((status = 201, body = Identity, description = "created"), (status = 200, body = Identity, description = "replaced"),
        (status = 400, description = "the identity breaks a rule; `details` lists each", body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody, description = "no or invalid admin token"),
        (status = 403, body = super::error::ErrorBody, description = "the caller lacks the role"), (status = 409, description = "`read_only` (declared in the config file), or `conflict` (the name, client id or assertion subject is taken)", body = super::error::ErrorBody), (status = 412, body = super::error::ErrorBody, description = "If-Match or If-None-Match does not hold: the resource changed since it was read"), (status = 503, description = "the store is unavailable; retry", body = super::error::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn put_identity(
    State(state): State<AppState>,
    Caller(who, _): Caller<IdentityPut>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<CappedJson<IdentityRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let input = body.map(|CappedJson(request)| IdentityInput {
        tenant_id: request.tenant_id,
        client_id: request.client_id,
        cloud: request.cloud,
        authority_host: request.authority_host,
        assertion: request.assertion,
        assertion_subject: request.assertion_subject,
        restrictions: Restrictions {
            disabled: request.disabled,
            allowed_scopes: request.allowed_scopes,
            rate_limit: request.rate_limit.map(RateLimit::normalized),
            ..Restrictions::default()
        },
    });
    let outcome = state
        .admin
        .put_identity(&actor(&who), &name, input, &expect(&headers))
        .await?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Replaced => StatusCode::OK,
    };
    let registry = state.broker.registry();
    let view = registry
        .identity(&name)
        .map(|i| identity_view(&state, i))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::StoreUnavailable,
                "written, but not yet loaded; retry the read",
            )
            .with_retry_after(1)
        })?;
    drop(registry);
    let response = (status, Json(view)).into_response();
    Ok(match identity_etag(&state, &name).await {
        Ok(Some(tag)) => with_etag(response, &tag),
        _ => response,
    })
}

/// Delete an identity and its credentials (admin role).
#[utoipa::path(delete, path = "/v1/identities/{name}", tag = "admin",
    params(("name" = String, Path, description = "identity name"), ("If-Match" = Option<String>, Header, description = "an ETag from a GET: write only if the resource is unchanged (412 `precondition_failed` otherwise)")),
    responses((status = 204, description = "deleted, with its federated credentials"), (status = 401, body = super::error::ErrorBody, description = "no or invalid admin token"),
        (status = 403, body = super::error::ErrorBody, description = "the caller lacks the role"), (status = 404, description = "no such identity", body = super::error::ErrorBody), (status = 409, description = "`read_only`: declared in the config file", body = super::error::ErrorBody), (status = 412, body = super::error::ErrorBody, description = "If-Match or If-None-Match does not hold: the resource changed since it was read"), (status = 503, description = "the store is unavailable; retry", body = super::error::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn delete_identity(
    State(state): State<AppState>,
    Caller(who, _): Caller<IdentityDelete>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state
        .admin
        .delete_identity(&actor(&who), &name, &expect(&headers))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ----- credentials ----------------------------------------------------------------------

/// List an identity's federated credentials.
#[utoipa::path(get, path = "/v1/identities/{name}/federatedIdentityCredentials", tag = "admin",
    params(("name" = String, Path, description = "identity name")),
    responses((status = 200, description = "the identity's federated credentials, a page at a time", body = Collection<Credential>), (status = 401, body = super::error::ErrorBody, description = "no or invalid admin token"),
        (status = 403, body = super::error::ErrorBody, description = "the caller lacks the role"), (status = 404, description = "no such identity", body = super::error::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn list_credentials(
    State(state): State<AppState>,
    Caller(..): Caller<CredentialList>,
    Path(identity): Path<String>,
) -> Result<Response, ApiError> {
    let registry = state.broker.registry();
    if registry.identity(&identity).is_none() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no identity named {identity:?}"),
        ));
    }
    let value: Vec<Credential> = registry
        .credentials_of(&identity)
        .map(|c| credential_view(c))
        .collect();
    Ok(Json(Collection {
        value,
        next_cursor: None,
    })
    .into_response())
}

/// What Entra must hold for this identity to work through the broker: the federated
/// credentials to create there (Graph JSON and Azure CLI commands), and the broker's
/// credentials Entra cannot mirror (docs/gitops.md, "What Entra must hold").
#[utoipa::path(get, path = "/v1/identities/{name}/entraSetup", tag = "admin",
    params(("name" = String, Path, description = "identity name")),
    responses((status = 200, description = "what Entra must hold for the identity", body = crate::entra_setup::EntraSetup), (status = 401, body = super::error::ErrorBody, description = "no or invalid admin token"),
        (status = 403, body = super::error::ErrorBody, description = "the caller lacks the role"), (status = 404, description = "no such identity", body = super::error::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn entra_setup(
    State(state): State<AppState>,
    Caller(..): Caller<EntraSetup>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let registry = state.broker.registry();
    let identity = registry.identity(&name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("no identity named {:?}", untrusted(&name)),
        )
    })?;
    let view = identity_view(&state, identity);
    let credentials: Vec<Credential> = registry
        .credentials_of(&name)
        .map(|c| credential_view(c))
        .collect();
    drop(registry);
    Ok(Json(crate::entra_setup::plan(&view, &credentials)).into_response())
}

/// Show one federated credential (by name or id).
#[utoipa::path(get, path = "/v1/identities/{name}/federatedIdentityCredentials/{credential}", tag = "admin",
    params(("name" = String, Path, description = "identity name"), ("credential" = String, Path, description = "credential name or id")),
    responses((status = 200, description = "the federated credential", body = Credential, headers(("ETag" = String, description = "the version of the credential, for If-Match"))), (status = 401, body = super::error::ErrorBody, description = "no or invalid admin token"),
        (status = 403, body = super::error::ErrorBody, description = "the caller lacks the role"), (status = 404, description = "no such identity or credential", body = super::error::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn get_credential(
    State(state): State<AppState>,
    Caller(..): Caller<CredentialGet>,
    Path((identity, credential)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let registry = state.broker.registry();
    let c = registry.credential(&identity, &credential).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("identity {identity:?} has no federated credential {credential:?}"),
        )
    })?;
    let (view, read_only) = (credential_view(c), c.identity.read_only);
    drop(registry);
    let response = Json(view).into_response();
    if read_only {
        return Ok(response);
    }
    Ok(
        match credential_etag(&state, &identity, &credential).await {
            Ok(Some(tag)) => with_etag(response, &tag),
            _ => response,
        },
    )
}

fn invalid(field: &'static str, message: &str) -> AdminError {
    AdminError::Invalid(vec![Violation {
        field,
        message: message.to_owned(),
    }])
}

fn expression_text(e: Option<ClaimsMatchingExpression>) -> Result<Option<String>, Violation> {
    match e {
        None => Ok(None),
        Some(e) if e.language_version == 1 => Ok(Some(e.value)),
        Some(e) => Err(Violation {
            field: "claimsMatchingExpression",
            message: format!(
                "languageVersion {} is not supported; use 1",
                e.language_version
            ),
        }),
    }
}

/// Add a federated credential (admin role). Entra's rules are checked now, not at the
/// first exchange; the credential admits tokens from the next exchange on.
#[utoipa::path(post, path = "/v1/identities/{name}/federatedIdentityCredentials", tag = "admin",
    params(("name" = String, Path, description = "identity name")),
    request_body = CredentialRequest,
    responses((status = 201, description = "created", body = Credential), (status = 400, description = "the credential breaks a rule; `details` lists each", body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody, description = "no or invalid admin token"),
        (status = 403, body = super::error::ErrorBody, description = "the caller lacks the role"),
        (status = 404, description = "no such identity", body = super::error::ErrorBody), (status = 409, description = "`read_only`, `conflict` (the name or issuer and subject are taken) or `too_many_credentials`", body = super::error::ErrorBody), (status = 503, description = "the store is unavailable; retry", body = super::error::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn create_credential(
    State(state): State<AppState>,
    Caller(who, _): Caller<CredentialCreate>,
    Path(identity): Path<String>,
    body: Result<CappedJson<CredentialRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let input = body.and_then(|CappedJson(request)| credential_input(request));
    let stored = state
        .admin
        .create_credential(&actor(&who), &identity, input)
        .await?;
    Ok((StatusCode::CREATED, Json(stored_view(stored))).into_response())
}

/// A new credential as the request gives it.
fn credential_input(request: CredentialRequest) -> Result<CredentialInput, ApiError> {
    let restrictions = restrictions_changed(Restrictions::default(), &request)
        .map_err(|v| AdminError::Invalid(vec![v]))?;
    Ok(CredentialInput {
        name: request
            .name
            .ok_or_else(|| invalid("name", "name is required"))?,
        issuer: request
            .issuer
            .ok_or_else(|| invalid("issuer", "issuer is required"))?,
        subject: request.subject.flatten(),
        claims_matching_expression: expression_text(request.claims_matching_expression.flatten())
            .map_err(|v| AdminError::Invalid(vec![v]))?,
        audiences: request.audiences.unwrap_or_default(),
        description: request.description.flatten(),
        one_time_use: request.one_time_use.unwrap_or(false),
        restrictions,
    })
}

/// Change a federated credential (admin role); its name is immutable.
#[utoipa::path(patch, path = "/v1/identities/{name}/federatedIdentityCredentials/{credential}", tag = "admin",
    params(("name" = String, Path, description = "identity name"), ("credential" = String, Path, description = "credential name or id"), ("If-Match" = Option<String>, Header, description = "an ETag from a GET: write only if the resource is unchanged (412 `precondition_failed` otherwise)")),
    request_body = CredentialRequest,
    responses((status = 200, description = "the updated federated credential", body = Credential), (status = 400, description = "the change breaks a rule; `details` lists each", body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody, description = "no or invalid admin token"),
        (status = 403, body = super::error::ErrorBody, description = "the caller lacks the role"),
        (status = 404, description = "no such identity or credential", body = super::error::ErrorBody), (status = 409, description = "`read_only`, or `conflict` with another credential", body = super::error::ErrorBody), (status = 412, body = super::error::ErrorBody, description = "If-Match or If-None-Match does not hold: the resource changed since it was read"), (status = 503, description = "the store is unavailable; retry", body = super::error::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn update_credential(
    State(state): State<AppState>,
    Caller(who, _): Caller<CredentialUpdate>,
    headers: HeaderMap,
    Path((identity, credential)): Path<(String, String)>,
    body: Result<CappedJson<CredentialRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let change = body.and_then(|CappedJson(request)| credential_change(request));
    let stored = state
        .admin
        .update_credential(
            &actor(&who),
            &identity,
            &credential,
            change,
            &expect(&headers),
        )
        .await?;
    let tag = credential_etag(&state, &identity, &stored.name).await;
    let response = Json(stored_view(stored)).into_response();
    Ok(match tag {
        Ok(Some(tag)) => with_etag(response, &tag),
        _ => response,
    })
}

/// A PATCH as a change to the stored credential: the fields it gives, `null` clearing.
fn credential_change(
    request: CredentialRequest,
) -> Result<impl FnOnce(&mut CredentialInput) -> Result<(), Violation>, ApiError> {
    let controls = request.clone();
    let expression = match request.claims_matching_expression {
        Some(e) => Some(expression_text(e).map_err(|v| AdminError::Invalid(vec![v]))?),
        None => None,
    };
    Ok(move |input: &mut CredentialInput| {
        if let Some(name) = request.name {
            input.name = name;
        }
        if let Some(issuer) = request.issuer {
            input.issuer = issuer;
        }
        if let Some(subject) = request.subject {
            input.subject = subject;
        }
        if let Some(expression) = expression {
            input.claims_matching_expression = expression;
        }
        if let Some(audiences) = request.audiences {
            input.audiences = audiences;
        }
        if let Some(description) = request.description {
            input.description = description;
        }
        if let Some(one_time_use) = request.one_time_use {
            input.one_time_use = one_time_use;
        }
        input.restrictions = restrictions_changed(input.restrictions.clone(), &controls)?;
        Ok(())
    })
}

/// Delete a federated credential (admin role).
#[utoipa::path(delete, path = "/v1/identities/{name}/federatedIdentityCredentials/{credential}", tag = "admin",
    params(("name" = String, Path, description = "identity name"), ("credential" = String, Path, description = "credential name or id"), ("If-Match" = Option<String>, Header, description = "an ETag from a GET: write only if the resource is unchanged (412 `precondition_failed` otherwise)")),
    responses((status = 204, description = "deleted"), (status = 401, body = super::error::ErrorBody, description = "no or invalid admin token"),
        (status = 403, body = super::error::ErrorBody, description = "the caller lacks the role"), (status = 404, description = "no such identity or credential", body = super::error::ErrorBody), (status = 409, description = "`read_only`: declared in the config file", body = super::error::ErrorBody), (status = 412, body = super::error::ErrorBody, description = "If-Match or If-None-Match does not hold: the resource changed since it was read"), (status = 503, description = "the store is unavailable; retry", body = super::error::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn delete_credential(
    State(state): State<AppState>,
    Caller(who, _): Caller<CredentialDelete>,
    headers: HeaderMap,
    Path((identity, credential)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    state
        .admin
        .delete_credential(&actor(&who), &identity, &credential, &expect(&headers))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ----- simulate and audit ---------------------------------------------------------------

/// What an exchange with this token (or these claims) would decide, and why, without
/// calling Entra or spending a one-time-use token.
#[utoipa::path(post, path = "/v1/simulate", tag = "admin",
    request_body = SimulateRequest,
    responses((status = 200, description = "each check's result, the matching credentials and the near misses", body = SimulateResponse), (status = 400, description = "the request is malformed", body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody, description = "no or invalid admin token"),
        (status = 403, body = super::error::ErrorBody, description = "the caller lacks the role"),),
    security(("admin_token" = [])))]
pub async fn simulate(
    State(state): State<AppState>,
    Caller(..): Caller<Simulate>,
    body: Result<CappedJson<SimulateRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let CappedJson(request) = body?;
    let answer = crate::simulate::simulate(&state.broker, request).await?;
    Ok(Json(answer).into_response())
}

/// Read the audit trail, oldest first, in pages.
#[utoipa::path(get, path = "/v1/audit", tag = "admin",
    params(
        ("since" = Option<u64>, Query, description = "epoch seconds, inclusive"),
        ("until" = Option<u64>, Query, description = "epoch seconds, inclusive"),
        ("kind" = Option<String>, Query, description = "`exchange` or `admin`"),
        ("identity" = Option<String>, Query),
        ("subject" = Option<String>, Query),
        ("outcome" = Option<String>, Query, description = "`ok` or an error code"),
        ("after" = Option<String>, Query, description = "`nextCursor` of the previous page"),
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 100"),
    ),
    responses((status = 200, description = "audit events, newest first, a page at a time", body = Collection<Object>), (status = 400, description = "a filter is malformed", body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody, description = "no or invalid admin token"),
        (status = 403, body = super::error::ErrorBody, description = "the caller lacks the role"), (status = 503, description = "the store is unavailable; retry", body = super::error::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn audit_events(
    State(state): State<AppState>,
    Caller(..): Caller<AuditRead>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let number = |key: &str| -> Result<Option<u64>, ApiError> {
        params
            .get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!("`{key}` must be a non-negative integer"),
                    )
                })
            })
            .transpose()
    };
    let known = [
        "since", "until", "kind", "identity", "subject", "outcome", "after", "limit",
    ];
    if let Some(unknown) = params.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "unknown parameter `{unknown}`; accepted: {}",
                known.join(", ")
            ),
        ));
    }
    let limit = number("limit")?.unwrap_or(100).clamp(1, 1000) as u32;
    let query = AuditQuery {
        since: number("since")?,
        until: number("until")?,
        kind: params.get("kind").cloned(),
        identity: params.get("identity").cloned(),
        subject: params.get("subject").cloned(),
        outcome: params.get("outcome").cloned(),
        after_id: number("after")?.map(|n| n as i64),
        before_id: None,
        newest_first: false,
        limit,
    };
    let store = state
        .broker
        .store()
        .ok_or_else(|| ApiError::new(ErrorCode::StoreUnavailable, "no store is configured"))?;
    let records = store.query_audit(&query).await.map_err(AdminError::from)?;
    let next_cursor = (records.len() == limit as usize)
        .then(|| records.last().map(|r| r.id.to_string()))
        .flatten();
    let value = records
        .iter()
        .map(crate::store::AuditRecord::to_json)
        .collect();
    Ok(Json(Collection { value, next_cursor }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_epoch_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_406_154), "2026-11-23T03:55:54Z");
    }
}
