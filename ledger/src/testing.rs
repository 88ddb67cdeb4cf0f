//! Test support for every crate's tests, compiled only with the `testing` feature (each crate's
//! dev-dependencies turn it on):
//!
//! - [`TestStore`]: a fresh PostgreSQL database or SQLite file per test, so tests run in parallel.
//!   The PostgreSQL server comes from `COUNTERSIGN_TEST_DATABASE_URL` (default
//!   `postgres://postgres@127.0.0.1:5432/postgres`); each call creates a database named after a
//!   random id, migrates it, and drops it when the returned guard is dropped.
//! - [`on_both_stores!`](crate::on_both_stores): a test written once, run on each kind of store.
//! - [`actions`]: the values and commands of an action's life, and running them on a ledger.
//! - The log as a test reads it: [`readable_log`], [`committed_events`], [`settled_log`].
//! - Waiting for what happens on its own time: [`eventually`] (or [`eventually_blocking`]) until
//!   a [`Deadline`] ([`within`]).
//! - [`TestStream`]: a JetStream stream of the test's own on the tests' NATS server
//!   ([`nats_url`]), deleted when dropped.
//! - [`ChildGuard`]: a child process killed when dropped.
#![expect(
    clippy::expect_used,
    reason = "test support fails the test loudly where its setup breaks"
)]

pub mod actions;
mod nats;
mod process;
mod wait;

use std::path::PathBuf;

use anyhow::Context;
use sqlx::{Connection, Executor, PgConnection};

use crate::{Backend, Ledger, LogCursor, LoggedEvent, StoreConfig};

pub use nats::{DEFAULT_TEST_NATS, TestStream, nats_url};
pub use process::ChildGuard;
pub use wait::{Deadline, eventually, eventually_blocking, within};

pub const DEFAULT_TEST_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn server_url() -> String {
    std::env::var("COUNTERSIGN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| DEFAULT_TEST_SERVER.to_owned())
}

/// A migrated store that disappears with this value.
#[derive(Debug)]
pub struct TestStore {
    pub ledger: Ledger,
    pub config: StoreConfig,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Postgres { server: String, database: String },
    Sqlite(#[expect(dead_code, reason = "removes the directory when dropped")] tempdir::TempDir),
}

mod tempdir {
    /// A directory removed on drop.
    #[derive(Debug)]
    pub struct TempDir(pub std::path::PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl TestStore {
    /// A fresh, migrated PostgreSQL database.
    pub async fn postgres() -> anyhow::Result<Self> {
        let server = server_url();
        let database = format!("countersign_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&server)
            .await
            .with_context(|| format!("connecting to the test server {server}"))?;
        admin
            .execute(format!("CREATE DATABASE {database}").as_str())
            .await
            .context("CREATE DATABASE")?;
        let _ = admin.close().await;
        let url = match server.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{database}"),
            None => anyhow::bail!("COUNTERSIGN_TEST_DATABASE_URL has no database name"),
        };
        let config = StoreConfig::Postgres { url };
        let ledger = Ledger::open(&config).await?;
        ledger.migrate().await?;
        Ok(Self {
            ledger,
            config,
            cleanup: Cleanup::Postgres { server, database },
        })
    }

    /// A fresh, migrated SQLite file in a temporary directory.
    pub async fn sqlite() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "countersign-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let config = StoreConfig::Sqlite {
            path: dir.join("countersign.db"),
        };
        let ledger = Ledger::open(&config).await?;
        ledger.migrate().await?;
        Ok(Self {
            ledger,
            config,
            cleanup: Cleanup::Sqlite(tempdir::TempDir(dir)),
        })
    }

    /// The same kind of store as `kind` (`postgres` or `sqlite`).
    pub async fn of_kind(kind: &str) -> anyhow::Result<Self> {
        match kind {
            "postgres" => Self::postgres().await,
            _ => Self::sqlite().await,
        }
    }

    /// The database URL of a PostgreSQL store, or the SQLite file's path.
    pub fn location(&self) -> String {
        match &self.config {
            StoreConfig::Postgres { url } => url.clone(),
            StoreConfig::Sqlite { path } => path.display().to_string(),
        }
    }

    /// The SQLite file, when this is an embedded store.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match &self.config {
            StoreConfig::Sqlite { path } => Some(path.clone()),
            StoreConfig::Postgres { .. } => None,
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Cleanup::Postgres { server, database } = &self.cleanup {
            let (server, database) = (server.clone(), database.clone());
            // FORCE ends this test's leftover sessions.
            block_on_aside(async move {
                if let Ok(mut admin) = PgConnection::connect(&server).await {
                    let _ = admin
                        .execute(
                            format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str(),
                        )
                        .await;
                    let _ = admin.close().await;
                }
            });
        }
    }
}

/// Runs a clean-up to its end from `Drop`, which happens outside any runtime guarantee: on a
/// helper thread with a runtime of its own, waited for.
fn block_on_aside(cleanup: impl Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(cleanup);
        }
    })
    .join();
}

/// Declares a test that runs once on a fresh PostgreSQL database and once on a fresh SQLite
/// file, as the tests `$name::postgres` and `$name::sqlite`:
///
/// - `on_both_stores!(name)` calls `async fn name(kind: &str)` with `"postgres"` or `"sqlite"`,
///   for a test that builds its world on [`TestStore::of_kind`];
/// - `on_both_stores!(name, check)` calls `async fn check(store: &TestStore)` with a fresh store.
#[macro_export]
macro_rules! on_both_stores {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name("postgres").await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name("sqlite").await;
            }
        }
    };
    ($name:ident, $check:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let store = $crate::testing::TestStore::postgres()
                    .await
                    .expect("test database");
                super::$check(&store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let store = $crate::testing::TestStore::sqlite()
                    .await
                    .expect("test file");
                super::$check(&store).await;
            }
        }
    };
}

/// Every event readable now, from the start of the log.
pub async fn readable_log(ledger: &Ledger) -> Vec<LoggedEvent> {
    let mut cursor = LogCursor::START;
    let mut all = Vec::new();
    loop {
        let batch = ledger.read_log(cursor, 100).await.expect("read log");
        let Some(last) = batch.last() else { return all };
        cursor = last.cursor;
        all.extend(batch);
    }
}

/// The number of events committed to the store, readable or not yet.
pub async fn committed_events(ledger: &Ledger) -> usize {
    let sql = "SELECT COUNT(*) FROM events";
    let count: i64 = match ledger.backend() {
        Backend::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        Backend::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
    }
    .expect("count");
    usize::try_from(count).expect("a count")
}

/// The whole log once every committed event is readable. On PostgreSQL the readable horizon
/// waits for the oldest transaction open anywhere on the server, other tests' included.
pub async fn settled_log(ledger: &Ledger) -> Vec<LoggedEvent> {
    eventually(within(std::time::Duration::from_secs(60)), async || {
        let committed = committed_events(ledger).await;
        let log = readable_log(ledger).await;
        if log.len() == committed {
            Ok(log)
        } else {
            Err(format!("{} of {committed} events readable", log.len()))
        }
    })
    .await
}
