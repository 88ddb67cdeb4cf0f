//! What can be asked of an action. Each command carries everything the decision needs: the
//! tenant, the principal and their roles, the time and the correlation id; a submission also
//! carries the tenant's mode and the resolved policy.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::policy::PolicySnapshot;
use crate::quorum::Vote;
use crate::submission::Submission;
use crate::{
    ActionId, Comment, CorrelationId, IdempotencyKey, ParseError, Principal, TenantId, TenantMode,
    Timestamp, check_visible, document,
};

/// The longest failure message recorded, in characters.
pub const MAX_ERROR_CHARS: usize = 4000;

/// Who asks, for which tenant, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandContext {
    pub tenant: TenantId,
    pub by: Principal,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<CorrelationId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum ActionCommand {
    SubmitAction(Box<SubmitAction>),
    CastVote(CastVote),
    CancelAction(CancelAction),
    ExpireAction(ExpireAction),
    RequestExecution(RequestExecution),
    StartExecution(StartExecution),
    RecordExecutionSuccess(RecordExecutionSuccess),
    RecordExecutionFailure(RecordExecutionFailure),
    RequestRollback(RequestRollback),
}

impl ActionCommand {
    pub fn context(&self) -> &CommandContext {
        match self {
            Self::SubmitAction(c) => &c.context,
            Self::CastVote(c) => &c.context,
            Self::CancelAction(c) => &c.context,
            Self::ExpireAction(c) => &c.context,
            Self::RequestExecution(c) => &c.context,
            Self::StartExecution(c) => &c.context,
            Self::RecordExecutionSuccess(c) => &c.context,
            Self::RecordExecutionFailure(c) => &c.context,
            Self::RequestRollback(c) => &c.context,
        }
    }

    /// What the command carries from outside the domain (a submitter's documents and text, a
    /// voter's comment, a capability's result) checked against what every reader of the log
    /// accepts. Runs before any decision: a command that fails it records nothing.
    pub fn check(&self) -> Result<(), ParseError> {
        let comment = |comment: &Option<Comment>, field: &str| {
            comment
                .as_ref()
                .map_or(Ok(()), |comment| check_visible(comment.as_str(), field))
        };
        match self {
            Self::SubmitAction(submit) => submit.submission.check(),
            Self::CastVote(vote) => comment(&vote.comment, "comment"),
            Self::CancelAction(cancel) => comment(&cancel.reason, "reason"),
            Self::RecordExecutionSuccess(success) => {
                document::check(&success.result, "result")?;
                success
                    .undo_payload
                    .as_ref()
                    .map_or(Ok(()), |undo| document::check(undo, "undo_payload"))
            }
            Self::RecordExecutionFailure(failure) => {
                if failure.error.contains('\0') {
                    Err(ParseError::new("error", "must not contain U+0000"))
                } else if failure.error.chars().count() > MAX_ERROR_CHARS {
                    Err(ParseError::new(
                        "error",
                        format!("must be at most {MAX_ERROR_CHARS} characters"),
                    ))
                } else {
                    Ok(())
                }
            }
            Self::ExpireAction(_)
            | Self::RequestExecution(_)
            | Self::StartExecution(_)
            | Self::RequestRollback(_) => Ok(()),
        }
    }

    /// The command's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SubmitAction(_) => "SubmitAction",
            Self::CastVote(_) => "CastVote",
            Self::CancelAction(_) => "CancelAction",
            Self::ExpireAction(_) => "ExpireAction",
            Self::RequestExecution(_) => "RequestExecution",
            Self::StartExecution(_) => "StartExecution",
            Self::RecordExecutionSuccess(_) => "RecordExecutionSuccess",
            Self::RecordExecutionFailure(_) => "RecordExecutionFailure",
            Self::RequestRollback(_) => "RequestRollback",
        }
    }
}

/// Request an action. The gateway scores the submission and resolves the policy first; the
/// aggregate scores it again and records both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitAction {
    pub context: CommandContext,
    /// Random, or [`ActionId::for_idempotency_key`] when the submitter gave a key.
    pub action_id: ActionId,
    pub submission: Submission,
    pub mode: TenantMode,
    pub policy: PolicySnapshot,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
    /// The executed action this one rolls back (set by the rollback endpoint, never by a submitter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<ActionId>,
}

/// Vote in the current stage; a later vote replaces the voter's earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CastVote {
    pub context: CommandContext,
    pub vote: Vote,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<Comment>,
}

/// Withdraw a pending action (its requester, or an admin or owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelAction {
    pub context: CommandContext,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Comment>,
}

/// The deadline reactor's command: escalate, expire or reject a pending action whose deadline
/// has passed at `context.at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpireAction {
    pub context: CommandContext,
}

/// Ask for an approved action to run (not needed when its policy auto-executes), or for an
/// action skipped because the tenant was in safe mode to run again once it no longer is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestExecution {
    pub context: CommandContext,
    /// The tenant's mode now: an action skipped for safe mode resumes only outside safe mode.
    pub mode: TenantMode,
}

/// An executor claims the next attempt, for `lease_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartExecution {
    pub context: CommandContext,
    pub lease_seconds: u32,
    /// The tenant's mode now: in safe mode no attempt starts, whatever the mode at submission.
    pub mode: TenantMode,
}

/// The capability finished the attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordExecutionSuccess {
    pub context: CommandContext,
    pub attempt: u32,
    pub result: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo_payload: Option<Value>,
    pub duration_ms: u64,
}

/// The capability failed the attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordExecutionFailure {
    pub context: CommandContext,
    pub attempt: u32,
    pub error: String,
    pub retryable: bool,
}

/// Link an executed action to the action that rolls it back (submitted separately, with the
/// stored undo payload, under its own policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestRollback {
    pub context: CommandContext,
    pub rollback_action_id: ActionId,
}
