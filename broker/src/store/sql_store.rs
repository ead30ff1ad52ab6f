//! The store written once: [`SqlStore`] implements every store trait for any database
//! that is a [`Dialect`], with the statements of `store::sql` (written `$1`-style, which
//! SQLite reads as PostgreSQL does). What differs between SQLite and PostgreSQL is what a
//! `Dialect` says: how a write transaction begins, how other replicas hear of a registry
//! write, how `event` is cast, how the size is read, and whether text loses its NULs.
//! Opening (pools, pragmas, schema, migrations, the change listener) stays in
//! [`super::sqlite`] and [`super::postgres`].

use std::borrow::Cow;

use futures::FutureExt;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder,
    Transaction, Type,
};

use super::sql::{self, AuditRow, CredentialRow, IdentityRow, db_error, db_time};
use super::{
    AuditQuery, AuditRecord, AuditStore, PutOutcome, RegistryChange, RegistryStore, ReplayStore,
    SigningKeyStore, Store, StoreError, StoreResult, StoreSize, StoredCredential, StoredIdentity,
    StoredSigningKey,
};

/// What one database does its own way; everything else is [`SqlStore`]'s.
pub trait Dialect: Database {
    /// [`Store::kind`]: `sqlite` or `postgres`.
    const KIND: &'static str;
    /// The statement that begins a write transaction; `None`: the driver's own `BEGIN`.
    const BEGIN_WRITE: Option<&'static str>;
    /// Run inside a registry write after the change is recorded, to tell other replicas
    /// (delivered at commit); `None` where replicas only poll.
    const NOTIFY_CHANGE: Option<&'static str>;
    /// One BIGINT: the database's size in bytes ([`StoreSize::bytes`]).
    const SIZE_BYTES: &'static str;
    /// The statement that begins the read-only transaction a whole read of the
    /// credentials runs in, so that its pages are one snapshot; `None`: the driver's own
    /// `BEGIN` (SQLite, whose deferred transaction keeps the snapshot of its first read).
    const BEGIN_SNAPSHOT: Option<&'static str>;
    /// The first and every following page of a whole read of the credentials.
    const CREDENTIAL_PAGES: [&'static str; 2];
    /// Whether a page comes as one row of JSON text (`sql::credential_page`; SQLite, whose
    /// driver hands each row of a result over on its own) or as rows (PostgreSQL, which
    /// reads rows off its connection as cheaply and builds no JSON).
    const PAGES_AS_JSON: bool;
    /// The audit `event` column read as text.
    const EVENT_AS_TEXT: &'static str;
    /// Appended after the bound `event` text of an audit insert (a cast, or nothing).
    const EVENT_CAST: &'static str;

    /// Text from a token (audit fields, replay keys) as the database can hold it.
    fn token_text(text: &str) -> Cow<'_, str>;
    /// An audit event's JSON text as the database can hold it.
    fn event_text(event: &str) -> StoreResult<Cow<'_, str>>;
    /// How many rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

/// A column type the shared statements bind and read.
pub trait ColumnType<D: Database>:
    Type<D> + for<'q> Encode<'q, D> + for<'r> Decode<'r, D> + Send + Sync
{
}
impl<D: Database, T> ColumnType<D> for T where
    T: Type<D> + for<'q> Encode<'q, D> + for<'r> Decode<'r, D> + Send + Sync
{
}

/// A store on one SQL database. Cheap to share behind an `Arc`; all methods take `&self`.
///
/// SQLite writes through a single connection (`write`) and reads through a pool of its
/// own (`read`); PostgreSQL uses one pool for both.
pub struct SqlStore<D: Database> {
    pub(super) read: Pool<D>,
    pub(super) write: Pool<D>,
    /// Bumped on each registry write another replica may have made (docs/storage.md,
    /// "Replicas"); `None` where the store cannot tell.
    pub(super) notices: Option<tokio::sync::watch::Receiver<u64>>,
}

impl<D: Dialect> std::fmt::Debug for SqlStore<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("kind", &D::KIND)
            .finish_non_exhaustive()
    }
}

impl<D: Database> SqlStore<D> {
    /// Closes every connection, waiting for work in flight. Later calls fail with
    /// `Unavailable`.
    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

/// `call` bounded by `idle`: `Unavailable` naming `what` when it takes longer.
async fn within<T>(
    idle: std::time::Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> StoreResult<T> {
    match tokio::time::timeout(idle, call).await {
        Ok(result) => result.map_err(db_error),
        Err(_) => Err(StoreError::Unavailable(format!(
            "the store did not answer {what} within {} s",
            idle.as_secs()
        ))),
    }
}

/// `call` bounded by `idle`, like [`within`], for a call that says its own errors.
async fn within_store<T>(
    idle: std::time::Duration,
    what: &str,
    call: impl std::future::Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    tokio::time::timeout(idle, call).await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(format!(
            "the store did not answer {what} within {} s",
            idle.as_secs()
        )))
    })
}

// Every impl below repeats the same bounds: sqlx cannot state them once (where-clauses of a
// trait on other types than `Self` are not implied where the trait is used). Both
// `sqlx::Sqlite` and `sqlx::Postgres` meet them.

impl<D> SqlStore<D>
where
    D: Dialect,
    D::Arguments: IntoArguments<D>,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    usize: ColumnIndex<D::Row>,
    for<'a> &'a str: Encode<'a, D> + Type<D>,
    for<'a> Option<&'a str>: Encode<'a, D>,
    String: ColumnType<D>,
    i64: ColumnType<D>,
    bool: ColumnType<D>,
{
    async fn begin_write(&self) -> StoreResult<Transaction<'static, D>> {
        match D::BEGIN_WRITE {
            Some(begin) => self.write.begin_with(begin).await,
            None => self.write.begin().await,
        }
        .map_err(db_error)
    }

    /// A write transaction that has bumped the registry version first (on PostgreSQL the
    /// row lock also serialises registry writes across replicas).
    async fn begin_registry_write(&self) -> StoreResult<Transaction<'static, D>> {
        let mut tx = self.begin_write().await?;
        sqlx::query(sql::BUMP_VERSION)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        Ok(tx)
    }

    async fn find_credential(
        conn: &mut D::Connection,
        identity: &str,
        name_or_id: &str,
    ) -> StoreResult<Option<StoredCredential>> {
        sqlx::query_as::<D, CredentialRow>(sql::GET_CREDENTIAL)
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
        conn: &mut D::Connection,
        credential: &StoredCredential,
    ) -> StoreResult<Option<StoreError>> {
        let clashes = sqlx::query_scalar::<D, String>(sql::CREDENTIAL_CLASHES)
            .bind(credential.identity.as_str())
            .bind(credential.id.as_str())
            .bind(credential.name.as_str())
            .bind(credential.issuer.as_str())
            .bind(credential.subject.as_deref())
            .fetch_all(conn)
            .await
            .map_err(db_error)?;
        Ok(sql::credential_clash(credential, &clashes))
    }

    /// Records which entry a registry write changed, under the version the write
    /// produced, and tells other replicas where the database can.
    async fn record_change(
        conn: &mut D::Connection,
        identity: &str,
        credential: Option<&str>,
    ) -> StoreResult<()> {
        sqlx::query(sql::RECORD_CHANGE)
            .bind(identity)
            .bind(credential)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        if let Some(notify) = D::NOTIFY_CHANGE {
            sqlx::query(notify)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    /// Runs a statement on the writer; how many rows it changed.
    async fn write_rows(&self, query: sqlx::query::Query<'_, D, D::Arguments>) -> StoreResult<u64> {
        let result = query.execute(&self.write).await.map_err(db_error)?;
        Ok(D::rows_affected(&result))
    }

    async fn audit_id_range(pool: &Pool<D>) -> StoreResult<(Option<i64>, Option<i64>)> {
        sqlx::query_as(sql::AUDIT_ID_RANGE)
            .fetch_one(pool)
            .await
            .map_err(db_error)
    }

    /// One page of a whole read: `page_rows` credentials after `after` (identity, name),
    /// as one JSON row where the database says so ([`Dialect::PAGES_AS_JSON`]).
    async fn credential_page(
        conn: &mut D::Connection,
        page_rows: usize,
        after: Option<(&str, &str)>,
    ) -> StoreResult<Vec<CredentialRow>> {
        let limit = i64::try_from(page_rows).unwrap_or(i64::MAX);
        let [first, next] = D::CREDENTIAL_PAGES;
        if D::PAGES_AS_JSON {
            let query = match after {
                None => sqlx::query_scalar::<D, Option<String>>(first).bind(limit),
                Some((identity, name)) => sqlx::query_scalar::<D, Option<String>>(next)
                    .bind(limit)
                    .bind(identity)
                    .bind(name),
            };
            let page = query.fetch_one(conn).await.map_err(db_error)?;
            sql::credential_page_rows(page.as_deref())
        } else {
            let query = match after {
                None => sqlx::query_as::<D, CredentialRow>(first).bind(limit),
                Some((identity, name)) => sqlx::query_as::<D, CredentialRow>(next)
                    .bind(limit)
                    .bind(identity)
                    .bind(name),
            };
            query.fetch_all(conn).await.map_err(db_error)
        }
    }

    /// [`RegistryStore::each_credential`] with `page_rows` rows a page: pages by keyset,
    /// each one statement bounded by `idle`, all in one read-only transaction, so the
    /// whole read is one snapshot (as the single statement it replaced was).
    async fn each_credential_in_pages(
        &self,
        idle: std::time::Duration,
        page_rows: usize,
        each: &mut (dyn FnMut(StoredCredential) + Send),
    ) -> StoreResult<()> {
        let begin = async {
            match D::BEGIN_SNAPSHOT {
                Some(begin) => self.read.begin_with(begin).await,
                None => self.read.begin().await,
            }
        };
        let mut tx = within(idle, "a read transaction", begin).await?;
        let what = "a page of credentials";
        let mut page =
            within_store(idle, what, Self::credential_page(&mut tx, page_rows, None)).await?;
        loop {
            // A short page is the last.
            let after = page
                .get(page_rows.saturating_sub(1))
                .map(|last| (last.1.clone(), last.2.clone()));
            // The next page is asked for before these rows are handed on, so the database
            // builds it meanwhile (polled once here, awaited below).
            let mut pending = after.as_ref().map(|(identity, name)| {
                Box::pin(Self::credential_page(
                    &mut tx,
                    page_rows,
                    Some((identity.as_str(), name.as_str())),
                ))
            });
            let early = pending.as_mut().and_then(|p| p.as_mut().now_or_never());
            for row in page {
                each(sql::credential_from_row(row)?);
            }
            page = match (early, pending) {
                (Some(done), _) => done?,
                (None, Some(pending)) => within_store(idle, what, pending).await?,
                (None, None) => break,
            };
        }
        within(idle, "the end of a read transaction", tx.commit()).await
    }

    /// A whole read gives every credential, field for field, in order, however the pages
    /// fall (also across identities with the same credential names), and is one snapshot:
    /// writes committed while it runs are not in it. Both backends' tests run it, on a
    /// store whose writer is not its reader (a multi-threaded runtime: the write happens
    /// inside the read's callback).
    #[cfg(test)]
    pub(super) async fn whole_reads_are_paged_snapshots(&self) {
        #![allow(clippy::unwrap_used, clippy::panic)]
        use super::Restrictions;
        use super::sql::testing::{credential, identity};

        let idle = std::time::Duration::from_secs(5);
        self.put_identity(&identity("deploy", "c-deploy"))
            .await
            .unwrap();
        self.put_identity(&identity("alpha", "c-alpha"))
            .await
            .unwrap();
        for i in 0..7 {
            let mut c = credential(&format!("d{i}"), &format!("n{i}"), &format!("s{i}"));
            if i == 3 {
                c.subject = None;
                c.claims_matching_expression = Some(r#"claims['sub'] eq 'a\b "c" é'"#.into());
                c.audiences = vec!["a\"b".into(), "c".into()];
                c.description = Some("«quoted» \n text".into());
                c.one_time_use = true;
                c.created_at = 1_700_000_000;
                c.restrictions = Restrictions {
                    allowed_scopes: vec!["https://graph.microsoft.com/.default".into()],
                    max_token_age_seconds: Some(300),
                    ..Default::default()
                };
            }
            self.create_credential(&c).await.unwrap();
        }
        for i in 0..2 {
            let c = StoredCredential {
                identity: "alpha".into(),
                ..credential(&format!("a{i}"), &format!("n{i}"), &format!("s{i}"))
            };
            self.create_credential(&c).await.unwrap();
        }
        let listed = self.list_credentials(None).await.unwrap();
        assert_eq!(listed.len(), 9);
        for rows in [1, 2, 3, 8, 9, 10, 1000] {
            let mut read = Vec::new();
            self.each_credential_in_pages(idle, rows, &mut |c| read.push(c))
                .await
                .unwrap();
            assert_eq!(read, listed, "{rows} rows a page");
        }

        // Writes that commit after the first page: one sorting after every row read so
        // far, one removing a row of a later page.
        let mut read = Vec::new();
        let mut wrote = false;
        self.each_credential_in_pages(idle, 2, &mut |c| {
            if !wrote {
                wrote = true;
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(async {
                        let late = credential("d9", "n9", "s9");
                        self.create_credential(&late).await.unwrap();
                        assert!(self.delete_credential("deploy", "n5").await.unwrap());
                    })
                });
            }
            read.push(c);
        })
        .await
        .unwrap();
        assert_eq!(read, listed, "the read is one snapshot");
        let mut now = Vec::new();
        self.each_credential_in_pages(idle, 2, &mut |c| now.push(c.name))
            .await
            .unwrap();
        assert_eq!(
            now,
            ["n0", "n1", "n0", "n1", "n2", "n3", "n4", "n6", "n9"],
            "a later read sees the writes"
        );
    }

    /// The net under the checks each write transaction makes first: rows inserted with
    /// no check at all break each uniqueness rule once, and what the database says must
    /// still read as the conflict an admin would understand. Both backends' tests run it.
    #[cfg(test)]
    pub(super) async fn unique_violations_read_as_conflicts(&self) {
        #![allow(clippy::unwrap_used, clippy::panic)]
        use super::Clash;
        use super::sql::testing::{clashing_credentials, credential, identity};

        let insert_identity = async |identity: &StoredIdentity| {
            let (cloud, assertion) = sql::identity_enums(identity).unwrap();
            let restrictions = sql::restrictions_to_text(&identity.restrictions).unwrap();
            sqlx::query(sql::INSERT_IDENTITY)
                .bind(identity.name.as_str())
                .bind(identity.tenant_id.as_str())
                .bind(identity.client_id.as_str())
                .bind(cloud.as_deref())
                .bind(identity.authority_host.as_deref())
                .bind(assertion.as_str())
                .bind(db_time(identity.created_at))
                .bind(db_time(identity.updated_at))
                .bind(identity.assertion_subject.as_deref())
                .bind(restrictions.as_deref())
                .execute(&self.write)
                .await
                .map(drop)
        };
        let insert_credential = async |c: &StoredCredential| {
            let audiences = sql::audiences_to_text(c).unwrap();
            let restrictions = sql::restrictions_to_text(&c.restrictions).unwrap();
            sqlx::query(sql::INSERT_CREDENTIAL)
                .bind(c.id.as_str())
                .bind(c.identity.as_str())
                .bind(c.name.as_str())
                .bind(c.issuer.as_str())
                .bind(c.subject.as_deref())
                .bind(c.claims_matching_expression.as_deref())
                .bind(audiences.as_str())
                .bind(c.description.as_deref())
                .bind(c.one_time_use)
                .bind(db_time(c.created_at))
                .bind(db_time(c.updated_at))
                .bind(restrictions.as_deref())
                .execute(&self.write)
                .await
                .map(drop)
        };

        insert_identity(&identity("deploy", "ABC")).await.unwrap();
        let other = identity("other", "abc");
        let e = insert_identity(&other).await.unwrap_err();
        assert_eq!(
            sql::identity_write_error(&other, e),
            StoreError::Conflict(
                Clash::ClientId,
                "client id abc is already used by another identity".into()
            )
        );
        insert_credential(&credential("c1", "main", "s1"))
            .await
            .unwrap();
        for (clashing, expected) in clashing_credentials() {
            let e = insert_credential(&clashing).await.unwrap_err();
            assert_eq!(sql::credential_write_error(&clashing, e), expected);
        }
    }
}

#[async_trait::async_trait]
impl<D> RegistryStore for SqlStore<D>
where
    D: Dialect,
    D::Arguments: IntoArguments<D>,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    usize: ColumnIndex<D::Row>,
    for<'a> &'a str: Encode<'a, D> + Type<D>,
    for<'a> Option<&'a str>: Encode<'a, D>,
    String: ColumnType<D>,
    i64: ColumnType<D>,
    bool: ColumnType<D>,
{
    async fn list_identities(&self) -> StoreResult<Vec<StoredIdentity>> {
        sqlx::query_as::<D, IdentityRow>(sql::LIST_IDENTITIES)
            .fetch_all(&self.read)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(sql::identity_from_row)
            .collect()
    }

    async fn get_identity(&self, name: &str) -> StoreResult<Option<StoredIdentity>> {
        sqlx::query_as::<D, IdentityRow>(sql::GET_IDENTITY)
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
        let owner = sqlx::query_scalar::<D, String>(sql::CLIENT_ID_OWNER)
            .bind(identity.client_id.as_str())
            .bind(identity.name.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        if let Some(other) = owner {
            return Err(sql::client_id_taken(&identity.client_id, &other));
        }
        let exists = sqlx::query_scalar::<D, i64>(sql::IDENTITY_CREATED_AT)
            .bind(identity.name.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?
            .is_some();
        let (outcome, written) = if exists {
            let written = sqlx::query(sql::UPDATE_IDENTITY)
                .bind(identity.name.as_str())
                .bind(identity.tenant_id.as_str())
                .bind(identity.client_id.as_str())
                .bind(cloud.as_deref())
                .bind(identity.authority_host.as_deref())
                .bind(assertion.as_str())
                .bind(db_time(identity.updated_at))
                .bind(identity.assertion_subject.as_deref())
                .bind(restrictions.as_deref())
                .execute(&mut *tx)
                .await;
            (PutOutcome::Replaced, written)
        } else {
            let written = sqlx::query(sql::INSERT_IDENTITY)
                .bind(identity.name.as_str())
                .bind(identity.tenant_id.as_str())
                .bind(identity.client_id.as_str())
                .bind(cloud.as_deref())
                .bind(identity.authority_host.as_deref())
                .bind(assertion.as_str())
                .bind(db_time(identity.created_at))
                .bind(db_time(identity.updated_at))
                .bind(identity.assertion_subject.as_deref())
                .bind(restrictions.as_deref())
                .execute(&mut *tx)
                .await;
            (PutOutcome::Created, written)
        };
        written.map_err(|e| sql::identity_write_error(identity, e))?;
        Self::record_change(&mut tx, &identity.name, None).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(outcome)
    }

    async fn delete_identity(&self, name: &str) -> StoreResult<bool> {
        let mut tx = self.begin_registry_write().await?;
        let deleted = sqlx::query(sql::DELETE_IDENTITY)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        if D::rows_affected(&deleted) == 0 {
            return Ok(false); // dropping the transaction rolls the version back
        }
        Self::record_change(&mut tx, name, None).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(true)
    }

    async fn list_credentials(&self, identity: Option<&str>) -> StoreResult<Vec<StoredCredential>> {
        let rows = match identity {
            Some(identity) => {
                sqlx::query_as::<D, CredentialRow>(sql::LIST_CREDENTIALS)
                    .bind(identity)
                    .fetch_all(&self.read)
                    .await
            }
            None => {
                sqlx::query_as::<D, CredentialRow>(sql::LIST_ALL_CREDENTIALS)
                    .fetch_all(&self.read)
                    .await
            }
        };
        rows.map_err(db_error)?
            .into_iter()
            .map(sql::credential_from_row)
            .collect()
    }

    async fn each_credential(
        &self,
        idle: std::time::Duration,
        each: &mut (dyn FnMut(StoredCredential) + Send),
    ) -> StoreResult<()> {
        self.each_credential_in_pages(idle, sql::CREDENTIAL_PAGE_ROWS, each)
            .await
    }

    async fn get_credential(
        &self,
        identity: &str,
        name_or_id: &str,
    ) -> StoreResult<Option<StoredCredential>> {
        let mut conn = self.read.acquire().await.map_err(db_error)?;
        Self::find_credential(&mut conn, identity, name_or_id).await
    }

    async fn create_credential(&self, credential: &StoredCredential) -> StoreResult<()> {
        let audiences = sql::audiences_to_text(credential)?;
        let restrictions = sql::restrictions_to_text(&credential.restrictions)?;
        let mut tx = self.begin_registry_write().await?;
        let identity_exists = sqlx::query(sql::IDENTITY_EXISTS)
            .bind(credential.identity.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?
            .is_some();
        if !identity_exists {
            return Err(sql::identity_missing(&credential.identity));
        }
        if let Some(conflict) = Self::credential_conflict(&mut tx, credential).await? {
            return Err(conflict);
        }
        let id_owner = sqlx::query_as::<D, (String, String)>(sql::CREDENTIAL_ID_OWNER)
            .bind(credential.id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        if let Some((identity, name)) = id_owner {
            return Err(sql::id_taken(&credential.id, &identity, &name));
        }
        sqlx::query(sql::INSERT_CREDENTIAL)
            .bind(credential.id.as_str())
            .bind(credential.identity.as_str())
            .bind(credential.name.as_str())
            .bind(credential.issuer.as_str())
            .bind(credential.subject.as_deref())
            .bind(credential.claims_matching_expression.as_deref())
            .bind(audiences.as_str())
            .bind(credential.description.as_deref())
            .bind(credential.one_time_use)
            .bind(db_time(credential.created_at))
            .bind(db_time(credential.updated_at))
            .bind(restrictions.as_deref())
            .execute(&mut *tx)
            .await
            .map_err(|e| sql::credential_write_error(credential, e))?;
        Self::record_change(&mut tx, &credential.identity, Some(&credential.name)).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn update_credential(&self, credential: &StoredCredential) -> StoreResult<()> {
        let audiences = sql::audiences_to_text(credential)?;
        let restrictions = sql::restrictions_to_text(&credential.restrictions)?;
        let mut tx = self.begin_registry_write().await?;
        let stored = sqlx::query_as::<D, CredentialRow>(sql::GET_CREDENTIAL_BY_ID)
            .bind(credential.identity.as_str())
            .bind(credential.id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?
            .map(sql::credential_from_row)
            .transpose()?
            .ok_or_else(|| sql::credential_missing(credential))?;
        if stored.name != credential.name {
            return Err(sql::rename_refused(&stored.name, &credential.name));
        }
        if let Some(conflict) = Self::credential_conflict(&mut tx, credential).await? {
            return Err(conflict);
        }
        sqlx::query(sql::UPDATE_CREDENTIAL)
            .bind(credential.identity.as_str())
            .bind(credential.id.as_str())
            .bind(credential.issuer.as_str())
            .bind(credential.subject.as_deref())
            .bind(credential.claims_matching_expression.as_deref())
            .bind(audiences.as_str())
            .bind(credential.description.as_deref())
            .bind(credential.one_time_use)
            .bind(db_time(credential.updated_at))
            .bind(restrictions.as_deref())
            .execute(&mut *tx)
            .await
            .map_err(|e| sql::credential_write_error(credential, e))?;
        Self::record_change(&mut tx, &credential.identity, Some(&credential.name)).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn delete_credential(&self, identity: &str, name_or_id: &str) -> StoreResult<bool> {
        let mut tx = self.begin_registry_write().await?;
        let Some(stored) = Self::find_credential(&mut tx, identity, name_or_id).await? else {
            return Ok(false);
        };
        sqlx::query(sql::DELETE_CREDENTIAL_BY_ID)
            .bind(identity)
            .bind(stored.id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        Self::record_change(&mut tx, identity, Some(&stored.name)).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(true)
    }

    async fn count_credentials(&self, identity: &str) -> StoreResult<u64> {
        let count = sqlx::query_scalar::<D, i64>(sql::COUNT_CREDENTIALS)
            .bind(identity)
            .fetch_one(&self.read)
            .await
            .map_err(db_error)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn version(&self) -> StoreResult<i64> {
        sqlx::query_scalar::<D, i64>(sql::GET_VERSION)
            .fetch_one(&self.read)
            .await
            .map_err(db_error)
    }

    async fn changes_since(&self, version: i64, limit: u32) -> StoreResult<Vec<RegistryChange>> {
        let rows = sqlx::query_as::<D, (i64, String, Option<String>)>(sql::CHANGES_SINCE)
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
        self.write_rows(
            sqlx::query(sql::PURGE_CHANGES).bind(i64::try_from(keep).unwrap_or(i64::MAX)),
        )
        .await
    }

    fn registry_notices(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.notices.clone()
    }
}

#[async_trait::async_trait]
impl<D> AuditStore for SqlStore<D>
where
    D: Dialect,
    D::Arguments: IntoArguments<D>,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    usize: ColumnIndex<D::Row>,
    for<'a> &'a str: Encode<'a, D> + Type<D>,
    for<'a> Option<&'a str>: Encode<'a, D>,
    String: ColumnType<D>,
    i64: ColumnType<D>,
    bool: ColumnType<D>,
{
    async fn append_audit(&self, events: &[AuditRecord]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        // One statement per chunk: on SQLite each statement is a round trip to its worker
        // thread, which would otherwise cost more than the insert itself.
        for chunk in events.chunks(sql::AUDIT_ROWS_PER_STATEMENT) {
            let texts = chunk
                .iter()
                .map(|e| D::event_text(&e.event))
                .collect::<StoreResult<Vec<_>>>()?;
            let mut builder = QueryBuilder::<D>::new(sql::INSERT_AUDIT_ROWS);
            builder.push_values(chunk.iter().zip(&texts), |mut row, (event, text)| {
                let actor = event.actor.as_deref().map(D::token_text);
                let identity = event.identity.as_deref().map(D::token_text);
                let subject = event.subject.as_deref().map(D::token_text);
                row.push_bind(db_time(event.time))
                    .push_bind(D::token_text(&event.kind).as_ref())
                    .push_bind(D::token_text(&event.request_id).as_ref())
                    .push_bind(actor.as_deref())
                    .push_bind(identity.as_deref())
                    .push_bind(subject.as_deref())
                    .push_bind(D::token_text(&event.outcome).as_ref())
                    .push_bind(text.as_ref())
                    .push_unseparated(D::EVENT_CAST);
            });
            builder.build().execute(&mut *tx).await.map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn query_audit(&self, query: &AuditQuery) -> StoreResult<Vec<AuditRecord>> {
        let mut builder = QueryBuilder::<D>::new(sql::audit_select(D::EVENT_AS_TEXT));
        if let Some(since) = query.since {
            builder.push(" AND time >= ").push_bind(db_time(since));
        }
        if let Some(until) = query.until {
            builder.push(" AND time <= ").push_bind(db_time(until));
        }
        for (column, value) in [
            ("kind", &query.kind),
            ("identity", &query.identity),
            ("subject", &query.subject),
            ("outcome", &query.outcome),
        ] {
            if let Some(value) = value {
                builder
                    .push(format_args!(" AND {column} = "))
                    .push_bind(value.clone());
            }
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
        self.write_rows(sqlx::query(sql::PURGE_AUDIT).bind(db_time(before)))
            .await
    }

    async fn trim_audit(&self, keep: u64) -> StoreResult<u64> {
        let (Some(min), Some(max)) = Self::audit_id_range(&self.write).await? else {
            return Ok(0);
        };
        let mut deleted = 0;
        for (from, to) in sql::trim_plan(min, max, keep) {
            deleted += self
                .write_rows(sqlx::query(sql::DELETE_AUDIT_IDS).bind(from).bind(to))
                .await?;
        }
        Ok(deleted)
    }
}

#[async_trait::async_trait]
impl<D> ReplayStore for SqlStore<D>
where
    D: Dialect,
    D::Arguments: IntoArguments<D>,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    usize: ColumnIndex<D::Row>,
    for<'a> &'a str: Encode<'a, D> + Type<D>,
    for<'a> Option<&'a str>: Encode<'a, D>,
    String: ColumnType<D>,
    i64: ColumnType<D>,
    bool: ColumnType<D>,
{
    async fn use_token_once(&self, key: &str, expires_at: u64) -> StoreResult<bool> {
        let key = D::token_text(key);
        let used = self
            .write_rows(
                sqlx::query(sql::USE_TOKEN)
                    .bind(key.as_ref())
                    .bind(db_time(expires_at)),
            )
            .await?;
        Ok(used == 1)
    }

    async fn purge_used_tokens(&self, now: u64) -> StoreResult<u64> {
        self.write_rows(sqlx::query(sql::PURGE_USED_TOKENS).bind(db_time(now)))
            .await
    }
}

#[async_trait::async_trait]
impl<D> SigningKeyStore for SqlStore<D>
where
    D: Dialect,
    D::Arguments: IntoArguments<D>,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    usize: ColumnIndex<D::Row>,
    for<'a> &'a str: Encode<'a, D> + Type<D>,
    for<'a> Option<&'a str>: Encode<'a, D>,
    String: ColumnType<D>,
    i64: ColumnType<D>,
    bool: ColumnType<D>,
{
    async fn list_signing_keys(&self) -> StoreResult<Vec<StoredSigningKey>> {
        Ok(
            sqlx::query_as::<D, sql::SigningKeyRow>(sql::LIST_SIGNING_KEYS)
                .fetch_all(&self.read)
                .await
                .map_err(db_error)?
                .into_iter()
                .map(sql::signing_key_from_row)
                .collect(),
        )
    }

    async fn insert_signing_key(&self, key: &StoredSigningKey) -> StoreResult<bool> {
        let inserted = self
            .write_rows(
                sqlx::query(sql::INSERT_SIGNING_KEY)
                    .bind(key.generation)
                    .bind(key.kid.as_str())
                    .bind(key.private_key.expose())
                    .bind(db_time(key.created_at))
                    .bind(db_time(key.active_from)),
            )
            .await?;
        Ok(inserted == 1)
    }

    async fn delete_signing_keys_before(&self, generation: i64) -> StoreResult<u64> {
        self.write_rows(sqlx::query(sql::DELETE_SIGNING_KEYS_BEFORE).bind(generation))
            .await
    }
}

#[async_trait::async_trait]
impl<D> Store for SqlStore<D>
where
    D: Dialect,
    D::Arguments: IntoArguments<D>,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    usize: ColumnIndex<D::Row>,
    for<'a> &'a str: Encode<'a, D> + Type<D>,
    for<'a> Option<&'a str>: Encode<'a, D>,
    String: ColumnType<D>,
    i64: ColumnType<D>,
    bool: ColumnType<D>,
{
    fn kind(&self) -> &'static str {
        D::KIND
    }

    async fn size(&self) -> StoreResult<StoreSize> {
        let bytes = sqlx::query_scalar::<D, i64>(D::SIZE_BYTES)
            .fetch_one(&self.read)
            .await
            .map_err(db_error)?;
        let (min, max) = Self::audit_id_range(&self.read).await?;
        Ok(StoreSize {
            bytes: u64::try_from(bytes).unwrap_or(0),
            audit_events: sql::audit_count(min, max),
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.read)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}
