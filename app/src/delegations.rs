//! Delegation windows: a member lends their eligibility to another member for a window; the
//! delegate's votes are the delegator's ballots (see `countersign_domain::delegation` and
//! docs/governance.md). Granting is the delegator's own act; owners and admins list every
//! delegation and revoke any; other members see the delegations they give or receive.

use countersign_domain::delegation::{
    Delegation, DelegationCommand, DelegationError, DelegationSet,
};
use countersign_domain::{Timestamp, UserId};
use countersign_ledger::{Committed, LedgerError};

use crate::actions::Written;
use crate::{Actor, App, AppError, roles};

/// A refused or failed delegation command as the application's error.
fn refused(error: LedgerError<DelegationError>) -> AppError {
    match error {
        LedgerError::Rejected(DelegationError::InvalidInput(error)) => {
            AppError::InvalidInput(error)
        }
        LedgerError::Rejected(DelegationError::NotFound) => delegation_not_found(),
        LedgerError::Rejected(error @ DelegationError::NotPermitted) => {
            AppError::Forbidden(error.to_string())
        }
        LedgerError::Rejected(error @ DelegationError::Exists) => AppError::CannotDo {
            code: error.code(),
            message: error.to_string(),
        },
        LedgerError::Conflict { attempts } => AppError::Conflict { attempts },
        LedgerError::Store(source) => AppError::internal("the event store failed", source),
        LedgerError::Unreadable(detail) => AppError::Unreadable(detail),
    }
}

fn delegation_not_found() -> AppError {
    AppError::not_found("delegation_not_found", "delegation")
}

async fn load(app: &App, actor: &Actor) -> Result<DelegationSet, AppError> {
    let (set, _) = app
        .ledger()
        .load::<DelegationSet>(&actor.tenant)
        .await
        .map_err(refused)?;
    Ok(set)
}

#[tracing::instrument(name = "command", skip_all, fields(
    command = name,
    tenant = %actor.tenant,
    principal = %actor.principal.id,
    correlation_id = actor.correlation_id.as_ref().map(|id| id.as_str()),
))]
async fn run(
    app: &App,
    actor: &Actor,
    name: &'static str,
    command: DelegationCommand,
) -> Result<Committed<DelegationSet>, AppError> {
    app.ledger()
        .execute::<DelegationSet>(
            &actor.tenant,
            command,
            &actor.metadata(actor.correlation_id.clone()),
        )
        .await
        .map_err(refused)
}

fn written(
    committed: &Committed<DelegationSet>,
    id: uuid::Uuid,
) -> Result<Written<Delegation>, AppError> {
    Ok(Written {
        value: committed
            .aggregate
            .delegations
            .get(&id)
            .cloned()
            .ok_or_else(delegation_not_found)?,
        cursor: committed.last_cursor(),
    })
}

/// Lends the actor's eligibility — with the roles their credential holds now — to `delegate`
/// from `starts_at` (default: now) until `ends_at`.
pub async fn grant(
    app: &App,
    actor: &Actor,
    delegate: UserId,
    starts_at: Option<Timestamp>,
    ends_at: Timestamp,
) -> Result<Written<Delegation>, AppError> {
    let context = actor.tenant_context();
    let id = uuid::Uuid::now_v7();
    let command = DelegationCommand::GrantDelegation {
        starts_at: starts_at.unwrap_or(context.at),
        context,
        id,
        delegate,
        ends_at,
    };
    written(&run(app, actor, "GrantDelegation", command).await?, id)
}

/// Ends a delegation now (its delegator, an owner or an admin). Revoking again changes nothing.
pub async fn revoke(
    app: &App,
    actor: &Actor,
    id: uuid::Uuid,
) -> Result<Written<Delegation>, AppError> {
    let visible = load(app, actor)
        .await?
        .delegations
        .get(&id)
        .is_some_and(|delegation| may_see(actor, delegation));
    if !visible {
        return Err(delegation_not_found());
    }
    let command = DelegationCommand::RevokeDelegation {
        context: actor.tenant_context(),
        id,
    };
    written(&run(app, actor, "RevokeDelegation", command).await?, id)
}

fn may_see(actor: &Actor, delegation: &Delegation) -> bool {
    actor.has_any(&[roles::OWNER, roles::ADMIN])
        || delegation.delegator.id == actor.principal.id
        || delegation.delegate == actor.principal.id
}

/// Every delegation (owners, admins), or the ones the actor gives or receives; revoked and ended
/// ones included.
pub async fn list(app: &App, actor: &Actor) -> Result<Vec<Delegation>, AppError> {
    Ok(load(app, actor)
        .await?
        .list()
        .into_iter()
        .filter(|delegation| may_see(actor, delegation))
        .collect())
}

/// The delegation that lets the actor vote in `delegator`'s place now: only a direct one, so a
/// delegation never chains.
pub(crate) async fn active(
    app: &App,
    actor: &Actor,
    delegator: &UserId,
    at: Timestamp,
) -> Result<Delegation, AppError> {
    load(app, actor)
        .await?
        .active(delegator, &actor.principal.id, at)
        .cloned()
        .ok_or_else(|| AppError::CannotDo {
            code: "no_active_delegation",
            message: format!(
                "{} has no delegation from {delegator} active now",
                actor.principal.id
            ),
        })
}
