//! The `action` aggregate. [`Action::decide`] turns a command into events without changing
//! anything; [`Action::apply`] folds one event into the state. Every decision is made in
//! `decide` from the state and the command alone, so folding the recorded events reproduces the
//! same state, and the same decisions, on any machine at any time.
//!
//! ```text
//!                 vote / auto-approve                 StartExecution            success
//!   ┌─────────┐ ───────────────────────► ┌──────────┐ ─────────────► ┌───────────┐ ─────► executed
//!   │ pending │        ┌──────────┐      │ approved │ ◄───────────── │ executing │ ─────► failed
//!   └─────────┘ ─────► │escalated │ ───► └──────────┘  retryable     └───────────┘  (last attempt)
//!     │  │  │ deadline └──────────┘        │   ▲ resumed (out of safe mode)
//!     │  │  │                         safe mode ▼   │
//!     │  │  └──────► expired / rejected      skipped
//!     │  └─────────► rejected (ratio, veto, unreachable)
//!     └────────────► cancelled
//! ```

mod command;
mod error;
mod event;

pub use command::*;
pub use error::ActionError;
pub use event::*;

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::canonical::{ExecutionKey, digest};
use crate::policy::PolicySnapshot;
use crate::quorum::{Ballot, StageContext, StageOutcome, StageProgress};
use crate::risk::{RiskAssessment, assess};
use crate::submission::Submission;
use crate::{
    ActionId, ActionType, CorrelationId, IdempotencyKey, Principal, TenantId, TenantMode,
    Timestamp, UserId,
};

/// Where an action is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Waiting for votes.
    Pending,
    /// Waiting for votes after its deadline escalated.
    Escalated,
    /// Approved; waiting to execute (or to retry).
    Approved,
    /// An attempt is running.
    Executing,
    Executed,
    /// Every attempt failed, or one failed for good.
    Failed,
    Rejected,
    Expired,
    Cancelled,
    /// Not run because the tenant was in safe mode: at submission (it never runs), or when an
    /// executor was about to start it (it runs again only when asked once safe mode is off).
    Skipped,
}

impl ActionStatus {
    pub const ALL: [Self; 10] = [
        Self::Pending,
        Self::Escalated,
        Self::Approved,
        Self::Executing,
        Self::Executed,
        Self::Failed,
        Self::Rejected,
        Self::Expired,
        Self::Cancelled,
        Self::Skipped,
    ];

    /// Still collecting votes.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Escalated)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Escalated => "escalated",
            Self::Approved => "approved",
            Self::Executing => "executing",
            Self::Executed => "executed",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
        }
    }
}

impl fmt::Display for ActionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The attempt that holds the execution lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RunningAttempt {
    pub attempt: u32,
    pub executor: UserId,
    pub started_at: Timestamp,
    pub lease_until: Timestamp,
}

/// How one execution attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AttemptOutcome {
    Running,
    Succeeded { duration_ms: u64 },
    Failed { error: String, retryable: bool },
}

/// One execution attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub executor: UserId,
    pub started_at: Timestamp,
    #[serde(flatten)]
    pub outcome: AttemptOutcome,
    pub finished_at: Option<Timestamp>,
}

/// Everything known about running the action.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExecutionState {
    /// Someone asked for it to run (or the policy auto-executes).
    pub requested: bool,
    /// Attempts started so far.
    pub attempts: u32,
    pub running: Option<RunningAttempt>,
    pub last_error: Option<String>,
    pub result: Option<Value>,
    pub undo_payload: Option<Value>,
    pub duration_ms: Option<u64>,
    /// Every attempt, in order.
    #[serde(default)]
    pub history: Vec<AttemptRecord>,
    /// When the action was skipped in safe mode.
    pub skipped_at: Option<Timestamp>,
    /// Why it was skipped, while it is.
    #[serde(default)]
    pub skip_reason: Option<SkipReason>,
    /// Whether the skip came from the tenant's mode when the executor claimed it (not from the
    /// mode at submission): such an action may be asked to run again outside safe mode.
    #[serde(default)]
    pub resumable: bool,
}

/// How the vote-collecting part of an action's life ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Decision {
    pub status: ActionStatus,
    pub at: Timestamp,
    pub by: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection: Option<Rejection>,
}

/// The state of a submitted action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ActionState {
    pub id: ActionId,
    pub tenant: TenantId,
    pub requester: Principal,
    pub action_type: ActionType,
    pub submission: Submission,
    pub risk: RiskAssessment,
    pub policy: PolicySnapshot,
    pub mode: TenantMode,
    pub submitted_at: Timestamp,
    pub expires_at: Timestamp,
    pub execution_key: ExecutionKey,
    pub idempotency_key: Option<IdempotencyKey>,
    pub submission_digest: String,
    pub correlation_id: Option<CorrelationId>,
    pub status: ActionStatus,
    /// Index of the current stage.
    pub stage: u32,
    /// Ballots of every stage reached so far; the last is the current stage's.
    pub ballots: Vec<BTreeMap<UserId, Ballot>>,
    /// Optional stages that were skipped, with why (absent before stages could be skipped).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped_stages: BTreeMap<u32, StageSkip>,
    pub escalations: u32,
    pub decision: Option<Decision>,
    pub execution: ExecutionState,
    /// The executed action this one rolls back.
    #[serde(default)]
    pub rollback_of: Option<ActionId>,
    /// The action that rolls this one back.
    #[serde(default)]
    pub rolled_back_by: Option<ActionId>,
    /// How the action was approved alone in an emergency, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<BreakGlass>,
}

/// A break-glass approval: who, why, and when its review is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BreakGlass {
    pub by: UserId,
    pub at: Timestamp,
    pub justification: crate::Comment,
    pub review_due: Timestamp,
    /// The review after the fact, once recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<BreakGlassReview>,
    /// When the review was found overdue and escalated, once that happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdue: Option<BreakGlassOverdue>,
}

impl BreakGlass {
    /// When the deadline reactor has to escalate this approval's review: its due time while
    /// the review is neither recorded nor already escalated.
    pub fn escalation_due(&self) -> Option<Timestamp> {
        (self.review.is_none() && self.overdue.is_none()).then_some(self.review_due)
    }
}

/// A break-glass review that was not recorded in time, and who it was escalated to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BreakGlassOverdue {
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation_role: Option<crate::Role>,
}

/// Who reviewed a break-glass approval, and what they found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BreakGlassReview {
    pub by: UserId,
    pub at: Timestamp,
    pub verdict: ReviewVerdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<crate::Comment>,
}

/// The aggregate: nothing before submission, then the action's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Action(Option<Box<ActionState>>);

/// Lease given to an execution attempt when the command asks for none.
const LEASE_FLOOR_SECONDS: u32 = 1;

impl ActionState {
    /// Who may direct what happens to an action (cancel it, ask it to run, roll it back): its
    /// requester, an admin or an owner. One rule for every front door.
    pub fn may_be_directed_by(
        &self,
        by: &Principal,
        attempted: &'static str,
    ) -> Result<(), ActionError> {
        if by.id == self.requester.id || by.is_admin() {
            Ok(())
        } else {
            Err(ActionError::NotPermitted { attempted })
        }
    }

    /// Whether `by` may approve this action alone by break-glass now: it is open, `by` holds the
    /// `break_glass` role and did not request it. The decision and the console's buttons both
    /// ask this.
    pub fn may_break_glass(&self, by: &Principal) -> Result<(), ActionError> {
        if !self.status.is_open() {
            return Err(ActionError::InvalidState {
                status: self.status,
                attempted: "break-glass approve",
            });
        }
        if by.id == self.requester.id {
            return Err(ActionError::SelfApprovalForbidden);
        }
        if !by
            .roles
            .iter()
            .any(|role| role.as_str() == BREAK_GLASS_ROLE)
        {
            return Err(ActionError::NotPermitted {
                attempted: "break-glass approve",
            });
        }
        Ok(())
    }

    /// Whether `by` may review this action's break-glass approval now: it has one not yet
    /// reviewed, and `by` is neither its requester nor the breaker, and could approve in one of
    /// its stages (or holds the escalation role once the review was escalated).
    pub fn may_review_break_glass(&self, by: &Principal) -> Result<(), ActionError> {
        let glass = match &self.break_glass {
            Some(glass) if glass.review.is_none() => glass,
            _ => {
                return Err(ActionError::InvalidState {
                    status: self.status,
                    attempted: "review the break-glass approval of",
                });
            }
        };
        if by.id == self.requester.id {
            return Err(ActionError::SelfApprovalForbidden);
        }
        // Once escalated, the escalation role's holders may review it too.
        let escalated_to = glass
            .overdue
            .as_ref()
            .and_then(|overdue| overdue.escalation_role.as_ref())
            .is_some_and(|role| by.roles.contains(role));
        if by.id == glass.by || !(self.could_approve(by) || escalated_to) {
            return Err(ActionError::NotPermitted {
                attempted: "review the break-glass approval of",
            });
        }
        Ok(())
    }

    fn stage_context(&self, index: u32) -> Option<StageContext<'_>> {
        let requirements = &self.policy.requirements;
        Some(StageContext {
            stage: requirements.stage(index)?,
            requester: &self.requester.id,
            allow_self_approval: requirements.allow_self_approval,
            escalation_role: requirements
                .stage_escalation_role(index)
                .filter(|_| self.escalations > 0),
        })
    }

    /// Why the current stage is skipped as it opens, when it is optional and may be.
    fn skip(&self) -> Option<StageSkip> {
        let stage = self.policy.requirements.stage(self.stage)?;
        if !stage.optional || self.stage == 0 {
            return None;
        }
        if let Some(rule) = &stage.skip_when {
            let previous = self.stage - 1;
            let held = match (
                self.stage_context(previous),
                self.ballots.get(previous as usize),
            ) {
                (Some(context), Some(ballots)) => context.rule_holds(rule, ballots),
                _ => false,
            };
            if held {
                return Some(StageSkip::SkipWhenHeld);
            }
        }
        self.stage_context(self.stage)
            .filter(StageContext::nobody_may_vote)
            .map(|_| StageSkip::NoEligibleVoter)
    }

    /// Opens the stage after `stage` (approved or skipped at `at`), if there is one.
    fn open_next_stage(&mut self, stage: u32, at: Timestamp) {
        let next = stage + 1;
        let requirements = &self.policy.requirements;
        if (next as usize) >= requirements.stages.len() {
            return;
        }
        if requirements.per_stage_deadlines() {
            self.expires_at = at + requirements.stage_timeout(next).duration();
            self.escalations = 0;
            self.status = ActionStatus::Pending;
        }
        self.stage = next;
        self.ballots.push(BTreeMap::new());
    }

    fn current_ballots(&self) -> Option<&BTreeMap<UserId, Ballot>> {
        self.ballots.get(self.stage as usize)
    }

    /// Progress of every stage reached so far, for views.
    pub fn stage_progress(&self) -> Vec<StageProgress> {
        self.ballots
            .iter()
            .enumerate()
            .filter_map(|(index, ballots)| {
                let index = u32::try_from(index).ok()?;
                Some(self.stage_context(index)?.progress(ballots))
            })
            .collect()
    }

    /// Whether this principal may vote in the current stage right now.
    pub fn can_vote(&self, voter: &Principal) -> bool {
        self.may_vote(&voter.id, &voter.roles)
    }

    /// [`ActionState::can_vote`] for a voter known by id and roles, without building a
    /// principal (the notifier asks it of every member of a directory).
    pub fn may_vote(
        &self,
        voter: &UserId,
        roles: &std::collections::BTreeSet<crate::Role>,
    ) -> bool {
        self.status.is_open()
            && (self.policy.requirements.allow_self_approval || *voter != self.requester.id)
            && self
                .stage_context(self.stage)
                .is_some_and(|context| context.is_eligible(voter, roles))
    }

    /// Whether this principal may vote in any of the action's stages (ignoring whether it is
    /// open): who reviews a break-glass approval and who is told of it.
    pub fn could_approve(&self, voter: &Principal) -> bool {
        let stages = u32::try_from(self.policy.requirements.stages.len()).unwrap_or(u32::MAX);
        (self.policy.requirements.allow_self_approval || voter.id != self.requester.id)
            && (0..stages).any(|index| {
                self.stage_context(index)
                    .is_some_and(|context| context.is_eligible(&voter.id, &voter.roles))
            })
    }

    /// Who may vote in the current stage while the action is open: roles and listed users.
    pub fn electorate(
        &self,
    ) -> Option<(
        std::collections::BTreeSet<crate::Role>,
        std::collections::BTreeSet<UserId>,
    )> {
        if !self.status.is_open() {
            return None;
        }
        self.stage_context(self.stage)
            .map(|context| context.electorate())
    }

    /// Who has voted in the current stage.
    pub fn current_voters(&self) -> impl Iterator<Item = &UserId> {
        self.current_ballots().into_iter().flat_map(BTreeMap::keys)
    }

    /// Whether the executor should run this action now.
    pub fn awaits_execution(&self) -> bool {
        self.status == ActionStatus::Approved
            && (self.policy.requirements.auto_execute || self.execution.requested)
    }

    fn event_context(&self, command: &CommandContext) -> EventContext {
        EventContext {
            tenant: self.tenant.clone(),
            action_id: self.id,
            actor: command.by.id.clone(),
            at: command.at,
            correlation_id: command.correlation_id.clone(),
        }
    }
}

impl Action {
    /// The action's state, once submitted.
    pub fn state(&self) -> Option<&ActionState> {
        self.0.as_deref()
    }

    /// The action's state, once submitted, taken out of the aggregate.
    pub fn into_state(self) -> Option<ActionState> {
        self.0.map(|state| *state)
    }

    /// Folds events from the start.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a ActionEvent>) -> Self {
        let mut action = Self::default();
        for event in events {
            action.apply(event.clone());
        }
        action
    }

    /// Decides which events a command causes. Changes nothing; an error records nothing.
    pub fn decide(&self, command: ActionCommand) -> Result<Vec<ActionEvent>, ActionError> {
        command.check().map_err(ActionError::InvalidInput)?;
        let (state, command) = match (self.state(), command) {
            (_, ActionCommand::SubmitAction(submit)) => return self.submit(*submit),
            (Some(state), command) if state.tenant == command.context().tenant => (state, command),
            _ => return Err(ActionError::NotFound),
        };
        let mut decision = Decider::new(state.clone());
        match command {
            ActionCommand::SubmitAction(_) => {}
            ActionCommand::CastVote(vote) => decision.vote(state, vote, None, None, None)?,
            ActionCommand::CastBoundVote(bound) => {
                if bound.execution_key != state.execution_key {
                    return Err(ActionError::PayloadChanged {
                        current: state.execution_key.clone(),
                    });
                }
                if let Some(signature) = &bound.signature {
                    signature.check(
                        &state.tenant,
                        &state.id,
                        &bound.execution_key,
                        bound.vote.vote,
                        bound.vote.context.at,
                    )?;
                }
                decision.vote(
                    state,
                    bound.vote,
                    Some(bound.execution_key),
                    None,
                    bound.signature,
                )?;
            }
            ActionCommand::CastDelegatedVote(delegated) => {
                if delegated
                    .execution_key
                    .as_ref()
                    .is_some_and(|key| *key != state.execution_key)
                {
                    return Err(ActionError::PayloadChanged {
                        current: state.execution_key.clone(),
                    });
                }
                decision.vote(
                    state,
                    delegated.vote,
                    delegated.execution_key,
                    Some(delegated.on_behalf_of),
                    None,
                )?;
            }
            ActionCommand::CancelAction(cancel) => decision.cancel(state, cancel)?,
            ActionCommand::ExpireAction(expire) => decision.expire(state, expire)?,
            ActionCommand::RequestExecution(request) => decision.request(state, request)?,
            ActionCommand::StartExecution(start) => decision.start(state, start)?,
            ActionCommand::RecordExecutionSuccess(success) => decision.succeed(state, success)?,
            ActionCommand::RecordExecutionFailure(failure) => decision.fail(state, failure)?,
            ActionCommand::RequestRollback(rollback) => decision.rollback(state, rollback)?,
            ActionCommand::BreakGlassApprove(approve) => decision.break_glass(state, approve)?,
            ActionCommand::ReviewBreakGlass(review) => decision.review(state, review)?,
            ActionCommand::EscalateBreakGlassReview(escalate) => {
                decision.escalate_review(state, escalate)?;
            }
        }
        Ok(decision.events)
    }

    fn submit(&self, command: SubmitAction) -> Result<Vec<ActionEvent>, ActionError> {
        let submission_digest = digest(&json!({
            "requester": command.context.by.id,
            "submission": command.submission,
        }));
        if let Some(existing) = self.state() {
            return Err(
                if existing.tenant == command.context.tenant
                    && existing.submission_digest == submission_digest
                {
                    ActionError::AlreadySubmitted {
                        action_id: existing.id,
                    }
                } else {
                    ActionError::IdempotencyKeyReused
                },
            );
        }
        let context = command.context;
        let action_type = command.submission.action_type();
        let requirements = &command.policy.requirements;
        let auto_approve = command.mode == TenantMode::Auto && requirements.auto_approve;
        let submitted = ActionSubmitted {
            context: EventContext {
                tenant: context.tenant.clone(),
                action_id: command.action_id,
                actor: context.by.id.clone(),
                at: context.at,
                correlation_id: context.correlation_id.clone(),
            },
            requester_roles: context.by.roles.clone(),
            execution_key: ExecutionKey::compute(&action_type, &command.submission.payload),
            risk: assess(&command.submission),
            expires_at: context.at + requirements.stage_timeout(0).duration(),
            action_type,
            submission: command.submission,
            policy: command.policy,
            mode: command.mode,
            idempotency_key: command.idempotency_key,
            submission_digest,
            rollback_of: command.rollback_of,
        };
        let mut decision = Decider::new(ActionState::submitted(submitted.clone()));
        decision
            .events
            .push(ActionEvent::ActionSubmitted(Box::new(submitted)));
        if auto_approve {
            let event_context = decision.next.event_context(&context);
            decision.emit(ActionEvent::ActionApproved(ActionApproved {
                context: event_context,
                reason: ApprovalReason::AutoApproved,
            }));
        } else {
            decision.settle(&context);
        }
        Ok(decision.events)
    }

    /// Folds one event into the state. Total: an event that does not fit changes nothing.
    pub fn apply(&mut self, event: ActionEvent) {
        match (event, self.0.as_deref_mut()) {
            (ActionEvent::ActionSubmitted(submitted), _) => {
                self.0 = Some(Box::new(ActionState::submitted(*submitted)));
            }
            (event, Some(state)) => state.apply(event),
            (_, None) => {}
        }
    }
}

impl ActionState {
    fn submitted(submitted: ActionSubmitted) -> Self {
        Self {
            id: submitted.context.action_id,
            tenant: submitted.context.tenant,
            requester: Principal {
                id: submitted.context.actor,
                roles: submitted.requester_roles,
            },
            action_type: submitted.action_type,
            execution: ExecutionState {
                requested: submitted.policy.requirements.auto_execute,
                ..ExecutionState::default()
            },
            submission: submitted.submission,
            risk: submitted.risk,
            policy: submitted.policy,
            mode: submitted.mode,
            submitted_at: submitted.context.at,
            expires_at: submitted.expires_at,
            execution_key: submitted.execution_key,
            idempotency_key: submitted.idempotency_key,
            submission_digest: submitted.submission_digest,
            correlation_id: submitted.context.correlation_id,
            status: ActionStatus::Pending,
            stage: 0,
            ballots: vec![BTreeMap::new()],
            skipped_stages: BTreeMap::new(),
            escalations: 0,
            decision: None,
            rollback_of: submitted.rollback_of,
            rolled_back_by: None,
            break_glass: None,
        }
    }

    fn decide_outcome(
        &mut self,
        status: ActionStatus,
        context: &EventContext,
        rejection: Option<Rejection>,
    ) {
        self.status = status;
        self.decision = Some(Decision {
            status,
            at: context.at,
            by: context.actor.clone(),
            rejection,
        });
    }

    fn apply(&mut self, event: ActionEvent) {
        match event {
            ActionEvent::ActionSubmitted(_) => {}
            ActionEvent::VoteCast(vote) => {
                if let Some(ballots) = self.ballots.get_mut(vote.stage as usize) {
                    let cast_by = vote
                        .on_behalf_of
                        .is_some()
                        .then(|| vote.context.actor.clone());
                    ballots.insert(
                        vote.ballot_of().clone(),
                        Ballot {
                            vote: vote.vote,
                            roles: vote.voter_roles,
                            comment: vote.comment,
                            cast_at: vote.context.at,
                            execution_key: vote.execution_key,
                            cast_by,
                            signature: vote.signature,
                        },
                    );
                }
            }
            ActionEvent::StageApproved(approved) => {
                self.open_next_stage(approved.stage, approved.context.at);
            }
            ActionEvent::StageSkipped(skipped) => {
                self.skipped_stages.insert(skipped.stage, skipped.reason);
                self.open_next_stage(skipped.stage, skipped.context.at);
            }
            ActionEvent::ActionApproved(approved) => {
                self.decide_outcome(ActionStatus::Approved, &approved.context, None);
            }
            ActionEvent::BreakGlassApproved(approved) => {
                self.break_glass = Some(BreakGlass {
                    by: approved.context.actor,
                    at: approved.context.at,
                    justification: approved.justification,
                    review_due: approved.review_due,
                    review: None,
                    overdue: None,
                });
            }
            ActionEvent::BreakGlassReviewed(reviewed) => {
                if let Some(glass) = &mut self.break_glass {
                    glass.review = Some(BreakGlassReview {
                        by: reviewed.context.actor,
                        at: reviewed.context.at,
                        verdict: reviewed.verdict,
                        comment: reviewed.comment,
                    });
                }
            }
            ActionEvent::BreakGlassReviewOverdue(overdue) => {
                if let Some(glass) = &mut self.break_glass {
                    glass.overdue = Some(BreakGlassOverdue {
                        at: overdue.context.at,
                        escalation_role: overdue.escalation_role,
                    });
                }
            }
            ActionEvent::ActionRejected(rejected) => {
                self.decide_outcome(
                    ActionStatus::Rejected,
                    &rejected.context,
                    Some(rejected.reason),
                );
            }
            ActionEvent::ActionEscalated(escalated) => {
                self.status = ActionStatus::Escalated;
                self.escalations = escalated.escalation;
                self.expires_at = escalated.expires_at;
            }
            ActionEvent::ActionExpired(expired) => {
                self.decide_outcome(ActionStatus::Expired, &expired.context, None);
            }
            ActionEvent::ActionCancelled(cancelled) => {
                self.decide_outcome(ActionStatus::Cancelled, &cancelled.context, None);
            }
            ActionEvent::ExecutionRequested(_) => self.execution.requested = true,
            ActionEvent::ExecutionStarted(started) => {
                self.status = ActionStatus::Executing;
                self.execution.attempts = started.attempt;
                self.execution.history.push(AttemptRecord {
                    attempt: started.attempt,
                    executor: started.context.actor.clone(),
                    started_at: started.context.at,
                    outcome: AttemptOutcome::Running,
                    finished_at: None,
                });
                self.execution.running = Some(RunningAttempt {
                    attempt: started.attempt,
                    executor: started.context.actor,
                    started_at: started.context.at,
                    lease_until: started.lease_until,
                });
            }
            ActionEvent::ExecutionSucceeded(succeeded) => {
                self.finish_attempt(
                    succeeded.attempt,
                    succeeded.context.at,
                    AttemptOutcome::Succeeded {
                        duration_ms: succeeded.duration_ms,
                    },
                );
                self.status = ActionStatus::Executed;
                self.execution.running = None;
                self.execution.result = Some(succeeded.result);
                self.execution.undo_payload = succeeded
                    .undo_payload
                    .or_else(|| self.submission.undo_payload.clone());
                self.execution.duration_ms = Some(succeeded.duration_ms);
            }
            ActionEvent::ExecutionFailed(failed) => {
                self.finish_attempt(
                    failed.attempt,
                    failed.context.at,
                    AttemptOutcome::Failed {
                        error: failed.error.clone(),
                        retryable: failed.retryable,
                    },
                );
                self.status = if failed.will_retry {
                    ActionStatus::Approved
                } else {
                    ActionStatus::Failed
                };
                self.execution.running = None;
                self.execution.last_error = Some(failed.error);
            }
            ActionEvent::RollbackRequested(requested) => {
                self.rolled_back_by = Some(requested.rollback_action_id);
            }
            ActionEvent::ExecutionSkipped(skipped) => {
                self.status = ActionStatus::Skipped;
                self.execution.skipped_at = Some(skipped.context.at);
                self.execution.skip_reason = Some(skipped.reason);
                self.execution.resumable = skipped.mode.is_some();
            }
            ActionEvent::ExecutionResumed(_) => {
                self.status = ActionStatus::Approved;
                self.execution.requested = true;
                self.execution.skipped_at = None;
                self.execution.skip_reason = None;
                self.execution.resumable = false;
            }
        }
    }

    fn finish_attempt(&mut self, attempt: u32, at: Timestamp, outcome: AttemptOutcome) {
        if let Some(record) = self
            .execution
            .history
            .iter_mut()
            .rev()
            .find(|record| record.attempt == attempt)
        {
            record.outcome = outcome;
            record.finished_at = Some(at);
        }
    }
}

/// A decision in progress: the events so far, and the state they lead to.
struct Decider {
    next: ActionState,
    events: Vec<ActionEvent>,
}

impl Decider {
    fn new(state: ActionState) -> Self {
        Self {
            next: state,
            events: Vec::new(),
        }
    }

    fn emit(&mut self, event: ActionEvent) {
        self.next.apply(event.clone());
        self.events.push(event);
    }

    /// Judges the current stage after a change, advancing through stages that are approved.
    fn settle(&mut self, command: &CommandContext) {
        loop {
            let state = &self.next;
            let (Some(context), Some(ballots)) =
                (state.stage_context(state.stage), state.current_ballots())
            else {
                return;
            };
            let stage = state.stage;
            let is_last = (stage as usize) + 1 >= state.policy.requirements.stages.len();
            let event_context = state.event_context(command);
            if let Some(reason) = state.skip() {
                self.emit(ActionEvent::StageSkipped(StageSkipped {
                    context: event_context.clone(),
                    stage,
                    reason,
                }));
                if is_last {
                    self.emit(ActionEvent::ActionApproved(ActionApproved {
                        context: event_context,
                        reason: ApprovalReason::Quorum,
                    }));
                    return;
                }
                continue;
            }
            let outcome = context.evaluate(ballots);
            let tally = StageContext::tally(ballots);
            match outcome {
                StageOutcome::Pending => return,
                StageOutcome::Approved => {
                    self.emit(ActionEvent::StageApproved(StageApproved {
                        context: event_context.clone(),
                        stage,
                        tally,
                    }));
                    if is_last {
                        self.emit(ActionEvent::ActionApproved(ActionApproved {
                            context: event_context,
                            reason: ApprovalReason::Quorum,
                        }));
                        return;
                    }
                }
                StageOutcome::Rejected(reason) => {
                    self.emit(ActionEvent::ActionRejected(ActionRejected {
                        context: event_context,
                        stage,
                        reason: reason.into(),
                        tally,
                    }));
                    return;
                }
            }
        }
    }

    fn require_open(state: &ActionState, attempted: &'static str) -> Result<(), ActionError> {
        if state.status.is_open() {
            Ok(())
        } else {
            Err(ActionError::InvalidState {
                status: state.status,
                attempted,
            })
        }
    }

    /// Records a vote: the caster's own (`on_behalf_of` absent), or one cast in a delegator's
    /// place.
    fn vote(
        &mut self,
        state: &ActionState,
        command: CastVote,
        execution_key: Option<ExecutionKey>,
        on_behalf_of: Option<Principal>,
        signature: Option<crate::signing::VoteSignature>,
    ) -> Result<(), ActionError> {
        Self::require_open(state, "vote on")?;
        let caster = &command.context.by;
        let voter = on_behalf_of.as_ref().unwrap_or(caster);
        if (voter.id == state.requester.id || caster.id == state.requester.id)
            && !state.policy.requirements.allow_self_approval
        {
            return Err(ActionError::SelfApprovalForbidden);
        }
        if !state.can_vote(voter) {
            return Err(ActionError::NotEligible {
                voter: voter.id.clone(),
                stage: state.stage,
            });
        }
        // Nobody holds two ballots of a stage: a delegate who voted for themselves may not vote
        // for another, and the other way round.
        let cast_by = on_behalf_of.as_ref().map(|_| caster.id.clone());
        let twice = state.current_ballots().is_some_and(|ballots| {
            ballots.iter().any(|(holder, ballot)| {
                *holder != voter.id
                    && (*holder == caster.id || ballot.cast_by.as_ref() == Some(&caster.id))
            })
        });
        if twice {
            return Err(ActionError::AlreadyVotedInStage {
                voter: caster.id.clone(),
                stage: state.stage,
            });
        }
        let previous = state
            .current_ballots()
            .and_then(|ballots| ballots.get(&voter.id));
        if previous.is_some_and(|ballot| {
            ballot.vote == command.vote
                && ballot.comment == command.comment
                && ballot.execution_key == execution_key
                && ballot.cast_by == cast_by
                && ballot.signature == signature
        }) {
            return Ok(());
        }
        self.emit(ActionEvent::VoteCast(VoteCast {
            context: state.event_context(&command.context),
            voter_roles: voter.roles.clone(),
            stage: state.stage,
            vote: command.vote,
            comment: command.comment,
            replaces: previous.map(|ballot| ballot.vote),
            execution_key,
            on_behalf_of: on_behalf_of.map(|delegator| delegator.id),
            signature,
        }));
        self.settle(&command.context);
        Ok(())
    }

    /// Approves alone in an emergency: the breaker holds the break-glass role and is not the
    /// requester (whatever the policy says about self-approval).
    fn break_glass(
        &mut self,
        state: &ActionState,
        command: BreakGlassApprove,
    ) -> Result<(), ActionError> {
        let by = &command.context.by;
        state.may_break_glass(by)?;
        let context = state.event_context(&command.context);
        self.emit(ActionEvent::BreakGlassApproved(BreakGlassApproved {
            context: context.clone(),
            breaker_roles: by.roles.clone(),
            justification: command.justification,
            stage: state.stage,
            review_due: command.review_due,
        }));
        self.emit(ActionEvent::ActionApproved(ActionApproved {
            context,
            reason: ApprovalReason::BreakGlass,
        }));
        Ok(())
    }

    /// Records the review of a break-glass approval: once, by a member eligible in one of the
    /// action's stages who is neither the breaker nor the requester.
    fn review(
        &mut self,
        state: &ActionState,
        command: ReviewBreakGlass,
    ) -> Result<(), ActionError> {
        let by = &command.context.by;
        state.may_review_break_glass(by)?;
        self.emit(ActionEvent::BreakGlassReviewed(BreakGlassReviewed {
            context: state.event_context(&command.context),
            reviewer_roles: by.roles.clone(),
            verdict: command.verdict,
            comment: command.comment,
        }));
        Ok(())
    }

    /// Escalates a break-glass review not recorded by its due time: once, never before it is due,
    /// never once reviewed. The escalation role is the policy's for the stage the glass was
    /// broken in.
    fn escalate_review(
        &mut self,
        state: &ActionState,
        command: EscalateBreakGlassReview,
    ) -> Result<(), ActionError> {
        let Some(due) = state
            .break_glass
            .as_ref()
            .and_then(BreakGlass::escalation_due)
        else {
            return Err(ActionError::InvalidState {
                status: state.status,
                attempted: "escalate the break-glass review of",
            });
        };
        if command.context.at < due {
            return Err(ActionError::DeadlineNotReached { expires_at: due });
        }
        // A decided action stays at the stage that was open: the one the glass was broken in.
        let stage = state.stage;
        self.emit(ActionEvent::BreakGlassReviewOverdue(
            BreakGlassReviewOverdue {
                context: state.event_context(&command.context),
                review_due: due,
                escalation_role: state
                    .policy
                    .requirements
                    .stage_escalation_role(stage)
                    .cloned(),
            },
        ));
        Ok(())
    }

    fn cancel(&mut self, state: &ActionState, command: CancelAction) -> Result<(), ActionError> {
        Self::require_open(state, "cancel")?;
        state.may_be_directed_by(&command.context.by, "cancel")?;
        self.emit(ActionEvent::ActionCancelled(ActionCancelled {
            context: state.event_context(&command.context),
            reason: command.reason,
        }));
        Ok(())
    }

    fn expire(&mut self, state: &ActionState, command: ExpireAction) -> Result<(), ActionError> {
        Self::require_open(state, "expire")?;
        if command.context.at < state.expires_at {
            return Err(ActionError::DeadlineNotReached {
                expires_at: state.expires_at,
            });
        }
        let requirements = &state.policy.requirements;
        let context = state.event_context(&command.context);
        let escalation_role = requirements
            .stage_escalation_role(state.stage)
            .filter(|_| state.escalations < requirements.max_escalations);
        if let Some(role) = escalation_role {
            self.emit(ActionEvent::ActionEscalated(ActionEscalated {
                context,
                escalation: state.escalations + 1,
                escalation_role: role.clone(),
                previous_expires_at: state.expires_at,
                expires_at: state.expires_at + requirements.stage_timeout(state.stage).duration(),
            }));
        } else if requirements.stage_on_timeout(state.stage) == crate::policy::OnTimeout::Reject {
            let tally = state
                .current_ballots()
                .map(StageContext::tally)
                .unwrap_or_default();
            self.emit(ActionEvent::ActionRejected(ActionRejected {
                context,
                stage: state.stage,
                reason: Rejection::Timeout,
                tally,
            }));
        } else {
            self.emit(ActionEvent::ActionExpired(ActionExpired {
                context,
                deadline: state.expires_at,
            }));
        }
        Ok(())
    }

    fn execution_conflict(state: &ActionState, attempted: &'static str) -> ActionError {
        match (state.status, &state.execution.running) {
            (ActionStatus::Executing, Some(running)) => ActionError::AlreadyExecuting {
                attempt: running.attempt,
            },
            (ActionStatus::Executed, _) => ActionError::AlreadyExecuted,
            (status, _) => ActionError::InvalidState { status, attempted },
        }
    }

    fn request(
        &mut self,
        state: &ActionState,
        command: RequestExecution,
    ) -> Result<(), ActionError> {
        state.may_be_directed_by(&command.context.by, "execute")?;
        if state.status == ActionStatus::Skipped && state.execution.resumable {
            // Skipped because the tenant was in safe mode when it was about to run: it runs
            // again only when asked explicitly, and only once safe mode is off.
            if command.mode == TenantMode::Safe {
                return Err(ActionError::SafeModeOn);
            }
            self.emit(ActionEvent::ExecutionResumed(ExecutionResumed {
                context: state.event_context(&command.context),
                mode: command.mode,
            }));
            return Ok(());
        }
        if state.status != ActionStatus::Approved {
            return Err(Self::execution_conflict(state, "execute"));
        }
        if !state.execution.requested {
            self.emit(ActionEvent::ExecutionRequested(ExecutionRequested {
                context: state.event_context(&command.context),
            }));
        }
        Ok(())
    }

    fn start(&mut self, state: &ActionState, command: StartExecution) -> Result<(), ActionError> {
        let context = state.event_context(&command.context);
        let lease =
            chrono::Duration::seconds(i64::from(command.lease_seconds.max(LEASE_FLOOR_SECONDS)));
        let next_attempt = match (state.status, &state.execution.running) {
            (ActionStatus::Approved, _) => {
                if !state.execution.requested {
                    return Err(ActionError::ExecutionNotRequested);
                }
                // Safe mode always wins: at submission (recorded in the action) or now (in the
                // command, recorded in the event).
                if state.mode == TenantMode::Safe || command.mode == TenantMode::Safe {
                    self.emit(ActionEvent::ExecutionSkipped(ExecutionSkipped {
                        context,
                        reason: SkipReason::SafeMode,
                        mode: (state.mode != TenantMode::Safe).then_some(command.mode),
                    }));
                    return Ok(());
                }
                state.execution.attempts + 1
            }
            (ActionStatus::Executing, Some(running))
                if command.context.at >= running.lease_until =>
            {
                // The executor holding the lease never reported: its attempt counts as failed.
                let will_retry = running.attempt < state.policy.requirements.max_attempts.get();
                self.emit(ActionEvent::ExecutionFailed(ExecutionFailed {
                    context: context.clone(),
                    attempt: running.attempt,
                    error: format!(
                        "executor {} held the lease until {} without recording an outcome",
                        running.executor, running.lease_until
                    ),
                    retryable: true,
                    will_retry,
                }));
                if !will_retry {
                    return Ok(());
                }
                if command.mode == TenantMode::Safe {
                    // The next attempt has not started: safe mode stops it.
                    self.emit(ActionEvent::ExecutionSkipped(ExecutionSkipped {
                        context,
                        reason: SkipReason::SafeMode,
                        mode: Some(command.mode),
                    }));
                    return Ok(());
                }
                running.attempt + 1
            }
            _ => return Err(Self::execution_conflict(state, "execute")),
        };
        self.emit(ActionEvent::ExecutionStarted(ExecutionStarted {
            context,
            attempt: next_attempt,
            execution_key: state.execution_key.clone(),
            lease_until: command.context.at + lease,
        }));
        Ok(())
    }

    fn current_attempt(state: &ActionState, attempt: u32) -> Result<(), ActionError> {
        match (&state.execution.running, state.status) {
            (Some(running), ActionStatus::Executing) if running.attempt == attempt => Ok(()),
            (_, ActionStatus::Executed) => Err(ActionError::AlreadyExecuted),
            _ if attempt != state.execution.attempts || state.execution.running.is_none() => {
                Err(ActionError::StaleAttempt {
                    attempt,
                    current: state.execution.attempts,
                })
            }
            (_, status) => Err(ActionError::InvalidState {
                status,
                attempted: "record an outcome for",
            }),
        }
    }

    fn succeed(
        &mut self,
        state: &ActionState,
        command: RecordExecutionSuccess,
    ) -> Result<(), ActionError> {
        Self::current_attempt(state, command.attempt)?;
        self.emit(ActionEvent::ExecutionSucceeded(ExecutionSucceeded {
            context: state.event_context(&command.context),
            attempt: command.attempt,
            result: command.result,
            undo_payload: command.undo_payload,
            duration_ms: command.duration_ms,
        }));
        Ok(())
    }

    fn rollback(
        &mut self,
        state: &ActionState,
        command: RequestRollback,
    ) -> Result<(), ActionError> {
        state.may_be_directed_by(&command.context.by, "roll back")?;
        match state.rolled_back_by {
            Some(existing) if existing == command.rollback_action_id => return Ok(()),
            Some(existing) => {
                return Err(ActionError::AlreadyRolledBack {
                    rollback_action_id: existing,
                });
            }
            None => {}
        }
        if state.status != ActionStatus::Executed || state.execution.undo_payload.is_none() {
            return Err(ActionError::NothingToRollBack);
        }
        self.emit(ActionEvent::RollbackRequested(RollbackRequested {
            context: state.event_context(&command.context),
            rollback_action_id: command.rollback_action_id,
        }));
        Ok(())
    }

    fn fail(
        &mut self,
        state: &ActionState,
        command: RecordExecutionFailure,
    ) -> Result<(), ActionError> {
        Self::current_attempt(state, command.attempt)?;
        let will_retry =
            command.retryable && command.attempt < state.policy.requirements.max_attempts.get();
        self.emit(ActionEvent::ExecutionFailed(ExecutionFailed {
            context: state.event_context(&command.context),
            attempt: command.attempt,
            error: command.error,
            retryable: command.retryable,
            will_retry,
        }));
        Ok(())
    }
}

impl cqrs_es::Aggregate for Action {
    /// Stored aggregate type: never rename.
    const TYPE: &'static str = "action";
    type Command = ActionCommand;
    type Event = ActionEvent;
    type Error = ActionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        Self::apply(self, event);
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod properties;

#[cfg(test)]
mod review_overdue;
