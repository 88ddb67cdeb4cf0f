//! Tenant secrets kept apart from the log (see `migrations/*/0005_secrets.sql`): what must reach a
//! capability but never an event, an export or an auditor.

use crate::Ledger;
use crate::store::LedgerStore as _;

impl Ledger {
    /// Stores (or replaces) a tenant's secret.
    pub async fn put_secret(&self, tenant: &str, name: &str, value: &str) -> anyhow::Result<()> {
        self.store.put_secret(tenant, name, value).await
    }

    /// A tenant's secret, if it was stored.
    pub async fn secret(&self, tenant: &str, name: &str) -> anyhow::Result<Option<String>> {
        self.store.secret(tenant, name).await
    }
}
