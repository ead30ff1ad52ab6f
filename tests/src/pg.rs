//! PostgreSQL for tests: the shared server on 127.0.0.1:5432 (`WIF_TEST_POSTGRES_URL`
//! overrides it), one schema per test so tests run in parallel without seeing each other.
//! Outside CI a test without PostgreSQL is skipped with a notice; under `CI=true` it fails.

use std::time::Duration;

use sqlx::{Connection, PgConnection};

/// How long connecting or dropping a schema may take.
const PATIENCE: Duration = Duration::from_secs(15);

/// Whether this is CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The database every test schema lives in.
pub fn admin_url() -> String {
    std::env::var("WIF_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// `url` with its connections' `search_path` set to `schema` (sqlx reads `options`).
pub fn url_in_schema(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

/// A schema of its own in the shared database, dropped on drop.
#[derive(Debug)]
pub struct Schema {
    name: String,
}

impl Schema {
    /// Creates `PREFIX_<random>` and checks a connection made with [`Schema::url`] lands
    /// in it; `None` after a notice when PostgreSQL is not there (a failure under CI).
    pub async fn create(prefix: &str) -> Option<Self> {
        let connect =
            tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&admin_url()));
        let why = match connect.await {
            Ok(Ok(mut conn)) => {
                let name = format!(
                    "{prefix}_{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..16]
                );
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{name}\"")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let _ = conn.close().await;
                let schema = Self { name };
                schema.check_isolation().await;
                return Some(schema);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 5 s".to_owned(),
        };
        let server = admin_url();
        if in_ci() {
            panic!("PostgreSQL at {server} is unreachable under CI=true: {why}");
        }
        eprintln!("NOTICE: skipped, PostgreSQL at {server} is unreachable ({why}); CI=true fails");
        None
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store URL for brokers: everything in this schema.
    pub fn url(&self) -> String {
        url_in_schema(&admin_url(), &self.name)
    }

    async fn check_isolation(&self) {
        let mut conn = tokio::time::timeout(PATIENCE, PgConnection::connect(&self.url()))
            .await
            .unwrap()
            .unwrap();
        let current: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(current, self.name, "the search_path option was not applied");
        let _ = conn.close().await;
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // Drop cannot await; a thread of its own with its own runtime can, whatever the
        // test's runtime is doing (even unwinding).
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = tokio::time::timeout(PATIENCE, PgConnection::connect(&admin_url()))
                    .await
                    .ok()?
                    .ok()?;
                let drop = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn);
                tokio::time::timeout(PATIENCE, drop).await.ok()?.ok()?;
                conn.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop schema {name}");
        }
    }
}
