//! Registering identities and federated credentials through the admin API and the console.
//!
//! Every write is checked with Entra's rules before it is stored (Entra itself checks
//! nothing until an exchange fails), has no 20-credential cap (a configurable sanity limit
//! instead), and takes effect on the next exchange: after the store commits, this
//! replica's registry takes the change (the changed entry only) before the write is acknowledged. Identities and
//! credentials declared in the config file are read-only here.
//!
//! Every write records its own audit event, refused or not, naming the [`Actor`] the edge
//! authenticated (docs/admin.md, "`GET /v1/audit`"): an edge calls the write and answers its error,
//! and cannot forget the audit. A write takes what the edge read as a `Result`, so a request
//! the edge could not read (a malformed body) is refused and audited here like any other.

use std::sync::Arc;

use wif_config::{AssertionSource, Cloud};

use crate::audit::AuditEvent;
use crate::error::ApiError;
use crate::exchange::Broker;
use crate::outbound;
use crate::policy::conditions::{Conditions, Restrictions};
use crate::policy::rules::{self, CredentialSpec, RuleOptions, Violation};
use crate::redact::untrusted;
use crate::store::{Clash, PutOutcome, StoreError, StoredCredential, StoredIdentity};

/// What a caller is told when the identity or credential a write names is gone from the
/// store (deleted meanwhile); the store's text is for the log.
const GONE: &str = "the identity or federated credential does not exist (any more); read it again";

/// Who asks for an admin write, as the edge authenticated them: the name and role the
/// audit event names, and the request id it is tied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub role: &'static str,
    pub request_id: String,
}

impl Actor {
    /// The caller of the current request (its id from the request-id middleware).
    pub fn new(name: impl Into<String>, role: &'static str) -> Self {
        Self {
            name: name.into(),
            role,
            request_id: crate::error::current_request_id(),
        }
    }
}

/// The state a conditional write expects the resource in (HTTP `If-Match`,
/// `If-None-Match: *`; docs/admin.md, "Versions: `ETag` and `If-Match`").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Unconditional.
    Any,
    /// It must not exist (`If-None-Match: *`).
    Absent,
    /// Its ETag must be one of these (the `If-Match` header's value, `*` for any).
    Matching(String),
}

/// Serializes conditional writes on this replica, so the comparison and the write it
/// guards are one step here.
static CONDITIONAL_WRITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The strong `ETag` of a stored identity or credential: a digest of its row, so it
/// changes with every write (its fields and its modification time) and every replica
/// reading the same store gives the same value.
pub fn etag<T: serde::Serialize>(row: &T) -> String {
    let json =
        serde_json::to_vec(&serde_json::to_value(row).unwrap_or_default()).unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &json);
    format!("\"{}\"", hex::encode(&digest.as_ref()[..16]))
}

/// Why an admin operation was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    #[error("{}", describe(.0))]
    Invalid(Vec<Violation>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    ReadOnly(String),
    #[error(
        "identity {identity:?} already has {limit} federated credentials, the configured maximum (admin.max_credentials_per_identity)"
    )]
    Limit { identity: String, limit: u64 },
    /// A conditional write whose condition does not hold.
    #[error("{0}")]
    Changed(String),
    /// The store refused the write: a uniqueness rule (the message names rows, for the log).
    #[error("{1}")]
    Clash(Clash, String),
    /// The store no longer holds what the write names (the message is for the log).
    #[error("{0}")]
    Gone(String),
    #[error(transparent)]
    Store(StoreError),
}

fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| v.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(clash, m) => AdminError::Clash(clash, m),
            StoreError::NotFound(m) => AdminError::Gone(m),
            StoreError::Invalid { field, message } => {
                AdminError::Invalid(vec![crate::policy::rules::Violation { field, message }])
            }
            other => AdminError::Store(other),
        }
    }
}

impl AdminError {
    /// The error's one classification (docs/api.md, "Errors"): the store's text (a
    /// failure, or the rows a clash names) is for the log only.
    pub fn classify(&self) -> crate::error::ApiError {
        use crate::error::{ApiError, ErrorCode};
        match self {
            AdminError::Invalid(violations) => {
                let mut err = ApiError::new(ErrorCode::InvalidRequest, self.to_string());
                err.details = serde_json::to_value(violations).ok();
                err
            }
            AdminError::NotFound(_) => ApiError::new(ErrorCode::NotFound, self.to_string()),
            AdminError::Conflict(_) => ApiError::new(ErrorCode::Conflict, self.to_string()),
            AdminError::ReadOnly(_) => ApiError::new(ErrorCode::ReadOnly, self.to_string()),
            AdminError::Limit { .. } => {
                ApiError::new(ErrorCode::TooManyCredentials, self.to_string())
            }
            AdminError::Changed(_) => {
                ApiError::new(ErrorCode::PreconditionFailed, self.to_string())
            }
            AdminError::Clash(clash, internal) => {
                ApiError::new(ErrorCode::Conflict, clash.public()).with_internal(internal)
            }
            AdminError::Gone(internal) => {
                ApiError::new(ErrorCode::NotFound, GONE).with_internal(internal)
            }
            AdminError::Store(store) => ApiError::store(store),
        }
    }

    /// The stable error code.
    pub fn code(&self) -> crate::error::ErrorCode {
        self.classify().code
    }
}

/// An identity as written through the API.
#[derive(Debug, Clone)]
pub struct IdentityInput {
    pub tenant_id: String,
    pub client_id: String,
    pub cloud: Option<Cloud>,
    pub authority_host: Option<String>,
    pub assertion: AssertionSource,
    pub assertion_subject: Option<String>,
    /// Disabled, allowed scopes, rate limit (docs/admin.md, "Least privilege").
    pub restrictions: Restrictions,
}

/// A credential as written through the API, after a PATCH was merged.
#[derive(Debug, Clone, Default)]
pub struct CredentialInput {
    pub name: String,
    pub issuer: String,
    pub subject: Option<String>,
    pub claims_matching_expression: Option<String>,
    pub audiences: Vec<String>,
    pub description: Option<String>,
    pub one_time_use: bool,
    /// The broker's own controls (docs/admin.md, "Least privilege").
    pub restrictions: Restrictions,
}

/// Admin operations on one broker.
pub struct Admin {
    broker: Arc<Broker>,
    rule_options: RuleOptions,
    max_credentials: u64,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> Violation {
    Violation {
        field,
        message: message.into(),
    }
}

impl Admin {
    pub fn new(broker: Arc<Broker>, allow_loopback_http: bool, max_credentials: u64) -> Self {
        Self {
            broker,
            rule_options: RuleOptions {
                allow_loopback_http,
            },
            max_credentials,
        }
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Records one admin event (docs/admin.md, "`GET /v1/audit`"). The writes below record their
    /// own; the edges record what happens before a write can be asked for: the console's
    /// sign-ins, and callers refused for their token or role. `actor` is `None` when the
    /// caller could not be authenticated (the current request's id is used then).
    pub fn record(
        &self,
        action: &'static str,
        actor: Option<&Actor>,
        identity: Option<&str>,
        credential: Option<&str>,
        outcome: Result<(), &ApiError>,
    ) {
        let unauthenticated = actor.is_none();
        let (name, role, request_id) = match actor {
            Some(a) => (a.name.clone(), Some(a.role), a.request_id.clone()),
            None => (
                "anonymous".to_owned(),
                None,
                crate::error::current_request_id(),
            ),
        };
        let (outcome, reason) = match outcome {
            Ok(()) => ("ok".to_owned(), None),
            Err(e) => (e.code.as_str().to_owned(), Some(e.description.clone())),
        };
        self.broker.metrics().admin_request(action, &outcome);
        self.broker.auditor().record(&AuditEvent {
            kind: "admin",
            time: self.broker.clock().now(),
            request_id,
            endpoint: "admin",
            actor: Some(name),
            role,
            action: Some(action),
            identity: identity.map(str::to_owned),
            credential: credential.map(str::to_owned),
            outcome,
            reason,
            unauthenticated,
            ..Default::default()
        });
    }

    /// A write's one audit event, and its result classified for the edge.
    fn audited<T>(
        &self,
        actor: &Actor,
        action: &'static str,
        identity: &str,
        credential: Option<&str>,
        result: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        self.record(
            action,
            Some(actor),
            Some(identity),
            credential,
            result.as_ref().map(|_| ()),
        );
        result
    }

    /// Checks `expect` against the resource as the store holds it now (`current`: its
    /// ETag, `None` when it does not exist). The guard holds the write lock while the
    /// guarded write runs; an unconditional write takes no lock.
    async fn precondition(
        &self,
        expect: &Expect,
        current: impl std::future::Future<Output = Result<Option<String>, AdminError>>,
    ) -> Result<Option<tokio::sync::MutexGuard<'static, ()>>, AdminError> {
        let wanted = match expect {
            Expect::Any => return Ok(None),
            Expect::Absent => {
                let guard = CONDITIONAL_WRITES.lock().await;
                if current.await?.is_some() {
                    return Err(AdminError::Changed(
                        "If-None-Match: * was given but the resource exists (it was created since it was read); read it again".to_owned(),
                    ));
                }
                return Ok(Some(guard));
            }
            Expect::Matching(wanted) => wanted,
        };
        let guard = CONDITIONAL_WRITES.lock().await;
        let current = current.await?;
        let matches = match &current {
            None => false,
            Some(tag) => wanted
                .split(',')
                .map(str::trim)
                .any(|w| w == "*" || w == tag),
        };
        if matches {
            return Ok(Some(guard));
        }
        Err(AdminError::Changed(match current {
            None => "If-Match was given but the resource does not exist (any more); read it again"
                .to_owned(),
            Some(_) => format!(
                "the resource changed since it was read (If-Match {} does not match its ETag); read it again",
                crate::redact::untrusted(wanted)
            ),
        }))
    }

    /// The ETag of an API-registered identity as the store holds it now (`None`: no such
    /// row, as for identities from the config file, or no store).
    pub async fn identity_etag(&self, name: &str) -> Result<Option<String>, AdminError> {
        let Some(store) = self.broker.store() else {
            return Ok(None);
        };
        Ok(store.get_identity(name).await?.map(|i| etag(&i)))
    }

    /// The ETag of an API-registered credential (by name or id) as the store holds it now.
    pub async fn credential_etag(
        &self,
        identity: &str,
        credential: &str,
    ) -> Result<Option<String>, AdminError> {
        let Some(store) = self.broker.store() else {
            return Ok(None);
        };
        Ok(store
            .get_credential(identity, credential)
            .await?
            .map(|c| etag(&c)))
    }

    fn store(&self) -> Result<&Arc<dyn crate::store::Store>, AdminError> {
        self.broker.store().ok_or_else(|| {
            AdminError::Store(StoreError::Unavailable("no store is configured".into()))
        })
    }

    /// Refuses changes to what the config file declares.
    fn writable(&self, identity: &str) -> Result<(), AdminError> {
        match self.broker.registry().identity(identity) {
            Some(i) if i.read_only => Err(AdminError::ReadOnly(format!(
                "identity {identity:?} is declared in the config file and is read-only through the API"
            ))),
            _ => Ok(()),
        }
    }

    /// After a committed write: this replica serves the change from the next exchange on.
    async fn apply(&self) {
        if let Err(e) = self.broker.reload("write", false).await {
            tracing::warn!(error = %e, "write committed but the registry could not be reloaded yet; the next poll will");
        }
    }

    pub fn check_identity(&self, name: &str, input: &IdentityInput) -> Vec<Violation> {
        let mut v = Vec::new();
        if [name, &input.tenant_id, &input.client_id]
            .iter()
            .any(|t| t.contains('\0'))
            || input
                .authority_host
                .as_deref()
                .is_some_and(|h| h.contains('\0'))
        {
            v.push(invalid(
                "name",
                "identity fields must not contain NUL characters",
            ));
            return v;
        }
        v.extend(rules::check_identity_name(name));
        if !wif_config::is_tenant(&input.tenant_id) {
            v.push(invalid(
                "tenantId",
                format!(
                    "tenantId {:?} must be a GUID or a domain such as contoso.onmicrosoft.com",
                    input.tenant_id
                ),
            ));
        }
        if !rules::is_guid(&input.client_id) {
            v.push(invalid(
                "clientId",
                format!(
                    "clientId {:?} must be the application (client) id, a GUID",
                    input.client_id
                ),
            ));
        }
        if input.cloud.is_some() && input.authority_host.is_some() {
            v.push(invalid(
                "authorityHost",
                "give cloud or authorityHost, not both",
            ));
        }
        if let Some(host) = &input.authority_host {
            match outbound::check_url(host, self.rule_options.allow_loopback_http) {
                Ok(url) if url.path() != "/" || url.query().is_some() => v.push(invalid(
                    "authorityHost",
                    "authorityHost is an origin such as https://login.microsoftonline.com, without a path",
                )),
                Ok(_) => {}
                Err(e) => v.push(invalid("authorityHost", e.to_string())),
            }
        }
        if v.iter().all(|x| x.field != "authorityHost") {
            let host = input
                .authority_host
                .clone()
                .or_else(|| input.cloud.map(|c| c.authority_host().to_owned()))
                .unwrap_or_else(|| self.broker.default_authority_host().to_owned());
            if !self.broker.authority_hosts().allows(&host) {
                v.push(invalid(
                    "authorityHost",
                    format!(
                        "authorityHost {:?} is not an authority host this broker allows; allowed are the named clouds' hosts, [entra] authority_host and [entra] allowed_authority_hosts of the broker's config file ({}), and the API cannot add hosts",
                        host.chars().take(256).collect::<String>(),
                        self.broker.authority_hosts().origins().join(", ")
                    ),
                ));
            }
        }
        match input.assertion {
            AssertionSource::Certificate => v.push(invalid(
                "assertion",
                "certificate assertions are declared in the broker's config file \
                 (certificate_file and certificate_key_file name files on the broker's disk)",
            )),
            AssertionSource::Broker if !self.broker.is_issuer() => v.push(invalid(
                "assertion",
                "this broker is not an issuer: set [broker_issuer] url in its config to use \
                 the broker assertion",
            )),
            _ => {}
        }
        if let Some(subject) = &input.assertion_subject {
            if input.assertion != AssertionSource::Broker {
                v.push(invalid(
                    "assertionSubject",
                    "assertionSubject is used only with assertion \"broker\"",
                ));
            } else if subject.is_empty() || subject.chars().count() > 600 {
                v.push(invalid(
                    "assertionSubject",
                    "assertionSubject must be 1 to 600 characters (Entra's limit for a subject)",
                ));
            }
        }
        v.extend(restriction_violations(&input.restrictions, false));
        v
    }

    /// Creates or replaces an API-registered identity (`identity.put`), if `expect` holds.
    pub async fn put_identity(
        &self,
        actor: &Actor,
        name: &str,
        input: Result<IdentityInput, ApiError>,
        expect: &Expect,
    ) -> Result<PutOutcome, ApiError> {
        let result = async {
            let input = input?;
            let _guard = self.precondition(expect, self.identity_etag(name)).await?;
            Ok::<_, ApiError>(self.write_identity(name, input).await?)
        }
        .await;
        self.audited(actor, "identity.put", name, None, result)
    }

    async fn write_identity(
        &self,
        name: &str,
        input: IdentityInput,
    ) -> Result<PutOutcome, AdminError> {
        let violations = self.check_identity(name, &input);
        if !violations.is_empty() {
            return Err(AdminError::Invalid(violations));
        }
        self.writable(name)?;
        let registry = self.broker.registry();
        if let Some(other) = registry
            .identities()
            .find(|i| i.read_only && i.client_id.eq_ignore_ascii_case(&input.client_id))
        {
            return Err(AdminError::Conflict(format!(
                "client id {} is already used by identity {:?} from the config file",
                input.client_id, other.name
            )));
        }
        if let Some(other) = registry
            .identity_ignoring_case(name)
            .filter(|i| i.name != name)
        {
            return Err(AdminError::Conflict(format!(
                "identity {:?} already exists; names are compared without regard to case",
                other.name
            )));
        }
        // A broker-assertion subject belongs to one identity: neither this identity's
        // subject nor its name (another identity's default subject) may be another
        // identity's name or subject, config-declared ones included.
        let subject = input.assertion_subject.as_deref().unwrap_or(name);
        for claimed in [name, subject] {
            if let Some(other) = registry.claimant(claimed).filter(|i| i.name != name) {
                return Err(AdminError::Conflict(format!(
                    "{:?} is already the name or assertion subject of identity {:?}; a broker-assertion subject belongs to exactly one identity",
                    claimed.chars().take(256).collect::<String>(),
                    other.name
                )));
            }
        }
        let now = self.broker.clock().now();
        let outcome = self
            .store()?
            .put_identity(&StoredIdentity {
                name: name.to_owned(),
                tenant_id: input.tenant_id,
                client_id: input.client_id,
                cloud: input.cloud,
                authority_host: input
                    .authority_host
                    .map(|h| h.trim_end_matches('/').to_owned()),
                assertion: input.assertion,
                assertion_subject: input.assertion_subject,
                created_at: now,
                updated_at: now,
                restrictions: input.restrictions,
            })
            .await?;
        self.apply().await;
        Ok(outcome)
    }

    /// Deletes an API-registered identity and its credentials (`identity.delete`), if
    /// `expect` holds.
    pub async fn delete_identity(
        &self,
        actor: &Actor,
        name: &str,
        expect: &Expect,
    ) -> Result<(), ApiError> {
        let result = async {
            let _guard = self.precondition(expect, self.identity_etag(name)).await?;
            Ok::<_, ApiError>(self.remove_identity(name).await?)
        }
        .await;
        self.audited(actor, "identity.delete", name, None, result)
    }

    async fn remove_identity(&self, name: &str) -> Result<(), AdminError> {
        self.writable(name)?;
        if !self.store()?.delete_identity(name).await? {
            return Err(AdminError::NotFound(format!(
                "no identity named {:?}",
                untrusted(name)
            )));
        }
        self.apply().await;
        Ok(())
    }

    /// Entra's rules on a credential as it would be written (also the console's live
    /// validation); empty when it is valid.
    pub fn check_credential(&self, input: &CredentialInput) -> Vec<Violation> {
        let mut texts = vec![
            ("name", input.name.as_str()),
            ("issuer", input.issuer.as_str()),
        ];
        texts.extend(input.subject.as_deref().map(|t| ("subject", t)));
        texts.extend(
            input
                .claims_matching_expression
                .as_deref()
                .map(|t| ("claimsMatchingExpression", t)),
        );
        texts.extend(input.description.as_deref().map(|t| ("description", t)));
        texts.extend(input.audiences.iter().map(|t| ("audiences", t.as_str())));
        let nul: Vec<Violation> = texts
            .into_iter()
            .filter(|(_, t)| t.contains('\0'))
            .map(|(field, _)| invalid(field, format!("{field} must not contain NUL characters")))
            .collect();
        if !nul.is_empty() {
            return nul;
        }
        let mut violations = rules::check(
            &CredentialSpec {
                name: &input.name,
                issuer: &input.issuer,
                subject: input.subject.as_deref(),
                claims_matching_expression: input.claims_matching_expression.as_deref(),
                audiences: &input.audiences,
                description: input.description.as_deref(),
            },
            &self.rule_options,
        );
        violations.extend(restriction_violations(&input.restrictions, true));
        violations
    }

    /// The audience a new credential of `identity` gets when none is given: its cloud's.
    pub fn default_audience(&self, identity: &str) -> String {
        let cloud = self
            .broker
            .registry()
            .identity(identity)
            .and_then(|i| i.cloud);
        cloud.unwrap_or(Cloud::Public).default_audience().to_owned()
    }

    /// An identity that exists and may be changed through the API.
    fn api_identity(&self, identity: &str) -> Result<(), AdminError> {
        match self.broker.registry().identity(identity) {
            None => Err(AdminError::NotFound(format!(
                "no identity named {:?}",
                untrusted(identity)
            ))),
            Some(_) => self.writable(identity),
        }
    }

    /// Adds a federated credential to `identity` (`credential.create`); the audit event
    /// names the credential when the request named one.
    pub async fn create_credential(
        &self,
        actor: &Actor,
        identity: &str,
        input: Result<CredentialInput, ApiError>,
    ) -> Result<StoredCredential, ApiError> {
        let name = input.as_ref().ok().map(|i| i.name.clone());
        let result = match input {
            Ok(input) => self
                .add_credential(identity, input)
                .await
                .map_err(Into::into),
            Err(e) => Err(e),
        };
        self.audited(
            actor,
            "credential.create",
            identity,
            name.as_deref(),
            result,
        )
    }

    async fn add_credential(
        &self,
        identity: &str,
        mut input: CredentialInput,
    ) -> Result<StoredCredential, AdminError> {
        if input.audiences.is_empty() {
            input.audiences = vec![self.default_audience(identity)];
        }
        let violations = self.check_credential(&input);
        if !violations.is_empty() {
            return Err(AdminError::Invalid(violations));
        }
        self.api_identity(identity)?;
        let store = self.store()?;
        if store.count_credentials(identity).await? >= self.max_credentials {
            return Err(AdminError::Limit {
                identity: identity.to_owned(),
                limit: self.max_credentials,
            });
        }
        let now = self.broker.clock().now();
        let stored = StoredCredential {
            id: uuid::Uuid::new_v4().to_string(),
            identity: identity.to_owned(),
            name: input.name,
            issuer: input.issuer,
            subject: input.subject,
            claims_matching_expression: input.claims_matching_expression,
            audiences: input.audiences,
            description: input.description,
            one_time_use: input.one_time_use,
            created_at: now,
            updated_at: now,
            restrictions: input.restrictions,
        };
        store.create_credential(&stored).await?;
        self.apply().await;
        Ok(stored)
    }

    /// Applies `change` to the stored credential and stores the result, re-checked
    /// (`credential.update`), if `expect` holds.
    pub async fn update_credential<F>(
        &self,
        actor: &Actor,
        identity: &str,
        credential: &str,
        change: Result<F, ApiError>,
        expect: &Expect,
    ) -> Result<StoredCredential, ApiError>
    where
        F: FnOnce(&mut CredentialInput) -> Result<(), Violation>,
    {
        let result = async {
            let change = change?;
            let _guard = self
                .precondition(expect, self.credential_etag(identity, credential))
                .await?;
            Ok::<_, ApiError>(self.change_credential(identity, credential, change).await?)
        }
        .await;
        self.audited(
            actor,
            "credential.update",
            identity,
            Some(credential),
            result,
        )
    }

    async fn change_credential(
        &self,
        identity: &str,
        credential: &str,
        change: impl FnOnce(&mut CredentialInput) -> Result<(), Violation>,
    ) -> Result<StoredCredential, AdminError> {
        self.api_identity(identity)?;
        let store = self.store()?;
        let Some(current) = store.get_credential(identity, credential).await? else {
            return Err(AdminError::NotFound(format!(
                "identity {:?} has no federated credential {:?}",
                untrusted(identity),
                untrusted(credential)
            )));
        };
        let mut input = CredentialInput {
            name: current.name.clone(),
            issuer: current.issuer.clone(),
            subject: current.subject.clone(),
            claims_matching_expression: current.claims_matching_expression.clone(),
            audiences: current.audiences.clone(),
            description: current.description.clone(),
            one_time_use: current.one_time_use,
            restrictions: current.restrictions.clone(),
        };
        change(&mut input).map_err(|v| AdminError::Invalid(vec![v]))?;
        if input.name != current.name {
            return Err(AdminError::Invalid(vec![invalid(
                "name",
                "the name of a federated credential cannot be changed; create a new one",
            )]));
        }
        let violations = self.check_credential(&input);
        if !violations.is_empty() {
            return Err(AdminError::Invalid(violations));
        }
        let updated = StoredCredential {
            issuer: input.issuer,
            subject: input.subject,
            claims_matching_expression: input.claims_matching_expression,
            audiences: input.audiences,
            description: input.description,
            one_time_use: input.one_time_use,
            restrictions: input.restrictions,
            updated_at: self.broker.clock().now(),
            ..current
        };
        store.update_credential(&updated).await?;
        self.apply().await;
        Ok(updated)
    }

    /// Deletes a federated credential (`credential.delete`), if `expect` holds.
    pub async fn delete_credential(
        &self,
        actor: &Actor,
        identity: &str,
        credential: &str,
        expect: &Expect,
    ) -> Result<(), ApiError> {
        let result = async {
            let _guard = self
                .precondition(expect, self.credential_etag(identity, credential))
                .await?;
            Ok::<_, ApiError>(self.remove_credential(identity, credential).await?)
        }
        .await;
        self.audited(
            actor,
            "credential.delete",
            identity,
            Some(credential),
            result,
        )
    }

    async fn remove_credential(&self, identity: &str, credential: &str) -> Result<(), AdminError> {
        self.api_identity(identity)?;
        if !self
            .store()?
            .delete_credential(identity, credential)
            .await?
        {
            return Err(AdminError::NotFound(format!(
                "identity {:?} has no federated credential {:?}",
                untrusted(identity),
                untrusted(credential)
            )));
        }
        self.apply().await;
        Ok(())
    }
}

/// The least-privilege controls' rules, as admin violations.
fn restriction_violations(restrictions: &Restrictions, credential: bool) -> Vec<Violation> {
    match Conditions::new(restrictions.clone(), credential) {
        Ok(_) => Vec::new(),
        Err(problems) => problems
            .into_iter()
            .map(|p| invalid(p.field, p.message))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::error::ErrorCode;
    use crate::store::{AuditQuery, AuditRecord};

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const CLIENT: &str = "3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b61";

    /// The admin layer over a broker with an in-memory store, and nothing of the edges.
    async fn admin() -> Admin {
        let store = crate::store::open("sqlite::memory:").await.unwrap();
        let broker = Broker::new(
            &wif_config::BrokerConfig::default(),
            crate::clock::system(),
            crate::metrics::Metrics::new(),
            Some(store),
        )
        .unwrap();
        Admin::new(Arc::new(broker), false, 50)
    }

    fn alice(request_id: &str) -> Actor {
        Actor {
            name: "alice".into(),
            role: "admin",
            request_id: request_id.into(),
        }
    }

    fn identity(client_id: &str) -> IdentityInput {
        IdentityInput {
            tenant_id: TENANT.into(),
            client_id: client_id.into(),
            cloud: None,
            authority_host: None,
            assertion: AssertionSource::Passthrough,
            assertion_subject: None,
            restrictions: Restrictions::default(),
        }
    }

    fn credential(name: &str) -> CredentialInput {
        CredentialInput {
            name: name.into(),
            issuer: "https://token.actions.githubusercontent.com".into(),
            subject: Some("repo:contoso/app:ref:refs/heads/main".into()),
            ..CredentialInput::default()
        }
    }

    /// The admin events the store holds once the audit writer has drained.
    async fn events(admin: &Admin) -> Vec<(AuditRecord, serde_json::Value)> {
        let broker = admin.broker();
        broker
            .auditor()
            .close(broker.clock().now(), std::time::Duration::from_secs(5))
            .await;
        let query = AuditQuery {
            kind: Some("admin".into()),
            ..AuditQuery::default()
        };
        let records = broker.store().unwrap().query_audit(&query).await.unwrap();
        records
            .into_iter()
            .map(|r| {
                let event = serde_json::from_str(&r.event).unwrap();
                (r, event)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_refused_and_a_successful_write_each_record_one_event() {
        let admin = admin().await;
        let refused = admin
            .put_identity(
                &alice("req-1"),
                "deploy",
                Ok(identity("not-a-guid")),
                &Expect::Any,
            )
            .await
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::InvalidRequest);
        let written = admin
            .put_identity(
                &alice("req-2"),
                "deploy",
                Ok(identity(CLIENT)),
                &Expect::Any,
            )
            .await
            .unwrap();
        assert_eq!(written, PutOutcome::Created);

        let events = events(&admin).await;
        assert_eq!(events.len(), 2, "{events:?}");
        let (first, event) = &events[0];
        assert_eq!(
            (first.request_id.as_str(), first.outcome.as_str()),
            ("req-1", "invalid_request")
        );
        assert_eq!(first.actor.as_deref(), Some("alice"));
        assert_eq!(first.identity.as_deref(), Some("deploy"));
        assert_eq!(event["action"], "identity.put");
        assert_eq!(event["role"], "admin");
        assert!(
            event["reason"].as_str().unwrap().contains("clientId"),
            "{event}"
        );
        let (second, event) = &events[1];
        assert_eq!(
            (second.request_id.as_str(), second.outcome.as_str()),
            ("req-2", "ok")
        );
        assert_eq!(event["action"], "identity.put");
        assert!(event.get("reason").is_none(), "{event}");
    }

    #[tokio::test]
    async fn a_request_the_edge_could_not_read_is_refused_and_audited_here() {
        let admin = admin().await;
        let unreadable = ApiError::new(ErrorCode::UnsupportedMediaType, "send application/json");
        let refused = admin
            .create_credential(&alice("req-1"), "deploy", Err(unreadable))
            .await
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::UnsupportedMediaType);
        let events = events(&admin).await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].0.outcome, "unsupported_media_type");
        assert_eq!(events[0].1["action"], "credential.create");
    }

    #[tokio::test]
    async fn a_store_clash_is_told_in_a_fixed_sentence() {
        let admin = admin().await;
        admin
            .put_identity(
                &alice("req-1"),
                "deploy",
                Ok(identity(CLIENT)),
                &Expect::Any,
            )
            .await
            .unwrap();
        admin
            .create_credential(&alice("req-2"), "deploy", Ok(credential("main")))
            .await
            .unwrap();
        let clash = admin
            .create_credential(&alice("req-3"), "deploy", Ok(credential("main")))
            .await
            .unwrap_err();
        assert_eq!(clash.code, ErrorCode::Conflict);
        assert_eq!(clash.description, Clash::CredentialName.public());
        // The store's own text, naming the rows, is for the log only.
        assert!(
            clash.internal.as_deref().unwrap().contains("\"main\""),
            "{clash:?}"
        );
        let events = events(&admin).await;
        let (record, event) = events.last().unwrap();
        assert_eq!(record.outcome, "conflict");
        assert_eq!(event["reason"], Clash::CredentialName.public());
        assert_eq!(event["credential"], "main");

        // A conditional write whose ETag no longer holds.
        let stale = admin
            .delete_identity(
                &alice("req-4"),
                "deploy",
                &Expect::Matching("\"0000\"".into()),
            )
            .await
            .unwrap_err();
        assert_eq!(stale.code, ErrorCode::PreconditionFailed);
        let current = admin.identity_etag("deploy").await.unwrap().unwrap();
        admin
            .delete_identity(&alice("req-5"), "deploy", &Expect::Matching(current))
            .await
            .unwrap();
    }
}
