//! Running tenant-level commands (policies, settings, API keys) on the tenant's streams.

use countersign_domain::TenantId;
use countersign_domain::tenant::TenantError;
use countersign_ledger::{Committed, LedgerAggregate, LedgerError};

use crate::{Actor, App, AppError};

/// Counts a command's outcome (`countersign_commands_total`, by command and outcome code) and
/// logs a refusal (in the command's span: tenant, action, actor, correlation id).
pub(crate) fn count<T, E: std::error::Error>(
    command: &'static str,
    result: &Result<T, LedgerError<E>>,
    code: impl Fn(&E) -> &'static str,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(LedgerError::Rejected(error)) => code(error),
        Err(LedgerError::Conflict { .. }) => "conflict",
        Err(LedgerError::Store(_)) => "store_error",
        Err(LedgerError::Unreadable(_)) => "unreadable_input",
    };
    metrics::counter!("countersign_commands_total", "command" => command, "outcome" => outcome)
        .increment(1);
    if let Err(error) = result {
        tracing::info!(command, outcome, error = %error, "command refused");
    }
}

/// Runs a tenant command on the actor's tenant stream and counts its outcome, in a span naming
/// the tenant, the command, the actor and the correlation id.
#[tracing::instrument(name = "command", skip_all, fields(
    command = name,
    tenant = %actor.tenant,
    principal = %actor.principal.id,
    channel = actor.channel.as_str(),
    correlation_id = actor.correlation_id.as_ref().map(|id| id.as_str()),
))]
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
    count(name, &result, TenantError::code);
    Ok(result?)
}
