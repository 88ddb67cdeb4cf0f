//! Tenant secrets kept apart from the log (see `migrations/*/0005_secrets.sql`): what must reach a
//! capability but never an event, an export or an auditor.

use anyhow::Context;

use crate::{Backend, Ledger};

impl Ledger {
    /// Stores (or replaces) a tenant's secret.
    pub async fn put_secret(&self, tenant: &str, name: &str, value: &str) -> anyhow::Result<()> {
        let sql = "INSERT INTO tenant_secrets (tenant, name, value) VALUES ($1, $2, $3)
                   ON CONFLICT (tenant, name) DO UPDATE SET value = excluded.value";
        match &self.backend {
            Backend::Postgres(pool) => sqlx::query(sql)
                .bind(tenant)
                .bind(name)
                .bind(value)
                .execute(pool)
                .await
                .map(drop),
            Backend::Sqlite(pool) => sqlx::query(sql)
                .bind(tenant)
                .bind(name)
                .bind(value)
                .execute(pool)
                .await
                .map(drop),
        }
        .context("storing a tenant secret")?;
        Ok(())
    }

    /// A tenant's secret, if it was stored.
    pub async fn secret(&self, tenant: &str, name: &str) -> anyhow::Result<Option<String>> {
        let sql = "SELECT value FROM tenant_secrets WHERE tenant = $1 AND name = $2";
        match &self.backend {
            Backend::Postgres(pool) => {
                sqlx::query_scalar(sql)
                    .bind(tenant)
                    .bind(name)
                    .fetch_optional(pool)
                    .await
            }
            Backend::Sqlite(pool) => {
                sqlx::query_scalar(sql)
                    .bind(tenant)
                    .bind(name)
                    .fetch_optional(pool)
                    .await
            }
        }
        .context("reading a tenant secret")
    }
}
