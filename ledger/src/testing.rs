//! Test support: a fresh PostgreSQL database or SQLite file per test, so tests run in parallel.
//!
//! The PostgreSQL server comes from `COUNTERSIGN_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each call creates a database named after a
//! random id, migrates it, and drops it when the returned guard is dropped.

use std::path::PathBuf;

use anyhow::Context;
use sqlx::{Connection, Executor, PgConnection};

use crate::{Ledger, StoreConfig};

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
            // Dropping happens outside any runtime guarantee; a blocking helper thread with its
            // own runtime drops the database (FORCE ends this test's leftover sessions).
            let _ = std::thread::spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async {
                    if let Ok(mut admin) = PgConnection::connect(&server).await {
                        let _ = admin
                            .execute(
                                format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str(),
                            )
                            .await;
                        let _ = admin.close().await;
                    }
                });
            })
            .join();
        }
    }
}
