//! The facts an action's life is made of. Event type strings and field names are stored
//! contracts: never rename them; a changed shape gets a new `event_version` and an upcaster.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical::ExecutionKey;
use crate::policy::PolicySnapshot;
use crate::quorum::{StageRejection, Tally, Vote};
use crate::risk::RiskAssessment;
use crate::submission::Submission;
use crate::{
    ActionId, ActionType, Comment, CorrelationId, IdempotencyKey, Role, TenantId, TenantMode,
    Timestamp, UserId,
};

/// What every event carries so that it can be read alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventContext {
    pub tenant: TenantId,
    pub action_id: ActionId,
    /// Who caused the event: a user, a service account, or a system component
    /// (`system:deadlines`, `executor:…`).
    pub actor: UserId,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<CorrelationId>,
}

/// Every event of the `action` aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum ActionEvent {
    ActionSubmitted(Box<ActionSubmitted>),
    VoteCast(VoteCast),
    StageApproved(StageApproved),
    ActionApproved(ActionApproved),
    ActionRejected(ActionRejected),
    ActionEscalated(ActionEscalated),
    ActionExpired(ActionExpired),
    ActionCancelled(ActionCancelled),
    ExecutionRequested(ExecutionRequested),
    ExecutionStarted(ExecutionStarted),
    ExecutionSucceeded(ExecutionSucceeded),
    ExecutionFailed(ExecutionFailed),
    ExecutionSkipped(ExecutionSkipped),
    RollbackRequested(RollbackRequested),
    ExecutionResumed(ExecutionResumed),
    StageSkipped(StageSkipped),
    BreakGlassApproved(BreakGlassApproved),
    BreakGlassReviewed(BreakGlassReviewed),
    BreakGlassReviewOverdue(BreakGlassReviewOverdue),
}

/// The current version of every event type. Bump one when its shape changes, and add an upcaster.
pub const EVENT_VERSION: &str = "1";

/// The stored event types of the named [`ActionEvent`] variants (a variant's event type is its
/// name). A name that is not a variant, such as one renamed since, does not compile.
macro_rules! event_types {
    ($($variant:ident),+ $(,)?) => {{
        fn _every_name_is_a_variant(event: &ActionEvent) -> bool {
            matches!(event, $(ActionEvent::$variant(_))|+)
        }
        [$(stringify!($variant)),+]
    }};
}

impl ActionEvent {
    /// The event types after which an action may await execution: approved, execution requested,
    /// an attempt failed (and may be retried), an attempt started (whose lease may run out), an
    /// action skipped for safe mode asked to run again.
    pub const MAY_NEED_EXECUTION: [&'static str; 5] = event_types!(
        ActionApproved,
        ExecutionRequested,
        ExecutionFailed,
        ExecutionStarted,
        ExecutionResumed,
    );

    /// Whether the action may await execution after this event.
    pub fn may_need_execution(&self) -> bool {
        Self::may_need_execution_type(self.event_type())
    }

    /// Whether an action may await execution after an event of this stored type: for readers
    /// that hold the type but not the decoded event (a log row, a message subject).
    pub fn may_need_execution_type(event_type: &str) -> bool {
        Self::MAY_NEED_EXECUTION.contains(&event_type)
    }

    /// The stored event type: the variant's name.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::ActionSubmitted(_) => "ActionSubmitted",
            Self::VoteCast(_) => "VoteCast",
            Self::StageApproved(_) => "StageApproved",
            Self::ActionApproved(_) => "ActionApproved",
            Self::ActionRejected(_) => "ActionRejected",
            Self::ActionEscalated(_) => "ActionEscalated",
            Self::ActionExpired(_) => "ActionExpired",
            Self::ActionCancelled(_) => "ActionCancelled",
            Self::ExecutionRequested(_) => "ExecutionRequested",
            Self::ExecutionStarted(_) => "ExecutionStarted",
            Self::ExecutionSucceeded(_) => "ExecutionSucceeded",
            Self::ExecutionFailed(_) => "ExecutionFailed",
            Self::ExecutionSkipped(_) => "ExecutionSkipped",
            Self::RollbackRequested(_) => "RollbackRequested",
            Self::ExecutionResumed(_) => "ExecutionResumed",
            Self::StageSkipped(_) => "StageSkipped",
            Self::BreakGlassApproved(_) => "BreakGlassApproved",
            Self::BreakGlassReviewed(_) => "BreakGlassReviewed",
            Self::BreakGlassReviewOverdue(_) => "BreakGlassReviewOverdue",
        }
    }

    pub fn context(&self) -> &EventContext {
        match self {
            Self::ActionSubmitted(e) => &e.context,
            Self::VoteCast(e) => &e.context,
            Self::StageApproved(e) => &e.context,
            Self::ActionApproved(e) => &e.context,
            Self::ActionRejected(e) => &e.context,
            Self::ActionEscalated(e) => &e.context,
            Self::ActionExpired(e) => &e.context,
            Self::ActionCancelled(e) => &e.context,
            Self::ExecutionRequested(e) => &e.context,
            Self::ExecutionStarted(e) => &e.context,
            Self::ExecutionSucceeded(e) => &e.context,
            Self::ExecutionFailed(e) => &e.context,
            Self::ExecutionSkipped(e) => &e.context,
            Self::RollbackRequested(e) => &e.context,
            Self::ExecutionResumed(e) => &e.context,
            Self::StageSkipped(e) => &e.context,
            Self::BreakGlassApproved(e) => &e.context,
            Self::BreakGlassReviewed(e) => &e.context,
            Self::BreakGlassReviewOverdue(e) => &e.context,
        }
    }
}

impl cqrs_es::DomainEvent for ActionEvent {
    fn event_type(&self) -> String {
        Self::event_type(self).to_owned()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION.to_owned()
    }
}

/// An action was requested, scored and put under a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ActionSubmitted {
    #[serde(flatten)]
    pub context: EventContext,
    /// The requester's roles when submitting (the requester is `actor`).
    pub requester_roles: BTreeSet<Role>,
    pub action_type: ActionType,
    pub submission: Submission,
    pub risk: RiskAssessment,
    /// The policy in force, frozen: later edits never change this action's rules.
    pub policy: PolicySnapshot,
    pub mode: TenantMode,
    pub expires_at: Timestamp,
    pub execution_key: ExecutionKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
    /// blake3 of the canonical requester and submission: tells a retry from a reused key.
    pub submission_digest: String,
    /// The executed action this one rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<ActionId>,
}

/// A voter voted in the current stage (the voter is `actor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VoteCast {
    #[serde(flatten)]
    pub context: EventContext,
    pub voter_roles: BTreeSet<Role>,
    /// Zero-based stage index.
    pub stage: u32,
    pub vote: Vote,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<Comment>,
    /// The voter's earlier vote in this stage, which this one replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<Vote>,
    /// The execution key the voter saw, checked equal to the action's when the vote was cast:
    /// the vote approves exactly that payload. Absent from unbound votes (and every vote
    /// recorded before votes could be bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_key: Option<ExecutionKey>,
    /// The member in whose place the vote was cast, through a delegation (`actor` is the
    /// delegate; `voter_roles` are the roles the delegator lent). The ballot is the delegator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<UserId>,
    /// The voter's Ed25519 signature of (tenant, action, execution key, vote, signed_at), made
    /// with their registered key and checked when the vote was cast (`crate::signing`). Absent
    /// from unsigned votes (and every vote recorded before votes could be signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::signing::VoteSignature>,
}

impl VoteCast {
    /// Whose ballot this is: the delegator's when cast in their place, else the actor's.
    pub fn ballot_of(&self) -> &UserId {
        self.on_behalf_of.as_ref().unwrap_or(&self.context.actor)
    }

    /// The command that records this vote, rebuilt from what the event recorded (the decision
    /// replay, backtests): the voter with the roles recorded, the key it was bound to, the
    /// member it was cast for. A delegate's own roles are not recorded and not needed.
    pub fn command(&self) -> crate::action::ActionCommand {
        use crate::action::{ActionCommand, CastBoundVote, CastDelegatedVote, CastVote};
        let by = |id: &UserId, roles: BTreeSet<Role>| crate::Principal {
            id: id.clone(),
            roles,
        };
        let cast = |roles| CastVote {
            context: crate::action::CommandContext {
                tenant: self.context.tenant.clone(),
                by: by(&self.context.actor, roles),
                at: self.context.at,
                correlation_id: self.context.correlation_id.clone(),
            },
            vote: self.vote,
            comment: self.comment.clone(),
        };
        match (&self.on_behalf_of, &self.execution_key) {
            (Some(delegator), execution_key) => {
                ActionCommand::CastDelegatedVote(CastDelegatedVote {
                    vote: cast(BTreeSet::new()),
                    on_behalf_of: by(delegator, self.voter_roles.clone()),
                    execution_key: execution_key.clone(),
                })
            }
            (None, Some(execution_key)) => ActionCommand::CastBoundVote(CastBoundVote {
                vote: cast(self.voter_roles.clone()),
                execution_key: execution_key.clone(),
                signature: self.signature.clone(),
            }),
            (None, None) => ActionCommand::CastVote(cast(self.voter_roles.clone())),
        }
    }
}

/// Why an optional stage was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StageSkip {
    /// The stage's `skip_when` rule held on the previous stage's ballots.
    SkipWhenHeld,
    /// Nobody may vote in the stage.
    NoEligibleVoter,
}

/// An optional stage was skipped as it opened; the next stage (if any) opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StageSkipped {
    #[serde(flatten)]
    pub context: EventContext,
    pub stage: u32,
    pub reason: StageSkip,
}

/// A stage's requirements were met; the next stage (if any) opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StageApproved {
    #[serde(flatten)]
    pub context: EventContext,
    pub stage: u32,
    pub tally: Tally,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalReason {
    /// Every stage met its requirements.
    Quorum,
    /// The tenant is in `auto` mode and the policy auto-approves.
    AutoApproved,
    /// A member with the break-glass role approved alone (see [`BreakGlassApproved`]).
    BreakGlass,
}

/// A member with the break-glass role approved the pending action alone, with a justification
/// (the breaker is `actor`). An `ActionApproved` with reason `break_glass` follows at once; a
/// review is due by `review_due`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BreakGlassApproved {
    #[serde(flatten)]
    pub context: EventContext,
    pub breaker_roles: BTreeSet<Role>,
    pub justification: Comment,
    /// The stage that was open when the glass was broken.
    pub stage: u32,
    pub review_due: Timestamp,
}

/// A break-glass approval was reviewed after the fact (the reviewer is `actor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BreakGlassReviewed {
    #[serde(flatten)]
    pub context: EventContext,
    pub reviewer_roles: BTreeSet<Role>,
    pub verdict: crate::action::ReviewVerdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<Comment>,
}

/// A break-glass approval's review was not recorded by `review_due`: the deadline reactor
/// (`actor`) escalated it, once. Holders of `escalation_role` (the policy's, for the stage the
/// glass was broken in) may review it from then on, and they and the tenant's owners are told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BreakGlassReviewOverdue {
    #[serde(flatten)]
    pub context: EventContext,
    pub review_due: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation_role: Option<Role>,
}

impl BreakGlassReviewOverdue {
    /// The command that records this escalation, rebuilt from what the event recorded.
    pub fn command(&self) -> crate::action::ActionCommand {
        crate::action::ActionCommand::EscalateBreakGlassReview(
            crate::action::EscalateBreakGlassReview {
                context: crate::action::CommandContext {
                    tenant: self.context.tenant.clone(),
                    by: crate::Principal {
                        id: self.context.actor.clone(),
                        roles: BTreeSet::new(),
                    },
                    at: self.context.at,
                    correlation_id: self.context.correlation_id.clone(),
                },
            },
        )
    }
}

impl BreakGlassReviewed {
    /// The command that records this review, rebuilt from what the event recorded.
    pub fn command(&self) -> crate::action::ActionCommand {
        crate::action::ActionCommand::ReviewBreakGlass(crate::action::ReviewBreakGlass {
            context: crate::action::CommandContext {
                tenant: self.context.tenant.clone(),
                by: crate::Principal {
                    id: self.context.actor.clone(),
                    roles: self.reviewer_roles.clone(),
                },
                at: self.context.at,
                correlation_id: self.context.correlation_id.clone(),
            },
            verdict: self.verdict,
            comment: self.comment.clone(),
        })
    }
}

impl BreakGlassApproved {
    /// The command that records this approval, rebuilt from what the event recorded.
    pub fn command(&self) -> crate::action::ActionCommand {
        crate::action::ActionCommand::BreakGlassApprove(crate::action::BreakGlassApprove {
            context: crate::action::CommandContext {
                tenant: self.context.tenant.clone(),
                by: crate::Principal {
                    id: self.context.actor.clone(),
                    roles: self.breaker_roles.clone(),
                },
                at: self.context.at,
                correlation_id: self.context.correlation_id.clone(),
            },
            justification: self.justification.clone(),
            review_due: self.review_due,
        })
    }
}

/// The action may now execute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ActionApproved {
    #[serde(flatten)]
    pub context: EventContext,
    pub reason: ApprovalReason,
}

/// Why an action was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rejection {
    /// Rejections exceeded what the stage's ratio tolerates.
    Ratio,
    /// A veto holder rejected.
    Veto { voter: UserId },
    /// No remaining eligible voter could bring the stage to approval.
    Unreachable,
    /// The deadline passed and the policy says `on_timeout: reject`.
    Timeout,
}

impl From<StageRejection> for Rejection {
    fn from(rejection: StageRejection) -> Self {
        match rejection {
            StageRejection::Ratio => Self::Ratio,
            StageRejection::Veto { voter } => Self::Veto { voter },
            StageRejection::Unreachable => Self::Unreachable,
        }
    }
}

/// The action will never execute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ActionRejected {
    #[serde(flatten)]
    pub context: EventContext,
    pub stage: u32,
    pub reason: Rejection,
    pub tally: Tally,
}

/// The deadline passed; holders of the escalation role may now vote and the deadline moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ActionEscalated {
    #[serde(flatten)]
    pub context: EventContext,
    /// 1 for the first escalation.
    pub escalation: u32,
    pub escalation_role: Role,
    pub previous_expires_at: Timestamp,
    pub expires_at: Timestamp,
}

/// The deadline passed with no escalation left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ActionExpired {
    #[serde(flatten)]
    pub context: EventContext,
    pub deadline: Timestamp,
}

/// The requester or an admin withdrew the action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ActionCancelled {
    #[serde(flatten)]
    pub context: EventContext,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Comment>,
}

/// Someone asked for an approved action that does not auto-execute to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecutionRequested {
    #[serde(flatten)]
    pub context: EventContext,
}

/// An executor claimed an attempt (the executor is `actor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecutionStarted {
    #[serde(flatten)]
    pub context: EventContext,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub execution_key: ExecutionKey,
    /// Until then, no other executor may claim the action.
    pub lease_until: Timestamp,
}

/// The capability finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExecutionSucceeded {
    #[serde(flatten)]
    pub context: EventContext,
    pub attempt: u32,
    pub result: Value,
    /// What would reverse the action: the capability's, else the submitter's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo_payload: Option<Value>,
    pub duration_ms: u64,
}

/// An attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecutionFailed {
    #[serde(flatten)]
    pub context: EventContext,
    pub attempt: u32,
    pub error: String,
    pub retryable: bool,
    /// False when this was the last attempt: the action has failed for good.
    pub will_retry: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The tenant was in safe mode: when the action was submitted (`mode` absent; it never
    /// runs), or when an executor was about to start it (`mode` is `safe`; it may be asked to
    /// run again once the tenant leaves safe mode). Safe mode always wins.
    SafeMode,
}

/// The action was approved but did not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecutionSkipped {
    #[serde(flatten)]
    pub context: EventContext,
    pub reason: SkipReason,
    /// The tenant's mode when the executor claimed the action, recorded when that mode (not the
    /// mode at submission) is why it was skipped. Absent from every event recorded before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TenantMode>,
}

/// An action skipped because its tenant was in safe mode was asked to run again after the
/// tenant left safe mode (the one who asked is `actor`): it is approved and requested again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecutionResumed {
    #[serde(flatten)]
    pub context: EventContext,
    /// The tenant's mode when it was asked (never `safe`).
    pub mode: TenantMode,
}

/// An action that rolls this one back was submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RollbackRequested {
    #[serde(flatten)]
    pub context: EventContext,
    pub rollback_action_id: ActionId,
}
