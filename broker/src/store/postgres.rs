//! The shared store: several broker replicas on one PostgreSQL database.
//!
//! Every registry write bumps `registry_version` as the first statement of its
//! transaction: the row lock serialises registry writes across replicas (so the
//! uniqueness checks cannot race) and the new number becomes visible together with the
//! data at commit, which is what replicas poll for. A write is acknowledged only after
//! PostgreSQL reports the commit. A database that is down answers `Unavailable` within the
//! acquire timeout; a lock held by a stalled replica is given up after `lock_timeout`.
//! The queries are [`SqlStore`]'s; this module connects and says how PostgreSQL differs
//! ([`Dialect`]).

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgQueryResult};
use sqlx::{Connection, PgConnection, PgPool, Postgres};

use super::sql::{self, db_error};
use super::sql_store::{Dialect, SqlStore};
use super::{StoreError, StoreResult};

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
pub type PgStore = SqlStore<Postgres>;

impl Dialect for Postgres {
    const KIND: &'static str = "postgres";
    const BEGIN_WRITE: Option<&'static str> = None;
    /// Sent at commit on the channel every replica's listener listens on (`wif_registry`);
    /// the payload is the schema written to.
    const NOTIFY_CHANGE: Option<&'static str> =
        Some("SELECT pg_notify('wif_registry', current_schema())");
    /// The broker's tables in the current schema.
    const SIZE_BYTES: &'static str = "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::BIGINT \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname = current_schema()";
    const BEGIN_SNAPSHOT: Option<&'static str> =
        Some("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
    const CREDENTIAL_PAGES: [&'static str; 2] = sql::PLAIN_CREDENTIAL_PAGES;
    const PAGES_AS_JSON: bool = false;
    const EVENT_AS_TEXT: &'static str = "event::text";
    const EVENT_CAST: &'static str = "::json";

    fn token_text(text: &str) -> Cow<'_, str> {
        sql::without_nul(text)
    }

    fn event_text(event: &str) -> StoreResult<Cow<'_, str>> {
        sql::event_without_nul(event)
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

impl SqlStore<Postgres> {
    /// Connects to `postgres://…` (or `postgresql://…`) and runs the embedded migrations.
    pub async fn open(url: &str) -> StoreResult<Self> {
        Self::connect(parse_url(url)?).await
    }

    /// Like [`PgStore::open`](SqlStore::open), but everything lives in `schema`, created if missing: each
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
        Ok(Self {
            read: pool.clone(),
            write: pool,
            notices: Some(notices),
        })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// A store in a schema of its own (`None`: PostgreSQL is unavailable, outside CI).
    async fn fresh_store() -> Option<(PgStore, String)> {
        crate::crypto::install_provider();
        let url = std::env::var("WIF_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        match PgStore::open_in_schema(&url, &schema).await {
            Ok(store) => Some((store, schema)),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("PostgreSQL is required under CI=true: {e}")
            }
            Err(e) => {
                eprintln!("notice: skipping, PostgreSQL is unavailable: {e}");
                None
            }
        }
    }

    async fn drop_store(store: PgStore, schema: &str) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{schema}\" CASCADE"
        )))
        .execute(&store.write)
        .await
        .unwrap();
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn whole_reads_are_paged_snapshots() {
        let Some((store, schema)) = fresh_store().await else {
            return;
        };
        store.whole_reads_are_paged_snapshots().await;
        drop_store(store, &schema).await;
    }

    /// The checks inside each write transaction normally catch every clash first; this
    /// is the net under them: the database's own refusal still reads as a conflict.
    #[tokio::test]
    async fn sessions_are_pinned_and_unique_violations_read_as_conflicts() {
        let Some((store, schema)) = fresh_store().await else {
            return;
        };
        for (setting, expected) in [
            ("search_path", schema.as_str()),
            ("lock_timeout", "10s"),
            ("idle_in_transaction_session_timeout", "1min"),
        ] {
            let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
                .fetch_one(&store.write)
                .await
                .unwrap();
            assert_eq!(value, expected, "{setting}");
        }

        assert!(
            Postgres::NOTIFY_CHANGE.is_some_and(|notify| notify.contains(CHANNEL)),
            "registry writes notify on the channel the listener listens on"
        );

        store.unique_violations_read_as_conflicts().await;
        drop_store(store, &schema).await;
    }
}
