//! The store, exercised through the `Store` trait with the same stories on every backend:
//! SQLite on a file, SQLite in memory (the dev stack), and PostgreSQL on the machine's
//! `test` database, one schema per test.
//!
//! PostgreSQL is expected at `postgres://postgres@127.0.0.1:5432/test` (override with
//! `WIF_TEST_POSTGRES_URL`). Without it the PostgreSQL tests print a notice and pass,
//! except under `CI=true`, where they fail.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;
use wif_broker::policy::conditions::{Restrictions, StoredRateLimit};
use wif_broker::store::postgres::PgStore;
use wif_broker::store::sqlite::SqliteStore;
use wif_broker::store::{
    self, AuditQuery, AuditRecord, AuditStore, PutOutcome, RegistryStore, ReplayStore, Store,
    StoreError, StoredCredential, StoredIdentity, StoredSigningKey,
};
use wif_config::{AssertionSource, Cloud};

const GITHUB: &str = "https://token.actions.githubusercontent.com";
const K8S: &str = "https://oidc.prod-aks.azure.com/1c3e0e2a/";
const MAIN: &str = "repo:contoso/app:ref:refs/heads/main";
const PROD: &str = "repo:contoso/app:environment:prod";
const T0: u64 = 1_760_000_000;

// ---------------------------------------------------------------------------------------
// Backends

#[derive(Debug, Clone, Copy)]
enum Backend {
    SqliteFile,
    SqliteMemory,
    Postgres,
}

fn pg_url() -> String {
    std::env::var("WIF_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Opens a fresh PostgreSQL store in its own schema, or `None` (with a notice) when
/// PostgreSQL is not there and this is not CI.
async fn fresh_pg_store() -> Option<(Arc<PgStore>, String)> {
    wif_broker::crypto::install_provider();
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    match PgStore::open_in_schema(&pg_url(), &schema).await {
        Ok(store) => Some((Arc::new(store), schema)),
        Err(e) if in_ci() => panic!("PostgreSQL is required under CI=true: {e}"),
        Err(e) => {
            eprintln!("notice: skipping a PostgreSQL store test, PostgreSQL is unavailable: {e}");
            None
        }
    }
}

async fn drop_schema(schema: &str) {
    let mut conn = sqlx::PgConnection::connect(&pg_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
}

/// Runs one story against a fresh, empty store of `backend`, behind the bound every store
/// the broker opens goes through (so the stories also prove it passes every call on), and
/// cleans up afterwards even when the story fails.
async fn run<F, Fut>(backend: Backend, story: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let story = |store: Arc<dyn Store>| story(store::bounded(store));
    match backend {
        Backend::SqliteFile => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("wif.db").display());
            let store = Arc::new(SqliteStore::open(&url).await.unwrap());
            let outcome = tokio::spawn(story(store.clone())).await;
            store.close().await;
            finish(outcome);
        }
        Backend::SqliteMemory => {
            let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
            let outcome = tokio::spawn(story(store.clone())).await;
            finish(outcome);
        }
        Backend::Postgres => {
            let Some((store, schema)) = fresh_pg_store().await else {
                return;
            };
            let outcome = tokio::spawn(story(store.clone())).await;
            store.close().await;
            drop_schema(&schema).await;
            finish(outcome);
        }
    }
}

fn finish(outcome: Result<(), tokio::task::JoinError>) {
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("the story did not finish: {e}"),
        }
    }
}

/// One test per story per backend: `sqlite_file::story`, `sqlite_memory::story`,
/// `postgres::story`.
macro_rules! on_every_backend {
    ($($story:ident),* $(,)?) => {
        mod sqlite_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $story() {
                    super::run(super::Backend::SqliteFile, super::$story).await;
                }
            )*
        }
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $story() {
                    super::run(super::Backend::SqliteMemory, super::$story).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $story() {
                    super::run(super::Backend::Postgres, super::$story).await;
                }
            )*
        }
    };
}

on_every_backend!(
    an_identity_is_created_then_replaced_keeping_its_creation_time,
    identities_are_listed_read_and_deleted_with_their_credentials,
    a_client_id_belongs_to_one_identity_whatever_its_case,
    a_credential_is_created_read_listed_updated_and_deleted,
    a_second_credential_with_the_same_name_is_a_conflict,
    a_second_credential_for_the_same_issuer_and_subject_is_a_conflict,
    racing_admins_creating_one_credential_yield_exactly_one,
    writes_naming_missing_identities_or_credentials_are_not_found,
    the_version_moves_on_every_registry_write_and_never_on_reads,
    every_registry_write_records_what_it_changed_under_its_version,
    registry_writes_are_noticed_where_the_store_can_tell,
    audit_events_are_filtered_and_paged_by_cursor,
    audit_events_are_read_newest_first_by_cursor,
    old_audit_events_are_purged,
    audit_events_beyond_the_limit_are_trimmed_oldest_first,
    a_token_is_accepted_once,
    twenty_replays_at_once_let_exactly_one_through,
    expired_token_keys_are_purged,
    text_from_tokens_with_nul_characters_is_stored,
    text_no_database_can_hold_is_refused_as_the_callers_mistake,
    replicas_racing_to_add_a_signing_key_agree_on_one,
    a_broker_assertion_subject_is_kept_and_cleared,
    least_privilege_restrictions_are_kept_changed_and_cleared,
);

// ---------------------------------------------------------------------------------------
// Fixtures

fn identity(name: &str, client_id: &str) -> StoredIdentity {
    StoredIdentity {
        name: name.to_owned(),
        tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".to_owned(),
        client_id: client_id.to_owned(),
        cloud: Some(Cloud::Public),
        authority_host: None,
        assertion: AssertionSource::Passthrough,
        assertion_subject: None,
        created_at: T0,
        updated_at: T0,
        restrictions: Restrictions::default(),
    }
}

fn credential(identity: &str, name: &str, issuer: &str, subject: Option<&str>) -> StoredCredential {
    StoredCredential {
        id: uuid::Uuid::new_v4().to_string(),
        identity: identity.to_owned(),
        name: name.to_owned(),
        issuer: issuer.to_owned(),
        subject: subject.map(str::to_owned),
        claims_matching_expression: None,
        audiences: vec!["api://AzureADTokenExchange".to_owned()],
        description: Some(format!("{name} of {identity}")),
        one_time_use: false,
        created_at: T0,
        updated_at: T0,
        restrictions: Restrictions::default(),
    }
}

fn claims_credential(identity: &str, name: &str, expression: &str) -> StoredCredential {
    StoredCredential {
        claims_matching_expression: Some(expression.to_owned()),
        ..credential(identity, name, GITHUB, None)
    }
}

const DEPLOY_CLIENT: &str = "8d3c1f2a-5b6e-4c7d-9e0f-1a2b3c4d5e6f";
const OTHER_CLIENT: &str = "0b7f4a51-2c9d-4e3f-a1b2-c3d4e5f60718";

async fn with_deploy_identity(store: &Arc<dyn Store>) {
    let outcome = store
        .put_identity(&identity("deploy", DEPLOY_CLIENT))
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::Created);
}

fn conflict_message(result: Result<impl std::fmt::Debug, StoreError>) -> String {
    match result {
        Err(StoreError::Conflict(_, message)) => message,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn audit(
    time: u64,
    kind: &str,
    identity: Option<&str>,
    subject: &str,
    outcome: &str,
) -> AuditRecord {
    AuditRecord {
        id: 0,
        time,
        kind: kind.to_owned(),
        request_id: uuid::Uuid::new_v4().to_string(),
        actor: Some(subject.to_owned()),
        identity: identity.map(str::to_owned),
        subject: Some(subject.to_owned()),
        outcome: outcome.to_owned(),
        event: json!({
            "issuer": GITHUB,
            "subject": subject,
            "scope": "https://management.azure.com/.default",
            "outcome": outcome,
            "token_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        })
        .to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Identities

async fn an_identity_is_created_then_replaced_keeping_its_creation_time(store: Arc<dyn Store>) {
    with_deploy_identity(&store).await;
    let stored = store.get_identity("deploy").await.unwrap().unwrap();
    assert_eq!(stored, identity("deploy", DEPLOY_CLIENT));

    let replacement = StoredIdentity {
        tenant_id: "11111111-2222-3333-4444-555555555555".to_owned(),
        cloud: None,
        authority_host: Some("https://login.microsoftonline.us".to_owned()),
        created_at: T0 + 500,
        updated_at: T0 + 600,
        ..identity("deploy", DEPLOY_CLIENT)
    };
    let outcome = store.put_identity(&replacement).await.unwrap();
    assert_eq!(outcome, PutOutcome::Replaced);

    let stored = store.get_identity("deploy").await.unwrap().unwrap();
    assert_eq!(
        stored.created_at, T0,
        "a replace keeps the original creation time"
    );
    assert_eq!(stored.updated_at, T0 + 600);
    assert_eq!(stored.tenant_id, replacement.tenant_id);
    assert_eq!(stored.cloud, None);
    assert_eq!(stored.authority_host, replacement.authority_host);
}

async fn identities_are_listed_read_and_deleted_with_their_credentials(store: Arc<dyn Store>) {
    assert!(store.list_identities().await.unwrap().is_empty());
    store
        .put_identity(&identity("web", OTHER_CLIENT))
        .await
        .unwrap();
    with_deploy_identity(&store).await;
    let names: Vec<_> = store
        .list_identities()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["deploy", "web"], "listed by name");
    assert_eq!(store.get_identity("nobody").await.unwrap(), None);

    store
        .create_credential(&credential("deploy", "main", GITHUB, Some(MAIN)))
        .await
        .unwrap();
    store
        .create_credential(&credential("deploy", "prod", GITHUB, Some(PROD)))
        .await
        .unwrap();
    store
        .create_credential(&credential("web", "main", GITHUB, Some(MAIN)))
        .await
        .unwrap();

    assert!(store.delete_identity("deploy").await.unwrap());
    assert!(
        !store.delete_identity("deploy").await.unwrap(),
        "already gone"
    );
    assert_eq!(store.get_identity("deploy").await.unwrap(), None);
    assert!(
        store
            .list_credentials(Some("deploy"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.count_credentials("deploy").await.unwrap(), 0);
    let left = store.list_credentials(None).await.unwrap();
    assert_eq!(left.len(), 1, "the other identity's credential stays");
    assert_eq!(left[0].identity, "web");

    // The name is free again, credentials and all.
    with_deploy_identity(&store).await;
    store
        .create_credential(&credential("deploy", "main", GITHUB, Some(MAIN)))
        .await
        .unwrap();
}

async fn a_client_id_belongs_to_one_identity_whatever_its_case(store: Arc<dyn Store>) {
    with_deploy_identity(&store).await;
    let clash = store
        .put_identity(&identity("other", &DEPLOY_CLIENT.to_uppercase()))
        .await;
    let message = conflict_message(clash);
    assert!(
        message.contains("already used by identity \"deploy\""),
        "{message}"
    );
    assert!(message.contains(&DEPLOY_CLIENT.to_uppercase()), "{message}");
    assert_eq!(store.get_identity("other").await.unwrap(), None);

    // Replacing an identity with its own client id, in another case, is fine.
    let outcome = store
        .put_identity(&identity("deploy", &DEPLOY_CLIENT.to_uppercase()))
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::Replaced);

    // Moving another identity onto a used client id is refused too.
    store
        .put_identity(&identity("web", OTHER_CLIENT))
        .await
        .unwrap();
    let clash = store.put_identity(&identity("web", DEPLOY_CLIENT)).await;
    assert!(conflict_message(clash).contains("\"deploy\""));
    let web = store.get_identity("web").await.unwrap().unwrap();
    assert_eq!(web.client_id, OTHER_CLIENT);
}

// ---------------------------------------------------------------------------------------
// Credentials

async fn a_credential_is_created_read_listed_updated_and_deleted(store: Arc<dyn Store>) {
    with_deploy_identity(&store).await;
    store
        .put_identity(&identity("web", OTHER_CLIENT))
        .await
        .unwrap();
    let main = credential("deploy", "main", GITHUB, Some(MAIN));
    let pods = StoredCredential {
        one_time_use: true,
        audiences: vec!["api://wif-broker".to_owned()],
        description: None,
        ..credential(
            "deploy",
            "pods",
            K8S,
            Some("system:serviceaccount:prod:api"),
        )
    };
    let prs = claims_credential(
        "deploy",
        "pull-requests",
        "claims['sub'] startswith 'repo:contoso/app:pull_request'",
    );
    let web = credential("web", "main", GITHUB, Some(MAIN));
    for c in [&pods, &main, &web, &prs] {
        store.create_credential(c).await.unwrap();
    }

    assert_eq!(
        store.get_credential("deploy", "main").await.unwrap(),
        Some(main.clone())
    );
    assert_eq!(
        store.get_credential("deploy", &main.id).await.unwrap(),
        Some(main.clone())
    );
    assert_eq!(
        store.get_credential("deploy", "pods").await.unwrap(),
        Some(pods.clone())
    );
    assert_eq!(
        store
            .get_credential("deploy", "pull-requests")
            .await
            .unwrap(),
        Some(prs.clone())
    );
    assert_eq!(
        store.get_credential("web", &main.id).await.unwrap(),
        None,
        "ids are per identity"
    );
    assert_eq!(
        store.get_credential("deploy", "nothing").await.unwrap(),
        None
    );

    let of_deploy: Vec<_> = store
        .list_credentials(Some("deploy"))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(of_deploy, ["main", "pods", "pull-requests"]);
    let all: Vec<_> = store
        .list_credentials(None)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.identity, c.name))
        .collect();
    let expected = [
        ("deploy", "main"),
        ("deploy", "pods"),
        ("deploy", "pull-requests"),
        ("web", "main"),
    ];
    assert_eq!(
        all,
        expected.map(|(i, n)| (i.to_owned(), n.to_owned())),
        "ordered by identity, then name"
    );
    assert_eq!(store.count_credentials("deploy").await.unwrap(), 3);
    assert_eq!(store.count_credentials("web").await.unwrap(), 1);

    let updated = StoredCredential {
        subject: Some(PROD.to_owned()),
        audiences: vec![
            "api://AzureADTokenExchange".to_owned(),
            "api://other".to_owned(),
        ],
        description: Some("production deployments".to_owned()),
        one_time_use: true,
        created_at: T0 + 999, // ignored: the creation time is the store's
        updated_at: T0 + 1000,
        ..main.clone()
    };
    store.update_credential(&updated).await.unwrap();
    let stored = store
        .get_credential("deploy", "main")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored,
        StoredCredential {
            created_at: T0,
            ..updated.clone()
        }
    );

    assert!(store.delete_credential("deploy", "main").await.unwrap());
    assert!(!store.delete_credential("deploy", "main").await.unwrap());
    assert!(
        store.delete_credential("deploy", &pods.id).await.unwrap(),
        "by id"
    );
    assert!(
        !store.delete_credential("deploy", &web.id).await.unwrap(),
        "not this identity's"
    );
    assert_eq!(store.count_credentials("deploy").await.unwrap(), 1);
    assert_eq!(store.count_credentials("web").await.unwrap(), 1);
}

async fn a_second_credential_with_the_same_name_is_a_conflict(store: Arc<dyn Store>) {
    with_deploy_identity(&store).await;
    store
        .put_identity(&identity("web", OTHER_CLIENT))
        .await
        .unwrap();
    store
        .create_credential(&credential("deploy", "main", GITHUB, Some(MAIN)))
        .await
        .unwrap();

    let clash = store
        .create_credential(&credential(
            "deploy",
            "main",
            K8S,
            Some("system:serviceaccount:a:b"),
        ))
        .await;
    assert_eq!(
        conflict_message(clash),
        "a credential named \"main\" already exists on identity \"deploy\""
    );
    // Another identity may use the name.
    store
        .create_credential(&credential("web", "main", GITHUB, Some(MAIN)))
        .await
        .unwrap();
    assert_eq!(store.count_credentials("deploy").await.unwrap(), 1);

    // Reusing an id is refused too.
    let first = store
        .get_credential("deploy", "main")
        .await
        .unwrap()
        .unwrap();
    let same_id = StoredCredential {
        id: first.id.clone(),
        ..credential("deploy", "other", K8S, Some("x"))
    };
    let message = conflict_message(store.create_credential(&same_id).await);
    assert!(message.contains(&first.id), "{message}");
}

async fn a_second_credential_for_the_same_issuer_and_subject_is_a_conflict(store: Arc<dyn Store>) {
    with_deploy_identity(&store).await;
    store
        .put_identity(&identity("web", OTHER_CLIENT))
        .await
        .unwrap();
    store
        .create_credential(&credential("deploy", "main", GITHUB, Some(MAIN)))
        .await
        .unwrap();

    let clash = store
        .create_credential(&credential("deploy", "main-again", GITHUB, Some(MAIN)))
        .await;
    assert_eq!(
        conflict_message(clash),
        format!(
            "issuer {GITHUB} and subject {MAIN} are already used by credential \"main\" of identity \"deploy\""
        )
    );

    // The same subject at another issuer, or for another identity, is fine; so are
    // several claims-matching credentials with no subject.
    store
        .create_credential(&credential("deploy", "k8s-main", K8S, Some(MAIN)))
        .await
        .unwrap();
    store
        .create_credential(&credential("web", "main", GITHUB, Some(MAIN)))
        .await
        .unwrap();
    store
        .create_credential(&claims_credential(
            "deploy",
            "prs",
            "claims['sub'] startswith 'a'",
        ))
        .await
        .unwrap();
    store
        .create_credential(&claims_credential(
            "deploy",
            "tags",
            "claims['sub'] startswith 'b'",
        ))
        .await
        .unwrap();

    // An update that would take another credential's subject is refused, and leaves it.
    let mut prod = credential("deploy", "prod", GITHUB, Some(PROD));
    store.create_credential(&prod).await.unwrap();
    prod.subject = Some(MAIN.to_owned());
    let message = conflict_message(store.update_credential(&prod).await);
    assert!(message.contains("credential \"main\""), "{message}");
    let stored = store
        .get_credential("deploy", "prod")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.subject.as_deref(), Some(PROD));
    // Updating a credential to its own values is no clash with itself.
    prod.subject = Some(PROD.to_owned());
    store.update_credential(&prod).await.unwrap();
}

async fn racing_admins_creating_one_credential_yield_exactly_one(store: Arc<dyn Store>) {
    with_deploy_identity(&store).await;

    // Twenty admins create "main" at once, each with its own id and subject.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let subject = format!("{MAIN}:{i}");
                store
                    .create_credential(&credential("deploy", "main", GITHUB, Some(&subject)))
                    .await
            })
        })
        .collect();
    let results = futures::future::join_all(tasks).await;
    let (won, lost): (Vec<_>, Vec<_>) = results
        .into_iter()
        .map(Result::unwrap)
        .partition(Result::is_ok);
    assert_eq!(won.len(), 1, "exactly one create wins");
    for loss in lost {
        let message = conflict_message(loss);
        assert!(message.contains("named \"main\""), "{message}");
    }

    // Twenty admins claim the same issuer and subject under different names.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create_credential(&credential(
                        "deploy",
                        &format!("prod-{i}"),
                        GITHUB,
                        Some(PROD),
                    ))
                    .await
            })
        })
        .collect();
    let results = futures::future::join_all(tasks).await;
    let (won, lost): (Vec<_>, Vec<_>) = results
        .into_iter()
        .map(Result::unwrap)
        .partition(Result::is_ok);
    assert_eq!(won.len(), 1, "exactly one create wins");
    for loss in lost {
        let message = conflict_message(loss);
        assert!(message.contains(&format!("subject {PROD}")), "{message}");
    }
    assert_eq!(store.count_credentials("deploy").await.unwrap(), 2);
}

async fn writes_naming_missing_identities_or_credentials_are_not_found(store: Arc<dyn Store>) {
    let orphan = credential("ghost", "main", GITHUB, Some(MAIN));
    match store.create_credential(&orphan).await {
        Err(StoreError::NotFound(message)) => {
            assert_eq!(message, "identity \"ghost\" does not exist");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(store.list_credentials(None).await.unwrap().is_empty());

    with_deploy_identity(&store).await;
    let never_created = credential("deploy", "main", GITHUB, Some(MAIN));
    assert!(matches!(
        store.update_credential(&never_created).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(!store.delete_credential("deploy", "main").await.unwrap());
    assert!(!store.delete_credential("ghost", "main").await.unwrap());

    // The name of a credential is fixed once created.
    store.create_credential(&never_created).await.unwrap();
    let renamed = StoredCredential {
        name: "renamed".to_owned(),
        ..never_created.clone()
    };
    let message = conflict_message(store.update_credential(&renamed).await);
    assert!(message.contains("\"main\" cannot be renamed"), "{message}");
}

async fn moved_version(store: &Arc<dyn Store>, last: i64, what: &str) -> i64 {
    let now = store.version().await.unwrap();
    assert!(now > last, "{what} must move the version ({last} -> {now})");
    now
}

async fn the_version_moves_on_every_registry_write_and_never_on_reads(store: Arc<dyn Store>) {
    let mut last = store.version().await.unwrap();

    store
        .put_identity(&identity("deploy", DEPLOY_CLIENT))
        .await
        .unwrap();
    last = moved_version(&store, last, "creating an identity").await;
    store
        .put_identity(&identity("deploy", DEPLOY_CLIENT))
        .await
        .unwrap();
    last = moved_version(&store, last, "replacing an identity").await;
    let mut main = credential("deploy", "main", GITHUB, Some(MAIN));
    store.create_credential(&main).await.unwrap();
    last = moved_version(&store, last, "creating a credential").await;
    main.description = Some("changed".to_owned());
    store.update_credential(&main).await.unwrap();
    last = moved_version(&store, last, "updating a credential").await;
    store.delete_credential("deploy", "main").await.unwrap();
    last = moved_version(&store, last, "deleting a credential").await;
    store.delete_identity("deploy").await.unwrap();
    moved_version(&store, last, "deleting an identity").await;

    let before = store.version().await.unwrap();
    store.list_identities().await.unwrap();
    store.get_identity("deploy").await.unwrap();
    store.list_credentials(None).await.unwrap();
    store.get_credential("deploy", "main").await.unwrap();
    store.count_credentials("deploy").await.unwrap();
    store.query_audit(&AuditQuery::default()).await.unwrap();
    store.ping().await.unwrap();
    // Refused writes change nothing either.
    let _ = store
        .create_credential(&credential("ghost", "x", GITHUB, None))
        .await;
    assert!(!store.delete_identity("ghost").await.unwrap());
    assert_eq!(store.version().await.unwrap(), before);
}

/// PostgreSQL tells every replica (this one included) of a registry write within moments
/// (docs/storage.md, "Replicas"); SQLite, one broker per file, has no one to tell.
async fn registry_writes_are_noticed_where_the_store_can_tell(store: Arc<dyn Store>) {
    let Some(mut notices) = store.registry_notices() else {
        assert_eq!(store.kind(), "sqlite", "only SQLite cannot tell");
        return;
    };
    assert_eq!(store.kind(), "postgres");
    // The listener bumps once when it starts listening; writes before that go unheard.
    tokio::time::timeout(Duration::from_secs(10), notices.wait_for(|n| *n > 0))
        .await
        .expect("the change listener starts listening")
        .unwrap();
    notices.borrow_and_update();
    store
        .put_identity(&identity("deploy", DEPLOY_CLIENT))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), notices.changed())
        .await
        .expect("a registry write is noticed")
        .unwrap();
    notices.borrow_and_update();
    // Writes that change nothing notify nobody.
    assert!(!store.delete_identity("ghost").await.unwrap());
    store.use_token_once("jti:quiet", T0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !notices.has_changed().unwrap(),
        "no registry write, no notice"
    );
}

/// What replicas read to apply changed entries only (docs/storage.md, "Replicas").
async fn every_registry_write_records_what_it_changed_under_its_version(store: Arc<dyn Store>) {
    let start = store.version().await.unwrap();
    store
        .put_identity(&identity("deploy", DEPLOY_CLIENT))
        .await
        .unwrap();
    let mut main = credential("deploy", "main", GITHUB, Some(MAIN));
    store.create_credential(&main).await.unwrap();
    main.description = Some("changed".to_owned());
    store.update_credential(&main).await.unwrap();
    // Deleted by id: the change names the credential.
    store.delete_credential("deploy", &main.id).await.unwrap();
    store.delete_identity("deploy").await.unwrap();
    // Refused writes record nothing.
    let _ = store
        .create_credential(&credential("ghost", "x", GITHUB, None))
        .await;
    assert!(!store.delete_credential("deploy", "main").await.unwrap());

    let changes = store.changes_since(start, 100).await.unwrap();
    let seen: Vec<(i64, &str, Option<&str>)> = changes
        .iter()
        .map(|c| {
            (
                c.version - start,
                c.identity.as_str(),
                c.credential.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (1, "deploy", None),
            (2, "deploy", Some("main")),
            (3, "deploy", Some("main")),
            (4, "deploy", Some("main")),
            (5, "deploy", None),
        ]
    );
    assert_eq!(store.version().await.unwrap(), start + 5);
    // Paged by version and limit.
    let later = store.changes_since(start + 3, 1).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].version, start + 4);
    // Purging keeps the newest versions' changes.
    store.purge_changes(2).await.unwrap();
    let kept: Vec<i64> = store
        .changes_since(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.version - start)
        .collect();
    assert_eq!(kept, [4, 5]);
}

// ---------------------------------------------------------------------------------------
// Audit

/// The times (relative to T0) of the events a query finds.
async fn times(store: &Arc<dyn Store>, query: AuditQuery) -> Vec<u64> {
    let found = store.query_audit(&query).await.unwrap();
    found.into_iter().map(|e| e.time - T0).collect()
}

async fn audit_events_are_filtered_and_paged_by_cursor(store: Arc<dyn Store>) {
    let events = vec![
        audit(T0, "exchange", Some("deploy"), MAIN, "ok"),
        audit(T0 + 10, "exchange", None, PROD, "no_matching_credential"),
        audit(T0 + 20, "simulate", Some("deploy"), PROD, "ok"),
        AuditRecord {
            actor: Some("alice@contoso.com".to_owned()),
            subject: None,
            ..audit(T0 + 30, "admin", Some("deploy"), "", "ok")
        },
        audit(
            T0 + 40,
            "exchange",
            Some("web"),
            MAIN,
            "upstream_unavailable",
        ),
    ];
    store.append_audit(&events).await.unwrap();
    store.append_audit(&[]).await.unwrap();

    let all = store.query_audit(&AuditQuery::default()).await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "increasing ids");
    for (stored, written) in all.iter().zip(&events) {
        assert_eq!(
            *stored,
            AuditRecord {
                id: stored.id,
                ..written.clone()
            }
        );
    }

    assert_eq!(
        times(
            &store,
            AuditQuery {
                since: Some(T0 + 20),
                ..Default::default()
            }
        )
        .await,
        [20, 30, 40]
    );
    assert_eq!(
        times(
            &store,
            AuditQuery {
                until: Some(T0 + 10),
                ..Default::default()
            }
        )
        .await,
        [0, 10]
    );
    assert_eq!(
        times(
            &store,
            AuditQuery {
                since: Some(T0 + 10),
                until: Some(T0 + 30),
                ..Default::default()
            }
        )
        .await,
        [10, 20, 30]
    );
    assert_eq!(
        times(
            &store,
            AuditQuery {
                kind: Some("exchange".into()),
                ..Default::default()
            }
        )
        .await,
        [0, 10, 40]
    );
    assert_eq!(
        times(
            &store,
            AuditQuery {
                identity: Some("deploy".into()),
                ..Default::default()
            }
        )
        .await,
        [0, 20, 30]
    );
    assert_eq!(
        times(
            &store,
            AuditQuery {
                subject: Some(PROD.into()),
                ..Default::default()
            }
        )
        .await,
        [10, 20]
    );
    assert_eq!(
        times(
            &store,
            AuditQuery {
                outcome: Some("ok".into()),
                ..Default::default()
            }
        )
        .await,
        [0, 20, 30]
    );
    assert_eq!(
        times(
            &store,
            AuditQuery {
                kind: Some("exchange".into()),
                identity: Some("deploy".into()),
                outcome: Some("ok".into()),
                ..Default::default()
            }
        )
        .await,
        [0],
        "filters combine with AND"
    );
    assert!(
        times(
            &store,
            AuditQuery {
                identity: Some("nobody".into()),
                ..Default::default()
            }
        )
        .await
        .is_empty()
    );

    // Paging: two at a time, each page starting after the last id seen.
    let mut seen = Vec::new();
    let mut after_id = None;
    loop {
        let page = store
            .query_audit(&AuditQuery {
                after_id,
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after_id = Some(last.id);
        seen.extend(page.into_iter().map(|e| e.time - T0));
    }
    assert_eq!(seen, [0, 10, 20, 30, 40]);
    // A cursor combines with filters.
    let page = store
        .query_audit(&AuditQuery {
            kind: Some("exchange".into()),
            after_id: Some(all[0].id),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, all[1].id);

    // A page holds at most 1000 events, whatever is asked.
    let many: Vec<_> = (0..1100)
        .map(|i| audit(T0 + 100 + i, "exchange", None, MAIN, "ok"))
        .collect();
    store.append_audit(&many).await.unwrap();
    let page = store
        .query_audit(&AuditQuery {
            limit: 5000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1000);
    let page = store.query_audit(&AuditQuery::default()).await.unwrap();
    assert_eq!(page.len(), 1000, "no limit means the largest page");
}

async fn audit_events_are_read_newest_first_by_cursor(store: Arc<dyn Store>) {
    let events: Vec<_> = (0..7)
        .map(|i| {
            let outcome = if i % 2 == 0 {
                "ok"
            } else {
                "no_matching_credential"
            };
            audit(T0 + i * 10, "exchange", Some("deploy"), MAIN, outcome)
        })
        .collect();
    store.append_audit(&events).await.unwrap();

    // Newest first, two at a time, each page starting below the last id seen.
    let mut seen = Vec::new();
    let mut before_id = None;
    loop {
        let page = store
            .query_audit(&AuditQuery {
                before_id,
                newest_first: true,
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.len() <= 2);
        assert!(page.windows(2).all(|w| w[0].id > w[1].id), "decreasing ids");
        let Some(last) = page.last() else { break };
        before_id = Some(last.id);
        seen.extend(page.into_iter().map(|e| e.time - T0));
    }
    assert_eq!(seen, [60, 50, 40, 30, 20, 10, 0]);

    // The newest page comes first: a limit keeps the newest events, not the oldest.
    assert_eq!(
        times(
            &store,
            AuditQuery {
                newest_first: true,
                limit: 3,
                ..Default::default()
            }
        )
        .await,
        [60, 50, 40]
    );
    // A newest-first cursor combines with filters and with `after_id`.
    let all = store.query_audit(&AuditQuery::default()).await.unwrap();
    assert_eq!(
        times(
            &store,
            AuditQuery {
                outcome: Some("ok".into()),
                after_id: Some(all[0].id),
                before_id: Some(all[6].id),
                newest_first: true,
                ..Default::default()
            }
        )
        .await,
        [40, 20]
    );
    // `before_id` also bounds the oldest-first order.
    assert_eq!(
        times(
            &store,
            AuditQuery {
                before_id: Some(all[2].id),
                ..Default::default()
            }
        )
        .await,
        [0, 10]
    );
}

async fn old_audit_events_are_purged(store: Arc<dyn Store>) {
    let events: Vec<_> = (0..10)
        .map(|i| audit(T0 + i * 100, "exchange", Some("deploy"), MAIN, "ok"))
        .collect();
    store.append_audit(&events).await.unwrap();
    let last_id = store.query_audit(&AuditQuery::default()).await.unwrap()[9].id;

    assert_eq!(
        store.purge_audit(T0 + 500).await.unwrap(),
        5,
        "strictly older than the cut"
    );
    assert_eq!(store.purge_audit(T0 + 500).await.unwrap(), 0);
    let left = store.query_audit(&AuditQuery::default()).await.unwrap();
    assert_eq!(
        left.iter().map(|e| e.time - T0).collect::<Vec<_>>(),
        [500, 600, 700, 800, 900]
    );

    // Ids keep increasing after a purge, so cursors held by readers stay valid.
    store.purge_audit(u64::MAX).await.unwrap();
    store.append_audit(&events[..1]).await.unwrap();
    let fresh = store.query_audit(&AuditQuery::default()).await.unwrap();
    assert!(fresh[0].id > last_id);
}

async fn audit_events_beyond_the_limit_are_trimmed_oldest_first(store: Arc<dyn Store>) {
    assert_eq!(store.trim_audit(10).await.unwrap(), 0, "nothing to trim");
    let empty = store.size().await.unwrap();
    assert_eq!(empty.audit_events, 0);
    assert!(empty.bytes > 0, "{empty:?}");
    let events: Vec<_> = (0..25_000)
        .map(|i| audit(T0 + i, "exchange", Some("deploy"), MAIN, "ok"))
        .collect();
    for chunk in events.chunks(5_000) {
        store.append_audit(chunk).await.unwrap();
    }
    let full = store.size().await.unwrap();
    assert_eq!(full.audit_events, 25_000);
    assert!(full.bytes > empty.bytes, "{full:?} vs {empty:?}");

    // More than one trim step's worth, whatever the age of the events.
    assert_eq!(store.trim_audit(100).await.unwrap(), 24_900);
    assert_eq!(store.size().await.unwrap().audit_events, 100);
    let left = times(&store, AuditQuery::default()).await;
    assert_eq!(left.first(), Some(&24_900), "the newest are kept");
    assert_eq!(left.len(), 100);
    assert_eq!(store.trim_audit(100).await.unwrap(), 0);
    assert_eq!(store.trim_audit(0).await.unwrap(), 100);
}

// ---------------------------------------------------------------------------------------
// One-time-use tokens

async fn a_token_is_accepted_once(store: Arc<dyn Store>) {
    let key = "jti:4f1c2a9e-6d3b-4e8a-9c7f-0a1b2c3d4e5f";
    assert!(
        store.use_token_once(key, T0 + 3600).await.unwrap(),
        "first use"
    );
    assert!(
        !store.use_token_once(key, T0 + 3600).await.unwrap(),
        "replay"
    );
    assert!(
        !store.use_token_once(key, T0 + 7200).await.unwrap(),
        "replay with a later expiry"
    );
    assert!(
        store
            .use_token_once("sha256:9f86d081", T0 + 3600)
            .await
            .unwrap(),
        "another token"
    );
}

async fn twenty_replays_at_once_let_exactly_one_through(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.use_token_once("jti:raced", T0 + 3600).await.unwrap() })
        })
        .collect();
    let accepted = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .filter(|first| *first)
        .count();
    assert_eq!(accepted, 1);
}

async fn expired_token_keys_are_purged(store: Arc<dyn Store>) {
    for i in 0..6 {
        assert!(
            store
                .use_token_once(&format!("jti:{i}"), T0 + i * 60)
                .await
                .unwrap()
        );
    }
    assert_eq!(
        store.purge_used_tokens(T0 + 180).await.unwrap(),
        3,
        "expired before now"
    );
    assert_eq!(store.purge_used_tokens(T0 + 180).await.unwrap(), 0);
    // A purged key is forgotten; a kept one is still remembered.
    assert!(store.use_token_once("jti:0", T0 + 3600).await.unwrap());
    assert!(!store.use_token_once("jti:3", T0 + 3600).await.unwrap());
}

async fn least_privilege_restrictions_are_kept_changed_and_cleared(store: Arc<dyn Store>) {
    let mut deploy = identity("deploy", DEPLOY_CLIENT);
    deploy.restrictions = Restrictions {
        disabled: true,
        allowed_scopes: vec!["https://storage.azure.com/.default".into()],
        rate_limit: Some(StoredRateLimit {
            per_minute: 60,
            burst: 10,
        }),
        ..Restrictions::default()
    };
    store.put_identity(&deploy).await.unwrap();
    assert_eq!(
        store.get_identity("deploy").await.unwrap(),
        Some(deploy.clone())
    );
    let mut main = credential("deploy", "main", GITHUB, Some(MAIN));
    main.restrictions = Restrictions {
        disabled: true,
        allowed_scopes: vec!["https://*.vault.azure.net/.default".into()],
        source_networks: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
        max_token_age_seconds: Some(300),
        not_before: Some(T0),
        not_after: Some(T0 + 86_400),
        rate_limit: Some(StoredRateLimit {
            per_minute: 6,
            burst: 2,
        }),
    };
    store.create_credential(&main).await.unwrap();
    assert_eq!(
        store.get_credential("deploy", "main").await.unwrap(),
        Some(main.clone())
    );
    main.restrictions.disabled = false;
    main.restrictions.not_after = None;
    store.update_credential(&main).await.unwrap();
    assert_eq!(
        store.list_credentials(Some("deploy")).await.unwrap(),
        vec![main.clone()]
    );
    main.restrictions = Restrictions::default();
    store.update_credential(&main).await.unwrap();
    let read = store
        .get_credential("deploy", "main")
        .await
        .unwrap()
        .unwrap();
    assert!(read.restrictions.is_empty());
    deploy.restrictions = Restrictions::default();
    store.put_identity(&deploy).await.unwrap();
    assert!(
        store
            .get_identity("deploy")
            .await
            .unwrap()
            .unwrap()
            .restrictions
            .is_empty()
    );
}

async fn a_broker_assertion_subject_is_kept_and_cleared(store: Arc<dyn Store>) {
    let mut fleet = identity("fleet", DEPLOY_CLIENT);
    fleet.assertion = AssertionSource::Broker;
    fleet.assertion_subject = Some("fleet-production".into());
    store.put_identity(&fleet).await.unwrap();
    assert_eq!(
        store.get_identity("fleet").await.unwrap(),
        Some(fleet.clone())
    );
    fleet.assertion_subject = None;
    store.put_identity(&fleet).await.unwrap();
    let read = store.get_identity("fleet").await.unwrap().unwrap();
    assert_eq!(read.assertion_subject, None);
    assert_eq!(read.assertion, AssertionSource::Broker);
}

fn signing_key(generation: i64, kid: &str) -> StoredSigningKey {
    StoredSigningKey {
        generation,
        kid: kid.to_owned(),
        private_key: wif_broker::entra::Secret::new(format!("pkcs8-of-{kid}")),
        created_at: T0,
        active_from: T0 + 60,
    }
}

async fn replicas_racing_to_add_a_signing_key_agree_on_one(store: Arc<dyn Store>) {
    assert!(store.list_signing_keys().await.unwrap().is_empty());
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .insert_signing_key(&signing_key(1, &format!("replica-{i}")))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let inserted = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .filter(|won| *won)
        .count();
    assert_eq!(inserted, 1, "one replica's key per generation");
    let keys = store.list_signing_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].kid.starts_with("replica-"));
    assert_eq!(
        keys[0].private_key.expose(),
        format!("pkcs8-of-{}", keys[0].kid)
    );
    assert_eq!((keys[0].created_at, keys[0].active_from), (T0, T0 + 60));

    assert!(
        store
            .insert_signing_key(&signing_key(2, "second"))
            .await
            .unwrap()
    );
    assert!(
        store
            .insert_signing_key(&signing_key(3, "third"))
            .await
            .unwrap()
    );
    assert_eq!(store.delete_signing_keys_before(3).await.unwrap(), 2);
    let left: Vec<i64> = store
        .list_signing_keys()
        .await
        .unwrap()
        .iter()
        .map(|k| k.generation)
        .collect();
    assert_eq!(left, vec![3]);
}

async fn text_from_tokens_with_nul_characters_is_stored(store: Arc<dyn Store>) {
    // Claims are written by whoever minted the token; a NUL must not fail the write.
    let event = AuditRecord {
        event: json!({"subject": "evil\u{0}sub", "claims": {"k\u{0}": ["a\u{0}"]}}).to_string(),
        ..audit(
            T0,
            "exchange",
            None,
            "evil\u{0}sub",
            "no_matching_credential",
        )
    };
    store.append_audit(&[event]).await.unwrap();
    let stored = store.query_audit(&AuditQuery::default()).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].subject.as_deref().unwrap().starts_with("evil"));
    assert!(store.use_token_once("jti:a\u{0}b", T0).await.unwrap());
    assert!(!store.use_token_once("jti:a\u{0}b", T0).await.unwrap());
}

async fn text_no_database_can_hold_is_refused_as_the_callers_mistake(store: Arc<dyn Store>) {
    // What the broker runs on: the backend behind the bound every call goes through.
    let store = wif_broker::store::bounded(store);
    with_deploy_identity(&store).await;
    let invalid = |result: Result<(), StoreError>, field: &str| match result {
        Err(StoreError::Invalid { field: f, .. }) if f == field => {}
        other => panic!("expected Invalid for {field}, got {other:?}"),
    };
    let query = AuditQuery {
        subject: Some("\u{0}".into()),
        ..AuditQuery::default()
    };
    invalid(store.query_audit(&query).await.map(drop), "subject");
    let query = AuditQuery {
        outcome: Some("ok\u{0}".into()),
        ..AuditQuery::default()
    };
    invalid(store.query_audit(&query).await.map(drop), "outcome");
    invalid(
        store
            .put_identity(&identity("x\u{0}", "c-1"))
            .await
            .map(drop),
        "name",
    );
    invalid(store.get_identity("\u{0}").await.map(drop), "name");
    let mut bad = credential("deploy", "main", "https://issuer", Some("repo:a\u{0}"));
    invalid(store.create_credential(&bad).await, "subject");
    bad.subject = Some("repo:a".into());
    bad.description = Some("d\u{0}".into());
    invalid(store.create_credential(&bad).await, "description");
    invalid(
        store.get_credential("deploy", "m\u{0}").await.map(drop),
        "name",
    );
    // Nothing was written, and the store still answers.
    assert!(store.list_credentials(None).await.unwrap().is_empty());
    assert_eq!(store.list_identities().await.unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------
// Opening, durability, availability

#[tokio::test]
async fn an_acknowledged_write_to_a_sqlite_file_is_there_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.db");
    assert!(!path.exists());
    let url = format!("sqlite://{}", path.display());

    let store = SqliteStore::open(&url).await.unwrap();
    assert!(path.exists(), "the file is created when missing");
    store
        .put_identity(&identity("deploy", DEPLOY_CLIENT))
        .await
        .unwrap();
    let main = credential("deploy", "main", GITHUB, Some(MAIN));
    store.create_credential(&main).await.unwrap();
    store
        .append_audit(&[audit(T0, "admin", Some("deploy"), "alice", "ok")])
        .await
        .unwrap();
    assert!(store.use_token_once("jti:once", T0 + 60).await.unwrap());
    let version = store.version().await.unwrap();
    store.close().await;
    drop(store);

    // Reopening runs the migrations again: a no-op on an up-to-date file.
    for _ in 0..2 {
        let store: Arc<dyn Store> = store::open(&url).await.unwrap();
        assert_eq!(store.kind(), "sqlite");
        assert_eq!(
            store.get_identity("deploy").await.unwrap(),
            Some(identity("deploy", DEPLOY_CLIENT))
        );
        assert_eq!(
            store.get_credential("deploy", "main").await.unwrap(),
            Some(main.clone())
        );
        assert_eq!(
            store
                .query_audit(&AuditQuery::default())
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(!store.use_token_once("jti:once", T0 + 60).await.unwrap());
        assert_eq!(store.version().await.unwrap(), version);
    }
}

#[tokio::test]
async fn a_sqlite_write_survives_a_broker_that_never_shut_down() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("wif.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    store
        .put_identity(&identity("deploy", DEPLOY_CLIENT))
        .await
        .unwrap();
    // No close, no checkpoint: the commit lives only in the write-ahead log, as after a
    // kill -9.
    std::mem::forget(store);

    let reopened = SqliteStore::open(&url).await.unwrap();
    assert!(reopened.get_identity("deploy").await.unwrap().is_some());
    reopened.close().await;
}

/// Played by a child process in `an_acknowledged_sqlite_write_survives_kill_9`: writes
/// identities forever, announcing each one once `put_identity` has returned. A no-op when
/// run as an ordinary test.
#[tokio::test]
async fn crash_child_writes_until_killed() {
    let Ok(url) = std::env::var(CRASH_CHILD_URL) else {
        return;
    };
    let store = SqliteStore::open(&url).await.unwrap();
    for i in 0.. {
        let client_id = uuid::Uuid::new_v4().to_string();
        store
            .put_identity(&identity(&format!("id-{i}"), &client_id))
            .await
            .unwrap();
        println!("acknowledged id-{i}");
    }
}

const CRASH_CHILD_URL: &str = "WIF_TEST_CRASH_CHILD_STORE_URL";

#[test]
fn an_acknowledged_sqlite_write_survives_kill_9() {
    use std::io::BufRead;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("wif.db").display());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["crash_child_writes_until_killed", "--exact", "--nocapture"])
        .env(CRASH_CHILD_URL, &url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut acknowledged = Vec::new();
    // Keep the reading end open until the kill, so the child is never stopped by a broken pipe.
    let mut lines = stdout.lines();
    for line in lines.by_ref() {
        if let Some(name) = line.unwrap().strip_prefix("acknowledged ") {
            acknowledged.push(name.to_owned());
            if acknowledged.len() == 25 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-write
    child.wait().unwrap();
    drop(lines);
    assert_eq!(acknowledged.len(), 25, "the child stopped writing early");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(&url).await.unwrap();
        for name in &acknowledged {
            assert!(
                store.get_identity(name).await.unwrap().is_some(),
                "{name} was acknowledged, then lost"
            );
        }
        store.close().await;
    });
}

#[tokio::test]
async fn a_sqlite_file_is_left_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("wif.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    store
        .put_identity(&identity("deploy", DEPLOY_CLIENT))
        .await
        .unwrap();

    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    conn.close().await.unwrap();
    assert!(dir.path().join("wif.db-wal").exists());
    store.close().await;
}

#[tokio::test]
async fn every_in_memory_store_is_one_database_shared_by_its_tasks_and_no_other() {
    let a: Arc<dyn Store> = store::open("sqlite::memory:").await.unwrap();
    let b: Arc<dyn Store> = store::open("sqlite::memory:").await.unwrap();
    a.put_identity(&identity("deploy", DEPLOY_CLIENT))
        .await
        .unwrap();
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.get_identity("deploy").await.unwrap().is_some() })
        })
        .collect();
    for reader in readers {
        assert!(reader.await.unwrap());
    }
    assert_eq!(b.get_identity("deploy").await.unwrap(), None);
}

#[tokio::test]
async fn an_unsupported_store_url_is_refused() {
    match store::open("mysql://db/wif").await {
        Err(StoreError::Url(scheme)) => assert_eq!(scheme, "mysql"),
        Err(other) => panic!("expected a URL error, got {other:?}"),
        Ok(_) => panic!("expected a URL error"),
    }
}

#[tokio::test]
async fn an_unreachable_postgres_is_unavailable_within_seconds() {
    wif_broker::crypto::install_provider();
    let started = Instant::now();
    let result = store::open("postgres://postgres@127.0.0.1:1/test").await;
    let elapsed = started.elapsed();
    match result {
        Err(StoreError::Unavailable(_)) => {}
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("nothing listens on port 1"),
    }
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

#[tokio::test]
async fn a_schema_name_that_is_not_an_identifier_is_refused() {
    let result = PgStore::open_in_schema(&pg_url(), "x\"; DROP TABLE y; --").await;
    assert!(matches!(result, Err(StoreError::Url(_))), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_one_postgres_see_each_others_writes() {
    let Some((first, schema)) = fresh_pg_store().await else {
        return;
    };
    // A second replica on the same database (and schema); opening migrates nothing new.
    let second = Arc::new(PgStore::open_in_schema(&pg_url(), &schema).await.unwrap());
    assert_eq!(second.kind(), "postgres");

    let before = second.version().await.unwrap();
    first
        .put_identity(&identity("deploy", DEPLOY_CLIENT))
        .await
        .unwrap();
    first
        .create_credential(&credential("deploy", "main", GITHUB, Some(MAIN)))
        .await
        .unwrap();
    assert!(
        second.version().await.unwrap() > before,
        "the other replica sees the new version"
    );
    assert!(
        second
            .get_credential("deploy", "main")
            .await
            .unwrap()
            .is_some()
    );

    // One-time use holds across replicas.
    let replicas: Vec<Arc<dyn Store>> = vec![first.clone(), second.clone()];
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = replicas[i % 2].clone();
            tokio::spawn(async move { store.use_token_once("jti:replicas", T0).await.unwrap() })
        })
        .collect();
    let accepted = futures::future::join_all(tasks)
        .await
        .into_iter()
        .filter(|first_use| *first_use.as_ref().unwrap())
        .count();
    assert_eq!(accepted, 1);

    // A conflict found by one replica names what the other wrote.
    let clash = second.put_identity(&identity("other", DEPLOY_CLIENT)).await;
    assert!(conflict_message(clash).contains("\"deploy\""));

    first.close().await;
    second.close().await;
    drop_schema(&schema).await;
}
