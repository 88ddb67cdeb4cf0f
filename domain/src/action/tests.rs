//! Given/when/then for every rule of the action aggregate.

use chrono::TimeZone;
use cqrs_es::test::TestFramework;
use serde_json::{Value, json};

use super::*;
use crate::policy::{PolicySnapshot, Requirements};
use crate::quorum::{Tally, Vote};
use crate::{Comment, Role};

pub(crate) fn at(seconds: i64) -> Timestamp {
    chrono::Utc
        .timestamp_opt(1_767_225_600 + seconds, 0)
        .single()
        .unwrap_or_default()
}

pub(crate) fn tenant() -> TenantId {
    TenantId::parse("acme").unwrap_or_else(|_| unreachable!())
}

pub(crate) fn principal(id: &str, roles: &[&str]) -> Principal {
    Principal::new(
        UserId::parse(id).unwrap_or_else(|e| panic!("{e}")),
        roles
            .iter()
            .map(|r| Role::parse(*r).unwrap_or_else(|e| panic!("{e}"))),
    )
}

pub(crate) fn context(by: &Principal, seconds: i64) -> CommandContext {
    CommandContext {
        tenant: tenant(),
        by: by.clone(),
        at: at(seconds),
        correlation_id: Some(CorrelationId::parse("corr-1").unwrap_or_else(|e| panic!("{e}"))),
    }
}

pub(crate) fn requester() -> Principal {
    principal("rita", &["requester"])
}

pub(crate) fn policy(requirements: Value) -> PolicySnapshot {
    PolicySnapshot {
        id: crate::PolicyId::parse("test-policy").unwrap_or_else(|e| panic!("{e}")),
        version: 3,
        name: "Test policy".into(),
        priority: 10,
        is_default: false,
        requirements: Requirements::parse(&requirements).unwrap_or_else(|e| panic!("{e}")),
    }
}

pub(crate) fn submission() -> Submission {
    serde_json::from_value(json!({
        "module": "billing",
        "capability": "refund",
        "payload": { "order": 1042, "amount": 25.5 },
        "summary": "Refund order 1042",
        "connectors": ["stripe"],
        "source": "board",
        "undo_payload": { "order": 1042, "charge": 25.5 },
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn submit_command(requirements: Value, mode: TenantMode) -> ActionCommand {
    ActionCommand::SubmitAction(Box::new(SubmitAction {
        context: context(&requester(), 0),
        action_id: ActionId::from_uuid(uuid::Uuid::from_u128(7)),
        submission: submission(),
        mode,
        policy: policy(requirements),
        idempotency_key: None,
        rollback_of: None,
    }))
}

/// An action and its history, driven one command at a time.
pub(crate) struct Story {
    pub action: Action,
    pub events: Vec<ActionEvent>,
}

impl Story {
    pub fn submitted(requirements: Value) -> Self {
        Self::submitted_in(requirements, TenantMode::RequireApproval)
    }

    pub fn submitted_in(requirements: Value, mode: TenantMode) -> Self {
        let mut story = Self {
            action: Action::default(),
            events: Vec::new(),
        };
        story
            .run(submit_command(requirements, mode))
            .unwrap_or_else(|e| panic!("submission refused: {e}"));
        story
    }

    pub fn run(&mut self, command: ActionCommand) -> Result<Vec<&'static str>, ActionError> {
        let events = self.action.decide(command)?;
        for event in &events {
            self.action.apply(event.clone());
        }
        let types = events.iter().map(ActionEvent::event_type).collect();
        self.events.extend(events);
        Ok(types)
    }

    pub fn vote(
        &mut self,
        voter: &Principal,
        vote: Vote,
        seconds: i64,
    ) -> Result<Vec<&'static str>, ActionError> {
        self.run(ActionCommand::CastVote(CastVote {
            context: context(voter, seconds),
            vote,
            comment: None,
        }))
    }

    pub fn expire(&mut self, seconds: i64) -> Result<Vec<&'static str>, ActionError> {
        self.run(ActionCommand::ExpireAction(ExpireAction {
            context: context(&principal("system:deadlines", &[]), seconds),
        }))
    }

    pub fn request(
        &mut self,
        by: &Principal,
        seconds: i64,
    ) -> Result<Vec<&'static str>, ActionError> {
        self.request_in(by, seconds, TenantMode::RequireApproval)
    }

    /// Asks the action to run while the tenant is in `mode`.
    pub fn request_in(
        &mut self,
        by: &Principal,
        seconds: i64,
        mode: TenantMode,
    ) -> Result<Vec<&'static str>, ActionError> {
        self.run(ActionCommand::RequestExecution(RequestExecution {
            context: context(by, seconds),
            mode,
        }))
    }

    pub fn start(&mut self, seconds: i64) -> Result<Vec<&'static str>, ActionError> {
        self.start_in(seconds, TenantMode::RequireApproval)
    }

    /// An executor claims the action while the tenant is in `mode`.
    pub fn start_in(
        &mut self,
        seconds: i64,
        mode: TenantMode,
    ) -> Result<Vec<&'static str>, ActionError> {
        self.run(ActionCommand::StartExecution(StartExecution {
            context: context(&principal("executor:one", &[]), seconds),
            lease_seconds: 60,
            mode,
        }))
    }

    pub fn succeed(
        &mut self,
        attempt: u32,
        seconds: i64,
    ) -> Result<Vec<&'static str>, ActionError> {
        self.run(ActionCommand::RecordExecutionSuccess(
            RecordExecutionSuccess {
                context: context(&principal("executor:one", &[]), seconds),
                attempt,
                result: json!({ "refund_id": "re_1" }),
                undo_payload: None,
                duration_ms: 420,
            },
        ))
    }

    pub fn fail(
        &mut self,
        attempt: u32,
        retryable: bool,
        seconds: i64,
    ) -> Result<Vec<&'static str>, ActionError> {
        self.run(ActionCommand::RecordExecutionFailure(
            RecordExecutionFailure {
                context: context(&principal("executor:one", &[]), seconds),
                attempt,
                error: "gateway timeout".into(),
                retryable,
            },
        ))
    }

    pub fn state(&self) -> &ActionState {
        self.action
            .state()
            .unwrap_or_else(|| panic!("not submitted"))
    }

    pub fn status(&self) -> ActionStatus {
        self.state().status
    }

    fn last(&self) -> &ActionEvent {
        self.events.last().unwrap_or_else(|| panic!("no events"))
    }
}

fn any(n: u32) -> Value {
    json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": n }] }] })
}

fn approver(id: &str) -> Principal {
    principal(id, &["approver"])
}

fn finance(id: &str) -> Principal {
    principal(id, &["finance_ops"])
}

use Vote::{Abstain, Approve, Reject};

// ---------------------------------------------------------------- submission

#[test]
fn submission_records_risk_policy_mode_deadline_and_execution_key() {
    let story = Story::submitted(json!({
        "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }],
        "timeout_seconds": 3600
    }));
    let ActionEvent::ActionSubmitted(submitted) = &story.events[0] else {
        panic!("expected ActionSubmitted, got {:?}", story.events);
    };
    assert_eq!(story.events.len(), 1);
    assert_eq!(submitted.context.tenant, tenant());
    assert_eq!(submitted.context.actor, requester().id);
    assert_eq!(submitted.context.at, at(0));
    assert_eq!(
        submitted
            .context
            .correlation_id
            .as_ref()
            .map(CorrelationId::as_str),
        Some("corr-1")
    );
    assert_eq!(submitted.requester_roles, requester().roles);
    assert_eq!(submitted.action_type.as_str(), "billing.refund");
    // billing: +20 (module finance-heavy); one connector adds nothing.
    assert_eq!(submitted.risk.score.value(), 20);
    assert_eq!(submitted.policy.id.as_str(), "test-policy");
    assert_eq!(submitted.policy.version, 3);
    assert_eq!(submitted.mode, TenantMode::RequireApproval);
    assert_eq!(submitted.expires_at, at(3600));
    assert_eq!(
        submitted.execution_key,
        ExecutionKey::compute(
            &submitted.action_type,
            &json!({ "amount": 25.5, "order": 1042 })
        )
    );
    assert_eq!(story.status(), ActionStatus::Pending);
}

#[test]
fn a_repeated_submission_with_the_same_content_is_answered_as_already_submitted() {
    let mut story = Story::submitted(any(1));
    let again = story.run(submit_command(any(2), TenantMode::Auto));
    assert_eq!(
        again,
        Err(ActionError::AlreadySubmitted {
            action_id: ActionId::from_uuid(uuid::Uuid::from_u128(7))
        })
    );
    assert_eq!(story.events.len(), 1, "nothing new is recorded");
}

#[test]
fn a_reused_idempotency_key_with_different_content_is_refused() {
    let mut story = Story::submitted(any(1));
    let ActionCommand::SubmitAction(mut other) =
        submit_command(any(1), TenantMode::RequireApproval)
    else {
        unreachable!()
    };
    other.submission.payload = json!({ "order": 9999 });
    let err = story
        .run(ActionCommand::SubmitAction(other))
        .expect_err("refused");
    assert_eq!(err.code(), "idempotency_key_reused");
}

#[test]
fn idempotent_submissions_land_on_the_same_action_id() {
    let key = IdempotencyKey::parse("refund-1042").unwrap_or_else(|e| panic!("{e}"));
    let id = ActionId::for_idempotency_key(&tenant(), &key);
    let command = |id| {
        ActionCommand::SubmitAction(Box::new(SubmitAction {
            context: context(&requester(), 0),
            action_id: id,
            submission: submission(),
            mode: TenantMode::RequireApproval,
            policy: policy(any(1)),
            idempotency_key: Some(key.clone()),
            rollback_of: None,
        }))
    };
    let events = Action::default()
        .decide(command(id))
        .expect("first submission");
    let action = Action::from_events(&events);
    assert_eq!(
        action.state().map(|s| s.idempotency_key.clone()),
        Some(Some(key.clone()))
    );
    assert_eq!(
        action.decide(command(ActionId::for_idempotency_key(&tenant(), &key))),
        Err(ActionError::AlreadySubmitted { action_id: id })
    );
}

#[test]
fn commands_on_an_unsubmitted_action_are_not_found() {
    let vote = ActionCommand::CastVote(CastVote {
        context: context(&approver("ana"), 1),
        vote: Approve,
        comment: None,
    });
    assert_eq!(Action::default().decide(vote), Err(ActionError::NotFound));
}

#[test]
fn commands_from_another_tenant_are_not_found() {
    let story = Story::submitted(any(1));
    let mut foreign = context(&principal("ana", &["admin"]), 1);
    foreign.tenant = TenantId::parse("globex").unwrap_or_else(|e| panic!("{e}"));
    let vote = ActionCommand::CastVote(CastVote {
        context: foreign.clone(),
        vote: Approve,
        comment: None,
    });
    assert_eq!(story.action.decide(vote), Err(ActionError::NotFound));
    let cancel = ActionCommand::CancelAction(CancelAction {
        context: foreign,
        reason: None,
    });
    assert_eq!(story.action.decide(cancel), Err(ActionError::NotFound));
}

#[test]
fn the_cqrs_aggregate_records_what_decide_returns() {
    let submitted = Story::submitted(any(1)).events;
    let expected = {
        let mut story = Story::submitted(any(1));
        story.vote(&approver("ana"), Approve, 5).expect("vote");
        story.events[1..].to_vec()
    };
    TestFramework::<Action>::with(())
        .given(submitted.clone())
        .when(ActionCommand::CastVote(CastVote {
            context: context(&approver("ana"), 5),
            vote: Approve,
            comment: None,
        }))
        .then_expect_events(expected);
    TestFramework::<Action>::with(())
        .given(submitted)
        .when(ActionCommand::CastVote(CastVote {
            context: context(&requester(), 5),
            vote: Approve,
            comment: None,
        }))
        .then_expect_error(ActionError::SelfApprovalForbidden);
}

// ---------------------------------------------------------------- modes

#[test]
fn auto_mode_approves_an_auto_approving_policy_at_submission() {
    let story = Story::submitted_in(
        json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }], "auto_approve": true }),
        TenantMode::Auto,
    );
    assert_eq!(
        story
            .events
            .iter()
            .map(ActionEvent::event_type)
            .collect::<Vec<_>>(),
        ["ActionSubmitted", "ActionApproved"]
    );
    assert!(
        matches!(story.last(), ActionEvent::ActionApproved(a) if a.reason == ApprovalReason::AutoApproved)
    );
    assert_eq!(story.status(), ActionStatus::Approved);
}

#[test]
fn auto_mode_without_auto_approve_and_require_approval_mode_wait_for_votes() {
    let auto_no_flag = Story::submitted_in(any(1), TenantMode::Auto);
    assert_eq!(auto_no_flag.status(), ActionStatus::Pending);
    let require_with_flag = Story::submitted_in(
        json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }], "auto_approve": true }),
        TenantMode::RequireApproval,
    );
    assert_eq!(require_with_flag.status(), ActionStatus::Pending);
    let safe_with_flag = Story::submitted_in(
        json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }], "auto_approve": true }),
        TenantMode::Safe,
    );
    assert_eq!(safe_with_flag.status(), ActionStatus::Pending);
}

/// Safe mode always wins: an action approved while the tenant required approval is skipped when
/// the tenant is in safe mode as the executor claims it, and the event records that mode.
#[test]
fn safe_mode_now_skips_an_action_submitted_outside_safe_mode() {
    let mut story = approved(any(1));
    story.request(&requester(), 2).expect("request");
    assert_eq!(
        story.start_in(3, TenantMode::Safe),
        Ok(vec!["ExecutionSkipped"])
    );
    assert!(matches!(
        story.last(),
        ActionEvent::ExecutionSkipped(s)
            if s.reason == SkipReason::SafeMode && s.mode == Some(TenantMode::Safe)
    ));
    assert_eq!(story.status(), ActionStatus::Skipped);
    let state = story.state();
    assert_eq!(state.execution.skip_reason, Some(SkipReason::SafeMode));
    assert!(state.execution.resumable);
    assert_eq!(state.execution.attempts, 0);
    // No executor may start it, whatever the mode, until someone asks it to run again.
    assert_eq!(
        story.start_in(4, TenantMode::Auto).map_err(|e| e.code()),
        Err("invalid_state")
    );
}

/// The same precedence for an attempt not yet started after an executor's lease ran out.
#[test]
fn safe_mode_now_stops_the_retry_after_a_lease_runs_out() {
    let mut story = approved(json!({
        "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }],
        "max_attempts": 3,
    }));
    story.request(&requester(), 2).expect("request");
    assert_eq!(story.start(3), Ok(vec!["ExecutionStarted"]));
    assert_eq!(
        story.start_in(3 + 61, TenantMode::Safe),
        Ok(vec!["ExecutionFailed", "ExecutionSkipped"])
    );
    assert_eq!(story.status(), ActionStatus::Skipped);
    assert_eq!(story.state().execution.attempts, 1);
}

/// Resumable only by an explicit request, refused while the tenant is still in safe mode; once
/// it is not, the request brings the action back to approved and requested, and it runs.
#[test]
fn an_action_skipped_for_safe_mode_resumes_only_when_asked_outside_safe_mode() {
    let mut story = approved(any(1));
    story.request(&requester(), 2).expect("request");
    story.start_in(3, TenantMode::Safe).expect("skip");
    assert_eq!(
        story.request_in(&requester(), 4, TenantMode::Safe),
        Err(ActionError::SafeModeOn)
    );
    assert_eq!(
        story
            .request_in(&approver("ana"), 5, TenantMode::RequireApproval)
            .map_err(|e| e.code()),
        Err("not_permitted")
    );
    assert_eq!(story.status(), ActionStatus::Skipped);
    assert_eq!(
        story.request_in(&principal("ada", &["admin"]), 6, TenantMode::Auto),
        Ok(vec!["ExecutionResumed"])
    );
    assert!(matches!(
        story.last(),
        ActionEvent::ExecutionResumed(r) if r.mode == TenantMode::Auto && r.context.actor.as_str() == "ada"
    ));
    let state = story.state();
    assert_eq!(state.status, ActionStatus::Approved);
    assert!(state.awaits_execution());
    assert_eq!(state.execution.skip_reason, None);
    assert!(story.last().may_need_execution());
    // Asking again changes nothing; the executor starts the first attempt.
    assert_eq!(story.request(&requester(), 7), Ok(vec![]));
    assert_eq!(story.start(8), Ok(vec!["ExecutionStarted"]));
    assert_eq!(story.succeed(1, 9), Ok(vec!["ExecutionSucceeded"]));
}

/// An action submitted in safe mode keeps the old behaviour: skipped with no mode recorded,
/// never resumable.
#[test]
fn an_action_submitted_in_safe_mode_is_never_resumed() {
    let mut story = Story::submitted_in(
        json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }], "auto_execute": true }),
        TenantMode::Safe,
    );
    story.vote(&approver("ana"), Approve, 1).expect("vote");
    assert_eq!(
        story.start_in(2, TenantMode::Auto),
        Ok(vec!["ExecutionSkipped"])
    );
    assert!(matches!(story.last(), ActionEvent::ExecutionSkipped(s) if s.mode.is_none()));
    assert!(!story.state().execution.resumable);
    assert_eq!(
        story
            .request_in(&requester(), 3, TenantMode::RequireApproval)
            .map_err(|e| e.code()),
        Err("invalid_state")
    );
}

/// Events recorded before the mode was recorded still decode, as the old behaviour.
#[test]
fn an_old_skipped_event_without_a_mode_still_decodes() {
    let old = json!({ "ExecutionSkipped": {
        "tenant": "acme",
        "action_id": "00000000-0000-0000-0000-000000000001",
        "actor": "executor:one",
        "at": "2026-01-01T00:00:00Z",
        "reason": "safe_mode",
    }});
    let event: ActionEvent = serde_json::from_value(old).expect("old event decodes");
    assert!(matches!(event, ActionEvent::ExecutionSkipped(s) if s.mode.is_none()));
}

#[test]
fn safe_mode_records_a_skipped_execution_and_never_starts() {
    let mut story = Story::submitted_in(
        json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }], "auto_execute": true }),
        TenantMode::Safe,
    );
    story.vote(&approver("ana"), Approve, 1).expect("vote");
    assert_eq!(story.status(), ActionStatus::Approved);
    assert_eq!(story.start(2), Ok(vec!["ExecutionSkipped"]));
    assert!(
        matches!(story.last(), ActionEvent::ExecutionSkipped(s) if s.reason == SkipReason::SafeMode)
    );
    assert_eq!(story.status(), ActionStatus::Skipped);
    assert_eq!(story.start(3).map_err(|e| e.code()), Err("invalid_state"));
    assert!(
        !story
            .events
            .iter()
            .any(|e| matches!(e, ActionEvent::ExecutionStarted(_)))
    );
}

// ---------------------------------------------------------------- quorum: any

#[test]
fn any_rule_one_approval_approves() {
    let mut story = Story::submitted(any(1));
    assert_eq!(
        story.vote(&approver("ana"), Approve, 10),
        Ok(vec!["VoteCast", "StageApproved", "ActionApproved"])
    );
    assert_eq!(story.status(), ActionStatus::Approved);
    let decision = story.state().decision.clone().expect("decided");
    assert_eq!((decision.at, decision.by.as_str()), (at(10), "ana"));
}

#[test]
fn any_rule_one_rejection_rejects_under_the_default_unanimous_ratio() {
    let mut story = Story::submitted(any(1));
    assert_eq!(
        story.vote(&approver("ana"), Reject, 10),
        Ok(vec!["VoteCast", "ActionRejected"])
    );
    assert!(matches!(story.last(), ActionEvent::ActionRejected(r)
        if r.reason == Rejection::Ratio && r.tally == Tally { approvals: 0, rejections: 1, abstentions: 0 }));
    assert_eq!(story.status(), ActionStatus::Rejected);
}

#[test]
fn abstentions_are_recorded_but_never_approve() {
    let mut story = Story::submitted(any(2));
    assert_eq!(
        story.vote(&approver("ana"), Abstain, 1),
        Ok(vec!["VoteCast"])
    );
    assert_eq!(
        story.vote(&approver("bo"), Abstain, 2),
        Ok(vec!["VoteCast"])
    );
    assert_eq!(
        story.vote(&approver("cy"), Approve, 3),
        Ok(vec!["VoteCast"])
    );
    assert_eq!(story.status(), ActionStatus::Pending);
    assert_eq!(
        story.state().stage_progress()[0].tally,
        Tally {
            approvals: 1,
            rejections: 0,
            abstentions: 2
        }
    );
    assert_eq!(
        story.vote(&approver("di"), Approve, 4),
        Ok(vec!["VoteCast", "StageApproved", "ActionApproved"])
    );
}

#[test]
fn any_rule_uses_the_roles_it_names() {
    let mut story = Story::submitted(json!({ "stages": [{ "rules": [
        { "type": "any", "min_approvals": 1, "roles": ["owner", "admin"] }
    ] }] }));
    assert_eq!(
        story
            .vote(&approver("ana"), Approve, 1)
            .map_err(|e| e.code()),
        Err("not_eligible")
    );
    assert_eq!(
        story
            .vote(&principal("olga", &["owner"]), Approve, 2)
            .map(|t| t.len()),
        Ok(3)
    );
}

#[test]
fn a_changed_vote_replaces_the_earlier_one_and_counts_once() {
    let mut story = Story::submitted(any(2));
    story.vote(&approver("ana"), Abstain, 1).expect("abstain");
    assert_eq!(
        story.vote(&approver("ana"), Approve, 2),
        Ok(vec!["VoteCast"])
    );
    assert!(
        matches!(story.last(), ActionEvent::VoteCast(v) if v.replaces == Some(Abstain) && v.vote == Approve)
    );
    assert_eq!(
        story.state().stage_progress()[0].tally,
        Tally {
            approvals: 1,
            rejections: 0,
            abstentions: 0
        }
    );
    assert_eq!(story.status(), ActionStatus::Pending);
}

#[test]
fn an_identical_repeated_vote_records_nothing() {
    let mut story = Story::submitted(any(2));
    story.vote(&approver("ana"), Approve, 1).expect("vote");
    let before = story.events.len();
    assert_eq!(story.vote(&approver("ana"), Approve, 2), Ok(vec![]));
    assert_eq!(story.events.len(), before);
    let with_comment = ActionCommand::CastVote(CastVote {
        context: context(&approver("ana"), 3),
        vote: Approve,
        comment: Some(Comment::parse("checked the invoice").unwrap_or_else(|e| panic!("{e}"))),
    });
    assert_eq!(
        story.run(with_comment),
        Ok(vec!["VoteCast"]),
        "a new comment is recorded"
    );
}

// ---------------------------------------------------------------- quorum: role and ratio

fn payout_policy() -> Value {
    json!({ "stages": [{
        "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 2 }],
        "required_ratio": 0.6
    }] })
}

#[test]
fn role_rule_needs_n_approvals_from_role_holders() {
    let mut story = Story::submitted(payout_policy());
    assert_eq!(
        story
            .vote(&approver("ana"), Approve, 1)
            .map_err(|e| e.code()),
        Err("not_eligible")
    );
    assert_eq!(
        story.vote(&finance("fay"), Approve, 2),
        Ok(vec!["VoteCast"])
    );
    assert_eq!(
        story.vote(&finance("fox"), Approve, 3),
        Ok(vec!["VoteCast", "StageApproved", "ActionApproved"])
    );
}

#[test]
fn role_rule_rejects_when_rejections_exceed_the_tolerated_share_once_enough_have_voted() {
    let mut story = Story::submitted(payout_policy());
    // One rejection alone: participation 1 of 2, so still pending.
    assert_eq!(story.vote(&finance("fay"), Reject, 1), Ok(vec!["VoteCast"]));
    // 1 approve, 1 reject: rejections 50% > 40% tolerated → rejected.
    assert_eq!(
        story.vote(&finance("fox"), Approve, 2),
        Ok(vec!["VoteCast", "ActionRejected"])
    );
    assert_eq!(story.status(), ActionStatus::Rejected);
}

#[test]
fn a_lower_ratio_tolerates_a_rejection_until_more_approvals_arrive() {
    let mut story = Story::submitted(json!({ "stages": [{
        "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 2 }],
        "required_ratio": 0.5
    }] }));
    story.vote(&finance("f1"), Approve, 1).expect("vote");
    assert_eq!(story.vote(&finance("f2"), Reject, 2), Ok(vec!["VoteCast"]));
    assert_eq!(
        story.vote(&finance("f3"), Approve, 3),
        Ok(vec!["VoteCast", "StageApproved", "ActionApproved"])
    );
}

// ---------------------------------------------------------------- quorum: percentage and specific users

#[test]
fn percentage_rule_needs_the_ceiling_share_of_the_pool_to_have_voted() {
    let mut story = Story::submitted(json!({ "stages": [{
        "rules": [{ "type": "percentage", "percentage": 0.5, "pool": ["p1", "p2", "p3"] }]
    }] }));
    assert_eq!(
        story
            .vote(&approver("outsider"), Approve, 1)
            .map_err(|e| e.code()),
        Err("not_eligible")
    );
    assert_eq!(
        story.vote(&principal("p1", &[]), Approve, 2),
        Ok(vec!["VoteCast"])
    );
    // ceil(0.5 × 3) = 2: an abstention completes participation; the approval carries the ratio.
    assert_eq!(
        story.vote(&principal("p2", &[]), Abstain, 3),
        Ok(vec!["VoteCast", "StageApproved", "ActionApproved"])
    );
}

#[test]
fn specific_users_rule_waits_for_every_listed_user() {
    let mut story = Story::submitted(json!({ "stages": [{
        "rules": [{ "type": "specific_users", "users": ["ceo", "cfo"] }]
    }] }));
    assert_eq!(
        story.vote(&principal("ceo", &[]), Approve, 1),
        Ok(vec!["VoteCast"])
    );
    assert_eq!(
        story.vote(&principal("cfo", &[]), Approve, 2),
        Ok(vec!["VoteCast", "StageApproved", "ActionApproved"])
    );
}

#[test]
fn a_finite_pool_rejects_early_when_approval_becomes_impossible() {
    let mut story = Story::submitted(json!({ "stages": [{
        "rules": [{ "type": "specific_users", "users": ["ceo", "cfo", "coo"] }]
    }] }));
    assert_eq!(
        story.vote(&principal("ceo", &[]), Reject, 1),
        Ok(vec!["VoteCast", "ActionRejected"])
    );
    assert!(
        matches!(story.last(), ActionEvent::ActionRejected(r) if r.reason == Rejection::Unreachable)
    );
}

#[test]
fn a_pool_that_only_the_requester_could_complete_is_rejected_at_submission() {
    let story = Story::submitted(json!({ "stages": [{
        "rules": [{ "type": "specific_users", "users": ["rita"] }]
    }] }));
    assert_eq!(story.status(), ActionStatus::Rejected);
    assert!(
        matches!(story.last(), ActionEvent::ActionRejected(r) if r.reason == Rejection::Unreachable)
    );
}

// ---------------------------------------------------------------- veto

#[test]
fn a_veto_holder_rejects_alone() {
    let mut story = Story::submitted(json!({ "stages": [{
        "rules": [{ "type": "any", "min_approvals": 3 }],
        "required_ratio": 0.5,
        "veto": { "roles": ["legal"] }
    }] }));
    story.vote(&approver("ana"), Approve, 1).expect("vote");
    story.vote(&approver("bo"), Approve, 2).expect("vote");
    assert_eq!(
        story.vote(&principal("lou", &["legal"]), Reject, 3),
        Ok(vec!["VoteCast", "ActionRejected"])
    );
    assert!(matches!(story.last(), ActionEvent::ActionRejected(r)
        if r.reason == Rejection::Veto { voter: UserId::parse("lou").unwrap_or_else(|e| panic!("{e}")) }));
}

// ---------------------------------------------------------------- stages

fn two_stages() -> Value {
    json!({ "stages": [
        { "name": "owner", "rules": [{ "type": "any", "min_approvals": 1, "roles": ["owner"] }] },
        { "name": "reviewer", "rules": [{ "type": "role", "role": "reviewer", "min_approvals": 1 }] }
    ] })
}

#[test]
fn two_stages_approve_in_order() {
    let mut story = Story::submitted(two_stages());
    assert_eq!(
        story
            .vote(&principal("rev", &["reviewer"]), Approve, 1)
            .map_err(|e| e.code()),
        Err("not_eligible")
    );
    assert_eq!(
        story.vote(&principal("olga", &["owner"]), Approve, 2),
        Ok(vec!["VoteCast", "StageApproved"])
    );
    assert_eq!(story.state().stage, 1);
    assert_eq!(story.status(), ActionStatus::Pending);
    assert_eq!(
        story
            .vote(&principal("olga", &["owner"]), Approve, 3)
            .map_err(|e| e.code()),
        Err("not_eligible")
    );
    assert_eq!(
        story.vote(&principal("rev", &["reviewer"]), Approve, 4),
        Ok(vec!["VoteCast", "StageApproved", "ActionApproved"])
    );
    let progress = story.state().stage_progress();
    assert_eq!(progress.len(), 2);
    assert!(
        progress
            .iter()
            .all(|stage| stage.rules.iter().all(|rule| rule.satisfied))
    );
}

#[test]
fn a_rejection_in_the_second_stage_rejects_the_action() {
    let mut story = Story::submitted(two_stages());
    story
        .vote(&principal("olga", &["owner"]), Approve, 1)
        .expect("stage one");
    assert_eq!(
        story.vote(&principal("rev", &["reviewer"]), Reject, 2),
        Ok(vec!["VoteCast", "ActionRejected"])
    );
    assert!(matches!(story.last(), ActionEvent::ActionRejected(r) if r.stage == 1));
}

// ---------------------------------------------------------------- self approval and eligibility

#[test]
fn the_requester_cannot_vote_without_self_approval() {
    let mut story = Story::submitted(any(1));
    let me = principal("rita", &["approver"]);
    assert_eq!(
        story.vote(&me, Approve, 1),
        Err(ActionError::SelfApprovalForbidden)
    );
    assert_eq!(story.events.len(), 1);
}

#[test]
fn the_requester_may_vote_when_the_policy_allows_self_approval() {
    let mut story = Story::submitted(json!({
        "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }],
        "allow_self_approval": true
    }));
    let me = principal("rita", &["approver"]);
    assert_eq!(
        story.vote(&me, Approve, 1),
        Ok(vec!["VoteCast", "StageApproved", "ActionApproved"])
    );
}

#[test]
fn a_voter_without_an_eligible_role_is_refused_and_nothing_is_recorded() {
    let mut story = Story::submitted(any(1));
    let err = story
        .vote(&principal("aud", &["auditor"]), Approve, 1)
        .expect_err("refused");
    assert_eq!(err.code(), "not_eligible");
    assert_eq!(story.events.len(), 1);
}

#[test]
fn votes_after_the_decision_are_refused_with_invalid_state() {
    let mut story = Story::submitted(any(1));
    story.vote(&approver("ana"), Approve, 1).expect("vote");
    let err = story.vote(&approver("bo"), Reject, 2).expect_err("refused");
    assert_eq!(err.code(), "invalid_state");
    assert_eq!(
        err,
        ActionError::InvalidState {
            status: ActionStatus::Approved,
            attempted: "vote on"
        }
    );
}

// ---------------------------------------------------------------- cancel

#[test]
fn the_requester_or_an_admin_may_cancel_a_pending_action() {
    let mut mine = Story::submitted(any(1));
    assert_eq!(
        mine.run(ActionCommand::CancelAction(CancelAction {
            context: context(&requester(), 1),
            reason: None
        })),
        Ok(vec!["ActionCancelled"])
    );
    assert_eq!(mine.status(), ActionStatus::Cancelled);

    let mut theirs = Story::submitted(any(1));
    assert_eq!(
        theirs.run(ActionCommand::CancelAction(CancelAction {
            context: context(&principal("ada", &["admin"]), 1),
            reason: Some(Comment::parse("duplicate").unwrap_or_else(|e| panic!("{e}"))),
        })),
        Ok(vec!["ActionCancelled"])
    );
}

#[test]
fn others_may_not_cancel_and_nobody_cancels_a_decided_action() {
    let mut story = Story::submitted(any(1));
    let cancel = |by: &Principal, seconds| {
        ActionCommand::CancelAction(CancelAction {
            context: context(by, seconds),
            reason: None,
        })
    };
    assert_eq!(
        story.run(cancel(&approver("ana"), 1)).map_err(|e| e.code()),
        Err("not_permitted")
    );
    story.vote(&approver("ana"), Approve, 2).expect("vote");
    assert_eq!(
        story.run(cancel(&requester(), 3)).map_err(|e| e.code()),
        Err("invalid_state")
    );
}

// ---------------------------------------------------------------- deadlines

fn escalating() -> Value {
    json!({
        "stages": [{ "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 1 }] }],
        "timeout_seconds": 3600,
        "escalation_role": "cfo",
        "max_escalations": 1
    })
}

#[test]
fn expiring_before_the_deadline_is_refused() {
    let mut story = Story::submitted(escalating());
    assert_eq!(
        story.expire(3599),
        Err(ActionError::DeadlineNotReached {
            expires_at: at(3600)
        })
    );
    assert_eq!(story.events.len(), 1);
}

#[test]
fn the_deadline_escalates_then_expires() {
    let mut story = Story::submitted(escalating());
    let cfo = principal("carla", &["cfo"]);
    assert_eq!(
        story.vote(&cfo, Approve, 10).map_err(|e| e.code()),
        Err("not_eligible")
    );
    assert_eq!(story.expire(3600), Ok(vec!["ActionEscalated"]));
    assert!(matches!(story.last(), ActionEvent::ActionEscalated(e)
        if e.escalation == 1 && e.previous_expires_at == at(3600) && e.expires_at == at(7200)
            && e.escalation_role.as_str() == "cfo"));
    assert_eq!(story.status(), ActionStatus::Escalated);
    assert!(
        story.state().can_vote(&cfo),
        "the escalation role may now vote"
    );
    assert_eq!(
        story.expire(7199).map_err(|e| e.code()),
        Err("deadline_not_reached")
    );
    assert_eq!(story.expire(7300), Ok(vec!["ActionExpired"]));
    assert_eq!(story.status(), ActionStatus::Expired);
    assert_eq!(
        story.expire(9000).map_err(|e| e.code()),
        Err("invalid_state")
    );
}

#[test]
fn an_escalation_role_holder_can_complete_the_stage() {
    let mut story = Story::submitted(escalating());
    story.expire(4000).expect("escalates");
    assert_eq!(
        story.vote(&principal("carla", &["cfo"]), Approve, 4001),
        Ok(vec!["VoteCast", "StageApproved", "ActionApproved"])
    );
}

#[test]
fn on_timeout_reject_rejects_at_the_deadline() {
    let mut story = Story::submitted(json!({
        "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }],
        "timeout_seconds": 60,
        "on_timeout": "reject"
    }));
    assert_eq!(story.expire(60), Ok(vec!["ActionRejected"]));
    assert!(
        matches!(story.last(), ActionEvent::ActionRejected(r) if r.reason == Rejection::Timeout)
    );
}

#[test]
fn without_an_escalation_role_the_deadline_expires_at_once() {
    let mut story = Story::submitted(any(1));
    assert_eq!(story.expire(86_400), Ok(vec!["ActionExpired"]));
}

// ---------------------------------------------------------------- execution

fn approved(requirements: Value) -> Story {
    let mut story = Story::submitted(requirements);
    story.vote(&approver("ana"), Approve, 1).expect("approve");
    assert_eq!(story.status(), ActionStatus::Approved);
    story
}

fn auto_executing(max_attempts: u32) -> Value {
    json!({
        "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }],
        "auto_execute": true,
        "max_attempts": max_attempts
    })
}

#[test]
fn only_an_approved_action_can_start() {
    let mut story = Story::submitted(auto_executing(3));
    assert_eq!(story.start(1).map_err(|e| e.code()), Err("invalid_state"));
    let mut rejected = Story::submitted(auto_executing(3));
    rejected.vote(&approver("ana"), Reject, 1).expect("reject");
    assert_eq!(
        rejected.start(2).map_err(|e| e.code()),
        Err("invalid_state")
    );
}

#[test]
fn a_manual_policy_runs_only_after_execution_is_requested() {
    let mut story = approved(any(1));
    assert_eq!(story.start(2), Err(ActionError::ExecutionNotRequested));
    assert_eq!(
        story.request(&requester(), 3),
        Ok(vec!["ExecutionRequested"])
    );
    assert_eq!(
        story.request(&requester(), 4),
        Ok(vec![]),
        "a second request changes nothing"
    );
    assert_eq!(story.start(5), Ok(vec!["ExecutionStarted"]));
}

/// The stored types that make the executor look at an action are types the domain records, and
/// the predicate on decoded events agrees with the one on stored types.
#[test]
fn every_event_type_that_may_need_execution_is_one_the_domain_records() {
    let mut story = approved(any(1));
    story.request(&requester(), 2).expect("request");
    story.start(3).expect("start");
    story.fail(1, true, 4).expect("fail");
    story.start_in(5, TenantMode::Safe).expect("skip");
    story.request(&requester(), 6).expect("resume");
    let recorded: std::collections::BTreeSet<&str> =
        story.events.iter().map(ActionEvent::event_type).collect();
    for event_type in ActionEvent::MAY_NEED_EXECUTION {
        assert!(
            recorded.contains(event_type),
            "{event_type} is not in {recorded:?}"
        );
        assert!(ActionEvent::may_need_execution_type(event_type));
    }
    for event in &story.events {
        assert_eq!(
            event.may_need_execution(),
            ActionEvent::MAY_NEED_EXECUTION.contains(&event.event_type()),
            "{event:?}"
        );
    }
    for event_type in [
        "ActionSubmitted",
        "VoteCast",
        "StageApproved",
        "ExecutionSucceeded",
        "",
    ] {
        assert!(
            !ActionEvent::may_need_execution_type(event_type),
            "{event_type}"
        );
    }
}

#[test]
fn only_the_requester_or_an_admin_may_request_execution() {
    let mut story = approved(any(1));
    for outsider in [approver("ana"), principal("audrey", &["auditor"])] {
        assert_eq!(
            story.request(&outsider, 2).map_err(|e| e.code()),
            Err("not_permitted"),
            "{outsider:?}"
        );
    }
    assert_eq!(
        story.request(&principal("adam", &["admin"]), 3),
        Ok(vec!["ExecutionRequested"])
    );
}

#[test]
fn execution_starts_once_and_completes_once() {
    let mut story = approved(auto_executing(3));
    assert_eq!(story.start(2), Ok(vec!["ExecutionStarted"]));
    assert!(matches!(story.last(), ActionEvent::ExecutionStarted(s)
        if s.attempt == 1 && s.execution_key == story.state().execution_key && s.lease_until == at(62)));
    assert_eq!(
        story.start(3),
        Err(ActionError::AlreadyExecuting { attempt: 1 })
    );
    assert_eq!(story.succeed(1, 4), Ok(vec!["ExecutionSucceeded"]));
    assert_eq!(story.status(), ActionStatus::Executed);
    let execution = &story.state().execution;
    assert_eq!(execution.result, Some(json!({ "refund_id": "re_1" })));
    assert_eq!(execution.duration_ms, Some(420));
    assert_eq!(
        execution.undo_payload,
        Some(json!({ "order": 1042, "charge": 25.5 })),
        "falls back to the submitter's undo payload"
    );
    assert_eq!(story.start(5), Err(ActionError::AlreadyExecuted));
    assert_eq!(story.succeed(1, 6), Err(ActionError::AlreadyExecuted));
    assert_eq!(
        story.request(&requester(), 7),
        Err(ActionError::AlreadyExecuted)
    );
}

#[test]
fn a_capability_undo_payload_overrides_the_submitters() {
    let mut story = approved(auto_executing(3));
    story.start(2).expect("start");
    story
        .run(ActionCommand::RecordExecutionSuccess(
            RecordExecutionSuccess {
                context: context(&principal("executor:one", &[]), 3),
                attempt: 1,
                result: json!({}),
                undo_payload: Some(json!({ "refund": "re_1" })),
                duration_ms: 5,
            },
        ))
        .expect("success");
    assert_eq!(
        story.state().execution.undo_payload,
        Some(json!({ "refund": "re_1" }))
    );
}

#[test]
fn retryable_failures_retry_until_max_attempts_then_fail_for_good() {
    let mut story = approved(auto_executing(2));
    story.start(2).expect("attempt 1");
    assert_eq!(story.fail(1, true, 3), Ok(vec!["ExecutionFailed"]));
    assert!(
        matches!(story.last(), ActionEvent::ExecutionFailed(f) if f.will_retry && f.attempt == 1)
    );
    assert_eq!(story.status(), ActionStatus::Approved);
    assert_eq!(story.start(4), Ok(vec!["ExecutionStarted"]));
    assert!(matches!(story.last(), ActionEvent::ExecutionStarted(s) if s.attempt == 2));
    assert_eq!(story.fail(2, true, 5), Ok(vec!["ExecutionFailed"]));
    assert!(matches!(story.last(), ActionEvent::ExecutionFailed(f) if !f.will_retry));
    assert_eq!(story.status(), ActionStatus::Failed);
    assert_eq!(
        story.state().execution.last_error.as_deref(),
        Some("gateway timeout")
    );
    assert_eq!(story.start(6).map_err(|e| e.code()), Err("invalid_state"));
}

#[test]
fn a_non_retryable_failure_fails_at_once() {
    let mut story = approved(auto_executing(5));
    story.start(2).expect("start");
    story.fail(1, false, 3).expect("fail");
    assert_eq!(story.status(), ActionStatus::Failed);
}

#[test]
fn an_expired_lease_is_reclaimed_with_the_same_execution_key() {
    let mut story = approved(auto_executing(3));
    story.start(2).expect("attempt 1, lease until 62");
    assert_eq!(
        story.start(61),
        Err(ActionError::AlreadyExecuting { attempt: 1 })
    );
    assert_eq!(
        story.start(62),
        Ok(vec!["ExecutionFailed", "ExecutionStarted"])
    );
    let keys: Vec<_> = story
        .events
        .iter()
        .filter_map(|e| match e {
            ActionEvent::ExecutionStarted(s) => Some((s.attempt, s.execution_key.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(keys.len(), 2);
    assert_eq!((keys[0].0, keys[1].0), (1, 2));
    assert_eq!(keys[0].1, keys[1].1);
    // The first executor's late outcome is refused; the current attempt's is recorded.
    assert_eq!(
        story.succeed(1, 70),
        Err(ActionError::StaleAttempt {
            attempt: 1,
            current: 2
        })
    );
    assert_eq!(story.succeed(2, 71), Ok(vec!["ExecutionSucceeded"]));
}

#[test]
fn a_lease_lost_on_the_last_attempt_fails_the_action() {
    let mut story = approved(auto_executing(1));
    story.start(2).expect("attempt 1");
    assert_eq!(story.start(100), Ok(vec!["ExecutionFailed"]));
    assert_eq!(story.status(), ActionStatus::Failed);
}

// ---------------------------------------------------------------- stored contract

#[test]
fn events_round_trip_through_json_and_fold_to_the_same_state() {
    let mut story = approved(auto_executing(3));
    story.start(2).expect("start");
    story.fail(1, true, 3).expect("fail");
    story.start(4).expect("start");
    story.succeed(2, 5).expect("succeed");
    let stored = serde_json::to_value(&story.events).expect("serialize");
    let loaded: Vec<ActionEvent> = serde_json::from_value(stored).expect("deserialize");
    assert_eq!(loaded, story.events);
    assert_eq!(Action::from_events(&loaded), story.action);
}

#[test]
fn the_stored_shape_of_a_lifecycle_is_stable() {
    let mut story = Story::submitted(json!({
        "stages": [{ "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 1 }] }],
        "timeout_seconds": 600,
        "escalation_role": "cfo",
        "auto_execute": true
    }));
    story.expire(600).expect("escalate");
    story
        .run(ActionCommand::CastVote(CastVote {
            context: context(&finance("fay"), 700),
            vote: Approve,
            comment: Some(Comment::parse("matches the ticket").unwrap_or_else(|e| panic!("{e}"))),
        }))
        .expect("vote");
    story.start(701).expect("start");
    story.succeed(1, 702).expect("succeed");
    insta::assert_json_snapshot!(story.events);
}

// ---------------------------------------------------------------- rollback

#[test]
fn only_an_executed_action_with_an_undo_payload_can_be_rolled_back_once() {
    let rollback = |id: u128, seconds| {
        ActionCommand::RequestRollback(RequestRollback {
            context: context(&requester(), seconds),
            rollback_action_id: ActionId::from_uuid(uuid::Uuid::from_u128(id)),
        })
    };
    let mut story = approved(auto_executing(3));
    assert_eq!(
        story.run(rollback(9, 2)),
        Err(ActionError::NothingToRollBack)
    );
    story.start(3).expect("start");
    story.succeed(1, 4).expect("succeed");
    assert_eq!(story.run(rollback(9, 5)), Ok(vec!["RollbackRequested"]));
    assert_eq!(
        story.state().rolled_back_by,
        Some(ActionId::from_uuid(uuid::Uuid::from_u128(9)))
    );
    assert_eq!(
        story.run(rollback(9, 6)),
        Ok(vec![]),
        "the same rollback again changes nothing"
    );
    assert_eq!(
        story.run(rollback(10, 7)).map_err(|e| e.code()),
        Err("already_rolled_back")
    );
}

// ---------------------------------------------------------------- optional and richer stages

/// Reference 001's "owner + optional reviewer": an owner or an approver, then a reviewer stage
/// that is skipped when an owner approved in the first stage.
fn owner_or_reviewed() -> Value {
    json!({ "stages": [
        { "name": "approver", "rules": [{ "type": "any", "min_approvals": 1 }] },
        { "name": "reviewer", "optional": true,
          "skip_when": { "type": "role", "role": "owner", "min_approvals": 1 },
          "rules": [{ "type": "role", "role": "reviewer", "min_approvals": 1 }] }
    ] })
}

#[test]
fn an_optional_stage_is_skipped_and_recorded_when_its_rule_holds_on_the_previous_stage() {
    let mut story = Story::submitted(owner_or_reviewed());
    assert_eq!(
        story.vote(&principal("olga", &["owner"]), Approve, 1),
        Ok(vec![
            "VoteCast",
            "StageApproved",
            "StageSkipped",
            "ActionApproved"
        ])
    );
    assert!(matches!(
        &story.events[story.events.len() - 2],
        ActionEvent::StageSkipped(skipped)
            if skipped.stage == 1 && skipped.reason == StageSkip::SkipWhenHeld
    ));
    assert_eq!(story.status(), ActionStatus::Approved);
    assert_eq!(
        story.state().skipped_stages,
        BTreeMap::from([(1, StageSkip::SkipWhenHeld)])
    );
    assert_eq!(Action::from_events(&story.events), story.action);
}

#[test]
fn an_optional_stage_whose_rule_does_not_hold_must_be_approved() {
    // An approver, not an owner, approved the first stage: the reviewer stage opens.
    let mut story = Story::submitted(owner_or_reviewed());
    assert_eq!(
        story.vote(&approver("ann"), Approve, 1),
        Ok(vec!["VoteCast", "StageApproved"])
    );
    assert_eq!(
        (story.state().stage, story.status()),
        (1, ActionStatus::Pending)
    );
    assert_eq!(
        story.vote(&principal("rev", &["reviewer"]), Approve, 2),
        Ok(vec!["VoteCast", "StageApproved", "ActionApproved"])
    );
}

#[test]
fn an_optional_stage_nobody_may_vote_in_is_skipped_not_passed_silently() {
    // The second stage lists only the requester, who may not approve their own action.
    let mut story = Story::submitted(json!({ "stages": [
        { "rules": [{ "type": "any", "min_approvals": 1 }] },
        { "optional": true, "rules": [{ "type": "specific_users", "users": ["rita"] }] }
    ] }));
    assert_eq!(
        story.vote(&approver("ann"), Approve, 1),
        Ok(vec![
            "VoteCast",
            "StageApproved",
            "StageSkipped",
            "ActionApproved"
        ])
    );
    assert!(story.events.iter().any(|event| matches!(
        event,
        ActionEvent::StageSkipped(skipped) if skipped.reason == StageSkip::NoEligibleVoter
    )));
    // The same stage, not optional, rejects the action as unreachable.
    let mut story = Story::submitted(json!({ "stages": [
        { "rules": [{ "type": "any", "min_approvals": 1 }] },
        { "rules": [{ "type": "specific_users", "users": ["rita"] }] }
    ] }));
    assert_eq!(
        story.vote(&approver("ann"), Approve, 1),
        Ok(vec!["VoteCast", "StageApproved", "ActionRejected"])
    );
}

#[test]
fn optional_stage_settings_that_cannot_work_are_refused_naming_the_stage() {
    for (requirements, message) in [
        (
            json!({ "stages": [{ "optional": true, "rules": [{ "type": "any", "min_approvals": 1 }] }] }),
            "stages[0].optional",
        ),
        (
            json!({ "stages": [
                { "rules": [{ "type": "any", "min_approvals": 1 }] },
                { "skip_when": { "type": "any", "min_approvals": 1 },
                  "rules": [{ "type": "any", "min_approvals": 1 }] }
            ] }),
            "stages[1].skip_when",
        ),
    ] {
        let refused = Requirements::parse(&requirements).expect_err("refused");
        assert_eq!(refused.field, "requirements.stages", "{refused}");
        assert!(refused.message.contains(message), "{refused}");
    }
}

#[test]
fn a_policy_written_before_stage_settings_reads_and_decides_as_before() {
    let old = two_stages();
    let requirements = Requirements::parse(&old).expect("valid");
    assert!(!requirements.per_stage_deadlines());
    assert_eq!(
        serde_json::to_value(&requirements).expect("json")["stages"],
        json!([
            { "name": "owner", "rules": [{ "type": "any", "min_approvals": 1, "roles": ["owner"] }], "required_ratio": 1.0 },
            { "name": "reviewer", "rules": [{ "type": "role", "role": "reviewer", "min_approvals": 1 }], "required_ratio": 1.0 }
        ]),
        "no new field is written for a policy that does not use one"
    );
    // One deadline from submission across both stages.
    let mut story = Story::submitted(old);
    story
        .vote(&principal("olga", &["owner"]), Approve, 600)
        .expect("vote");
    assert_eq!(story.state().expires_at, at(86_400));
}

/// Each stage with its own deadline, escalation role and timeout behaviour.
fn staged_deadlines() -> Value {
    json!({
        "timeout_seconds": 3600,
        "escalation_role": "cfo",
        "stages": [
            { "rules": [{ "type": "any", "min_approvals": 1 }], "timeout_seconds": 600 },
            { "rules": [{ "type": "role", "role": "reviewer", "min_approvals": 1 }],
              "escalation_role": "legal", "on_timeout": "reject" }
        ]
    })
}

#[test]
fn a_stage_deadline_runs_from_its_opening_and_escalates_to_the_stage_role() {
    let mut story = Story::submitted(staged_deadlines());
    // Stage 1's own deadline: ten minutes after submission.
    assert_eq!(story.state().expires_at, at(600));
    assert_eq!(story.expire(600), Ok(vec!["ActionEscalated"]));
    assert!(matches!(story.last(), ActionEvent::ActionEscalated(e)
        if e.escalation_role.as_str() == "cfo" && e.expires_at == at(1200)));
    assert_eq!(
        story.vote(&principal("carl", &["cfo"]), Approve, 700),
        Ok(vec!["VoteCast", "StageApproved"])
    );
    // The second stage opens with its own deadline (the policy's hour, from its opening) and
    // without the first stage's escalation.
    let state = story.state();
    assert_eq!(
        (
            state.stage,
            state.expires_at,
            state.escalations,
            state.status
        ),
        (1, at(700 + 3600), 0, ActionStatus::Pending)
    );
    assert_eq!(
        story
            .vote(&principal("carl", &["cfo"]), Approve, 800)
            .map_err(|e| e.code()),
        Err("not_eligible"),
        "the first stage's escalation role does not carry over"
    );
    assert_eq!(story.expire(700 + 3600), Ok(vec!["ActionEscalated"]));
    assert!(matches!(story.last(), ActionEvent::ActionEscalated(e)
        if e.escalation_role.as_str() == "legal"));
    // The stage's `on_timeout: reject` applies once its escalation is spent.
    assert_eq!(story.expire(700 + 7200), Ok(vec!["ActionRejected"]));
    assert!(matches!(story.last(), ActionEvent::ActionRejected(e)
        if e.reason == Rejection::Timeout && e.stage == 1));
    assert_eq!(Action::from_events(&story.events), story.action);
}

// ---------------------------------------------------------------- votes bound to the payload

fn bound_vote(voter: &Principal, execution_key: ExecutionKey, seconds: i64) -> ActionCommand {
    ActionCommand::CastBoundVote(CastBoundVote {
        vote: CastVote {
            context: context(voter, seconds),
            vote: Approve,
            comment: None,
        },
        execution_key,
        signature: None,
    })
}

#[test]
fn a_vote_bound_to_the_actions_execution_key_is_recorded_with_it() {
    let mut story = Story::submitted(any(1));
    let key = story.state().execution_key.clone();
    assert_eq!(
        story.run(bound_vote(&approver("ann"), key.clone(), 1)),
        Ok(vec!["VoteCast", "StageApproved", "ActionApproved"])
    );
    assert!(matches!(&story.events[1], ActionEvent::VoteCast(vote)
        if vote.execution_key.as_ref() == Some(&key)));
    assert_eq!(
        story.state().ballots[0]
            .get(&approver("ann").id)
            .and_then(|ballot| ballot.execution_key.clone()),
        Some(key)
    );
}

#[test]
fn a_vote_bound_to_another_payload_is_refused_and_records_nothing() {
    let mut story = Story::submitted(any(1));
    let other = ExecutionKey::compute(
        &story.state().action_type,
        &json!({ "order": 1042, "amount": 2550 }),
    );
    let refused = story
        .run(bound_vote(&approver("ann"), other, 1))
        .expect_err("refused");
    assert_eq!(refused.code(), "payload_changed");
    assert!(
        refused
            .to_string()
            .contains(story.state().execution_key.as_str())
    );
    assert_eq!(story.events.len(), 1, "nothing recorded");
    let malformed = story
        .run(bound_vote(
            &approver("ann"),
            serde_json::from_value(json!("not-a-key")).expect("any string decodes"),
            1,
        ))
        .expect_err("refused");
    assert!(
        matches!(&malformed, ActionError::InvalidInput(e) if e.field == "execution_key"),
        "{malformed:?}"
    );
}

#[test]
fn an_unbound_vote_recorded_before_binding_existed_still_decodes() {
    let old = json!({ "VoteCast": {
        "tenant": "acme", "action_id": ActionId::from_uuid(uuid::Uuid::from_u128(7)),
        "actor": "ann", "at": at(1), "voter_roles": ["approver"], "stage": 0, "vote": "approve"
    } });
    let event: ActionEvent = serde_json::from_value(old).expect("decodes");
    assert!(matches!(event, ActionEvent::VoteCast(vote) if vote.execution_key.is_none()));
}

// ---------------------------------------------------------------- delegated votes

fn for_member(delegate: &Principal, delegator: &Principal, seconds: i64) -> ActionCommand {
    ActionCommand::CastDelegatedVote(CastDelegatedVote {
        vote: CastVote {
            context: context(delegate, seconds),
            vote: Approve,
            comment: None,
        },
        on_behalf_of: delegator.clone(),
        execution_key: None,
    })
}

#[test]
fn a_delegate_votes_in_the_delegators_place_with_the_roles_they_lent() {
    // Two finance_ops approvals; bob holds no role of his own but votes for fay.
    let mut story = Story::submitted(payout_policy());
    let bob = principal("bob", &[]);
    assert_eq!(
        story.run(for_member(&bob, &finance("fay"), 1)),
        Ok(vec!["VoteCast"])
    );
    assert!(matches!(story.last(), ActionEvent::VoteCast(vote)
        if vote.context.actor == bob.id && vote.on_behalf_of == Some(finance("fay").id)));
    let ballot = story.state().ballots[0]
        .get(&finance("fay").id)
        .cloned()
        .expect("fay's ballot");
    assert_eq!(ballot.cast_by, Some(bob.id.clone()));
    // Fay's place counts once: her own vote replaces the one cast for her.
    assert_eq!(
        story.vote(&finance("fay"), Approve, 2),
        Ok(vec!["VoteCast"])
    );
    assert_eq!(story.state().ballots[0].len(), 1);
    assert_eq!(
        story.vote(&finance("fin"), Approve, 3),
        Ok(vec!["VoteCast", "StageApproved", "ActionApproved"])
    );
    assert_eq!(Action::from_events(&story.events), story.action);
}

#[test]
fn a_delegate_never_votes_twice_in_a_stage_nor_on_their_own_request() {
    let mut story = Story::submitted(any(3));
    let bob = approver("bob");
    story.vote(&bob, Approve, 1).expect("bob's own vote");
    assert_eq!(
        story
            .run(for_member(&bob, &approver("ann"), 2))
            .map_err(|e| e.code()),
        Err("already_voted_in_stage")
    );
    let mut story = Story::submitted(any(3));
    story
        .run(for_member(&bob, &approver("ann"), 1))
        .expect("for ann");
    for refused in [
        story.vote(&bob, Approve, 2),
        story.run(for_member(&bob, &approver("amy"), 3)),
    ] {
        assert_eq!(refused.map_err(|e| e.code()), Err("already_voted_in_stage"));
    }
    // Neither in the requester's place nor by the requester.
    assert_eq!(
        story
            .run(for_member(&approver("carl"), &requester(), 4))
            .map_err(|e| e.code()),
        Err("self_approval_forbidden")
    );
    assert_eq!(
        story
            .run(for_member(&requester(), &approver("dan"), 5))
            .map_err(|e| e.code()),
        Err("self_approval_forbidden")
    );
    // The delegator must be eligible: the lent roles are what counts.
    assert_eq!(
        story
            .run(for_member(
                &approver("carl"),
                &principal("ivy", &["auditor"]),
                6
            ))
            .map_err(|e| e.code()),
        Err("not_eligible")
    );
    assert_eq!(story.events.len(), 2, "refusals record nothing");
}

// ---------------------------------------------------------------- break-glass

fn two_approvers() -> Value {
    json!({ "stages": [
        { "rules": [{ "type": "role", "role": "approver", "min_approvals": 2 }] },
        { "rules": [{ "type": "role", "role": "finance", "min_approvals": 1 }] },
    ] })
}

fn break_glass(by: &Principal, justification: &str, seconds: i64) -> ActionCommand {
    ActionCommand::BreakGlassApprove(BreakGlassApprove {
        context: context(by, seconds),
        justification: Comment::parse(justification).unwrap_or_else(|e| panic!("{e}")),
        review_due: at(seconds + 86_400),
    })
}

fn review(by: &Principal, verdict: ReviewVerdict, seconds: i64) -> ActionCommand {
    ActionCommand::ReviewBreakGlass(ReviewBreakGlass {
        context: context(by, seconds),
        verdict,
        comment: None,
    })
}

#[test]
fn a_breaker_approves_a_pending_action_alone_and_it_is_marked() {
    let mut story = Story::submitted(two_approvers());
    let breaker = principal("bea", &["break_glass"]);
    assert_eq!(
        story.run(break_glass(&breaker, "prod is down", 5)),
        Ok(vec!["BreakGlassApproved", "ActionApproved"])
    );
    let state = story.action.state().unwrap_or_else(|| unreachable!());
    assert_eq!(state.status, ActionStatus::Approved);
    let glass = state.break_glass.as_ref().unwrap_or_else(|| unreachable!());
    assert_eq!(glass.by.as_str(), "bea");
    assert_eq!(glass.justification.as_str(), "prod is down");
    assert_eq!(glass.review_due, at(5 + 86_400));
    assert!(matches!(
        story.events.last(),
        Some(ActionEvent::ActionApproved(a)) if a.reason == ApprovalReason::BreakGlass
    ));
    // The events fold back to the same state.
    assert_eq!(Action::from_events(&story.events), story.action);
}

#[test]
fn break_glass_is_refused_without_the_role_on_ones_own_request_and_once_decided() {
    let mut story = Story::submitted(two_approvers());
    let code = |result: Result<Vec<&'static str>, ActionError>| result.map_err(|e| e.code());
    assert_eq!(
        code(story.run(break_glass(
            &principal("amy", &["approver", "admin"]),
            "x",
            1
        ))),
        Err("not_permitted")
    );
    assert_eq!(
        code(story.run(break_glass(&principal("rita", &["break_glass"]), "x", 2))),
        Err("self_approval_forbidden")
    );
    assert_eq!(story.events.len(), 1, "refusals record nothing");
    let breaker = principal("bea", &["break_glass"]);
    assert!(story.run(break_glass(&breaker, "outage", 3)).is_ok());
    assert_eq!(
        code(story.run(break_glass(&principal("bo", &["break_glass"]), "again", 4))),
        Err("invalid_state")
    );
}

#[test]
fn a_justification_must_be_visible_text() {
    let story = Story::submitted(two_approvers());
    let refused = story.action.decide(break_glass(
        &principal("bea", &["break_glass"]),
        "\u{200b}",
        1,
    ));
    assert!(
        matches!(&refused, Err(ActionError::InvalidInput(e)) if e.field == "justification"),
        "{refused:?}"
    );
}

#[test]
fn an_eligible_approver_reviews_a_break_glass_approval_once() {
    let mut story = Story::submitted(two_approvers());
    let breaker = principal("bea", &["break_glass", "approver"]);
    let code = |result: Result<Vec<&'static str>, ActionError>| result.map_err(|e| e.code());
    assert_eq!(
        code(story.run(review(
            &principal("amy", &["approver"]),
            ReviewVerdict::Upheld,
            1
        ))),
        Err("invalid_state"),
        "nothing to review before the glass is broken"
    );
    assert!(story.run(break_glass(&breaker, "outage", 2)).is_ok());
    assert_eq!(
        code(story.run(review(&breaker, ReviewVerdict::Upheld, 3))),
        Err("not_permitted"),
        "not the breaker"
    );
    assert_eq!(
        code(story.run(review(
            &principal("ivy", &["auditor"]),
            ReviewVerdict::Upheld,
            3
        ))),
        Err("not_permitted"),
        "not someone who could not vote"
    );
    assert_eq!(
        code(story.run(review(
            &principal("rita", &["approver"]),
            ReviewVerdict::Upheld,
            3
        ))),
        Err("self_approval_forbidden")
    );
    // An approver of a later stage is eligible too.
    assert_eq!(
        story.run(review(
            &principal("fay", &["finance"]),
            ReviewVerdict::Disputed,
            4
        )),
        Ok(vec!["BreakGlassReviewed"])
    );
    let state = story.action.state().unwrap_or_else(|| unreachable!());
    let reviewed = state
        .break_glass
        .as_ref()
        .and_then(|glass| glass.review.as_ref())
        .unwrap_or_else(|| unreachable!());
    assert_eq!(reviewed.verdict, ReviewVerdict::Disputed);
    assert_eq!(reviewed.by.as_str(), "fay");
    assert_eq!(
        code(story.run(review(
            &principal("amy", &["approver"]),
            ReviewVerdict::Upheld,
            5
        ))),
        Err("invalid_state"),
        "one review"
    );
    assert_eq!(Action::from_events(&story.events), story.action);
}

// ---------------------------------------------------------------- signed votes

fn signed_vote(
    voter: &Principal,
    signer: &crate::signing::VoteSigner,
    story: &Story,
    signed_at: i64,
    cast_at: i64,
) -> ActionCommand {
    let state = story.state();
    ActionCommand::CastBoundVote(CastBoundVote {
        vote: CastVote {
            context: context(voter, cast_at),
            vote: Approve,
            comment: None,
        },
        execution_key: state.execution_key.clone(),
        signature: Some(signer.sign(
            &state.tenant,
            &state.id,
            &state.execution_key,
            Approve,
            at(signed_at),
        )),
    })
}

#[test]
fn a_signed_vote_is_checked_recorded_and_replayed_and_a_bad_one_records_nothing() {
    let signer = crate::signing::VoteSigner::from_seed([3; 32]);
    let mut story = Story::submitted(any(2));
    // Signed over another vote (reject instead of approve): refused, nothing recorded.
    let mut forged = signed_vote(&approver("ann"), &signer, &story, 1, 1);
    if let ActionCommand::CastBoundVote(bound) = &mut forged {
        bound.vote.vote = Reject;
    }
    assert_eq!(
        story.run(forged).map_err(|e| e.code()),
        Err("bad_signature")
    );
    // Signed long before it arrives: refused.
    assert_eq!(
        story
            .run(signed_vote(&approver("ann"), &signer, &story, 1, 1 + 301))
            .map_err(|e| e.code()),
        Err("signed_at_out_of_window")
    );
    assert_eq!(story.events.len(), 1, "nothing recorded");
    assert_eq!(
        story.run(signed_vote(&approver("ann"), &signer, &story, 1, 3)),
        Ok(vec!["VoteCast"])
    );
    let ActionEvent::VoteCast(cast) = story.last() else {
        panic!("a vote");
    };
    let signature = cast.signature.clone().expect("recorded");
    assert_eq!(signature.public_key, signer.public_key());
    assert_eq!(
        story.state().ballots[0]
            .get(&approver("ann").id)
            .and_then(|ballot| ballot.signature.clone()),
        Some(signature)
    );
    // The replay decides the recorded vote again, signature included.
    let mut replayed = Action::default();
    for event in &story.events[..1] {
        replayed.apply(event.clone());
    }
    let again = replayed.decide(cast.command()).expect("replayed");
    assert_eq!(again, vec![story.last().clone()]);
    assert_eq!(Action::from_events(&story.events), story.action);
}
