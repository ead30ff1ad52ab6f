//! The embedded store: one SQLite file (or `sqlite::memory:` for the dev stack).
//!
//! Writes go through a single connection, so they queue in the broker instead of
//! contending for SQLite's file lock; reads use a small pool of their own and, with WAL,
//! never wait for a writer. `synchronous = FULL` makes every commit reach the disk before
//! it is acknowledged, so an acknowledged write survives a crash or a power loss.
//! A SQLite file belongs to one broker process: replicas share PostgreSQL instead.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool, SqliteTransaction};

use super::sql::{self, AuditRow, CredentialRow, IdentityRow, db_error, db_time};
use super::{
    AuditQuery, AuditRecord, PutOutcome, RegistryChange, Store, StoreError, StoreResult,
    StoredCredential, StoredIdentity, StoredSigningKey,
};

/// How long a statement waits for another process holding the file's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a task waits for the connection it needs; writers queue here.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
const READERS: u32 = 4;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "signing keys",
        include_str!("../../migrations/sqlite/0002_signing_keys.sql"),
    ),
    (
        3,
        "assertion subject",
        include_str!("../../migrations/sqlite/0003_assertion_subject.sql"),
    ),
    (
        4,
        "identity name case",
        include_str!("../../migrations/sqlite/0004_identity_name_case.sql"),
    ),
    (
        5,
        "registry changes",
        include_str!("../../migrations/sqlite/0005_registry_changes.sql"),
    ),
    (
        6,
        "restrictions",
        include_str!("../../migrations/sqlite/0006_restrictions.sql"),
    ),
];

/// The SQLite store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` — `sqlite://path`, `sqlite:path`
    /// or `sqlite::memory:` — and runs the embedded migrations.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Url(format!("{url}: {e}")))?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Full);

        if is_in_memory(url) {
            // An in-memory database lives as long as a connection to it: keep exactly one,
            // forever, and let every task share it.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(db_error)?;
            let store = Self {
                read: pool.clone(),
                write: pool,
            };
            store.migrate().await?;
            return Ok(store);
        }

        create_private(options.get_filename())?;
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone().journal_mode(SqliteJournalMode::Wal))
            .await
            .map_err(db_error)?;
        // Readers open the file the writer created; WAL mode is a property of the file.
        let read = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.create_if_missing(false));
        let store = Self { read, write };
        store.migrate().await?;
        Ok(store)
    }

    /// Closes every connection, waiting for work in flight. Later calls fail with
    /// `Unavailable`.
    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    async fn migrate(&self) -> StoreResult<()> {
        sql::migrator(MIGRATIONS)
            .run(&self.write)
            .await
            .map_err(sql::migrate_error)
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front, so a transaction that reads before
    /// it writes cannot fail half-way on a lock upgrade.
    async fn begin_write(&self) -> StoreResult<SqliteTransaction<'static>> {
        self.write
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)
    }

    async fn begin_registry_write(&self) -> StoreResult<SqliteTransaction<'static>> {
        let mut tx = self.begin_write().await?;
        sqlx::query(sql::BUMP_VERSION)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        Ok(tx)
    }
}

/// Creates the database file, when missing, readable by the broker's user only (0600): it
/// holds the generated signing keys. SQLite gives the `-wal` and `-shm` files it creates
/// the database file's permissions. An existing file keeps the mode the operator gave it.
fn create_private(path: &std::path::Path) -> StoreResult<()> {
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    match open.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(format!(
            "cannot create the database file {}: {e}",
            path.display()
        ))),
    }
}

fn is_in_memory(url: &str) -> bool {
    let (database, params) = url.split_once('?').unwrap_or((url, ""));
    database.ends_with(":memory:") || params.split('&').any(|p| p == "mode=memory")
}

async fn find_credential(
    conn: &mut sqlx::SqliteConnection,
    identity: &str,
    name_or_id: &str,
) -> StoreResult<Option<StoredCredential>> {
    sqlx::query_as::<_, CredentialRow>(sql::GET_CREDENTIAL)
        .bind(identity)
        .bind(name_or_id)
        .fetch_optional(conn)
        .await
        .map_err(db_error)?
        .map(sql::credential_from_row)
        .transpose()
}

/// The conflict, if any, that writing `credential` would cause.
async fn credential_conflict(
    conn: &mut sqlx::SqliteConnection,
    credential: &StoredCredential,
) -> StoreResult<Option<StoreError>> {
    let clashes = sqlx::query_scalar::<_, String>(sql::CREDENTIAL_CLASHES)
        .bind(&credential.identity)
        .bind(&credential.id)
        .bind(&credential.name)
        .bind(&credential.issuer)
        .bind(&credential.subject)
        .fetch_all(conn)
        .await
        .map_err(db_error)?;
    Ok(sql::credential_clash(credential, &clashes))
}

/// Records which entry a registry write changed, under the version the write produced.
async fn record_change(
    conn: &mut sqlx::SqliteConnection,
    identity: &str,
    credential: Option<&str>,
) -> StoreResult<()> {
    sqlx::query(sql::RECORD_CHANGE)
        .bind(identity)
        .bind(credential)
        .execute(conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn list_identities(&self) -> StoreResult<Vec<StoredIdentity>> {
        sqlx::query_as::<_, IdentityRow>(sql::LIST_IDENTITIES)
            .fetch_all(&self.read)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(sql::identity_from_row)
            .collect()
    }

    async fn get_identity(&self, name: &str) -> StoreResult<Option<StoredIdentity>> {
        sqlx::query_as::<_, IdentityRow>(sql::GET_IDENTITY)
            .bind(name)
            .fetch_optional(&self.read)
            .await
            .map_err(db_error)?
            .map(sql::identity_from_row)
            .transpose()
    }

    async fn put_identity(&self, identity: &StoredIdentity) -> StoreResult<PutOutcome> {
        let (cloud, assertion) = sql::identity_enums(identity)?;
        let restrictions = sql::restrictions_to_text(&identity.restrictions)?;
        let mut tx = self.begin_registry_write().await?;
        let owner = sqlx::query_scalar::<_, String>(sql::CLIENT_ID_OWNER)
            .bind(&identity.client_id)
            .bind(&identity.name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        if let Some(other) = owner {
            return Err(sql::client_id_taken(&identity.client_id, &other));
        }
        let exists = sqlx::query_scalar::<_, i64>(sql::IDENTITY_CREATED_AT)
            .bind(&identity.name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?
            .is_some();
        let (outcome, written) = if exists {
            let written = sqlx::query(sql::UPDATE_IDENTITY)
                .bind(&identity.name)
                .bind(&identity.tenant_id)
                .bind(&identity.client_id)
                .bind(&cloud)
                .bind(&identity.authority_host)
                .bind(&assertion)
                .bind(db_time(identity.updated_at))
                .bind(&identity.assertion_subject)
                .bind(&restrictions)
                .execute(&mut *tx)
                .await;
            (PutOutcome::Replaced, written)
        } else {
            let written = sqlx::query(sql::INSERT_IDENTITY)
                .bind(&identity.name)
                .bind(&identity.tenant_id)
                .bind(&identity.client_id)
                .bind(&cloud)
                .bind(&identity.authority_host)
                .bind(&assertion)
                .bind(db_time(identity.created_at))
                .bind(db_time(identity.updated_at))
                .bind(&identity.assertion_subject)
                .bind(&restrictions)
                .execute(&mut *tx)
                .await;
            (PutOutcome::Created, written)
        };
        written.map_err(|e| sql::identity_write_error(identity, e))?;
        record_change(&mut tx, &identity.name, None).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(outcome)
    }

    async fn delete_identity(&self, name: &str) -> StoreResult<bool> {
        let mut tx = self.begin_registry_write().await?;
        let deleted = sqlx::query(sql::DELETE_IDENTITY)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected();
        if deleted == 0 {
            return Ok(false); // dropping the transaction rolls the version back
        }
        record_change(&mut tx, name, None).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(true)
    }

    async fn list_credentials(&self, identity: Option<&str>) -> StoreResult<Vec<StoredCredential>> {
        let rows = match identity {
            Some(identity) => {
                sqlx::query_as::<_, CredentialRow>(sql::LIST_CREDENTIALS)
                    .bind(identity)
                    .fetch_all(&self.read)
                    .await
            }
            None => {
                sqlx::query_as::<_, CredentialRow>(sql::LIST_ALL_CREDENTIALS)
                    .fetch_all(&self.read)
                    .await
            }
        };
        rows.map_err(db_error)?
            .into_iter()
            .map(sql::credential_from_row)
            .collect()
    }

    async fn get_credential(
        &self,
        identity: &str,
        name_or_id: &str,
    ) -> StoreResult<Option<StoredCredential>> {
        let mut conn = self.read.acquire().await.map_err(db_error)?;
        find_credential(&mut conn, identity, name_or_id).await
    }

    async fn create_credential(&self, credential: &StoredCredential) -> StoreResult<()> {
        let audiences = sql::audiences_to_text(credential)?;
        let restrictions = sql::restrictions_to_text(&credential.restrictions)?;
        let mut tx = self.begin_registry_write().await?;
        let identity_exists = sqlx::query(sql::IDENTITY_EXISTS)
            .bind(&credential.identity)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?
            .is_some();
        if !identity_exists {
            return Err(sql::identity_missing(&credential.identity));
        }
        if let Some(conflict) = credential_conflict(&mut tx, credential).await? {
            return Err(conflict);
        }
        let id_owner = sqlx::query_as::<_, (String, String)>(sql::CREDENTIAL_ID_OWNER)
            .bind(&credential.id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        if let Some((identity, name)) = id_owner {
            return Err(sql::id_taken(&credential.id, &identity, &name));
        }
        sqlx::query(sql::INSERT_CREDENTIAL)
            .bind(&credential.id)
            .bind(&credential.identity)
            .bind(&credential.name)
            .bind(&credential.issuer)
            .bind(&credential.subject)
            .bind(&credential.claims_matching_expression)
            .bind(&audiences)
            .bind(&credential.description)
            .bind(credential.one_time_use)
            .bind(db_time(credential.created_at))
            .bind(db_time(credential.updated_at))
            .bind(&restrictions)
            .execute(&mut *tx)
            .await
            .map_err(|e| sql::credential_write_error(credential, e))?;
        record_change(&mut tx, &credential.identity, Some(&credential.name)).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn update_credential(&self, credential: &StoredCredential) -> StoreResult<()> {
        let audiences = sql::audiences_to_text(credential)?;
        let restrictions = sql::restrictions_to_text(&credential.restrictions)?;
        let mut tx = self.begin_registry_write().await?;
        let stored = sqlx::query_as::<_, CredentialRow>(sql::GET_CREDENTIAL_BY_ID)
            .bind(&credential.identity)
            .bind(&credential.id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?
            .map(sql::credential_from_row)
            .transpose()?
            .ok_or_else(|| sql::credential_missing(credential))?;
        if stored.name != credential.name {
            return Err(sql::rename_refused(&stored.name, &credential.name));
        }
        if let Some(conflict) = credential_conflict(&mut tx, credential).await? {
            return Err(conflict);
        }
        sqlx::query(sql::UPDATE_CREDENTIAL)
            .bind(&credential.identity)
            .bind(&credential.id)
            .bind(&credential.issuer)
            .bind(&credential.subject)
            .bind(&credential.claims_matching_expression)
            .bind(&audiences)
            .bind(&credential.description)
            .bind(credential.one_time_use)
            .bind(db_time(credential.updated_at))
            .bind(&restrictions)
            .execute(&mut *tx)
            .await
            .map_err(|e| sql::credential_write_error(credential, e))?;
        record_change(&mut tx, &credential.identity, Some(&credential.name)).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn delete_credential(&self, identity: &str, name_or_id: &str) -> StoreResult<bool> {
        let mut tx = self.begin_registry_write().await?;
        let Some(stored) = find_credential(&mut tx, identity, name_or_id).await? else {
            return Ok(false);
        };
        sqlx::query(sql::DELETE_CREDENTIAL_BY_ID)
            .bind(identity)
            .bind(&stored.id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        record_change(&mut tx, identity, Some(&stored.name)).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(true)
    }

    async fn count_credentials(&self, identity: &str) -> StoreResult<u64> {
        let count = sqlx::query_scalar::<_, i64>(sql::COUNT_CREDENTIALS)
            .bind(identity)
            .fetch_one(&self.read)
            .await
            .map_err(db_error)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn changes_since(&self, version: i64, limit: u32) -> StoreResult<Vec<RegistryChange>> {
        let rows = sqlx::query_as::<_, (i64, String, Option<String>)>(sql::CHANGES_SINCE)
            .bind(version)
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await
            .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(version, identity, credential)| RegistryChange {
                version,
                identity,
                credential,
            })
            .collect())
    }

    async fn purge_changes(&self, keep: u64) -> StoreResult<u64> {
        let done = sqlx::query(sql::PURGE_CHANGES)
            .bind(i64::try_from(keep).unwrap_or(i64::MAX))
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn version(&self) -> StoreResult<i64> {
        sqlx::query_scalar::<_, i64>(sql::GET_VERSION)
            .fetch_one(&self.read)
            .await
            .map_err(db_error)
    }

    async fn append_audit(&self, events: &[AuditRecord]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        // One statement per chunk: each statement is a round trip to SQLite's worker
        // thread, which would otherwise cost more than the insert itself.
        for chunk in events.chunks(sql::AUDIT_ROWS_PER_STATEMENT) {
            let mut builder = QueryBuilder::<Sqlite>::new(sql::INSERT_AUDIT_ROWS);
            builder.push_values(chunk, |mut row, event| {
                row.push_bind(db_time(event.time))
                    .push_bind(event.kind.clone())
                    .push_bind(event.request_id.clone())
                    .push_bind(event.actor.clone())
                    .push_bind(event.identity.clone())
                    .push_bind(event.subject.clone())
                    .push_bind(event.outcome.clone())
                    .push_bind(event.event.clone());
            });
            builder.build().execute(&mut *tx).await.map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn query_audit(&self, query: &AuditQuery) -> StoreResult<Vec<AuditRecord>> {
        let mut builder = QueryBuilder::<Sqlite>::new(sql::audit_select("event"));
        if let Some(since) = query.since {
            builder.push(" AND time >= ").push_bind(db_time(since));
        }
        if let Some(until) = query.until {
            builder.push(" AND time <= ").push_bind(db_time(until));
        }
        if let Some(kind) = &query.kind {
            builder.push(" AND kind = ").push_bind(kind.clone());
        }
        if let Some(identity) = &query.identity {
            builder.push(" AND identity = ").push_bind(identity.clone());
        }
        if let Some(subject) = &query.subject {
            builder.push(" AND subject = ").push_bind(subject.clone());
        }
        if let Some(outcome) = &query.outcome {
            builder.push(" AND outcome = ").push_bind(outcome.clone());
        }
        if let Some(after_id) = query.after_id {
            builder.push(" AND id > ").push_bind(after_id);
        }
        if let Some(before_id) = query.before_id {
            builder.push(" AND id < ").push_bind(before_id);
        }
        builder
            .push(sql::audit_order(query))
            .push(" LIMIT ")
            .push_bind(sql::audit_limit(query));
        builder
            .build_query_as::<AuditRow>()
            .fetch_all(&self.read)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(sql::audit_from_row)
            .collect()
    }

    async fn purge_audit(&self, before: u64) -> StoreResult<u64> {
        let result = sqlx::query(sql::PURGE_AUDIT)
            .bind(db_time(before))
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected())
    }

    async fn trim_audit(&self, keep: u64) -> StoreResult<u64> {
        let (min, max): (Option<i64>, Option<i64>) = sqlx::query_as(sql::AUDIT_ID_RANGE)
            .fetch_one(&self.write)
            .await
            .map_err(db_error)?;
        let (Some(min), Some(max)) = (min, max) else {
            return Ok(0);
        };
        let mut deleted = 0;
        for (from, to) in sql::trim_plan(min, max, keep) {
            deleted += sqlx::query(sql::DELETE_AUDIT_IDS)
                .bind(from)
                .bind(to)
                .execute(&self.write)
                .await
                .map_err(db_error)?
                .rows_affected();
        }
        Ok(deleted)
    }

    async fn size(&self) -> StoreResult<super::StoreSize> {
        let (pages, page_size): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT page_count FROM pragma_page_count()), \
                    (SELECT page_size FROM pragma_page_size())",
        )
        .fetch_one(&self.read)
        .await
        .map_err(db_error)?;
        let bytes = u64::try_from(pages.saturating_mul(page_size)).unwrap_or(0);
        let (min, max): (Option<i64>, Option<i64>) = sqlx::query_as(sql::AUDIT_ID_RANGE)
            .fetch_one(&self.read)
            .await
            .map_err(db_error)?;
        Ok(super::StoreSize {
            bytes,
            audit_events: sql::audit_count(min, max),
        })
    }

    async fn use_token_once(&self, key: &str, expires_at: u64) -> StoreResult<bool> {
        let result = sqlx::query(sql::USE_TOKEN)
            .bind(key)
            .bind(db_time(expires_at))
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected() == 1)
    }

    async fn purge_used_tokens(&self, now: u64) -> StoreResult<u64> {
        let result = sqlx::query(sql::PURGE_USED_TOKENS)
            .bind(db_time(now))
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected())
    }

    async fn list_signing_keys(&self) -> StoreResult<Vec<StoredSigningKey>> {
        Ok(
            sqlx::query_as::<_, sql::SigningKeyRow>(sql::LIST_SIGNING_KEYS)
                .fetch_all(&self.read)
                .await
                .map_err(db_error)?
                .into_iter()
                .map(sql::signing_key_from_row)
                .collect(),
        )
    }

    async fn insert_signing_key(&self, key: &StoredSigningKey) -> StoreResult<bool> {
        let result = sqlx::query(sql::INSERT_SIGNING_KEY)
            .bind(key.generation)
            .bind(&key.kid)
            .bind(key.private_key.expose())
            .bind(db_time(key.created_at))
            .bind(db_time(key.active_from))
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected() == 1)
    }

    async fn delete_signing_keys_before(&self, generation: i64) -> StoreResult<u64> {
        let result = sqlx::query(sql::DELETE_SIGNING_KEYS_BEFORE)
            .bind(generation)
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.read)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::store::sql::testing::{clashing_credentials, credential, identity};

    async fn insert_identity(
        store: &SqliteStore,
        identity: &StoredIdentity,
    ) -> Result<(), sqlx::Error> {
        let (cloud, assertion) = sql::identity_enums(identity).unwrap();
        sqlx::query(sql::INSERT_IDENTITY)
            .bind(&identity.name)
            .bind(&identity.tenant_id)
            .bind(&identity.client_id)
            .bind(&cloud)
            .bind(&identity.authority_host)
            .bind(&assertion)
            .bind(db_time(identity.created_at))
            .bind(db_time(identity.updated_at))
            .bind(&identity.assertion_subject)
            .bind(sql::restrictions_to_text(&identity.restrictions).unwrap())
            .execute(&store.write)
            .await
            .map(drop)
    }

    async fn insert_credential(
        store: &SqliteStore,
        c: &StoredCredential,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(sql::INSERT_CREDENTIAL)
            .bind(&c.id)
            .bind(&c.identity)
            .bind(&c.name)
            .bind(&c.issuer)
            .bind(&c.subject)
            .bind(&c.claims_matching_expression)
            .bind(sql::audiences_to_text(c).unwrap())
            .bind(&c.description)
            .bind(c.one_time_use)
            .bind(db_time(c.created_at))
            .bind(db_time(c.updated_at))
            .bind(sql::restrictions_to_text(&c.restrictions).unwrap())
            .execute(&store.write)
            .await
            .map(drop)
    }

    #[tokio::test]
    async fn every_connection_is_durable_and_enforces_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("wif.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        for pool in [&store.write, &store.read] {
            let pragma = async |name: &str| -> i64 {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("PRAGMA {name}")))
                    .fetch_one(pool)
                    .await
                    .unwrap()
            };
            assert_eq!(pragma("synchronous").await, 2, "FULL");
            assert_eq!(pragma("foreign_keys").await, 1);
            assert_eq!(pragma("busy_timeout").await, 5000);
        }
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.read)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        store.close().await;
    }

    /// The checks inside each write transaction normally catch every clash first; this
    /// is the net under them: the database's own refusal still reads as a conflict.
    #[tokio::test]
    async fn unique_violations_read_as_conflicts() {
        let store = SqliteStore::open("sqlite::memory:").await.unwrap();
        insert_identity(&store, &identity("deploy", "ABC"))
            .await
            .unwrap();
        let other = identity("other", "abc");
        let e = insert_identity(&store, &other).await.unwrap_err();
        assert_eq!(
            sql::identity_write_error(&other, e),
            StoreError::Conflict("client id abc is already used by another identity".into())
        );

        insert_credential(&store, &credential("c1", "main", "s1"))
            .await
            .unwrap();
        for (clashing, expected) in clashing_credentials() {
            let e = insert_credential(&store, &clashing).await.unwrap_err();
            assert_eq!(sql::credential_write_error(&clashing, e), expected);
        }
    }
}
