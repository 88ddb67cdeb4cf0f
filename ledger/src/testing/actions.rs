//! The values and commands of an action's life, as tests build them, and running them on a
//! ledger with the metadata a front door would record (the command's tenant and author).

use chrono::{DateTime, Utc};
use countersign_domain::action::{
    Action, ActionCommand, CancelAction, CastVote, CommandContext, RequestExecution,
    StartExecution, SubmitAction,
};
use countersign_domain::policy::{PolicySnapshot, Requirements};
use countersign_domain::quorum::Vote;
use countersign_domain::submission::Submission;
use countersign_domain::{ActionId, Comment, Principal, Role, TenantId, TenantMode, UserId};
use cqrs_es::Aggregate;
use serde_json::{Value, json};

use crate::{Committed, Ledger, LedgerError, Metadata};

pub fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("tenant")
}

pub fn principal(id: &str, roles: &[&str]) -> Principal {
    Principal::new(
        UserId::parse(id).expect("user"),
        roles.iter().map(|r| Role::parse(*r).expect("role")),
    )
}

/// A new action id (a UUIDv7, so ids sort by creation).
pub fn new_id() -> ActionId {
    ActionId::from_uuid(uuid::Uuid::now_v7())
}

/// Requirements of one stage met by `n` approvals of anyone allowed to vote.
pub fn any_of(n: u32) -> Value {
    json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": n }] }] })
}

/// A submission of `module.capability`, with the fields of `extra` (an object: `payload`,
/// `impact`, …) added.
pub fn submission(module: &str, capability: &str, summary: &str, extra: Value) -> Submission {
    let mut document = json!({ "module": module, "capability": capability, "summary": summary });
    if let (Some(target), Value::Object(extra)) = (document.as_object_mut(), extra) {
        target.extend(extra);
    }
    serde_json::from_value(document).expect("submission")
}

/// Who acts in which tenant and when; no correlation id.
pub fn context(tenant: &TenantId, by: &Principal, at: DateTime<Utc>) -> CommandContext {
    CommandContext {
        tenant: tenant.clone(),
        by: by.clone(),
        at,
        correlation_id: None,
    }
}

/// Submits `submission` as action `id` under a tenant-default policy of `requirements`.
pub fn submit(
    context: CommandContext,
    id: ActionId,
    submission: Submission,
    requirements: &Value,
    mode: TenantMode,
) -> ActionCommand {
    ActionCommand::SubmitAction(Box::new(SubmitAction {
        context,
        action_id: id,
        submission,
        mode,
        policy: PolicySnapshot::tenant_default(
            Requirements::parse(requirements).expect("requirements"),
        ),
        idempotency_key: None,
        rollback_of: None,
    }))
}

pub fn vote(context: CommandContext, vote: Vote, comment: Option<&str>) -> ActionCommand {
    ActionCommand::CastVote(CastVote {
        context,
        vote,
        comment: comment.map(|c| Comment::parse(c).expect("comment")),
    })
}

pub fn cancel(context: CommandContext) -> ActionCommand {
    ActionCommand::CancelAction(CancelAction {
        context,
        reason: None,
    })
}

/// A request to run, while the tenant requires approval (not in safe mode).
pub fn request_execution(context: CommandContext) -> ActionCommand {
    ActionCommand::RequestExecution(RequestExecution {
        context,
        mode: TenantMode::RequireApproval,
    })
}

/// An executor's claim of the next attempt, while the tenant requires approval (not in safe
/// mode).
pub fn start_execution(context: CommandContext, lease_seconds: u32) -> ActionCommand {
    ActionCommand::StartExecution(StartExecution {
        context,
        lease_seconds,
        mode: TenantMode::RequireApproval,
    })
}

/// Runs `command` on action `id`, recorded with the command's tenant and author as metadata.
pub async fn execute(
    ledger: &Ledger,
    id: ActionId,
    command: ActionCommand,
) -> Result<Committed<Action>, LedgerError<<Action as Aggregate>::Error>> {
    let context = command.context();
    let metadata = Metadata::new(context.tenant.clone(), context.by.id.clone());
    ledger.execute::<Action>(&id, command, &metadata).await
}
