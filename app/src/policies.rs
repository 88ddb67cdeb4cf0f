//! Approval policies: list (now or at a past moment), create, read, update, delete, simulate.

use countersign_domain::policy::{Policy, PolicySnapshot};
use countersign_domain::risk::{RiskAssessment, assess};
use countersign_domain::submission::Submission;
use countersign_domain::tenant::{PolicyCommand, PolicyDraft, PolicySet};
use countersign_domain::{ActionType, PolicyId};
use schemars::JsonSchema;
use serde::Serialize;

use crate::actions::{Written, policy_for};
use crate::tenant::run;
use crate::{Actor, App, AppError, roles};

fn admin(actor: &Actor) -> Result<(), AppError> {
    actor.require(&[roles::OWNER, roles::ADMIN], "managing policies")
}

fn policy_not_found() -> AppError {
    AppError::not_found("policy_not_found", "policy")
}

/// The tenant's policies — now, or as they were at `at` (folded from their change events).
pub async fn list(
    app: &App,
    actor: &Actor,
    at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Vec<Policy>, AppError> {
    let Some(at) = at else {
        return Ok(app.ledger.load::<PolicySet>(&actor.tenant).await?.0.list());
    };
    let mut set = PolicySet::default();
    for logged in app.ledger.stream_of::<PolicySet>(&actor.tenant).await? {
        if logged.recorded_at > at {
            break;
        }
        set.apply(logged.decode::<PolicySet>()?);
    }
    Ok(set.list())
}

/// One policy.
pub async fn read(app: &App, actor: &Actor, id: &PolicyId) -> Result<Policy, AppError> {
    let (set, _) = app.ledger.load::<PolicySet>(&actor.tenant).await?;
    set.policies.get(id).cloned().ok_or_else(policy_not_found)
}

async fn change(
    app: &App,
    actor: &Actor,
    name: &'static str,
    id: &PolicyId,
    command: PolicyCommand,
) -> Result<Written<Option<Policy>>, AppError> {
    admin(actor)?;
    let committed = run::<PolicySet>(app, actor, name, command).await?;
    Ok(Written {
        value: committed.aggregate.policies.get(id).cloned(),
        cursor: committed.last_cursor(),
    })
}

/// Creates a policy (owner, admin).
pub async fn create(
    app: &App,
    actor: &Actor,
    id: PolicyId,
    draft: PolicyDraft,
) -> Result<Written<Policy>, AppError> {
    let command = PolicyCommand::CreatePolicy {
        context: actor.tenant_context(),
        id: id.clone(),
        draft,
    };
    let written = change(app, actor, "CreatePolicy", &id, command).await?;
    Ok(Written {
        value: written.value.ok_or_else(policy_not_found)?,
        cursor: written.cursor,
    })
}

/// Replaces a policy's fields (owner, admin); the version increments. With `expected_version`,
/// refused when someone else changed the policy first.
pub async fn update(
    app: &App,
    actor: &Actor,
    id: PolicyId,
    draft: PolicyDraft,
    expected_version: Option<u32>,
) -> Result<Written<Policy>, AppError> {
    let command = PolicyCommand::UpdatePolicy {
        context: actor.tenant_context(),
        id: id.clone(),
        draft,
        expected_version,
    };
    let written = change(app, actor, "UpdatePolicy", &id, command).await?;
    Ok(Written {
        value: written.value.ok_or_else(policy_not_found)?,
        cursor: written.cursor,
    })
}

/// Deletes a policy (owner, admin). Pending actions keep the policy they were submitted under.
pub async fn delete(app: &App, actor: &Actor, id: PolicyId) -> Result<Written<()>, AppError> {
    let command = PolicyCommand::DeletePolicy {
        context: actor.tenant_context(),
        id: id.clone(),
    };
    let written = change(app, actor, "DeletePolicy", &id, command).await?;
    Ok(Written {
        value: (),
        cursor: written.cursor,
    })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Simulation {
    pub action_type: ActionType,
    pub risk: RiskAssessment,
    pub policy: PolicySnapshot,
}

/// Which policy, requirements and risk a submission by the actor would get. Changes nothing;
/// what a submission would be refused for, a simulation is refused for.
pub async fn simulate(
    app: &App,
    actor: &Actor,
    submission: &Submission,
) -> Result<Simulation, AppError> {
    submission.check()?;
    let (_, policy) = policy_for(app, actor, submission).await?;
    Ok(Simulation {
        action_type: submission.action_type(),
        risk: assess(submission),
        policy,
    })
}
