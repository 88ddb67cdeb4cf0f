//! Why the domain refuses a command. Each variant has a stable code that the gateway exposes
//! in problem+json; nothing is recorded when a command is refused.

use crate::action::ActionStatus;
use crate::{ActionId, ParseError, Timestamp, UserId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// A document or text in the command is beyond what the log accepts (see
    /// [`crate::document`]). Handling: 422 naming the field.
    #[error(transparent)]
    InvalidInput(ParseError),
    /// No such action in this tenant (another tenant's action looks exactly like this).
    /// Handling: 404.
    #[error("action not found")]
    NotFound,
    /// The idempotency key already named this very submission. Handling: answer with the
    /// existing action (200).
    #[error("action {action_id} was already submitted with this idempotency key")]
    AlreadySubmitted { action_id: ActionId },
    /// The idempotency key was used for a different submission. Handling: 422.
    #[error("this idempotency key was already used for a different submission")]
    IdempotencyKeyReused,
    /// The command does not apply in the action's current status. Handling: 409.
    #[error("cannot {attempted} an action that is {status}")]
    InvalidState {
        status: ActionStatus,
        attempted: &'static str,
    },
    /// The voter may not vote in the current stage. Handling: 403.
    #[error("{voter} is not eligible to vote in stage {stage}")]
    NotEligible { voter: UserId, stage: u32 },
    /// The vote was bound to an execution key that is not the action's: the voter saw another
    /// payload. Handling: 409; show the action again and vote on what it is now.
    #[error("the vote was cast on another payload: the action's execution key is {current}")]
    PayloadChanged {
        current: crate::canonical::ExecutionKey,
    },
    /// The vote's signature does not verify with the voter's registered key over the vote's
    /// message (`crate::signing`). Handling: 422; sign the vote again, exactly as documented.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// The vote was signed too long before (or after) it was received. Handling: 422; sign it
    /// again now.
    #[error("{0}")]
    SignatureOutOfWindow(String),
    /// The one casting already holds a ballot in this stage (their own, or one in another
    /// member's place): nobody votes twice in a stage. Handling: 409.
    #[error("{voter} already cast a ballot in stage {stage}")]
    AlreadyVotedInStage { voter: UserId, stage: u32 },
    /// The requester may not vote on their own action under this policy. Handling: 403.
    #[error("the requester may not vote on their own action")]
    SelfApprovalForbidden,
    /// The principal may not do this to this action. Handling: 403.
    #[error("only the requester or an admin may {attempted} this action")]
    NotPermitted { attempted: &'static str },
    /// The deadline has not passed yet. Handling: 409.
    #[error("the deadline {expires_at} has not passed")]
    DeadlineNotReached { expires_at: Timestamp },
    /// Nobody asked for this approved action to run and its policy does not auto-execute.
    /// Handling: 409.
    #[error("execution was not requested and the policy does not auto-execute")]
    ExecutionNotRequested,
    /// Another executor holds the attempt's lease. Handling: 409; the redelivery will see the outcome.
    #[error("attempt {attempt} is already executing")]
    AlreadyExecuting { attempt: u32 },
    /// The action was skipped for safe mode and the tenant is still in safe mode. Handling:
    /// 409; ask again once the tenant leaves safe mode.
    #[error("the tenant is in safe mode: the action can run again only once it leaves safe mode")]
    SafeModeOn,
    /// The action ran successfully already. Handling: 409; never run it again.
    #[error("the action has already been executed")]
    AlreadyExecuted,
    /// The action was already rolled back by another action. Handling: 409.
    #[error("the action was already rolled back by {rollback_action_id}")]
    AlreadyRolledBack { rollback_action_id: ActionId },
    /// Only an executed action with an undo payload can be rolled back. Handling: 409.
    #[error("the action has no undo payload to roll back with")]
    NothingToRollBack,
    /// An outcome for an attempt that is no longer current (its lease was reclaimed). Handling:
    /// 409; discard the outcome.
    #[error("attempt {attempt} is not the current attempt ({current})")]
    StaleAttempt { attempt: u32, current: u32 },
}

impl From<crate::signing::SignatureProblem> for ActionError {
    fn from(problem: crate::signing::SignatureProblem) -> Self {
        match problem {
            crate::signing::SignatureProblem::OutOfWindow { .. } => {
                Self::SignatureOutOfWindow(problem.to_string())
            }
            _ => Self::BadSignature(problem.to_string()),
        }
    }
}

impl ActionError {
    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "invalid_input",
            Self::NotFound => "action_not_found",
            Self::AlreadySubmitted { .. } => "already_submitted",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::InvalidState { .. } => "invalid_state",
            Self::NotEligible { .. } => "not_eligible",
            Self::PayloadChanged { .. } => "payload_changed",
            Self::BadSignature(_) => "bad_signature",
            Self::SignatureOutOfWindow(_) => "signed_at_out_of_window",
            Self::AlreadyVotedInStage { .. } => "already_voted_in_stage",
            Self::SelfApprovalForbidden => "self_approval_forbidden",
            Self::NotPermitted { .. } => "not_permitted",
            Self::DeadlineNotReached { .. } => "deadline_not_reached",
            Self::ExecutionNotRequested => "execution_not_requested",
            Self::AlreadyExecuting { .. } => "already_executing",
            Self::SafeModeOn => "safe_mode_on",
            Self::AlreadyExecuted => "already_executed",
            Self::StaleAttempt { .. } => "stale_attempt",
            Self::AlreadyRolledBack { .. } => "already_rolled_back",
            Self::NothingToRollBack => "nothing_to_roll_back",
        }
    }
}
