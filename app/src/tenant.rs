//! Running tenant-level commands (policies, settings, API keys) on the tenant's streams.

use countersign_domain::TenantId;
use countersign_domain::tenant::TenantError;
use countersign_ledger::{Committed, LedgerAggregate, LedgerError};

use crate::{Actor, App, AppError};

/// Runs a tenant command on the actor's tenant stream and counts its outcome.
pub(crate) async fn run<A>(
    app: &App,
    actor: &Actor,
    name: &'static str,
    command: A::Command,
) -> Result<Committed<A>, AppError>
where
    A: LedgerAggregate<Id = TenantId, Error = TenantError>,
    A::Command: Clone,
{
    let result = app
        .ledger
        .execute::<A>(
            &actor.tenant,
            command,
            &actor.metadata(actor.correlation_id.clone()),
        )
        .await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(LedgerError::Rejected(error)) => error.code(),
        Err(LedgerError::Conflict { .. }) => "conflict",
        Err(LedgerError::Store(_)) => "store_error",
        Err(LedgerError::Unreadable(_)) => "unreadable_input",
    };
    metrics::counter!("countersign_commands_total", "command" => name, "outcome" => outcome)
        .increment(1);
    Ok(result?)
}
