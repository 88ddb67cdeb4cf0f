//! What can be asked of an action. Each command carries everything the decision needs: the
//! tenant, the principal and their roles, the time and the correlation id; a submission also
//! carries the tenant's mode and the resolved policy.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical::ExecutionKey;
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
    CastBoundVote(CastBoundVote),
    CastDelegatedVote(CastDelegatedVote),
    CancelAction(CancelAction),
    ExpireAction(ExpireAction),
    RequestExecution(RequestExecution),
    StartExecution(StartExecution),
    RecordExecutionSuccess(RecordExecutionSuccess),
    RecordExecutionFailure(RecordExecutionFailure),
    RequestRollback(RequestRollback),
    BreakGlassApprove(BreakGlassApprove),
    ReviewBreakGlass(ReviewBreakGlass),
    EscalateBreakGlassReview(EscalateBreakGlassReview),
}

impl ActionCommand {
    pub fn context(&self) -> &CommandContext {
        match self {
            Self::SubmitAction(c) => &c.context,
            Self::CastVote(c) => &c.context,
            Self::CastBoundVote(c) => &c.vote.context,
            Self::CastDelegatedVote(c) => &c.vote.context,
            Self::CancelAction(c) => &c.context,
            Self::ExpireAction(c) => &c.context,
            Self::RequestExecution(c) => &c.context,
            Self::StartExecution(c) => &c.context,
            Self::RecordExecutionSuccess(c) => &c.context,
            Self::RecordExecutionFailure(c) => &c.context,
            Self::RequestRollback(c) => &c.context,
            Self::BreakGlassApprove(c) => &c.context,
            Self::ReviewBreakGlass(c) => &c.context,
            Self::EscalateBreakGlassReview(c) => &c.context,
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
            Self::CastBoundVote(bound) => {
                check_execution_key(&bound.execution_key)?;
                if let Some(signature) = &bound.signature {
                    crate::signing::check_signed_at(signature.signed_at)?;
                }
                comment(&bound.vote.comment, "comment")
            }
            Self::CastDelegatedVote(delegated) => {
                if let Some(key) = &delegated.execution_key {
                    check_execution_key(key)?;
                }
                comment(&delegated.vote.comment, "comment")
            }
            Self::CancelAction(cancel) => comment(&cancel.reason, "reason"),
            Self::BreakGlassApprove(approve) => {
                check_visible(approve.justification.as_str(), "justification")
            }
            Self::ReviewBreakGlass(review) => comment(&review.comment, "comment"),
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
            | Self::RequestRollback(_)
            | Self::EscalateBreakGlassReview(_) => Ok(()),
        }
    }

    /// The command's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SubmitAction(_) => "SubmitAction",
            Self::CastVote(_) => "CastVote",
            Self::CastBoundVote(_) => "CastBoundVote",
            Self::CastDelegatedVote(_) => "CastDelegatedVote",
            Self::CancelAction(_) => "CancelAction",
            Self::ExpireAction(_) => "ExpireAction",
            Self::RequestExecution(_) => "RequestExecution",
            Self::StartExecution(_) => "StartExecution",
            Self::RecordExecutionSuccess(_) => "RecordExecutionSuccess",
            Self::RecordExecutionFailure(_) => "RecordExecutionFailure",
            Self::RequestRollback(_) => "RequestRollback",
            Self::BreakGlassApprove(_) => "BreakGlassApprove",
            Self::ReviewBreakGlass(_) => "ReviewBreakGlass",
            Self::EscalateBreakGlassReview(_) => "EscalateBreakGlassReview",
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

/// Vote in the current stage on exactly the payload the voter saw: `execution_key` is the key
/// the voter was shown (blake3 of the capability and canonical payload). Refused with
/// `payload_changed` when it is not the action's; recorded in the vote, so anyone can later check
/// that the vote was cast on the payload that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CastBoundVote {
    pub vote: CastVote,
    pub execution_key: ExecutionKey,
    /// The voter's Ed25519 signature of the vote (`crate::signing`), made with the key the
    /// application found registered for them: checked before anything is recorded, recorded
    /// with the vote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::signing::VoteSignature>,
}

/// Vote in the current stage in another member's place, through a delegation window the
/// application found active (`crate::delegation`): the ballot is the delegator's, counted with
/// the roles they lent, and recorded as cast by the delegate (`vote.context.by`). Never on either
/// one's own request, never a second ballot of the delegate's in the stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CastDelegatedVote {
    pub vote: CastVote,
    /// The delegator, with the roles the delegation recorded.
    pub on_behalf_of: Principal,
    /// The execution key the delegate saw, as in [`CastBoundVote`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_key: Option<ExecutionKey>,
}

/// An execution key is 64 lowercase hex digits.
fn check_execution_key(key: &ExecutionKey) -> Result<(), ParseError> {
    let text = key.as_str();
    if text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(ParseError::new(
            "execution_key",
            "must be an execution key: 64 lowercase hexadecimal digits",
        ))
    }
}

/// Withdraw a pending action (its requester, or an admin or owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelAction {
    pub context: CommandContext,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Comment>,
}

/// Approve a pending action alone in an emergency: a member holding the
/// [`BREAK_GLASS_ROLE`] role, never on their own request, with a justification. The action is
/// approved at once and must be reviewed by `review_due`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassApprove {
    pub context: CommandContext,
    pub justification: Comment,
    /// When the review after the fact is due.
    pub review_due: Timestamp,
}

/// A reviewer's finding on a break-glass approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReviewVerdict {
    /// The emergency approval was right.
    Upheld,
    /// It should not have been made; someone follows up.
    Disputed,
}

/// Review a break-glass approval after the fact: a member eligible to vote in one of the
/// action's stages, neither the breaker nor the requester. One review per approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBreakGlass {
    pub context: CommandContext,
    pub verdict: ReviewVerdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<Comment>,
}

/// The deadline reactor's command: a break-glass approval whose review was not recorded by its
/// `review_due` (passed at `context.at`) escalates, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EscalateBreakGlassReview {
    pub context: CommandContext,
}

/// The role a member must hold to approve alone in an emergency.
pub const BREAK_GLASS_ROLE: &str = "break_glass";

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
