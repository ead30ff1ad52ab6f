//! Registering identities and federated credentials through the admin API.
//!
//! Every write is checked with Entra's rules before it is stored (Entra itself checks
//! nothing until an exchange fails), has no 20-credential cap (a configurable sanity limit
//! instead), and takes effect on the next exchange: after the store commits, this
//! replica's registry takes the change (the changed entry only) before the write is acknowledged. Identities and
//! credentials declared in the config file are read-only here.

use std::sync::Arc;

use wif_config::{AssertionSource, Cloud};

use crate::audit::AuditEvent;
use crate::error::ApiError;
use crate::exchange::Broker;
use crate::outbound;
use crate::policy::conditions::{Conditions, Restrictions};
use crate::policy::rules::{self, CredentialSpec, RuleOptions, Violation};
use crate::store::{PutOutcome, StoreError, StoredCredential, StoredIdentity};

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
            StoreError::Conflict(m) => AdminError::Conflict(m),
            StoreError::NotFound(m) => AdminError::NotFound(m),
            StoreError::Invalid { field, message } => {
                AdminError::Invalid(vec![crate::policy::rules::Violation { field, message }])
            }
            other => AdminError::Store(other),
        }
    }
}

impl AdminError {
    /// The error's one classification (docs/api.md, "Errors"): a store failure's text is
    /// for the log only.
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

    /// Records one admin event (docs/admin.md, "Audit"): every admin write, refused or
    /// not, and the console's sign-ins and refusals. `actor` is the caller's name and
    /// role, `None` when it could not be authenticated.
    pub fn record(
        &self,
        action: &'static str,
        actor: Option<(String, &'static str)>,
        identity: Option<&str>,
        credential: Option<&str>,
        outcome: Result<(), &ApiError>,
    ) {
        let unauthenticated = actor.is_none();
        let (actor, role) = match actor {
            Some((name, role)) => (name, Some(role)),
            None => ("anonymous".to_owned(), None),
        };
        let (outcome, reason) = match outcome {
            Ok(()) => ("ok".to_owned(), None),
            Err(e) => (e.code.as_str().to_owned(), Some(e.description.clone())),
        };
        self.broker.metrics().admin_request(action, &outcome);
        self.broker.auditor().record(&AuditEvent {
            kind: "admin",
            time: self.broker.clock().now(),
            request_id: crate::error::current_request_id(),
            endpoint: "admin",
            actor: Some(actor),
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

    /// Audits a write's result (the API's and the console's) and passes it on.
    pub fn audited<T, E: Into<ApiError>>(
        &self,
        actor: (String, &'static str),
        action: &'static str,
        identity: &str,
        credential: Option<&str>,
        result: Result<T, E>,
    ) -> Result<T, ApiError> {
        let result = result.map_err(Into::into);
        self.record(
            action,
            Some(actor),
            Some(identity),
            credential,
            result.as_ref().map(|_| ()),
        );
        result
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

    /// Creates or replaces an API-registered identity.
    pub async fn put_identity(
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

    pub async fn delete_identity(&self, name: &str) -> Result<(), AdminError> {
        self.writable(name)?;
        if !self.store()?.delete_identity(name).await? {
            return Err(AdminError::NotFound(format!("no identity named {name:?}")));
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
                "no identity named {identity:?}"
            ))),
            Some(_) => self.writable(identity),
        }
    }

    pub async fn create_credential(
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

    /// Applies `change` to the stored credential and stores the result, re-checked.
    pub async fn update_credential(
        &self,
        identity: &str,
        credential: &str,
        change: impl FnOnce(&mut CredentialInput) -> Result<(), Violation>,
    ) -> Result<StoredCredential, AdminError> {
        self.api_identity(identity)?;
        let store = self.store()?;
        let Some(current) = store.get_credential(identity, credential).await? else {
            return Err(AdminError::NotFound(format!(
                "identity {identity:?} has no federated credential {credential:?}"
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

    pub async fn delete_credential(
        &self,
        identity: &str,
        credential: &str,
    ) -> Result<(), AdminError> {
        self.api_identity(identity)?;
        if !self
            .store()?
            .delete_credential(identity, credential)
            .await?
        {
            return Err(AdminError::NotFound(format!(
                "identity {identity:?} has no federated credential {credential:?}"
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
