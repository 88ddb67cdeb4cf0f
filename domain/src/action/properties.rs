//! Property tests of the invariants, over random policies, modes and command sequences:
//!
//! (a) folding the emitted events from scratch (through their stored JSON) reproduces the state;
//! (b) within a stage, the decision depends only on the voters' final votes: not on the order in
//!     which they were cast, nor on votes they replaced. (A stage decides at the first moment a
//!     threshold is met, so when a permutation reaches a threshold before its last vote, it decides
//!     on fewer votes; those cases are discarded, see `docs/approvals.md`.)
//! (c) nothing starts executing unless every stage's requirements were met (checked by an
//!     independent count written from the specification), or the action was auto-approved;
//! (d) no action ever records two successful executions.
//!
//! The policies include optional stages (with and without `skip_when`) and per-stage deadlines;
//! the votes include votes bound to the right or to another payload's execution key, and votes
//! cast in another voter's place (a delegation the application would have checked): (c) then
//! also holds each skipped stage to its recorded reason, and counts a delegated ballot as the
//! delegator's.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::tests::{Story, context, principal};
use super::*;
use crate::Role;
use crate::policy::{Rule, Stage};
use crate::quorum::Vote;

/// The voters every generated policy can draw on: (id, roles).
const VOTERS: &[(&str, &[&str])] = &[
    ("ana", &["approver"]),
    ("bo", &["approver", "finance_ops"]),
    ("fay", &["finance_ops"]),
    ("olga", &["owner"]),
    ("ada", &["admin", "legal"]),
    ("carla", &["cfo"]),
    ("rita", &["requester", "approver"]),
    ("zed", &["auditor"]),
];

fn voter(index: usize) -> Principal {
    let (id, roles) = VOTERS[index % VOTERS.len()];
    principal(id, roles)
}

fn rule() -> impl Strategy<Value = Value> {
    let users =
        proptest::sample::subsequence(vec!["ana", "bo", "fay", "olga", "carla", "rita"], 1..=4);
    prop_oneof![
        (1u32..=3, any::<bool>()).prop_map(|(n, named)| if named {
            json!({ "type": "any", "min_approvals": n, "roles": ["owner", "admin"] })
        } else {
            json!({ "type": "any", "min_approvals": n })
        }),
        (1u32..=2)
            .prop_map(|n| json!({ "type": "role", "role": "finance_ops", "min_approvals": n })),
        (
            prop::sample::select(vec![0.34, 0.5, 0.67, 1.0]),
            users.clone()
        )
            .prop_map(|(p, pool)| json!({ "type": "percentage", "percentage": p, "pool": pool })),
        users.prop_map(|users| json!({ "type": "specific_users", "users": users })),
    ]
}

fn stage() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(rule(), 1..=2),
        prop::sample::select(vec![0.0, 0.5, 0.6, 1.0]),
        prop::option::of(prop_oneof![
            Just(json!({ "users": ["olga"] })),
            Just(json!({ "roles": ["legal"] })),
        ]),
    )
        .prop_map(|(rules, ratio, veto)| {
            let mut stage = json!({ "rules": rules, "required_ratio": ratio });
            if let Some(veto) = veto {
                stage["veto"] = veto;
            }
            stage
        })
}

/// How a later stage may differ: optional (skipped when nobody may vote), optional with a
/// `skip_when` rule, with a deadline and an escalation role of its own, or none of these.
fn stage_settings() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => Just(json!({})),
        1 => Just(json!({ "optional": true })),
        1 => rule().prop_map(|rule| json!({ "optional": true, "skip_when": rule })),
        1 => Just(json!({ "timeout_seconds": 300, "escalation_role": "legal", "on_timeout": "reject" })),
    ]
}

fn requirements(stages: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Value> {
    (
        prop::collection::vec((stage(), stage_settings()), stages),
        any::<bool>(),
        prop::sample::select(vec!["expire", "reject"]),
        0u32..=2,
        any::<[bool; 3]>(),
        1u32..=3,
    )
        .prop_map(
            |(stages, escalates, on_timeout, max_escalations, flags, max_attempts)| {
                let [auto_execute, auto_approve, allow_self_approval] = flags;
                // The first stage is never optional.
                let stages: Vec<Value> = stages
                    .into_iter()
                    .enumerate()
                    .map(|(index, (mut stage, settings))| {
                        if index > 0
                            && let (Some(stage), Some(settings)) =
                                (stage.as_object_mut(), settings.as_object())
                        {
                            stage.extend(settings.clone());
                        }
                        stage
                    })
                    .collect();
                let mut requirements = json!({
                    "stages": stages,
                    "timeout_seconds": 1000,
                    "on_timeout": on_timeout,
                    "max_escalations": max_escalations,
                    "auto_execute": auto_execute,
                    "auto_approve": auto_approve,
                    "allow_self_approval": allow_self_approval,
                    "max_attempts": max_attempts,
                });
                if escalates {
                    requirements["escalation_role"] = json!("cfo");
                }
                requirements
            },
        )
}

fn mode() -> impl Strategy<Value = TenantMode> {
    prop_oneof![
        Just(TenantMode::Safe),
        Just(TenantMode::RequireApproval),
        Just(TenantMode::Auto)
    ]
}

fn vote() -> impl Strategy<Value = Vote> {
    prop_oneof![Just(Vote::Approve), Just(Vote::Reject), Just(Vote::Abstain)]
}

#[derive(Debug, Clone)]
enum Step {
    Vote(usize, Vote),
    /// A vote bound to the action's execution key (`true`) or to another payload's.
    BoundVote(usize, bool),
    /// The first voter votes in the second's place.
    DelegatedVote(usize, usize, Vote),
    Expire,
    Cancel(usize),
    /// A voter asks it to run; `true` while the tenant is in safe mode now.
    Request(usize, bool),
    /// An executor claims it; `true` while the tenant is in safe mode now.
    Start(bool),
    Succeed(u32),
    Fail(u32, bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..VOTERS.len(), vote()).prop_map(|(v, vote)| Step::Vote(v, vote)),
        1 => (0..VOTERS.len(), any::<bool>()).prop_map(|(v, right)| Step::BoundVote(v, right)),
        2 => (0..VOTERS.len(), 0..VOTERS.len(), vote())
            .prop_map(|(by, of, vote)| Step::DelegatedVote(by, of, vote)),
        1 => Just(Step::Expire),
        1 => (0..VOTERS.len()).prop_map(Step::Cancel),
        1 => (0..VOTERS.len(), any::<bool>()).prop_map(|(v, safe)| Step::Request(v, safe)),
        2 => prop_oneof![3 => Just(false), 1 => Just(true)].prop_map(Step::Start),
        1 => (0u32..=1).prop_map(Step::Succeed),
        1 => (0u32..=1, any::<bool>()).prop_map(|(back, retryable)| Step::Fail(back, retryable)),
    ]
}

/// Runs a step at `seconds`, ignoring refusals (they must record nothing).
fn run(story: &mut Story, step: &Step, seconds: i64) {
    let before = story.events.len();
    let attempt = |back: u32| story.state().execution.attempts.saturating_sub(back);
    let command = match step {
        Step::Vote(v, vote) => ActionCommand::CastVote(CastVote {
            context: context(&voter(*v), seconds),
            vote: *vote,
            comment: None,
        }),
        Step::BoundVote(v, right) => ActionCommand::CastBoundVote(CastBoundVote {
            vote: CastVote {
                context: context(&voter(*v), seconds),
                vote: Vote::Approve,
                comment: None,
            },
            execution_key: if *right {
                story.state().execution_key.clone()
            } else {
                ExecutionKey::compute(&story.state().action_type, &json!({ "another": "payload" }))
            },
            signature: None,
        }),
        Step::DelegatedVote(by, of, vote) => ActionCommand::CastDelegatedVote(CastDelegatedVote {
            vote: CastVote {
                context: context(&voter(*by), seconds),
                vote: *vote,
                comment: None,
            },
            on_behalf_of: voter(*of),
            execution_key: None,
        }),
        Step::Expire => ActionCommand::ExpireAction(ExpireAction {
            context: context(&principal("system:deadlines", &[]), seconds),
        }),
        Step::Cancel(v) => ActionCommand::CancelAction(CancelAction {
            context: context(&voter(*v), seconds),
            reason: None,
        }),
        Step::Request(v, safe) => ActionCommand::RequestExecution(RequestExecution {
            context: context(&voter(*v), seconds),
            mode: mode_now(*safe),
        }),
        Step::Start(safe) => ActionCommand::StartExecution(StartExecution {
            context: context(&principal("executor:one", &[]), seconds),
            lease_seconds: 30,
            mode: mode_now(*safe),
        }),
        Step::Succeed(back) => ActionCommand::RecordExecutionSuccess(RecordExecutionSuccess {
            context: context(&principal("executor:one", &[]), seconds),
            attempt: attempt(*back),
            result: json!({ "ok": true }),
            undo_payload: None,
            duration_ms: 3,
        }),
        Step::Fail(back, retryable) => {
            ActionCommand::RecordExecutionFailure(RecordExecutionFailure {
                context: context(&principal("executor:one", &[]), seconds),
                attempt: attempt(*back),
                error: "boom".into(),
                retryable: *retryable,
            })
        }
    };
    let bound_elsewhere = matches!(step, Step::BoundVote(_, false));
    match story.run(command) {
        Err(_) => assert_eq!(
            story.events.len(),
            before,
            "a refused command recorded events"
        ),
        Ok(_) => assert!(!bound_elsewhere, "a vote bound to another payload counted"),
    }
    if matches!(step, Step::Start(true)) {
        assert!(
            !story.events[before..]
                .iter()
                .any(|event| matches!(event, ActionEvent::ExecutionStarted(_))),
            "an attempt started while the tenant was in safe mode"
        );
    }
}

fn mode_now(safe: bool) -> TenantMode {
    if safe {
        TenantMode::Safe
    } else {
        TenantMode::RequireApproval
    }
}

fn play(requirements: Value, mode: TenantMode, steps: &[(Step, i64)]) -> Story {
    let mut story = Story::submitted_in(requirements, mode);
    let mut now = 0;
    for (step, delay) in steps {
        now += delay;
        run(&mut story, step, now);
    }
    story
}

/// Whether a stage's requirements hold for these final ballots, counted straight from the
/// specification, independently of `quorum.rs`.
fn oracle_stage_met(
    stage: &Stage,
    ballots: &BTreeMap<UserId, (BTreeSet<Role>, Vote)>,
    escalated: Option<&Role>,
) -> bool {
    let has = |roles: &BTreeSet<Role>, wanted: &[Role]| {
        wanted.iter().any(|role| roles.contains(role))
            || escalated.is_some_and(|e| roles.contains(e))
    };
    let approvals = ballots
        .values()
        .filter(|(_, v)| *v == Vote::Approve)
        .count();
    let rejections = ballots.values().filter(|(_, v)| *v == Vote::Reject).count();
    if approvals == 0 {
        return false;
    }
    // approvals / (approvals + rejections) >= ratio, in basis points.
    if approvals * 10_000
        < usize::from(stage.required_ratio.basis_points()) * (approvals + rejections)
    {
        return false;
    }
    stage.rules.iter().all(|rule| match rule {
        Rule::Any {
            min_approvals,
            roles,
        } => {
            let wanted: Vec<Role> = if roles.is_empty() {
                Rule::default_any_roles().to_vec()
            } else {
                roles.clone()
            };
            ballots
                .values()
                .filter(|(r, v)| *v == Vote::Approve && has(r, &wanted))
                .count()
                >= min_approvals.get() as usize
        }
        Rule::Role {
            role,
            min_approvals,
        } => {
            ballots
                .values()
                .filter(|(r, v)| *v == Vote::Approve && has(r, std::slice::from_ref(role)))
                .count()
                >= min_approvals.get() as usize
        }
        Rule::Percentage { percentage, pool } => {
            let voted = pool
                .iter()
                .filter(|user| ballots.contains_key(*user))
                .count();
            let needed = (pool.len() * usize::from(percentage.basis_points())).div_ceil(10_000);
            voted >= needed
        }
        Rule::SpecificUsers { users } => users.iter().all(|user| ballots.contains_key(user)),
    })
}

/// Whether one rule alone holds for these ballots (a `skip_when` rule).
fn oracle_rule_met(
    rule: &Rule,
    ballots: &BTreeMap<UserId, (BTreeSet<Role>, Vote)>,
    escalated: Option<&Role>,
) -> bool {
    let alone: Stage =
        serde_json::from_value(json!({ "rules": [rule], "required_ratio": 0.0 })).expect("a stage");
    // The ratio and the "at least one approval" of a stage do not apply to a rule alone.
    let mut approving = ballots.clone();
    approving.insert(
        UserId::parse("oracle:approval").expect("id"),
        (BTreeSet::new(), Vote::Approve),
    );
    oracle_stage_met(&alone, &approving, escalated)
}

/// Whether nobody at all may vote in a stage: only listed users count, and all of them are the
/// requester, who may not vote.
fn oracle_nobody_may_vote(stage: &Stage, requester: &UserId, self_approval: bool) -> bool {
    let mut listed: Vec<&UserId> = stage.veto.users.iter().collect();
    for rule in &stage.rules {
        match rule {
            Rule::Percentage { pool: users, .. } | Rule::SpecificUsers { users } => {
                listed.extend(users.iter());
            }
            Rule::Any { .. } | Rule::Role { .. } => return false,
        }
    }
    stage.veto.roles.is_empty() && !self_approval && listed.iter().all(|user| *user == requester)
}

/// (c): checks the history leading to every execution start.
fn check_execution_was_earned(story: &Story) {
    let Some(ActionEvent::ActionSubmitted(submitted)) = story.events.first() else {
        panic!("history does not start with a submission");
    };
    let requirements = &submitted.policy.requirements;
    let stages = requirements.stages.len();
    let mut ballots: Vec<BTreeMap<UserId, (BTreeSet<Role>, Vote)>> = vec![BTreeMap::new(); stages];
    // The escalation role in force in each stage, once it escalated.
    let mut escalated: Vec<Option<Role>> = vec![None; stages];
    let mut skipped: BTreeMap<usize, StageSkip> = BTreeMap::new();
    let mut current = 0usize;
    let mut auto_approved = false;
    let requester = &submitted.context.actor;
    for event in &story.events {
        match event {
            ActionEvent::VoteCast(vote) => {
                ballots[vote.stage as usize].insert(
                    vote.ballot_of().clone(),
                    (vote.voter_roles.clone(), vote.vote),
                );
                assert!(
                    requirements.allow_self_approval
                        || (vote.context.actor != *requester && vote.ballot_of() != requester),
                    "the requester voted without self-approval"
                );
                if let Some(key) = &vote.execution_key {
                    assert_eq!(
                        *key, submitted.execution_key,
                        "a vote bound to another payload"
                    );
                }
            }
            ActionEvent::ActionEscalated(escalation) => {
                escalated[current] = Some(escalation.escalation_role.clone());
            }
            ActionEvent::StageApproved(StageApproved { stage, .. })
            | ActionEvent::StageSkipped(StageSkipped { stage, .. }) => {
                if let ActionEvent::StageSkipped(skip) = event {
                    skipped.insert(*stage as usize, skip.reason.clone());
                }
                let next = *stage as usize + 1;
                if next < stages {
                    if !requirements.per_stage_deadlines() {
                        escalated[next] = escalated[current].clone();
                    }
                    current = next;
                }
            }
            ActionEvent::ActionApproved(approved) => {
                auto_approved = approved.reason == ApprovalReason::AutoApproved;
                if auto_approved {
                    assert!(
                        submitted.mode == TenantMode::Auto && requirements.auto_approve,
                        "auto-approved outside auto mode"
                    );
                }
            }
            ActionEvent::ExecutionStarted(_) => {
                assert_ne!(submitted.mode, TenantMode::Safe, "executed in safe mode");
                if !auto_approved {
                    for (index, stage) in requirements.stages.iter().enumerate() {
                        let role = escalated[index].as_ref();
                        let met = match skipped.get(&index) {
                            None => oracle_stage_met(stage, &ballots[index], role),
                            Some(StageSkip::SkipWhenHeld) => {
                                let rule = stage.skip_when.as_ref().expect("a skip_when rule");
                                stage.optional
                                    && index > 0
                                    && oracle_rule_met(
                                        rule,
                                        &ballots[index - 1],
                                        escalated[index - 1].as_ref(),
                                    )
                            }
                            Some(StageSkip::NoEligibleVoter) => {
                                stage.optional
                                    && index > 0
                                    && oracle_nobody_may_vote(
                                        stage,
                                        requester,
                                        requirements.allow_self_approval,
                                    )
                            }
                        };
                        assert!(
                            met,
                            "stage {index} unmet at execution: {:?} (skipped: {:?})",
                            ballots[index],
                            skipped.get(&index)
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// (a) and (d), with (c) checked on the same histories.
    #[test]
    fn any_command_sequence_folds_back_executes_only_when_earned_and_at_most_once(
        requirements in requirements(1..=2),
        mode in mode(),
        steps in prop::collection::vec((step(), 0i64..700), 0..40),
    ) {
        let story = play(requirements, mode, &steps);

        let stored = serde_json::to_string(&story.events).expect("events serialize");
        let loaded: Vec<ActionEvent> = serde_json::from_str(&stored).expect("events deserialize");
        prop_assert_eq!(&Action::from_events(&loaded), &story.action);

        let successes = story.events.iter().filter(|e| matches!(e, ActionEvent::ExecutionSucceeded(_))).count();
        prop_assert!(successes <= 1, "{} successful executions", successes);

        check_execution_was_earned(&story);
    }

    /// (b): replaying the accepted final votes of a stage in another order, without the votes they
    /// replaced, decides the same way whenever every one of them is counted.
    #[test]
    fn the_decision_does_not_depend_on_the_order_of_the_final_votes(
        requirements in requirements(1..=1),
        votes in prop::collection::vec((0..VOTERS.len(), vote()), 1..12),
        seed in any::<u64>(),
    ) {
        let mut requirements = requirements;
        requirements["auto_approve"] = json!(false);
        let steps: Vec<_> = votes.iter().map(|(v, vote)| (Step::Vote(*v, *vote), 1)).collect();
        let original = play(requirements.clone(), TenantMode::RequireApproval, &steps);

        let mut finals: BTreeMap<UserId, (usize, Vote)> = BTreeMap::new();
        for event in &original.events {
            if let ActionEvent::VoteCast(cast) = event {
                let index = VOTERS.iter().position(|(id, _)| *id == cast.context.actor.as_str()).expect("known voter");
                finals.insert(cast.context.actor.clone(), (index, cast.vote));
            }
        }
        let mut reordered: Vec<(usize, Vote)> = finals.into_values().collect();
        // A deterministic shuffle from the seed.
        let mut state = seed | 1;
        for i in (1..reordered.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            reordered.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let steps: Vec<_> = reordered.iter().map(|(v, vote)| (Step::Vote(*v, *vote), 1)).collect();
        let replayed = play(requirements, TenantMode::RequireApproval, &steps);
        let counted = replayed.events.iter().filter(|e| matches!(e, ActionEvent::VoteCast(_))).count();
        prop_assume!(counted == reordered.len(), "the permutation decided before its last vote");
        prop_assert_eq!(replayed.status(), original.status(), "{:?}", reordered);
        prop_assert_eq!(
            replayed.state().stage_progress().last().map(|p| p.tally),
            original.state().stage_progress().last().map(|p| p.tally)
        );
    }
}

#[test]
fn the_oracle_agrees_with_a_hand_counted_example() {
    let stage: Stage = serde_json::from_value(json!({
        "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 2 }],
        "required_ratio": 0.6
    }))
    .expect("stage");
    let finance: BTreeSet<Role> = [Role::parse("finance_ops").expect("role")].into();
    let mut ballots = BTreeMap::new();
    ballots.insert(
        UserId::parse("a").expect("id"),
        (finance.clone(), Vote::Approve),
    );
    assert!(!oracle_stage_met(&stage, &ballots, None));
    ballots.insert(UserId::parse("b").expect("id"), (finance, Vote::Approve));
    assert!(oracle_stage_met(&stage, &ballots, None));
}
