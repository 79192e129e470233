//! Test support: stores on both backends, each test in its own SQLite file or PostgreSQL
//! schema.
//!
//! PostgreSQL is found at `TASKHOOK_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it cannot be reached, PostgreSQL tests
//! print `skipping: PostgreSQL not reachable at …` and pass, unless
//! `TASKHOOK_TEST_REQUIRE_SERVICES=1`, which makes them fail instead.
//!
//! Each PostgreSQL test gets a fresh schema `t_<unix seconds>_<random>`; schemas of that form
//! older than two hours (left by killed test runs) are dropped on the way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::{Store, postgres};

pub mod tls_cluster;

/// For each test `async fn <name>(db: TestDb)`, generates `mod <name>` with the tests `sqlite`
/// and `postgres` (skipped with a visible message when PostgreSQL is not reachable; failing
/// instead with TASKHOOK_TEST_REQUIRE_SERVICES=1).
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::testing::TestDb::sqlite()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = $crate::testing::TestDb::postgres().await {
                    super::$name(db).await
                }
            }
        }
    )*};
}

/// For each test `async fn <name>(b: Backend)`, generates `mod <name>` with the tests `sqlite`
/// and `postgres`, skipped or failing as [`on_both_stores`] says.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::testing::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::testing::postgres_available().await {
                    super::$name($crate::testing::Backend::Postgres).await
                }
            }
        }
    )*};
}

/// The default test database.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Stale test schemas are dropped after this long.
const STALE_AFTER_SECS: u64 = 2 * 3600;

/// The key ring test stores seal with: one fixed key, id `test`.
pub fn test_key_ring() -> crate::KeyRing {
    crate::KeyRing::parse("test:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=")
        .expect("the test key ring parses")
}

async fn with_test_keys(store: Store) -> Store {
    store
        .install_keys(test_key_ring())
        .await
        .expect("install the test key ring");
    store
}

/// The PostgreSQL URL tests use.
pub fn database_url() -> String {
    std::env::var("TASKHOOK_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_TEST_DATABASE_URL.to_string())
}

fn services_required() -> bool {
    std::env::var("TASKHOOK_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// `None` after a visible skip message saying `why`; a panic instead when services are
/// required.
fn skip_or_fail<T>(why: &str) -> Option<T> {
    assert!(
        !services_required(),
        "required by TASKHOOK_TEST_REQUIRE_SERVICES=1: {why}"
    );
    eprintln!("skipping: {why}");
    None
}

/// The URL without its password, for messages.
fn display_url(url: &str) -> String {
    match url.split_once("://").and_then(|(scheme, rest)| {
        let (userinfo, host) = rest.split_once('@')?;
        let (user, _) = userinfo.split_once(':')?;
        Some(format!("{scheme}://{user}:***@{host}"))
    }) {
        Some(redacted) => redacted,
        None => url.to_string(),
    }
}

/// A backend to run a test on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A fresh, empty schema: `(url, schema)`, or `None` (after the visible skip message) when
/// PostgreSQL is unreachable. Panics instead when services are required.
pub async fn fresh_schema() -> Option<(String, String)> {
    let url = database_url();
    let client = match connect(&url).await {
        Ok(c) => c,
        Err(e) => {
            if services_required() {
                panic!(
                    "PostgreSQL is required (TASKHOOK_TEST_REQUIRE_SERVICES=1) but not reachable at {}: {e}",
                    display_url(&url)
                );
            }
            eprintln!(
                "skipping: PostgreSQL not reachable at {} ({e})",
                display_url(&url)
            );
            return None;
        }
    };
    drop_stale_schemas(&client).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let random = uuid::Uuid::new_v4().simple().to_string();
    let schema = format!("t_{now}_{}", &random[..10]);
    client
        .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
        .await
        .unwrap_or_else(|e| panic!("cannot create test schema {schema}: {e}"));
    Some((url, schema))
}

/// A PostgreSQL URL whose connections work in a fresh, empty schema
/// (`options=-c search_path=…`), or `None` as [`fresh_schema`].
pub async fn fresh_schema_url() -> Option<String> {
    let (url, schema) = fresh_schema().await?;
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(format!("{url}{sep}options=-c%20search_path%3D{schema}"))
}

/// A store in a fresh PostgreSQL schema, or `None` as [`fresh_schema`].
pub async fn postgres_store() -> Option<Store> {
    let db = TestDb::postgres().await?;
    let store = db.open().await;
    // The schema outlives this call; stale-schema cleanup removes it later.
    db.keep();
    Some(store)
}

/// Whether PostgreSQL tests can run (prints the skip message, or panics when required).
pub async fn postgres_available() -> bool {
    let url = database_url();
    match connect(&url).await {
        Ok(_) => true,
        Err(e) if services_required() => panic!(
            "PostgreSQL is required (TASKHOOK_TEST_REQUIRE_SERVICES=1) but not reachable at {}: {e}",
            display_url(&url)
        ),
        Err(e) => {
            eprintln!(
                "skipping: PostgreSQL not reachable at {} ({e})",
                display_url(&url)
            );
            false
        }
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    config.connect_timeout(Duration::from_secs(3));
    let (client, connection) = tokio::time::timeout(Duration::from_secs(5), config.connect(NoTls))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        })?;
    tokio::spawn(connection);
    Ok(client)
}

/// Drops `t_<seconds>_…` schemas older than two hours (best effort: another test run may be
/// dropping them too).
async fn drop_stale_schemas(client: &tokio_postgres::Client) {
    let Ok(rows) = client
        .query(
            "SELECT nspname::text FROM pg_namespace WHERE nspname ~ '^t_[0-9]+_[0-9a-f]+$'",
            &[],
        )
        .await
    else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    for row in rows {
        let name: String = row.get(0);
        let Some(secs) = name.split('_').nth(1).and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        if now.saturating_sub(secs) > STALE_AFTER_SECS {
            let _ = client
                .batch_execute(&format!(
                    "SET lock_timeout = '1s'; DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
                ))
                .await;
        }
    }
}

/// One test's database on either backend, which the test may open several times (to
/// simulate a restart, or several instances). Also owns a temporary directory for the test's
/// other files. Dropping it removes the directory and the schema.
pub struct TestDb {
    backend: Backend,
    dir: PathBuf,
    /// `(url, schema)` on PostgreSQL.
    pg: Option<(String, String)>,
    keep: bool,
}

impl TestDb {
    /// A fresh SQLite database in a temporary directory.
    pub fn sqlite() -> TestDb {
        TestDb {
            backend: Backend::Sqlite,
            dir: temp_dir(),
            pg: None,
            keep: false,
        }
    }

    /// A fresh PostgreSQL schema, or `None` when PostgreSQL is unreachable (after the visible
    /// skip message; a panic when services are required).
    pub async fn postgres() -> Option<TestDb> {
        let pg = fresh_schema().await?;
        Some(TestDb {
            backend: Backend::Postgres,
            dir: temp_dir(),
            pg: Some(pg),
            keep: false,
        })
    }

    /// A fresh database on `backend`; `None` as [`TestDb::postgres`].
    pub async fn new(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => Some(TestDb::sqlite()),
            Backend::Postgres => TestDb::postgres().await,
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The test's temporary directory (the SQLite file lives in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `(url, schema)` on PostgreSQL.
    pub fn postgres_schema(&self) -> Option<(&str, &str)> {
        self.pg.as_ref().map(|(u, s)| (u.as_str(), s.as_str()))
    }

    /// The SQLite file's path (on SQLite).
    pub fn sqlite_path(&self) -> PathBuf {
        self.dir.join("taskhook.db")
    }

    /// Opens a store on this database (each call a new handle: a new process, as far as the
    /// store is concerned).
    /// The store seals with [`test_key_ring`].
    pub async fn open(&self) -> Store {
        let store = match &self.pg {
            None => Store::open(self.sqlite_path()).expect("open the SQLite store"),
            Some((url, schema)) => Store::postgres(url, Some(schema))
                .await
                .unwrap_or_else(|e| panic!("open the PostgreSQL store in {schema}: {e}")),
        };
        with_test_keys(store).await
    }

    /// [`TestDb::open`] with a PostgreSQL pool of `pool` connections.
    pub async fn open_with_pool(&self, pool: usize) -> Store {
        match &self.pg {
            None => self.open().await,
            Some((url, schema)) => {
                with_test_keys(
                    Store::postgres_with_pool(url, Some(schema), pool)
                        .await
                        .unwrap_or_else(|e| panic!("open the PostgreSQL store in {schema}: {e}")),
                )
                .await
            }
        }
    }

    /// Leaves the schema and directory in place when dropped.
    pub fn keep(mut self) {
        self.keep = true;
    }
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("taskhook-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some((url, schema)) = self.pg.take() {
            // Best effort, on a thread of its own: this may run inside a runtime. A schema left
            // behind (open transactions holding locks) is dropped as stale later.
            let dropper = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        postgres::drop_schema(&url, &schema),
                    )
                    .await;
                });
            });
            let _ = dropper.join();
        }
    }
}
