//! The shared store: several broker replicas on one PostgreSQL database.
//!
//! Every registry write bumps `registry_version` as the first statement of its
//! transaction: the row lock serialises registry writes across replicas (so the
//! uniqueness checks cannot race) and the new number becomes visible together with the
//! data at commit, which is what replicas poll for. A write is acknowledged only after
//! PostgreSQL reports the commit. A database that is down answers `Unavailable` within the
//! acquire timeout; a lock held by a stalled replica is given up after `lock_timeout`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, PgTransaction, Postgres, QueryBuilder};

use super::sql::{self, AuditRow, CredentialRow, IdentityRow, db_error, db_time, without_nul};
use super::{
    AuditQuery, AuditRecord, PutOutcome, RegistryChange, Store, StoreError, StoreResult,
    StoredCredential, StoredIdentity, StoredSigningKey,
};

/// How long a task waits for a connection, including connecting; then `Unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// An outer bound on opening, in case a connect attempt itself stalls.
const OPEN_TIMEOUT: Duration = Duration::from_secs(8);
/// Pooled connections, one of them held by the change listener.
const MAX_CONNECTIONS: u32 = 11;
/// The channel registry writes notify on; the payload is the schema written to, so
/// brokers sharing a database in other schemas ignore it.
const CHANNEL: &str = "wif_registry";
/// Session settings for every connection: wait at most this long for a row lock (the
/// registry version's, mostly) and end sessions that sit idle inside a transaction, so a
/// replica that stalls mid-write cannot block the others for long.
const SESSION_SETTINGS: [(&str, &str); 2] = [
    ("lock_timeout", "10s"),
    ("idle_in_transaction_session_timeout", "60s"),
];

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "signing keys",
        include_str!("../../migrations/postgres/0002_signing_keys.sql"),
    ),
    (
        3,
        "assertion subject",
        include_str!("../../migrations/postgres/0003_assertion_subject.sql"),
    ),
    (
        4,
        "identity name case",
        include_str!("../../migrations/postgres/0004_identity_name_case.sql"),
    ),
    (
        5,
        "registry changes",
        include_str!("../../migrations/postgres/0005_registry_changes.sql"),
    ),
    (
        6,
        "restrictions",
        include_str!("../../migrations/postgres/0006_restrictions.sql"),
    ),
];

/// The PostgreSQL store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct PgStore {
    pool: PgPool,
    /// Bumped by the change listener on each notification (docs/storage.md, "Replicas").
    notices: tokio::sync::watch::Receiver<u64>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `postgres://…` (or `postgresql://…`) and runs the embedded migrations.
    pub async fn open(url: &str) -> StoreResult<Self> {
        Self::connect(parse_url(url)?).await
    }

    /// Like [`PgStore::open`], but everything lives in `schema`, created if missing: each
    /// pooled connection starts with its `search_path` set to it. Tests use one schema
    /// each on a shared database; an operator may use it to keep the broker's tables
    /// apart. `schema` must be ASCII letters, digits and `_`.
    pub async fn open_in_schema(url: &str, schema: &str) -> StoreResult<Self> {
        let schema = sql::checked_schema(schema)?;
        let options = parse_url(url)?;
        let create = async {
            let mut conn = PgConnection::connect_with(&options).await?;
            let created = sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
            )))
            .execute(&mut conn)
            .await;
            conn.close().await?;
            match created {
                // Another replica created it between our check and our insert: fine.
                Err(e) if sql::unique_violation(&e).is_some() => Ok(()),
                other => other.map(drop),
            }
        };
        tokio::time::timeout(OPEN_TIMEOUT, create)
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Self::connect(options.options([("search_path", schema)])).await
    }

    /// Closes every connection, waiting for work in flight. Later calls fail with
    /// `Unavailable`.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn connect(options: PgConnectOptions) -> StoreResult<Self> {
        // One direct connection first: when the database cannot be reached, the pool only
        // says it timed out, while a connection says why (refused, unknown host, auth).
        let probe = tokio::time::timeout(OPEN_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.options(SESSION_SETTINGS));
        let pool = tokio::time::timeout(OPEN_TIMEOUT, pool)
            .await
            .map_err(|_| timed_out())?
            .map_err(db_error)?;
        // Replicas starting together take turns: sqlx holds an advisory lock while
        // migrating.
        sql::migrator(MIGRATIONS)
            .run(&pool)
            .await
            .map_err(sql::migrate_error)?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&pool)
            .await
            .map_err(db_error)?;
        let notices = listen_for_changes(pool.clone(), schema);
        Ok(Self { pool, notices })
    }

    async fn begin_write(&self) -> StoreResult<PgTransaction<'static>> {
        self.pool.begin().await.map_err(db_error)
    }

    async fn begin_registry_write(&self) -> StoreResult<PgTransaction<'static>> {
        let mut tx = self.begin_write().await?;
        sqlx::query(sql::BUMP_VERSION)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        Ok(tx)
    }
}

fn parse_url(url: &str) -> StoreResult<PgConnectOptions> {
    // The error text never includes the URL: it may hold a password.
    PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::Url(format!("not a valid PostgreSQL URL: {e}")))
}

fn timed_out() -> StoreError {
    StoreError::Unavailable(format!(
        "PostgreSQL did not answer within {} s",
        OPEN_TIMEOUT.as_secs()
    ))
}

async fn find_credential(
    conn: &mut sqlx::PgConnection,
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
    conn: &mut sqlx::PgConnection,
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

/// Records which entry a registry write changed, under the version the write produced,
/// and notifies the other replicas (delivered when the transaction commits).
async fn record_change(
    conn: &mut sqlx::PgConnection,
    identity: &str,
    credential: Option<&str>,
) -> StoreResult<()> {
    sqlx::query(sql::RECORD_CHANGE)
        .bind(identity)
        .bind(credential)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    sqlx::query("SELECT pg_notify($1, current_schema())")
        .bind(CHANNEL)
        .execute(conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Listens on [`CHANNEL`] on a connection of its own, bumping the returned counter for
/// every registry write to this schema, and once after each (re)connection (what was
/// missed meanwhile). Notifications can be lost; replicas poll as well.
fn listen_for_changes(pool: PgPool, schema: String) -> tokio::sync::watch::Receiver<u64> {
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        let bump =
            |tx: &tokio::sync::watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
        while !pool.is_closed() && !tx.is_closed() {
            let listening = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                listener.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            if let Ok(Ok(mut listener)) = tokio::time::timeout(OPEN_TIMEOUT, listening).await {
                bump(&tx);
                loop {
                    let next = tokio::select! {
                        next = listener.try_recv() => next,
                        () = tx.closed() => return,
                    };
                    match next {
                        Ok(Some(notice)) if notice.payload() == schema => bump(&tx),
                        Ok(Some(_)) => {}
                        // The connection was lost and is being remade.
                        Ok(None) => bump(&tx),
                        Err(e) => {
                            tracing::debug!(error = %e, "registry change listener stopped; reconnecting");
                            break;
                        }
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
    rx
}

#[async_trait::async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn list_identities(&self) -> StoreResult<Vec<StoredIdentity>> {
        sqlx::query_as::<_, IdentityRow>(sql::LIST_IDENTITIES)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(sql::identity_from_row)
            .collect()
    }

    async fn get_identity(&self, name: &str) -> StoreResult<Option<StoredIdentity>> {
        sqlx::query_as::<_, IdentityRow>(sql::GET_IDENTITY)
            .bind(name)
            .fetch_optional(&self.pool)
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
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                sqlx::query_as::<_, CredentialRow>(sql::LIST_ALL_CREDENTIALS)
                    .fetch_all(&self.pool)
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
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
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
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    fn registry_notices(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.notices.clone())
    }

    async fn changes_since(&self, version: i64, limit: u32) -> StoreResult<Vec<RegistryChange>> {
        let rows = sqlx::query_as::<_, (i64, String, Option<String>)>(sql::CHANGES_SINCE)
            .bind(version)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
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
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn version(&self) -> StoreResult<i64> {
        sqlx::query_scalar::<_, i64>(sql::GET_VERSION)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)
    }

    async fn append_audit(&self, events: &[AuditRecord]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for chunk in events.chunks(sql::AUDIT_ROWS_PER_STATEMENT) {
            let texts = chunk
                .iter()
                .map(|e| sql::event_without_nul(&e.event))
                .collect::<StoreResult<Vec<_>>>()?;
            let mut builder = QueryBuilder::<Postgres>::new(sql::INSERT_AUDIT_ROWS);
            builder.push_values(chunk.iter().zip(texts), |mut row, (event, text)| {
                row.push_bind(db_time(event.time))
                    .push_bind(without_nul(&event.kind))
                    .push_bind(without_nul(&event.request_id))
                    .push_bind(event.actor.as_deref().map(without_nul))
                    .push_bind(event.identity.as_deref().map(without_nul))
                    .push_bind(event.subject.as_deref().map(without_nul))
                    .push_bind(without_nul(&event.outcome))
                    .push_bind(text)
                    .push_unseparated("::json");
            });
            builder.build().execute(&mut *tx).await.map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn query_audit(&self, query: &AuditQuery) -> StoreResult<Vec<AuditRecord>> {
        let mut builder = QueryBuilder::<Postgres>::new(sql::audit_select("event::text"));
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
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(sql::audit_from_row)
            .collect()
    }

    async fn purge_audit(&self, before: u64) -> StoreResult<u64> {
        let result = sqlx::query(sql::PURGE_AUDIT)
            .bind(db_time(before))
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected())
    }

    async fn trim_audit(&self, keep: u64) -> StoreResult<u64> {
        let (min, max): (Option<i64>, Option<i64>) = sqlx::query_as(sql::AUDIT_ID_RANGE)
            .fetch_one(&self.pool)
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
                .execute(&self.pool)
                .await
                .map_err(db_error)?
                .rows_affected();
        }
        Ok(deleted)
    }

    async fn size(&self) -> StoreResult<super::StoreSize> {
        let (bytes,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::BIGINT \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname = current_schema()",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        let bytes = u64::try_from(bytes).unwrap_or(0);
        let (min, max): (Option<i64>, Option<i64>) = sqlx::query_as(sql::AUDIT_ID_RANGE)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(super::StoreSize {
            bytes,
            audit_events: sql::audit_count(min, max),
        })
    }

    async fn use_token_once(&self, key: &str, expires_at: u64) -> StoreResult<bool> {
        let result = sqlx::query(sql::USE_TOKEN)
            .bind(without_nul(key))
            .bind(db_time(expires_at))
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected() == 1)
    }

    async fn purge_used_tokens(&self, now: u64) -> StoreResult<u64> {
        let result = sqlx::query(sql::PURGE_USED_TOKENS)
            .bind(db_time(now))
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected())
    }

    async fn list_signing_keys(&self) -> StoreResult<Vec<StoredSigningKey>> {
        Ok(
            sqlx::query_as::<_, sql::SigningKeyRow>(sql::LIST_SIGNING_KEYS)
                .fetch_all(&self.pool)
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
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected() == 1)
    }

    async fn delete_signing_keys_before(&self, generation: i64) -> StoreResult<u64> {
        let result = sqlx::query(sql::DELETE_SIGNING_KEYS_BEFORE)
            .bind(generation)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
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
        store: &PgStore,
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
            .execute(&store.pool)
            .await
            .map(drop)
    }

    async fn insert_credential(store: &PgStore, c: &StoredCredential) -> Result<(), sqlx::Error> {
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
            .execute(&store.pool)
            .await
            .map(drop)
    }

    /// The checks inside each write transaction normally catch every clash first; this
    /// is the net under them: the database's own refusal still reads as a conflict.
    #[tokio::test]
    async fn sessions_are_pinned_and_unique_violations_read_as_conflicts() {
        crate::crypto::install_provider();
        let url = std::env::var("WIF_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let store = match PgStore::open_in_schema(&url, &schema).await {
            Ok(store) => store,
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("PostgreSQL is required under CI=true: {e}")
            }
            Err(e) => {
                eprintln!("notice: skipping, PostgreSQL is unavailable: {e}");
                return;
            }
        };
        for (setting, expected) in [
            ("search_path", schema.as_str()),
            ("lock_timeout", "10s"),
            ("idle_in_transaction_session_timeout", "1min"),
        ] {
            let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
                .fetch_one(&store.pool)
                .await
                .unwrap();
            assert_eq!(value, expected, "{setting}");
        }

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
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{schema}\" CASCADE"
        )))
        .execute(&store.pool)
        .await
        .unwrap();
        store.close().await;
    }
}
