//! Persistence: identities, federated credentials, audit events and used token ids.
//!
//! One trait per concern ([`RegistryStore`], [`AuditStore`], [`ReplayStore`],
//! [`SigningKeyStore`]) and [`Store`], which is all of them plus `kind`, `size` and `ping`.
//! One implementation, [`SqlStore`] (`sql_store`), written once over sqlx for both
//! databases; what differs is a [`sql_store::Dialect`]: SQLite ([`sqlite`], the embedded
//! default, WAL, also `sqlite::memory:` for the dev stack) and PostgreSQL ([`postgres`],
//! several replicas share one). The statements and row conversions both share are in
//! `sql`. Migrations are embedded and run at open. Every registry write bumps a version
//! number in the same transaction, so replicas notice changes by polling
//! [`RegistryStore::version`]. [`Bounded`] wraps every store the broker opens.
//!
//! An acknowledged write is durable: SQLite commits with WAL and `synchronous=FULL`,
//! PostgreSQL commits before answering. The store never sees a token, only hashes and ids.

pub mod postgres;
mod sql;
pub mod sql_store;
pub mod sqlite;

pub use sql_store::{Dialect, SqlStore};

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wif_config::{AssertionSource, Cloud};

/// An identity registered through the admin API.
/// The controls as written (config file, admin API) and stored (JSON, camelCase). Every
/// field is optional; the default restricts nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Restrictions {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_scopes: Vec<String>,
    /// Credentials only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_networks: Vec<String>,
    /// Credentials only: seconds since the token's `iat`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_token_age_seconds: Option<u64>,
    /// Credentials only: epoch seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<u64>,
    /// Credentials only: epoch seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<wif_proto::admin::RateLimit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredIdentity {
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
    pub cloud: Option<Cloud>,
    pub authority_host: Option<String>,
    pub assertion: AssertionSource,
    /// `sub` of the broker's assertions (`assertion = "broker"`); `None`: the name.
    pub assertion_subject: Option<String>,
    /// Epoch seconds.
    pub created_at: u64,
    pub updated_at: u64,
    /// Disabled, allowed scopes, rate limit (docs/admin.md, "Least privilege").
    #[serde(default)]
    pub restrictions: Restrictions,
}

/// A federated credential registered through the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCredential {
    /// A UUID assigned at creation, like Graph's `id`.
    pub id: String,
    pub identity: String,
    pub name: String,
    pub issuer: String,
    pub subject: Option<String>,
    /// FFL text as the admin wrote it (languageVersion 1).
    pub claims_matching_expression: Option<String>,
    pub audiences: Vec<String>,
    pub description: Option<String>,
    /// Each token (by `jti`, or its SHA-256 when it has none) is accepted once.
    pub one_time_use: bool,
    pub created_at: u64,
    pub updated_at: u64,
    /// The broker's own controls (docs/admin.md, "Least privilege").
    #[serde(default)]
    pub restrictions: Restrictions,
}

/// A key the broker generated to sign its assertions (`assertion = "broker"`).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSigningKey {
    /// 1, 2, 3, ...: replicas race to insert the next one; exactly one wins.
    pub generation: i64,
    pub kid: String,
    /// PKCS#8 DER, base64.
    pub private_key: wif_proto::secret::Secret,
    /// Epoch seconds: published from `created_at`, signs from `active_from`.
    pub created_at: u64,
    pub active_from: u64,
}

impl std::fmt::Debug for StoredSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSigningKey")
            .field("generation", &self.generation)
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("active_from", &self.active_from)
            .finish_non_exhaustive()
    }
}

/// One audit event as stored: the columns filters use, and in `event` the rest of the
/// event as JSON text (an object). [`AuditRecord::to_json`] gives the whole event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Assigned by the store; increasing. 0 before insertion.
    pub id: i64,
    /// Epoch seconds.
    pub time: u64,
    /// `exchange`, `simulate` or `admin`.
    pub kind: String,
    pub request_id: String,
    /// Who acted: the admin's name for admin events, the token's subject otherwise.
    pub actor: Option<String>,
    pub identity: Option<String>,
    pub subject: Option<String>,
    /// `ok` or an error code.
    pub outcome: String,
    pub event: String,
}

impl AuditRecord {
    /// The event fields kept in columns, not repeated in `event`.
    pub const COLUMNS: [&'static str; 6] = [
        "time",
        "kind",
        "request_id",
        "identity",
        "subject",
        "outcome",
    ];

    /// The whole event as JSON: `event` with the columns and the id put back (events
    /// stored before rows were compacted hold them already; the columns win).
    pub fn to_json(&self) -> serde_json::Value {
        let mut event: serde_json::Value =
            serde_json::from_str(&self.event).unwrap_or_else(|_| serde_json::json!({}));
        if let Some(map) = event.as_object_mut() {
            map.insert("id".into(), self.id.into());
            map.insert("time".into(), self.time.into());
            map.insert("kind".into(), self.kind.clone().into());
            map.insert("request_id".into(), self.request_id.clone().into());
            for (key, value) in [("identity", &self.identity), ("subject", &self.subject)] {
                match value {
                    Some(v) => map.insert(key.into(), v.clone().into()),
                    None => map.remove(key),
                };
            }
            map.insert("outcome".into(), self.outcome.clone().into());
        }
        event
    }
}

/// Filters for reading audit events; all optional, combined with AND. Results are in
/// increasing id order (decreasing when `newest_first`), only ids above `after_id` and
/// below `before_id`, at most `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub since: Option<u64>,
    pub until: Option<u64>,
    pub kind: Option<String>,
    pub identity: Option<String>,
    pub subject: Option<String>,
    pub outcome: Option<String>,
    pub after_id: Option<i64>,
    /// Only events with an id below this one (a cursor for reading newest first).
    pub before_id: Option<i64>,
    /// Decreasing id order (newest first) instead of increasing.
    pub newest_first: bool,
    /// At most [`MAX_AUDIT_PAGE`]; 0 (the default) means that maximum.
    pub limit: u32,
}

/// The most audit events one [`AuditStore::query_audit`] call returns.
pub const MAX_AUDIT_PAGE: u32 = 1000;

/// What [`Store::size`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreSize {
    /// The database's size: SQLite's pages (the WAL aside), PostgreSQL's
    /// `pg_total_relation_size` of the broker's tables.
    pub bytes: u64,
    /// Audit events held: newest id minus oldest id plus one (exact on SQLite, an upper
    /// bound on PostgreSQL, whose ids may skip).
    pub audit_events: u64,
}

/// One registry write as kept for other replicas: the version it produced and the entry
/// it changed (`credential`: a credential's name; `None`: the identity itself, with all
/// its credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryChange {
    pub version: i64,
    pub identity: String,
    pub credential: Option<String>,
}

/// Whether a put created or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Replaced,
}

/// Which uniqueness rule a write broke, read from the pre-check or from the database's
/// constraint (PostgreSQL) or message (SQLite names the columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clash {
    ClientId,
    /// Another identity's name differs only in case.
    NameCase,
    /// Another credential of the identity has the issuer and subject: its name, when the
    /// pre-check found it.
    CredentialSubject(Option<String>),
    CredentialName,
    CredentialId,
    /// The identity's row changed while it was written.
    IdentityName,
    /// A credential's name is immutable.
    Rename,
    Other,
}

impl Clash {
    /// What a caller is told: a fixed sentence per rule, naming at most a stored
    /// credential (never the store's own text; docs/architecture.md, "Errors").
    pub fn public(&self) -> String {
        match self {
            Clash::ClientId => "the client id is already used by another identity".into(),
            Clash::NameCase => "an identity whose name differs only in case already exists; names are compared without regard to case".into(),
            Clash::CredentialSubject(Some(other)) => format!(
                "federated credential {:?} of this identity already has this issuer and subject",
                crate::redact::untrusted(other)
            ),
            Clash::CredentialSubject(None) => {
                "another federated credential of this identity already has this issuer and subject".into()
            }
            Clash::CredentialName => {
                "a federated credential with this name already exists on this identity".into()
            }
            Clash::CredentialId => "a federated credential with this id already exists".into(),
            Clash::IdentityName => "the identity changed meanwhile; read it again and retry".into(),
            Clash::Rename => {
                "the name of a federated credential cannot be changed; create a new one".into()
            }
            Clash::Other => "the change clashes with an existing record".into(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The database cannot be reached or failed; the operation may be retried.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule would be broken: which one, and a message naming the rows (for
    /// the log; callers are told [`Clash::public`]).
    #[error("{1}")]
    Conflict(Clash, String),
    /// The identity (or credential) the operation names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A row could not be read back (for example a migration from a newer version).
    #[error("the store holds data this version cannot read: {0}")]
    Corrupt(String),
    /// The URL is not a supported store.
    #[error("unsupported store URL: {0}")]
    Url(String),
    /// A value no database can hold as given (text with a NUL character): the caller's
    /// mistake, refused before any database sees it, the same on every backend.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The persistence seam: one trait per concern, and [`Store`], which is all of them.
/// Callers hold an `Arc<dyn Store>`; the methods of every concern are callable on it.
/// Implementations must be safe to call from many tasks at once.
#[async_trait::async_trait]
pub trait Store: RegistryStore + AuditStore + ReplayStore + SigningKeyStore {
    /// A short name for logs: `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;
    /// How big the store is: its bytes on disk and its audit events (an estimate from ids).
    async fn size(&self) -> StoreResult<StoreSize>;
    /// Cheap liveness check.
    async fn ping(&self) -> StoreResult<()>;
}

/// Identities and federated credentials, the version every write bumps, and the changes
/// replicas read.
#[async_trait::async_trait]
pub trait RegistryStore: Send + Sync + 'static {
    async fn list_identities(&self) -> StoreResult<Vec<StoredIdentity>>;
    async fn get_identity(&self, name: &str) -> StoreResult<Option<StoredIdentity>>;
    /// Creates or replaces (keeping `created_at` of an existing row). A `client_id` already
    /// used by another identity is a `Conflict`.
    async fn put_identity(&self, identity: &StoredIdentity) -> StoreResult<PutOutcome>;
    /// Deletes the identity and its credentials; false if it did not exist.
    async fn delete_identity(&self, name: &str) -> StoreResult<bool>;

    /// All credentials, or those of one identity, ordered by identity then name.
    async fn list_credentials(&self, identity: Option<&str>) -> StoreResult<Vec<StoredCredential>>;
    /// Every credential, ordered by identity then name, handed to `each` one by one: read
    /// in pages (2,000 rows a statement) inside one read-only transaction, so the whole
    /// read is one snapshot and a million rows are never all held at once. Each statement
    /// is bounded by `idle` (`Unavailable`: a database that stopped answering), however
    /// long the whole read takes (docs/PERFORMANCE.md, "Scale").
    async fn each_credential(
        &self,
        idle: std::time::Duration,
        each: &mut (dyn FnMut(StoredCredential) + Send),
    ) -> StoreResult<()>;
    /// By name or by id.
    async fn get_credential(
        &self,
        identity: &str,
        name_or_id: &str,
    ) -> StoreResult<Option<StoredCredential>>;
    /// `NotFound` when the identity does not exist; `Conflict` for a duplicate name, or a
    /// duplicate issuer + subject, within the identity.
    async fn create_credential(&self, credential: &StoredCredential) -> StoreResult<()>;
    /// Replaces the row with the same identity and id (the name may not change); same
    /// conflicts as create; `NotFound` when it does not exist.
    async fn update_credential(&self, credential: &StoredCredential) -> StoreResult<()>;
    /// False if it did not exist.
    async fn delete_credential(&self, identity: &str, name_or_id: &str) -> StoreResult<bool>;
    /// How many credentials an identity has (for the sanity limit).
    async fn count_credentials(&self, identity: &str) -> StoreResult<u64>;

    /// Increases with every identity or credential write, in the same transaction.
    async fn version(&self) -> StoreResult<i64>;
    /// The registry writes after `version`, oldest first, at most `limit`. Versions are
    /// consecutive; changes older than the kept ones are gone (a reader that finds a gap
    /// reads the whole registry instead).
    async fn changes_since(&self, version: i64, limit: u32) -> StoreResult<Vec<RegistryChange>>;
    /// Forgets the changes of all but the newest `keep` versions; returns how many.
    async fn purge_changes(&self, keep: u64) -> StoreResult<u64>;
    /// Changes whenever another replica may have written the registry (PostgreSQL's
    /// LISTEN/NOTIFY), so replicas apply a write within moments instead of at their next
    /// poll; `None` where the store cannot tell (replicas poll only).
    fn registry_notices(&self) -> Option<tokio::sync::watch::Receiver<u64>>;
}

/// Audit events: appended, read, and purged or trimmed.
#[async_trait::async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Appends events (ids are assigned by the store).
    async fn append_audit(&self, events: &[AuditRecord]) -> StoreResult<()>;
    async fn query_audit(&self, query: &AuditQuery) -> StoreResult<Vec<AuditRecord>>;
    /// Deletes events older than `before` (epoch seconds); returns how many.
    async fn purge_audit(&self, before: u64) -> StoreResult<u64>;
    /// Deletes the oldest events beyond the newest `keep` (by id, so at most `keep` are
    /// left); returns how many.
    async fn trim_audit(&self, keep: u64) -> StoreResult<u64>;
}

/// Used token ids, for credentials whose tokens are accepted once.
#[async_trait::async_trait]
pub trait ReplayStore: Send + Sync + 'static {
    /// Records `key` as used until `expires_at`. True when this is its first use; false
    /// when it was already recorded (and not yet purged). Atomic across replicas.
    async fn use_token_once(&self, key: &str, expires_at: u64) -> StoreResult<bool>;
    /// Forgets used keys that expired before `now`; returns how many.
    async fn purge_used_tokens(&self, now: u64) -> StoreResult<u64>;
}

/// The keys the broker generated to sign its own assertions.
#[async_trait::async_trait]
pub trait SigningKeyStore: Send + Sync + 'static {
    /// The broker's generated signing keys, by increasing generation.
    async fn list_signing_keys(&self) -> StoreResult<Vec<StoredSigningKey>>;
    /// Inserts `key` unless its generation exists; true when this call inserted it.
    async fn insert_signing_key(&self, key: &StoredSigningKey) -> StoreResult<bool>;
    /// Deletes the keys of generations below `generation`; returns how many.
    async fn delete_signing_keys_before(&self, generation: i64) -> StoreResult<u64>;
}

/// Opens the store named by `[store] url` and runs migrations.
pub async fn open(url: &str) -> StoreResult<Arc<dyn Store>> {
    Ok(bounded(open_backend(url).await?))
}

async fn open_backend(url: &str) -> StoreResult<Arc<dyn Store>> {
    Ok(if url.starts_with("sqlite:") {
        Arc::new(sqlite::SqliteStore::open(url).await?)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Arc::new(postgres::PgStore::open(url).await?)
    } else {
        return Err(StoreError::Url(
            url.split(':').next().unwrap_or_default().to_owned(),
        ));
    })
}

/// Opens the store like [`open`], except that a PostgreSQL database that cannot be
/// reached now does not stop the broker: the store is then opened in the background
/// (retrying with back-off up to 10 s) and, until it is, every call answers
/// `Unavailable`, as during an outage. The broker meanwhile serves the identities of its
/// configuration file (docs/storage.md "Starting without the database"). Any other
/// failure (a bad URL, an SQLite file that cannot be opened, a schema from a newer
/// version) is returned, so a mistake still stops the start.
pub async fn open_or_defer(url: &str) -> StoreResult<Arc<dyn Store>> {
    let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
    match open(url).await {
        Err(StoreError::Unavailable(reason)) if postgres => {
            tracing::warn!(%reason, "cannot reach the store; starting without it and retrying in the background");
            let cell = Arc::new(tokio::sync::OnceCell::new());
            let url = url.to_owned();
            let target = cell.clone();
            let deferred = Arc::new(Bounded {
                inner: cell,
                kind: "postgres",
                timeout: CALL_TIMEOUT,
            });
            tokio::spawn(async move {
                let mut delay = std::time::Duration::from_secs(1);
                loop {
                    tokio::time::sleep(delay).await;
                    match open_backend(&url).await {
                        Ok(store) => {
                            let _ = target.set(store);
                            tracing::info!("the store is reachable; opened it");
                            return;
                        }
                        Err(e) => tracing::debug!(error = %e, "the store is still unreachable"),
                    }
                    delay = (delay * 2).min(std::time::Duration::from_secs(10));
                }
            });
            Ok(deferred)
        }
        other => other,
    }
}

/// `inner` behind [`Bounded`]: every call time-limited, unstorable text refused.
pub fn bounded(inner: Arc<dyn Store>) -> Arc<dyn Store> {
    Arc::new(Bounded {
        kind: inner.kind(),
        inner: Arc::new(tokio::sync::OnceCell::new_with(Some(inner))),
        timeout: CALL_TIMEOUT,
    })
}

/// The longest any store call may take.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Bounds every call of another store, so a database that stops answering mid-query (a
/// network partition: the drivers have no per-query socket timeout) becomes `Unavailable`
/// instead of a hang. A write that times out may still commit later; retrying it then
/// answers a conflict, never a duplicate. Text a database cannot hold is refused here as
/// [`StoreError::Invalid`] before any backend sees it (PostgreSQL refuses NUL in text
/// with an error that would otherwise read as an outage). It implements every store trait,
/// and none of their methods has a default, so a method added to a trait must be bounded
/// here before anything compiles.
pub struct Bounded {
    /// Empty while a store deferred by [`open_or_defer`] is still being opened: calls
    /// answer `Unavailable`, as during an outage.
    inner: Arc<tokio::sync::OnceCell<Arc<dyn Store>>>,
    kind: &'static str,
    timeout: std::time::Duration,
}

/// Refuses text with a NUL character, which PostgreSQL cannot store or compare.
fn storable(field: &'static str, value: &str) -> StoreResult<()> {
    if value.contains('\0') {
        return Err(StoreError::Invalid {
            field,
            message: "must not contain a NUL character".into(),
        });
    }
    Ok(())
}

fn storable_all<'a>(
    values: impl IntoIterator<Item = (&'static str, Option<&'a str>)>,
) -> StoreResult<()> {
    values
        .into_iter()
        .try_for_each(|(field, value)| value.map_or(Ok(()), |v| storable(field, v)))
}

fn storable_identity(i: &StoredIdentity) -> StoreResult<()> {
    storable_all([
        ("name", Some(i.name.as_str())),
        ("tenantId", Some(&i.tenant_id)),
        ("clientId", Some(&i.client_id)),
        ("authorityHost", i.authority_host.as_deref()),
        ("assertionSubject", i.assertion_subject.as_deref()),
    ])
}

fn storable_credential(c: &StoredCredential) -> StoreResult<()> {
    storable_all([
        ("id", Some(c.id.as_str())),
        ("identity", Some(&c.identity)),
        ("name", Some(&c.name)),
        ("issuer", Some(&c.issuer)),
        ("subject", c.subject.as_deref()),
        (
            "claimsMatchingExpression",
            c.claims_matching_expression.as_deref(),
        ),
        ("description", c.description.as_deref()),
    ])?;
    c.audiences
        .iter()
        .try_for_each(|a| storable("audiences", a))
}

impl Bounded {
    fn inner(&self) -> StoreResult<&Arc<dyn Store>> {
        self.inner.get().ok_or_else(|| {
            StoreError::Unavailable(format!(
                "the {} store has not been reachable since the broker started",
                self.kind
            ))
        })
    }

    async fn run<T>(
        &self,
        call: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "the {} store did not answer within {} s",
                self.kind,
                self.timeout.as_secs()
            ))),
        }
    }
}

#[async_trait::async_trait]
impl RegistryStore for Bounded {
    async fn list_identities(&self) -> StoreResult<Vec<StoredIdentity>> {
        self.run(self.inner()?.list_identities()).await
    }
    async fn get_identity(&self, name: &str) -> StoreResult<Option<StoredIdentity>> {
        storable("name", name)?;
        self.run(self.inner()?.get_identity(name)).await
    }
    async fn put_identity(&self, identity: &StoredIdentity) -> StoreResult<PutOutcome> {
        storable_identity(identity)?;
        self.run(self.inner()?.put_identity(identity)).await
    }
    async fn delete_identity(&self, name: &str) -> StoreResult<bool> {
        storable("name", name)?;
        self.run(self.inner()?.delete_identity(name)).await
    }
    async fn list_credentials(&self, identity: Option<&str>) -> StoreResult<Vec<StoredCredential>> {
        storable_all([("identity", identity)])?;
        self.run(self.inner()?.list_credentials(identity)).await
    }
    async fn each_credential(
        &self,
        _idle: std::time::Duration,
        each: &mut (dyn FnMut(StoredCredential) + Send),
    ) -> StoreResult<()> {
        // Bounded per page rather than as a whole read, which grows with the registry.
        self.inner()?.each_credential(self.timeout, each).await
    }
    async fn get_credential(
        &self,
        identity: &str,
        name_or_id: &str,
    ) -> StoreResult<Option<StoredCredential>> {
        storable_all([("identity", Some(identity)), ("name", Some(name_or_id))])?;
        self.run(self.inner()?.get_credential(identity, name_or_id))
            .await
    }
    async fn create_credential(&self, credential: &StoredCredential) -> StoreResult<()> {
        storable_credential(credential)?;
        self.run(self.inner()?.create_credential(credential)).await
    }
    async fn update_credential(&self, credential: &StoredCredential) -> StoreResult<()> {
        storable_credential(credential)?;
        self.run(self.inner()?.update_credential(credential)).await
    }
    async fn delete_credential(&self, identity: &str, name_or_id: &str) -> StoreResult<bool> {
        storable_all([("identity", Some(identity)), ("name", Some(name_or_id))])?;
        self.run(self.inner()?.delete_credential(identity, name_or_id))
            .await
    }
    async fn count_credentials(&self, identity: &str) -> StoreResult<u64> {
        storable("identity", identity)?;
        self.run(self.inner()?.count_credentials(identity)).await
    }
    async fn version(&self) -> StoreResult<i64> {
        self.run(self.inner()?.version()).await
    }
    async fn changes_since(&self, version: i64, limit: u32) -> StoreResult<Vec<RegistryChange>> {
        self.run(self.inner()?.changes_since(version, limit)).await
    }
    async fn purge_changes(&self, keep: u64) -> StoreResult<u64> {
        self.run(self.inner()?.purge_changes(keep)).await
    }
    fn registry_notices(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.get().and_then(|s| s.registry_notices())
    }
}

#[async_trait::async_trait]
impl AuditStore for Bounded {
    async fn append_audit(&self, events: &[AuditRecord]) -> StoreResult<()> {
        self.run(self.inner()?.append_audit(events)).await
    }
    async fn query_audit(&self, query: &AuditQuery) -> StoreResult<Vec<AuditRecord>> {
        storable_all([
            ("kind", query.kind.as_deref()),
            ("identity", query.identity.as_deref()),
            ("subject", query.subject.as_deref()),
            ("outcome", query.outcome.as_deref()),
        ])?;
        self.run(self.inner()?.query_audit(query)).await
    }
    async fn purge_audit(&self, before: u64) -> StoreResult<u64> {
        self.run(self.inner()?.purge_audit(before)).await
    }
    async fn trim_audit(&self, keep: u64) -> StoreResult<u64> {
        self.run(self.inner()?.trim_audit(keep)).await
    }
}

#[async_trait::async_trait]
impl ReplayStore for Bounded {
    async fn use_token_once(&self, key: &str, expires_at: u64) -> StoreResult<bool> {
        self.run(self.inner()?.use_token_once(key, expires_at))
            .await
    }
    async fn purge_used_tokens(&self, now: u64) -> StoreResult<u64> {
        self.run(self.inner()?.purge_used_tokens(now)).await
    }
}

#[async_trait::async_trait]
impl SigningKeyStore for Bounded {
    async fn list_signing_keys(&self) -> StoreResult<Vec<StoredSigningKey>> {
        self.run(self.inner()?.list_signing_keys()).await
    }
    async fn insert_signing_key(&self, key: &StoredSigningKey) -> StoreResult<bool> {
        self.run(self.inner()?.insert_signing_key(key)).await
    }
    async fn delete_signing_keys_before(&self, generation: i64) -> StoreResult<u64> {
        self.run(self.inner()?.delete_signing_keys_before(generation))
            .await
    }
}

#[async_trait::async_trait]
impl Store for Bounded {
    fn kind(&self) -> &'static str {
        self.kind
    }
    async fn size(&self) -> StoreResult<StoreSize> {
        self.run(self.inner()?.size()).await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.run(self.inner()?.ping()).await
    }
}
