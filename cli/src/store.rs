//! The store settings every database command shares.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use countersign_ledger::{Ledger, StoreConfig};

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// PostgreSQL URL for server mode. Without it, the embedded SQLite store in --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory of the embedded store.
    #[arg(long, env = "COUNTERSIGN_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
}

impl StoreArgs {
    pub fn config(&self) -> StoreConfig {
        StoreConfig::from_settings(self.database_url.as_deref(), &self.data_dir)
    }

    /// Opens and migrates the store.
    pub async fn open_migrated(&self) -> anyhow::Result<Ledger> {
        let config = self.config();
        let ledger = Ledger::open(&config).await?;
        let pending = ledger.pending_migrations().await?;
        ledger.migrate().await?;
        tracing::info!(store = ledger.kind(), applied = pending, location = %describe(&config), "store migrated");
        Ok(ledger)
    }
}

/// Where the store is, without credentials.
pub fn describe(config: &StoreConfig) -> String {
    match config {
        StoreConfig::Sqlite { path } => path.display().to_string(),
        StoreConfig::Postgres { url } => match url::Url::parse(url) {
            Ok(mut url) => {
                let _ = url.set_password(None);
                url.to_string()
            }
            Err(_) => "postgres://…".to_owned(),
        },
    }
}

pub async fn migrate(store: &StoreArgs) -> anyhow::Result<()> {
    let ledger = store.open_migrated().await.context("migrating the store")?;
    ledger.close().await;
    Ok(())
}
