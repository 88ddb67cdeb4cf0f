//! What handlers call to change things: build metadata, run the command through the ledger,
//! count outcomes. No HTTP here.

use countersign_domain::action::{Action, ActionCommand, ActionError};
use countersign_domain::policy::{PolicySnapshot, resolve};
use countersign_domain::risk::assess;
use countersign_domain::submission::Submission;
use countersign_domain::tenant::{PolicySet, Settings, TenantError, TenantSettings};
use countersign_domain::{ActionId, TenantMode};
use countersign_ledger::{Committed, LedgerAggregate, LedgerError, Metadata};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

fn metadata(
    caller: &Caller,
    correlation_id: Option<countersign_domain::CorrelationId>,
) -> Metadata {
    Metadata {
        correlation_id,
        request_id: caller.request_id.clone(),
        ..Metadata::new(caller.tenant.clone(), caller.principal.id.clone())
    }
}

fn count(command: &'static str, outcome: &'static str) {
    metrics::counter!("countersign_commands_total", "command" => command, "outcome" => outcome)
        .increment(1);
}

/// Runs an action command for the caller's tenant.
pub async fn execute_action(
    state: &AppState,
    caller: &Caller,
    id: ActionId,
    command: ActionCommand,
) -> Result<Committed<Action>, LedgerError<ActionError>> {
    let name = command.name();
    let metadata = metadata(caller, command.context().correlation_id.clone());
    let result = state
        .ledger
        .execute::<Action>(&id.to_string(), command, &metadata)
        .await;
    count(
        name,
        match &result {
            Ok(_) => "ok",
            Err(LedgerError::Rejected(error)) => error.code(),
            Err(LedgerError::Conflict { .. }) => "conflict",
            Err(LedgerError::Store(_)) => "store_error",
            Err(LedgerError::Unreadable(_)) => "unreadable_input",
        },
    );
    result
}

/// Runs a tenant-level command (policies, settings, API keys) on the caller's tenant stream.
pub async fn execute_tenant<A>(
    state: &AppState,
    caller: &Caller,
    name: &'static str,
    command: A::Command,
    correlation_id: Option<countersign_domain::CorrelationId>,
) -> Result<Committed<A>, ApiError>
where
    A: LedgerAggregate<Error = TenantError>,
    A::Command: Clone,
{
    let result = state
        .ledger
        .execute::<A>(
            caller.tenant.as_str(),
            command,
            &metadata(caller, correlation_id),
        )
        .await;
    count(
        name,
        match &result {
            Ok(_) => "ok",
            Err(LedgerError::Rejected(error)) => error.code(),
            Err(LedgerError::Conflict { .. }) => "conflict",
            Err(LedgerError::Store(_)) => "store_error",
            Err(LedgerError::Unreadable(_)) => "unreadable_input",
        },
    );
    result.map_err(ApiError::from)
}

/// Keeps a webhook URL's credentials out of the log (events are immutable and exported to
/// auditors): stores them apart under the URL's redacted form, and returns the settings with the
/// URL redacted. The executor puts them back when it runs `webhook.post`.
pub async fn store_credentials_apart(
    state: &AppState,
    caller: &Caller,
    mut settings: Settings,
) -> Result<Settings, ApiError> {
    if let Some(url) = &settings.webhook_url
        && let Some(credentials) = url.credentials()
    {
        state
            .ledger
            .put_secret(caller.tenant.as_str(), &url.secret_name(), credentials)
            .await?;
        settings.webhook_url = Some(url.redacted());
    }
    Ok(settings)
}

/// The tenant's mode and the policy that governs `submission`.
pub async fn resolve_policy(
    state: &AppState,
    caller: &Caller,
    submission: &Submission,
) -> Result<(TenantMode, PolicySnapshot), ApiError> {
    let tenant = caller.tenant.as_str();
    let ((settings, _), (policies, _)) = tokio::try_join!(
        state.ledger.load::<TenantSettings>(tenant),
        state.ledger.load::<PolicySet>(tenant),
    )?;
    let risk = assess(submission);
    let facts = submission.facts(&caller.principal.id, &risk);
    Ok((
        settings.settings.mode,
        resolve(
            &policies.list(),
            &facts,
            &settings.settings.default_requirements,
        ),
    ))
}
