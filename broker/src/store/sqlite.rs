//! The embedded store: one SQLite file (or `sqlite::memory:` for the dev stack).
//!
//! Writes go through a single connection, so they queue in the broker instead of
//! contending for SQLite's file lock; reads use a small pool of their own and, with WAL,
//! never wait for a writer. `synchronous = FULL` makes every commit reach the disk before
//! it is acknowledged, so an acknowledged write survives a crash or a power loss.
//! A SQLite file belongs to one broker process: replicas share PostgreSQL instead.
//! The queries are [`SqlStore`]'s; this module opens the file and says how SQLite
//! differs ([`Dialect`]).

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::sql::{self, db_error};
use super::sql_store::{Dialect, SqlStore};
use super::{StoreError, StoreResult};

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
pub type SqliteStore = SqlStore<Sqlite>;

impl Dialect for Sqlite {
    const KIND: &'static str = "sqlite";
    /// `BEGIN IMMEDIATE` takes the write lock up front, so a transaction that reads before
    /// it writes cannot fail half-way on a lock upgrade.
    const BEGIN_WRITE: Option<&'static str> = Some("BEGIN IMMEDIATE");
    /// One broker per file: nobody else to tell.
    const NOTIFY_CHANGE: Option<&'static str> = None;
    /// The file's pages (the WAL aside).
    const SIZE_BYTES: &'static str = "SELECT (SELECT page_count FROM pragma_page_count()) * \
         (SELECT page_size FROM pragma_page_size())";
    const BEGIN_SNAPSHOT: Option<&'static str> = None;
    const CREDENTIAL_PAGES: [&'static str; 2] = sql::SQLITE_CREDENTIAL_PAGES;
    const PAGES_AS_JSON: bool = true;
    const EVENT_AS_TEXT: &'static str = "event";
    const EVENT_CAST: &'static str = "";

    /// SQLite text holds NUL as it is.
    fn token_text(text: &str) -> Cow<'_, str> {
        Cow::Borrowed(text)
    }

    fn event_text(event: &str) -> StoreResult<Cow<'_, str>> {
        Ok(Cow::Borrowed(event))
    }

    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

impl SqlStore<Sqlite> {
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
                notices: None,
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
        let store = Self {
            read,
            write,
            notices: None,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> StoreResult<()> {
        sql::migrator(MIGRATIONS)
            .run(&self.write)
            .await
            .map_err(sql::migrate_error)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn whole_reads_are_paged_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("wif.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        store.whole_reads_are_paged_snapshots().await;
        store.close().await;
    }

    /// The checks inside each write transaction normally catch every clash first; this
    /// is the net under them: the database's own refusal still reads as a conflict.
    #[tokio::test]
    async fn unique_violations_read_as_conflicts() {
        let store = SqliteStore::open("sqlite::memory:").await.unwrap();
        store.unique_violations_read_as_conflicts().await;
    }
}
