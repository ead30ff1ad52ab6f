//! What the two SQL backends share: the statements both accept (SQLite reads `$1` the way
//! PostgreSQL does), row conversions, error mapping, and the conflict messages an admin
//! reads. Kept out of the backends so SQLite and PostgreSQL cannot drift apart in meaning.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::error::ErrorKind;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use wif_config::{AssertionSource, Cloud};

use super::Restrictions;

use super::{
    AuditQuery, AuditRecord, Clash, MAX_AUDIT_PAGE, StoreError, StoredCredential, StoredIdentity,
};

/// Builds a migrator from migration files embedded at compile time: `(version,
/// description, sql)`. Checksums are recorded in `_sqlx_migrations`, so an applied file
/// must never be edited.
pub(super) fn migrator(files: &[(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        files
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// The identity columns, in the order [`IdentityRow`] decodes them.
macro_rules! identity_columns {
    () => {
        "name, tenant_id, client_id, cloud, authority_host, assertion, created_at, updated_at, \
         assertion_subject, restrictions"
    };
}
/// The credential columns, in the order [`CredentialRow`] decodes them.
macro_rules! credential_columns {
    () => {
        "id, identity, name, issuer, subject, claims_matching_expression, audiences, \
         description, one_time_use, created_at, updated_at, restrictions"
    };
}

pub(super) const LIST_IDENTITIES: &str = concat!(
    "SELECT ",
    identity_columns!(),
    " FROM identities ORDER BY name"
);
pub(super) const GET_IDENTITY: &str = concat!(
    "SELECT ",
    identity_columns!(),
    " FROM identities WHERE name = $1"
);
pub(super) const IDENTITY_CREATED_AT: &str = "SELECT created_at FROM identities WHERE name = $1";
pub(super) const CLIENT_ID_OWNER: &str =
    "SELECT name FROM identities WHERE lower(client_id) = lower($1) AND name <> $2 LIMIT 1";
pub(super) const INSERT_IDENTITY: &str = "INSERT INTO identities (name, tenant_id, client_id, \
     cloud, authority_host, assertion, created_at, updated_at, assertion_subject, restrictions) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
pub(super) const UPDATE_IDENTITY: &str = "UPDATE identities SET tenant_id = $2, client_id = $3, \
     cloud = $4, authority_host = $5, assertion = $6, updated_at = $7, assertion_subject = $8, \
     restrictions = $9 WHERE name = $1";
pub(super) const DELETE_IDENTITY: &str = "DELETE FROM identities WHERE name = $1";
pub(super) const IDENTITY_EXISTS: &str = "SELECT 1 FROM identities WHERE name = $1";

pub(super) const LIST_ALL_CREDENTIALS: &str = concat!(
    "SELECT ",
    credential_columns!(),
    " FROM federated_credentials ORDER BY identity, name"
);
/// One page of every credential, ordered by identity then name, as one row: a JSON array
/// of rows, each an array of the credential columns in [`CredentialRow`]'s order (JSON
/// `null` for NULL; `one_time_use` a boolean or 0/1). `$1`: how many rows; `$2`, `$3`
/// (pages after the first): the identity and name of the last row of the page before
/// (keyset pagination on the unique index over both). Each database says how it builds JSON
/// (`array`: one row, `agg`: the page, `as_text`: a cast to text); the statements are
/// otherwise the same. The page comes back in one hand-off: sqlx's SQLite driver hands
/// each row of a result from its worker thread on its own (docs/PERFORMANCE.md, "Scale").
macro_rules! credential_page {
    ($array:literal, $agg:literal, $as_text:literal, $after:literal) => {
        concat!(
            "SELECT ",
            $agg,
            "(",
            $array,
            "(",
            credential_columns!(),
            ") ORDER BY identity, name)",
            $as_text,
            " FROM (SELECT ",
            credential_columns!(),
            " FROM federated_credentials",
            $after,
            " ORDER BY identity, name LIMIT $1) AS page"
        )
    };
}

/// The first and every following page of [`credential_page`], for one database.
macro_rules! credential_pages {
    ($array:literal, $agg:literal, $as_text:literal) => {
        [
            credential_page!($array, $agg, $as_text, ""),
            credential_page!($array, $agg, $as_text, " WHERE (identity, name) > ($2, $3)"),
        ]
    };
}

/// [`credential_page`] on SQLite (`json_group_array` is `[]` for no rows). PostgreSQL reads
/// [`PLAIN_CREDENTIAL_PAGES`]: its rows come off the connection as cheaply as one JSON
/// row, and building JSON made its start slower.
pub(super) const SQLITE_CREDENTIAL_PAGES: [&str; 2] =
    credential_pages!("json_array", "json_group_array", "");
/// The pages of [`credential_page`] as plain rows (PostgreSQL).
pub(super) const PLAIN_CREDENTIAL_PAGES: [&str; 2] = [
    concat!(
        "SELECT ",
        credential_columns!(),
        " FROM federated_credentials ORDER BY identity, name LIMIT $1"
    ),
    concat!(
        "SELECT ",
        credential_columns!(),
        " FROM federated_credentials WHERE (identity, name) > ($2, $3) \
         ORDER BY identity, name LIMIT $1"
    ),
];

/// Rows per page of a whole read ([`super::RegistryStore::each_credential`]): enough that
/// the statements and hand-offs cost little per row, few enough that a page (about
/// 400 KiB of JSON) is read well within one store call's time limit and leaves little
/// freed memory behind (10,000 a page added 14 MiB of RSS at 100,000 credentials, 2,000
/// add 5; docs/PERFORMANCE.md, "Scale").
pub(super) const CREDENTIAL_PAGE_ROWS: usize = 2_000;

pub(super) const LIST_CREDENTIALS: &str = concat!(
    "SELECT ",
    credential_columns!(),
    " FROM federated_credentials WHERE identity = $1 ORDER BY name"
);
/// By name or by id; a name wins over another credential's id.
pub(super) const GET_CREDENTIAL: &str = concat!(
    "SELECT ",
    credential_columns!(),
    " FROM federated_credentials WHERE identity = $1 AND (name = $2 OR id = $2) \
     ORDER BY CASE WHEN name = $2 THEN 0 ELSE 1 END LIMIT 1"
);
pub(super) const GET_CREDENTIAL_BY_ID: &str = concat!(
    "SELECT ",
    credential_columns!(),
    " FROM federated_credentials WHERE identity = $1 AND id = $2"
);
/// Other credentials of the identity that share the name, or the issuer and subject.
pub(super) const CREDENTIAL_CLASHES: &str = "SELECT name FROM federated_credentials \
     WHERE identity = $1 AND id <> $2 AND (name = $3 OR (issuer = $4 AND subject = $5)) \
     ORDER BY CASE WHEN name = $3 THEN 0 ELSE 1 END";
pub(super) const CREDENTIAL_ID_OWNER: &str =
    "SELECT identity, name FROM federated_credentials WHERE id = $1";
pub(super) const INSERT_CREDENTIAL: &str = concat!(
    "INSERT INTO federated_credentials (",
    credential_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
);
pub(super) const UPDATE_CREDENTIAL: &str = "UPDATE federated_credentials SET issuer = $3, \
     subject = $4, claims_matching_expression = $5, audiences = $6, description = $7, \
     one_time_use = $8, updated_at = $9, restrictions = $10 WHERE identity = $1 AND id = $2";
pub(super) const DELETE_CREDENTIAL_BY_ID: &str =
    "DELETE FROM federated_credentials WHERE identity = $1 AND id = $2";
pub(super) const COUNT_CREDENTIALS: &str =
    "SELECT COUNT(*) FROM federated_credentials WHERE identity = $1";

pub(super) const BUMP_VERSION: &str =
    "UPDATE registry_version SET version = version + 1 WHERE id = 1";
pub(super) const GET_VERSION: &str = "SELECT version FROM registry_version WHERE id = 1";
/// Run inside a registry write, after [`BUMP_VERSION`].
pub(super) const RECORD_CHANGE: &str = "INSERT INTO registry_changes (version, identity, credential) \
     SELECT version, $1, $2 FROM registry_version WHERE id = 1";
pub(super) const CHANGES_SINCE: &str = "SELECT version, identity, credential FROM registry_changes \
     WHERE version > $1 ORDER BY version LIMIT $2";
/// Keeps the newest `$1` versions' changes.
pub(super) const PURGE_CHANGES: &str = "DELETE FROM registry_changes \
     WHERE version <= (SELECT version FROM registry_version WHERE id = 1) - $1";

/// The start of a multi-row audit insert; rows follow from `push_values`.
pub(crate) const INSERT_AUDIT_ROWS: &str =
    "INSERT INTO audit_events (time, kind, request_id, actor, identity, subject, outcome, event) ";

/// Rows per audit insert statement (8 parameters each, well under both databases' limits).
pub(crate) const AUDIT_ROWS_PER_STATEMENT: usize = 256;

pub(super) const PURGE_AUDIT: &str = "DELETE FROM audit_events WHERE time < $1";
/// The oldest and newest audit ids (NULLs when there is none).
pub(super) const AUDIT_ID_RANGE: &str = "SELECT min(id), max(id) FROM audit_events";
/// Deletes audit events with ids from `$1` to `$2`; [`trim_plan`] keeps each statement
/// small, so a large trim never holds the write lock long.
pub(super) const DELETE_AUDIT_IDS: &str = "DELETE FROM audit_events WHERE id >= $1 AND id <= $2";

/// Most rows one trim statement deletes.
const TRIM_CHUNK: i64 = 10_000;

/// The id ranges to delete so that, of the ids `min..=max`, at most the newest `keep` are
/// left.
pub(super) fn trim_plan(min: i64, max: i64, keep: u64) -> Vec<(i64, i64)> {
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    let last = max.saturating_sub(keep);
    let mut out = Vec::new();
    let mut from = min;
    while from <= last {
        let to = from.saturating_add(TRIM_CHUNK - 1).min(last);
        out.push((from, to));
        from = to + 1;
    }
    out
}

/// The audit events [`super::StoreSize`] counts, from the id range.
pub(super) fn audit_count(min: Option<i64>, max: Option<i64>) -> u64 {
    match (min, max) {
        (Some(min), Some(max)) if max >= min => u64::try_from(max - min + 1).unwrap_or(0),
        _ => 0,
    }
}
pub(super) const USE_TOKEN: &str =
    "INSERT INTO used_tokens (key, expires_at) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING";
pub(super) const PURGE_USED_TOKENS: &str = "DELETE FROM used_tokens WHERE expires_at < $1";

pub(super) const LIST_SIGNING_KEYS: &str = "SELECT generation, kid, private_key, created_at, \
     active_from FROM signing_keys ORDER BY generation";
pub(super) const INSERT_SIGNING_KEY: &str = "INSERT INTO signing_keys (generation, kid, \
     private_key, created_at, active_from) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (generation) DO NOTHING";
pub(super) const DELETE_SIGNING_KEYS_BEFORE: &str =
    "DELETE FROM signing_keys WHERE generation < $1";

/// A signing-key row as the database returns it.
pub(super) type SigningKeyRow = (i64, String, String, i64, i64);

pub(super) fn signing_key_from_row(row: SigningKeyRow) -> super::StoredSigningKey {
    let (generation, kid, private_key, created_at, active_from) = row;
    super::StoredSigningKey {
        generation,
        kid,
        private_key: wif_proto::secret::Secret::new(private_key),
        created_at: rust_time(created_at),
        active_from: rust_time(active_from),
    }
}

/// An identity row as the database returns it.
pub(super) type IdentityRow = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    i64,
    i64,
    Option<String>,
    Option<String>,
);

/// A credential row as the database returns it.
pub(super) type CredentialRow = CredentialColumns<bool>;

/// A credential's columns, in order, with `one_time_use` as `F`.
pub(super) type CredentialColumns<F> = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    F,
    i64,
    i64,
    Option<String>,
);

/// An audit row as the database returns it (`event` as JSON text).
pub(super) type AuditRow = (
    i64,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
);

/// The columns of an audit query, `event` as text; the backend supplies the text cast.
pub(super) fn audit_select(event_as_text: &str) -> String {
    format!(
        "SELECT id, time, kind, request_id, actor, identity, subject, outcome, {event_as_text} \
         FROM audit_events WHERE 1 = 1"
    )
}

/// Clamps epoch seconds into a BIGINT.
pub(super) fn db_time(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn rust_time(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

/// The `ORDER BY` of an audit query: by id, newest first when asked.
pub(super) fn audit_order(query: &AuditQuery) -> &'static str {
    if query.newest_first {
        " ORDER BY id DESC"
    } else {
        " ORDER BY id"
    }
}

/// The effective page size of an audit query: 0 or anything above the cap means the cap.
pub(super) fn audit_limit(query: &AuditQuery) -> i64 {
    let limit = match query.limit {
        0 => MAX_AUDIT_PAGE,
        n => n.min(MAX_AUDIT_PAGE),
    };
    i64::from(limit)
}

/// The identity's enums as stored: `(cloud, assertion)`.
pub(super) fn identity_enums(
    identity: &StoredIdentity,
) -> Result<(Option<String>, String), StoreError> {
    Ok((
        identity.cloud.map(|c| enum_to_text(&c)).transpose()?,
        enum_to_text(&identity.assertion)?,
    ))
}

pub(super) fn identity_from_row(row: IdentityRow) -> Result<StoredIdentity, StoreError> {
    let (
        name,
        tenant_id,
        client_id,
        cloud,
        authority_host,
        assertion,
        created_at,
        updated_at,
        assertion_subject,
        restrictions,
    ) = row;
    Ok(StoredIdentity {
        restrictions: restrictions_from_text(restrictions.as_deref(), &name)?,
        cloud: cloud.as_deref().map(enum_from_text::<Cloud>).transpose()?,
        assertion: enum_from_text::<AssertionSource>(&assertion)?,
        name,
        tenant_id,
        client_id,
        authority_host,
        assertion_subject,
        created_at: rust_time(created_at),
        updated_at: rust_time(updated_at),
    })
}

pub(super) fn audiences_to_text(credential: &StoredCredential) -> Result<String, StoreError> {
    serde_json::to_string(&credential.audiences)
        .map_err(|e| StoreError::Corrupt(format!("audiences cannot be encoded: {e}")))
}

pub(super) fn credential_from_row(row: CredentialRow) -> Result<StoredCredential, StoreError> {
    let (
        id,
        identity,
        name,
        issuer,
        subject,
        claims_matching_expression,
        audiences,
        description,
        one_time_use,
        created_at,
        updated_at,
        restrictions,
    ) = row;
    let restrictions = restrictions_from_text(restrictions.as_deref(), &id)?;
    let audiences = serde_json::from_str(&audiences).map_err(|e| {
        StoreError::Corrupt(format!(
            "audiences of credential {id} are not a JSON list: {e}"
        ))
    })?;
    Ok(StoredCredential {
        id,
        identity,
        name,
        issuer,
        subject,
        claims_matching_expression,
        audiences,
        description,
        one_time_use,
        created_at: rust_time(created_at),
        updated_at: rust_time(updated_at),
        restrictions,
    })
}

/// A row of a page of credentials ([`CREDENTIAL_PAGE_ROWS`]) as JSON gives it: the
/// columns of [`CredentialRow`], `one_time_use` as a [`Flag`].
pub(super) type JsonCredentialRow = CredentialColumns<Flag>;

/// A boolean column as JSON gives it: `true`/`false` (PostgreSQL) or `1`/`0` (SQLite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Flag(pub bool);

impl<'de> serde::Deserialize<'de> for Flag {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Flag;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a boolean, 0 or 1")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Flag, E> {
                Ok(Flag(v != 0))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Flag, E> {
                Ok(Flag(v != 0))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The rows of one page of credentials as JSON text; `None` is none. Typed as they are
/// decoded: no JSON value is built per row.
pub(super) fn credential_page_rows(page: Option<&str>) -> Result<Vec<CredentialRow>, StoreError> {
    let rows: Vec<JsonCredentialRow> = page.map_or(Ok(Vec::new()), |page| {
        serde_json::from_str(page).map_err(|e| {
            StoreError::Corrupt(format!("a page of credential rows is not readable: {e}"))
        })
    })?;
    Ok(rows
        .into_iter()
        .map(|(a, b, c, d, e, f, g, h, Flag(one_time_use), j, k, l)| {
            (a, b, c, d, e, f, g, h, one_time_use, j, k, l)
        })
        .collect())
}

/// Restrictions as stored: NULL when they restrict nothing, else their JSON.
pub(super) fn restrictions_to_text(r: &Restrictions) -> Result<Option<String>, StoreError> {
    if r.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(r)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("restrictions cannot be encoded: {e}")))
}

fn restrictions_from_text(text: Option<&str>, owner: &str) -> Result<Restrictions, StoreError> {
    text.map_or(Ok(Restrictions::default()), |t| {
        serde_json::from_str(t).map_err(|e| {
            StoreError::Corrupt(format!("restrictions of {owner} are not readable: {e}"))
        })
    })
}

/// PostgreSQL text cannot hold NUL, and token claims are written by whoever minted the
/// token: an event whose JSON escapes a NUL is rewritten without it.
pub(super) fn event_without_nul(event: &str) -> Result<Cow<'_, str>, StoreError> {
    if !event.contains("\\u0000") {
        return Ok(Cow::Borrowed(event));
    }
    let value: serde_json::Value = serde_json::from_str(event)
        .map_err(|e| StoreError::Corrupt(format!("audit event is not JSON: {e}")))?;
    serde_json::to_string(&json_without_nul(&value))
        .map(Cow::Owned)
        .map_err(|e| StoreError::Corrupt(format!("audit event cannot be encoded: {e}")))
}

pub(super) fn audit_from_row(row: AuditRow) -> Result<AuditRecord, StoreError> {
    let (id, time, kind, request_id, actor, identity, subject, outcome, event) = row;
    Ok(AuditRecord {
        id,
        time: rust_time(time),
        kind,
        request_id,
        actor,
        identity,
        subject,
        outcome,
        event,
    })
}

/// Unit enums are stored as their serde name (`public`, `passthrough`) so the rows read
/// well; anything richer is stored as JSON.
fn enum_to_text<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        Ok(other) => Ok(other.to_string()),
        Err(e) => Err(StoreError::Corrupt(format!("value cannot be encoded: {e}"))),
    }
}

fn enum_from_text<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    let value =
        serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()));
    serde_json::from_value(value)
        .map_err(|e| StoreError::Corrupt(format!("unknown stored value {text:?}: {e}")))
}

/// PostgreSQL text cannot hold NUL. Audit fields and token keys come from tokens, which
/// anyone can write, so NUL is replaced rather than allowed to fail the write.
pub(super) fn without_nul(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// [`without_nul`] throughout a JSON value, keys included.
pub(super) fn json_without_nul(value: &serde_json::Value) -> Cow<'_, serde_json::Value> {
    use serde_json::Value;
    fn has_nul(value: &Value) -> bool {
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().any(has_nul),
            Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    fn clean(value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(without_nul(s).into_owned()),
            Value::Array(items) => Value::Array(items.iter().map(clean).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (without_nul(k).into_owned(), clean(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    if has_nul(value) {
        Cow::Owned(clean(value))
    } else {
        Cow::Borrowed(value)
    }
}

/// Maps a database error with no better explanation at hand.
pub(super) fn db_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) => match db.kind() {
            // The database's own text names tables and columns: log it, tell the caller
            // what the rule means.
            ErrorKind::UniqueViolation => {
                tracing::debug!(error = %db.message(), "unique violation");
                StoreError::Conflict(
                    Clash::Other,
                    "the change clashes with an existing record".into(),
                )
            }
            ErrorKind::ForeignKeyViolation => {
                tracing::debug!(error = %db.message(), "foreign key violation");
                StoreError::NotFound("a record it refers to does not exist".into())
            }
            _ => StoreError::Unavailable(db.to_string()),
        },
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(e.to_string()),
        sqlx::Error::Migrate(m) => migrate_error(*m),
        other => StoreError::Unavailable(other.to_string()),
    }
}

pub(super) fn migrate_error(e: sqlx::migrate::MigrateError) -> StoreError {
    use sqlx::migrate::MigrateError;
    match e {
        MigrateError::Execute(inner) | MigrateError::ExecuteMigration(inner, _) => db_error(inner),
        MigrateError::VersionMissing(v) => StoreError::Corrupt(format!(
            "the database was migrated by a newer broker (migration {v} is unknown to this version)"
        )),
        MigrateError::VersionMismatch(v) => StoreError::Corrupt(format!(
            "migration {v} was applied from a different file than this version ships"
        )),
        MigrateError::Dirty(v) => StoreError::Corrupt(format!(
            "migration {v} failed part-way earlier; repair the database by hand"
        )),
        other => StoreError::Unavailable(format!("migrations failed: {other}")),
    }
}

/// `Some(clash)` when `e` is a unique violation.
pub(super) fn unique_violation(e: &sqlx::Error) -> Option<Clash> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    if db.kind() != ErrorKind::UniqueViolation {
        return None;
    }
    let detail = db.constraint().unwrap_or_else(|| db.message());
    let clash = if detail.contains("client_id") {
        Clash::ClientId
    } else if detail.contains("name_lower") {
        Clash::NameCase
    } else if detail.contains("subject") {
        Clash::CredentialSubject(None)
    } else if detail.contains("federated_credentials_name") || detail.contains("credentials.name") {
        Clash::CredentialName
    } else if detail.contains("federated_credentials") {
        Clash::CredentialId
    } else if detail.contains("identities") {
        Clash::IdentityName
    } else {
        Clash::Other
    };
    Some(clash)
}

pub(super) fn client_id_taken(client_id: &str, other: &str) -> StoreError {
    StoreError::Conflict(
        Clash::ClientId,
        format!("client id {client_id} is already used by identity \"{other}\""),
    )
}

pub(super) fn name_taken(credential: &StoredCredential) -> StoreError {
    StoreError::Conflict(
        Clash::CredentialName,
        format!(
            "a credential named \"{}\" already exists on identity \"{}\"",
            credential.name, credential.identity
        ),
    )
}

pub(super) fn subject_taken(credential: &StoredCredential, other: Option<&str>) -> StoreError {
    let subject = credential.subject.as_deref().unwrap_or_default();
    let by = match other {
        Some(other) => format!("credential \"{other}\""),
        None => "another credential".to_owned(),
    };
    StoreError::Conflict(
        Clash::CredentialSubject(other.map(str::to_owned)),
        format!(
            "issuer {} and subject {subject} are already used by {by} of identity \"{}\"",
            credential.issuer, credential.identity
        ),
    )
}

pub(super) fn id_taken(id: &str, identity: &str, name: &str) -> StoreError {
    StoreError::Conflict(
        Clash::CredentialId,
        format!("id {id} is already used by credential \"{name}\" of identity \"{identity}\""),
    )
}

pub(super) fn identity_missing(identity: &str) -> StoreError {
    StoreError::NotFound(format!("identity \"{identity}\" does not exist"))
}

pub(super) fn credential_missing(credential: &StoredCredential) -> StoreError {
    StoreError::NotFound(format!(
        "credential \"{}\" (id {}) does not exist on identity \"{}\"",
        credential.name, credential.id, credential.identity
    ))
}

pub(super) fn rename_refused(stored: &str, wanted: &str) -> StoreError {
    StoreError::Conflict(
        Clash::Rename,
        format!(
            "credential \"{stored}\" cannot be renamed to \"{wanted}\"; create a new credential instead"
        ),
    )
}

/// The conflict for a credential write whose pre-check found `clashes` (names of other
/// credentials of the identity, the one with the same name first).
pub(super) fn credential_clash(
    credential: &StoredCredential,
    clashes: &[String],
) -> Option<StoreError> {
    let first = clashes.first()?;
    if *first == credential.name {
        Some(name_taken(credential))
    } else {
        Some(subject_taken(credential, Some(first)))
    }
}

/// The error for a failed identity write; the pre-check names the other identity, this
/// only runs if a concurrent write slipped past it.
pub(super) fn identity_write_error(identity: &StoredIdentity, e: sqlx::Error) -> StoreError {
    match unique_violation(&e) {
        Some(Clash::ClientId) => StoreError::Conflict(
            Clash::ClientId,
            format!(
                "client id {} is already used by another identity",
                identity.client_id
            ),
        ),
        Some(Clash::NameCase) => StoreError::Conflict(
            Clash::NameCase,
            format!(
                "an identity whose name differs from \"{}\" only in case already exists; names are compared without regard to case",
                identity.name
            ),
        ),
        Some(_) => StoreError::Conflict(
            Clash::IdentityName,
            format!(
                "identity \"{}\" was changed concurrently; try again",
                identity.name
            ),
        ),
        None => db_error(e),
    }
}

/// The error for a failed credential insert or update.
pub(super) fn credential_write_error(credential: &StoredCredential, e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.kind() == ErrorKind::ForeignKeyViolation
    {
        return identity_missing(&credential.identity);
    }
    match unique_violation(&e) {
        Some(clash) => credential_violation(credential, clash),
        None => db_error(e),
    }
}

/// The conflict for a unique violation raised by a credential write whose pre-check raced.
fn credential_violation(credential: &StoredCredential, clash: Clash) -> StoreError {
    match clash {
        Clash::CredentialName => name_taken(credential),
        Clash::CredentialSubject(_) => subject_taken(credential, None),
        Clash::CredentialId => StoreError::Conflict(
            Clash::CredentialId,
            format!("a credential with id {} already exists", credential.id),
        ),
        _ => StoreError::Conflict(
            Clash::Other,
            format!(
                "credential \"{}\" clashes with an existing record",
                credential.name
            ),
        ),
    }
}

/// A schema name safe to splice into SQL: ASCII letters, digits and `_`, not starting
/// with a digit, at most 63 bytes (PostgreSQL's identifier limit).
pub(super) fn checked_schema(schema: &str) -> Result<&str, StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(schema)
    } else {
        Err(StoreError::Url(format!(
            "schema name {schema:?} must be letters, digits and _"
        )))
    }
}

/// Rows and checks shared by the backends' tests of the unique-violation safety net.
#[cfg(test)]
pub(super) mod testing {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    pub(crate) fn identity(name: &str, client_id: &str) -> StoredIdentity {
        StoredIdentity {
            name: name.to_owned(),
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".to_owned(),
            client_id: client_id.to_owned(),
            cloud: Some(Cloud::Public),
            authority_host: None,
            assertion: AssertionSource::Passthrough,
            assertion_subject: None,
            created_at: 1,
            updated_at: 1,
            restrictions: Default::default(),
        }
    }

    pub(crate) fn credential(id: &str, name: &str, subject: &str) -> StoredCredential {
        StoredCredential {
            id: id.to_owned(),
            identity: "deploy".to_owned(),
            name: name.to_owned(),
            issuer: "https://token.actions.githubusercontent.com".to_owned(),
            subject: Some(subject.to_owned()),
            claims_matching_expression: None,
            audiences: vec!["api://AzureADTokenExchange".to_owned()],
            description: None,
            one_time_use: false,
            created_at: 1,
            updated_at: 1,
            restrictions: Default::default(),
        }
    }

    /// The identity `deploy` and its credential `main` (id `c1`, subject `s1`) exist;
    /// these writes break each uniqueness rule once, and what the database says must read
    /// as the conflict an admin would understand.
    pub(crate) fn clashing_credentials() -> Vec<(StoredCredential, StoreError)> {
        let same_name = credential("c2", "main", "s2");
        let same_subject = credential("c3", "other", "s1");
        let same_id = credential("c1", "third", "s3");
        let orphan = StoredCredential {
            identity: "ghost".to_owned(),
            ..credential("c4", "main", "s4")
        };
        vec![
            (same_name.clone(), name_taken(&same_name)),
            (same_subject.clone(), subject_taken(&same_subject, None)),
            (
                same_id,
                StoreError::Conflict(
                    Clash::CredentialId,
                    "a credential with id c1 already exists".to_owned(),
                ),
            ),
            (orphan, identity_missing("ghost")),
        ]
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(checked_schema("t_0123abcd").is_ok());
        for bad in ["", "1abc", "a-b", "a\"b", "a b", &"x".repeat(64)] {
            assert!(checked_schema(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn enums_are_stored_by_their_names() {
        let (cloud, assertion) = identity_enums(&identity("a", "b")).unwrap();
        assert_eq!(cloud.as_deref(), Some("public"));
        assert_eq!(assertion, "passthrough");
        assert_eq!(
            enum_from_text::<Cloud>("usgov").unwrap(),
            Cloud::UsGov,
            "plain names read back"
        );
        assert!(matches!(
            enum_from_text::<Cloud>("mars"),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn nul_is_replaced_throughout_json() {
        let value = serde_json::json!({"a\u{0}": ["b\u{0}", 1, {"c": "d\u{0}"}]});
        let clean = json_without_nul(&value).into_owned();
        assert!(!clean.to_string().contains("\\u0000"), "{clean}");
        let plain = serde_json::json!({"a": "b"});
        assert!(matches!(json_without_nul(&plain), Cow::Borrowed(_)));
    }

    #[test]
    fn trims_leave_the_newest_and_go_in_small_steps() {
        assert_eq!(trim_plan(1, 100, 100), vec![]);
        assert_eq!(trim_plan(1, 100, 40), vec![(1, 60)]);
        assert_eq!(trim_plan(5, 100, 0), vec![(5, 100)]);
        let big = trim_plan(1, 25_000, 1);
        assert_eq!(big, vec![(1, 10_000), (10_001, 20_000), (20_001, 24_999)]);
        assert_eq!(trim_plan(1, 10, u64::MAX), vec![]);
        assert_eq!(audit_count(Some(3), Some(7)), 5);
        assert_eq!(audit_count(None, None), 0);
    }

    #[test]
    fn audit_pages_are_capped() {
        let limit = |limit| {
            audit_limit(&AuditQuery {
                limit,
                ..Default::default()
            })
        };
        assert_eq!(limit(0), 1000);
        assert_eq!(limit(10), 10);
        assert_eq!(limit(5000), 1000);
    }
}
