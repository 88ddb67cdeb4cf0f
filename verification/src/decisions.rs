//! The decision replay check: does the current domain code still make the decisions that were
//! recorded?
//!
//! Each action's recorded events are cut into the runs that one command produced, and each run's
//! command is rebuilt from its first event, which records every input the decision used: the
//! submission, mode and frozen policy of `ActionSubmitted`; the voter, their roles, the vote and
//! comment of `VoteCast`; the time of a deadline; the attempt, result or error of an execution.
//! The command is then decided again by `Action::decide` on the state folded from the earlier
//! events, and what it emits must equal the recorded run exactly — the risk score and reasons,
//! the execution key, deadlines, stage approvals, the final decision and its tally.
//!
//! What it cannot check (see `docs/verification.md`): inputs that are not recorded — who may
//! cancel, execute or roll back (anyone but the requester is assumed to have been an admin), the roles a
//! credential really granted, the policy resolution that happened before submission — and
//! commands that were refused, which leave no events. A mismatch means the current code would
//! decide differently on the same facts (a changed scoring table or quorum rule, an event edited
//! in the store), not necessarily that the recorded decision was wrong when it was made.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use countersign_domain::action::{
    Action, ActionCommand, ActionEvent, ActionStatus, CancelAction, CommandContext, EventContext,
    ExpireAction, RecordExecutionFailure, RecordExecutionSuccess, Rejection, RequestExecution,
    RequestRollback, StartExecution, SubmitAction,
};
use countersign_domain::{Principal, Role, TenantMode};
use countersign_ledger::{Ledger, LogCursor, LoggedEvent};
use serde::Serialize;
use serde_json::Value;

/// A recorded event of an action, as read from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub sequence: i64,
    pub position: i64,
    pub event: ActionEvent,
}

/// An action whose recorded decisions the current code does not reproduce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionMismatch {
    pub tenant: String,
    pub action_id: String,
    /// The aggregate sequence of the first recorded event of the run not reproduced.
    pub sequence: i64,
    pub position: i64,
    /// The event types of the recorded run.
    pub recorded: Vec<String>,
    /// What the current code does instead.
    pub detail: String,
}

impl std::fmt::Display for DecisionMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tenant {}, action {} from sequence {} (position {}): recorded [{}]; {}",
            self.tenant,
            self.action_id,
            self.sequence,
            self.position,
            self.recorded.join(", "),
            self.detail
        )
    }
}

/// The outcome of the replay check.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionReport {
    pub actions: u64,
    pub events: u64,
    /// Commands rebuilt and decided again.
    pub commands: u64,
    /// Votes bound to the execution key they were cast on, each checked against the action's
    /// key (the payload that ran) by deciding it again.
    pub bound_votes: u64,
    pub seconds: f64,
    pub mismatches: Vec<DecisionMismatch>,
}

impl DecisionReport {
    pub fn is_ok(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// The roles of whoever directed an action (cancelled it, asked for or resumed its execution,
/// asked for its rollback), which the log does not record: the requester with their roles,
/// anyone else as an admin — the only others `ActionState::may_be_directed_by` lets direct it.
fn directing_roles(action: &Action, event: &EventContext) -> BTreeSet<Role> {
    match action.state() {
        Some(state) if state.requester.id == event.actor => state.requester.roles.clone(),
        _ => BTreeSet::from([Role::admin()]),
    }
}

fn context(event: &EventContext, roles: BTreeSet<Role>) -> CommandContext {
    CommandContext {
        tenant: event.tenant.clone(),
        by: Principal {
            id: event.actor.clone(),
            roles,
        },
        at: event.at,
        correlation_id: event.correlation_id.clone(),
    }
}

/// A mode standing in for "not safe" where the decision only needed that (an attempt started,
/// an execution requested of an approved action): those events do not record the mode.
const NOT_SAFE: TenantMode = TenantMode::RequireApproval;

/// The mode an executor's claim carried, as the claim's run records it: safe when the run ends
/// in a skip that records it, else not safe.
fn claim_mode(events: &[&ActionEvent]) -> TenantMode {
    events
        .iter()
        .find_map(|event| match event {
            ActionEvent::ExecutionSkipped(skipped) => Some(skipped.mode.unwrap_or(NOT_SAFE)),
            _ => None,
        })
        .unwrap_or(NOT_SAFE)
}

fn lease_seconds(started: Option<&ActionEvent>) -> u32 {
    match started {
        Some(ActionEvent::ExecutionStarted(started)) => {
            u32::try_from((started.lease_until - started.context.at).num_seconds()).unwrap_or(1)
        }
        _ => 1,
    }
}

/// The commands that could have produced a run starting with `events[0]`, most likely first.
pub fn candidate_commands(action: &Action, events: &[&ActionEvent]) -> Vec<ActionCommand> {
    let Some(first) = events.first() else {
        return Vec::new();
    };
    let none = BTreeSet::new;
    match first {
        ActionEvent::ActionSubmitted(submitted) => {
            vec![ActionCommand::SubmitAction(Box::new(SubmitAction {
                context: context(&submitted.context, submitted.requester_roles.clone()),
                action_id: submitted.context.action_id,
                submission: submitted.submission.clone(),
                mode: submitted.mode,
                policy: submitted.policy.clone(),
                idempotency_key: submitted.idempotency_key.clone(),
                rollback_of: submitted.rollback_of,
            }))]
        }
        // A bound vote is decided again with the key it recorded: the current code refuses it
        // (`payload_changed`) unless that key is the action's, the key every execution of the
        // action runs under. A delegated vote is decided again in the delegator's place.
        ActionEvent::VoteCast(vote) => vec![vote.command()],
        ActionEvent::ActionCancelled(cancelled) => {
            vec![ActionCommand::CancelAction(CancelAction {
                context: context(
                    &cancelled.context,
                    directing_roles(action, &cancelled.context),
                ),
                reason: cancelled.reason.clone(),
            })]
        }
        ActionEvent::ActionEscalated(escalated) => {
            vec![ActionCommand::ExpireAction(ExpireAction {
                context: context(&escalated.context, none()),
            })]
        }
        ActionEvent::ActionExpired(expired) => vec![ActionCommand::ExpireAction(ExpireAction {
            context: context(&expired.context, none()),
        })],
        ActionEvent::ActionRejected(rejected) if rejected.reason == Rejection::Timeout => {
            vec![ActionCommand::ExpireAction(ExpireAction {
                context: context(&rejected.context, none()),
            })]
        }
        ActionEvent::ExecutionRequested(requested) => {
            vec![ActionCommand::RequestExecution(RequestExecution {
                context: context(
                    &requested.context,
                    directing_roles(action, &requested.context),
                ),
                mode: NOT_SAFE,
            })]
        }
        ActionEvent::ExecutionResumed(resumed) => {
            vec![ActionCommand::RequestExecution(RequestExecution {
                context: context(&resumed.context, directing_roles(action, &resumed.context)),
                mode: resumed.mode,
            })]
        }
        ActionEvent::ExecutionStarted(started) => {
            vec![ActionCommand::StartExecution(StartExecution {
                context: context(&started.context, none()),
                lease_seconds: lease_seconds(Some(first)),
                mode: NOT_SAFE,
            })]
        }
        ActionEvent::RollbackRequested(requested) => {
            vec![ActionCommand::RequestRollback(RequestRollback {
                context: context(
                    &requested.context,
                    directing_roles(action, &requested.context),
                ),
                rollback_action_id: requested.rollback_action_id,
            })]
        }
        ActionEvent::ExecutionSkipped(skipped) => {
            // Recorded without a mode: skipped for the mode at submission, whatever the mode then.
            vec![ActionCommand::StartExecution(StartExecution {
                context: context(&skipped.context, none()),
                lease_seconds: 1,
                mode: skipped.mode.unwrap_or(NOT_SAFE),
            })]
        }
        ActionEvent::ExecutionSucceeded(succeeded) => {
            vec![ActionCommand::RecordExecutionSuccess(
                RecordExecutionSuccess {
                    context: context(&succeeded.context, none()),
                    attempt: succeeded.attempt,
                    result: succeeded.result.clone(),
                    undo_payload: succeeded.undo_payload.clone(),
                    duration_ms: succeeded.duration_ms,
                },
            )]
        }
        ActionEvent::ExecutionFailed(failed) => vec![
            ActionCommand::RecordExecutionFailure(RecordExecutionFailure {
                context: context(&failed.context, none()),
                attempt: failed.attempt,
                error: failed.error.clone(),
                retryable: failed.retryable,
            }),
            // An executor's lease ran out: the next claim records the failure (and may start
            // the next attempt).
            ActionCommand::StartExecution(StartExecution {
                context: context(&failed.context, none()),
                lease_seconds: lease_seconds(events.get(1).copied()),
                mode: claim_mode(&events[1..events.len().min(2)]),
            }),
        ],
        // A break-glass approval records the breaker's roles and the review deadline it set.
        ActionEvent::BreakGlassApproved(approved) => vec![approved.command()],
        ActionEvent::BreakGlassReviewed(reviewed) => vec![reviewed.command()],
        // The deadline reactor escalated an overdue review at the time it recorded.
        ActionEvent::BreakGlassReviewOverdue(overdue) => vec![overdue.command()],
        ActionEvent::StageApproved(_)
        | ActionEvent::StageSkipped(_)
        | ActionEvent::ActionApproved(_)
        | ActionEvent::ActionRejected(_) => Vec::new(),
    }
}

/// What replaying the start of `pending` gave.
#[derive(Debug)]
enum Step {
    /// The first `n` events are one command's, reproduced exactly.
    Matched(usize),
    /// The events so far are the start of a command's run; more should follow.
    NeedMore,
    /// Not reproduced: why.
    Mismatch(String),
}

fn types(events: &[ActionEvent]) -> String {
    events
        .iter()
        .map(ActionEvent::event_type)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fields of two events' JSON that differ, by path (`risk.score: recorded 99, now 20`).
fn differing_fields(recorded: &ActionEvent, emitted: &ActionEvent) -> String {
    let (Ok(a), Ok(b)) = (
        serde_json::to_value(recorded),
        serde_json::to_value(emitted),
    ) else {
        return String::new();
    };
    // Both are `{ "EventType": { … } }`: compare inside.
    let (a, b) = match (&a, &b) {
        (Value::Object(a), Value::Object(b)) => (
            a.values().next().cloned().unwrap_or(Value::Null),
            b.values().next().cloned().unwrap_or(Value::Null),
        ),
        _ => (a, b),
    };
    let mut found = Vec::new();
    diff_paths("", Some(&a), Some(&b), &mut found);
    let shown: Vec<String> = found.iter().take(5).cloned().collect();
    let more = found.len().saturating_sub(shown.len());
    shown.join("; ")
        + &if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        }
}

fn show(value: Option<&Value>) -> String {
    value.map_or_else(
        || "absent".to_owned(),
        |value| {
            let text = value.to_string();
            if text.len() > 80 {
                format!("{}…", &text[..text.floor_char_boundary(80)])
            } else {
                text
            }
        },
    )
}

fn diff_paths(path: &str, a: Option<&Value>, b: Option<&Value>, found: &mut Vec<String>) {
    if a == b {
        return;
    }
    let child = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                diff_paths(&child(key), a.get(key), b.get(key), found);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (a, b)) in a.iter().zip(b).enumerate() {
                diff_paths(&format!("{path}[{i}]"), Some(a), Some(b), found);
            }
        }
        _ => found.push(format!("{path}: recorded {}, now {}", show(a), show(b))),
    }
}

fn step(action: &Action, pending: &[&ActionEvent], complete: bool) -> Step {
    let candidates = candidate_commands(action, pending);
    let Some(first) = pending.first() else {
        return Step::NeedMore;
    };
    if candidates.is_empty() {
        return Step::Mismatch(format!(
            "{} does not begin any command's events: no command of the current code records it first",
            first.event_type()
        ));
    }
    let mut why = Vec::new();
    for command in candidates {
        let name = command.name();
        match action.decide(command) {
            Ok(emitted) if emitted.is_empty() => {
                why.push(format!("the current code records nothing for {name}"));
            }
            Ok(emitted) => {
                let shared = emitted.len().min(pending.len());
                let agree = emitted[..shared]
                    .iter()
                    .zip(&pending[..shared])
                    .all(|(a, b)| a == *b);
                if agree && emitted.len() <= pending.len() {
                    return Step::Matched(emitted.len());
                }
                if agree && !complete {
                    return Step::NeedMore;
                }
                let detail = match emitted[..shared]
                    .iter()
                    .zip(&pending[..shared])
                    .position(|(a, b)| a != *b)
                {
                    Some(i) if emitted[i].event_type() == pending[i].event_type() => format!(
                        "{name} decided again emits [{}]; its {} differs: {}",
                        types(&emitted),
                        emitted[i].event_type(),
                        differing_fields(pending[i], &emitted[i])
                    ),
                    _ => format!("{name} decided again emits [{}]", types(&emitted)),
                };
                why.push(detail);
            }
            Err(err) => why.push(format!("the current code refuses {name}: {err}")),
        }
    }
    Step::Mismatch(why.join("; or "))
}

/// Replays one action's recorded events from the start. Returns the commands decided again, or
/// the first run not reproduced.
pub fn check_action(events: &[Recorded]) -> Result<u64, (usize, String)> {
    let mut action = Action::default();
    let mut at = 0;
    let mut commands = 0;
    while at < events.len() {
        let pending: Vec<&ActionEvent> = events[at..].iter().map(|r| &r.event).collect();
        match step(&action, &pending, true) {
            Step::Matched(n) => {
                for recorded in &events[at..at + n] {
                    action.apply(recorded.event.clone());
                }
                at += n;
                commands += 1;
            }
            Step::NeedMore => return Err((at, "the recorded events end early".to_owned())),
            Step::Mismatch(why) => return Err((at, why)),
        }
    }
    Ok(commands)
}

/// One action being replayed while the log streams by.
#[derive(Debug, Default)]
struct Replay {
    tenant: String,
    action: Action,
    pending: Vec<Recorded>,
}

fn is_final(action: &Action) -> bool {
    action.state().is_some_and(|state| {
        // A break-glass approval waits for its review, whatever happened since.
        let awaiting_review = state
            .break_glass
            .as_ref()
            .is_some_and(|glass| glass.review.is_none());
        let settled = matches!(
            state.status,
            ActionStatus::Executed
                | ActionStatus::Failed
                | ActionStatus::Rejected
                | ActionStatus::Expired
                | ActionStatus::Cancelled
        ) || (state.status == ActionStatus::Skipped && !state.execution.resumable);
        settled && !awaiting_review
    })
}

/// Streams the log and replays every action's decisions (or one tenant's). `progress` hears the
/// events read and the log position reached.
pub async fn check_decisions(
    ledger: &Ledger,
    tenant: Option<&str>,
    mut progress: impl FnMut(u64, LogCursor),
) -> anyhow::Result<DecisionReport> {
    let started = Instant::now();
    let mut open: HashMap<String, Replay> = HashMap::new();
    // Actions reached a final state (or already reported): any later event is itself suspect.
    let mut finished: HashSet<String> = HashSet::new();
    let mut reported: HashSet<String> = HashSet::new();
    let mut report = DecisionReport {
        actions: 0,
        events: 0,
        commands: 0,
        bound_votes: 0,
        seconds: 0.0,
        mismatches: Vec::new(),
    };
    let mut cursor = LogCursor::START;
    let mut read = 0u64;
    loop {
        let batch = ledger.read_stored_log(cursor, 1000).await?;
        let Some(last) = batch.last() else { break };
        cursor = last.cursor;
        read += batch.len() as u64;
        for logged in &batch {
            if logged.aggregate_type != <Action as cqrs_es::Aggregate>::TYPE
                || tenant.is_some_and(|t| t != logged.tenant)
                || reported.contains(&logged.aggregate_id)
            {
                continue;
            }
            report.events += 1;
            let mismatch =
                |recorded: Vec<String>, detail: String, logged: &LoggedEvent| DecisionMismatch {
                    tenant: logged.tenant.clone(),
                    action_id: logged.aggregate_id.clone(),
                    sequence: logged.sequence,
                    position: logged.cursor.position,
                    recorded,
                    detail,
                };
            let event = match logged.decode::<Action>() {
                Ok(event) => event,
                Err(err) => {
                    report.mismatches.push(mismatch(
                        vec![logged.event_type.clone()],
                        format!("the current code cannot read it: {err:#}"),
                        logged,
                    ));
                    reported.insert(logged.aggregate_id.clone());
                    open.remove(&logged.aggregate_id);
                    continue;
                }
            };
            if matches!(&event, ActionEvent::VoteCast(vote) if vote.execution_key.is_some()) {
                report.bound_votes += 1;
            }
            if finished.contains(&logged.aggregate_id) {
                report.mismatches.push(mismatch(
                    vec![event.event_type().to_owned()],
                    "recorded after the action's final decision: the current code records nothing then"
                        .to_owned(),
                    logged,
                ));
                reported.insert(logged.aggregate_id.clone());
                continue;
            }
            let replay = open.entry(logged.aggregate_id.clone()).or_insert_with(|| {
                report.actions += 1;
                Replay {
                    tenant: logged.tenant.clone(),
                    ..Replay::default()
                }
            });
            replay.pending.push(Recorded {
                sequence: logged.sequence,
                position: logged.cursor.position,
                event,
            });
            if let Err(detail) = advance(replay, false, &mut report.commands) {
                let first = &replay.pending[0];
                report.mismatches.push(DecisionMismatch {
                    tenant: replay.tenant.clone(),
                    action_id: logged.aggregate_id.clone(),
                    sequence: first.sequence,
                    position: first.position,
                    recorded: replay
                        .pending
                        .iter()
                        .map(|r| r.event.event_type().to_owned())
                        .collect(),
                    detail,
                });
                reported.insert(logged.aggregate_id.clone());
                open.remove(&logged.aggregate_id);
                continue;
            }
            if replay.pending.is_empty() && is_final(&replay.action) {
                open.remove(&logged.aggregate_id);
                finished.insert(logged.aggregate_id.clone());
            }
        }
        progress(read, cursor);
    }
    let mut unfinished: Vec<(String, Replay)> = open.into_iter().collect();
    unfinished.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, mut replay) in unfinished {
        if let Err(detail) = advance(&mut replay, true, &mut report.commands) {
            let first = &replay.pending[0];
            report.mismatches.push(DecisionMismatch {
                tenant: replay.tenant.clone(),
                action_id: id,
                sequence: first.sequence,
                position: first.position,
                recorded: replay
                    .pending
                    .iter()
                    .map(|r| r.event.event_type().to_owned())
                    .collect(),
                detail,
            });
        }
    }
    report.mismatches.sort_by_key(|mismatch| mismatch.position);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Decides again every complete run at the start of `replay.pending`.
fn advance(replay: &mut Replay, complete: bool, commands: &mut u64) -> Result<(), String> {
    while !replay.pending.is_empty() {
        let pending: Vec<&ActionEvent> = replay.pending.iter().map(|r| &r.event).collect();
        match step(&replay.action, &pending, complete) {
            Step::Matched(n) => {
                for recorded in replay.pending.drain(..n) {
                    replay.action.apply(recorded.event);
                }
                *commands += 1;
            }
            Step::NeedMore if complete => {
                return Err("the recorded events end before the run the current code emits".into());
            }
            Step::NeedMore => return Ok(()),
            Step::Mismatch(why) => return Err(why),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use countersign_domain::action::{ActionCommand, CastBoundVote, CastVote};
    use countersign_domain::policy::{PolicySnapshot, Requirements};
    use countersign_domain::quorum::Vote;
    use countersign_domain::{ActionId, TenantId, UserId};
    use serde_json::json;

    fn principal(id: &str, roles: &[&str]) -> Principal {
        Principal::new(
            UserId::parse(id).expect("user"),
            roles.iter().map(|role| Role::parse(*role).expect("role")),
        )
    }

    fn context(by: &Principal, seconds: i64) -> CommandContext {
        CommandContext {
            tenant: TenantId::parse("acme").expect("tenant"),
            by: by.clone(),
            at: chrono::DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("time"),
            correlation_id: None,
        }
    }

    /// A submitted action approved by one vote bound to its execution key, as recorded.
    fn recorded() -> Vec<Recorded> {
        let requirements = Requirements::parse(
            &json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }] }),
        )
        .expect("requirements");
        let submit = ActionCommand::SubmitAction(Box::new(SubmitAction {
            context: context(&principal("rita", &["requester"]), 0),
            action_id: ActionId::from_uuid(uuid::Uuid::from_u128(9)),
            submission: serde_json::from_value(json!({
                "module": "billing", "capability": "refund", "summary": "refund",
                "payload": { "order": 7 }
            }))
            .expect("submission"),
            mode: TenantMode::RequireApproval,
            policy: PolicySnapshot::tenant_default(requirements),
            idempotency_key: None,
            rollback_of: None,
        }));
        let mut action = Action::default();
        let mut events = action.decide(submit).expect("submitted");
        for event in &events {
            action.apply(event.clone());
        }
        let key = action.state().expect("state").execution_key.clone();
        let vote = ActionCommand::CastBoundVote(CastBoundVote {
            vote: CastVote {
                context: context(&principal("ann", &["approver"]), 5),
                vote: Vote::Approve,
                comment: None,
            },
            execution_key: key,
            signature: None,
        });
        events.extend(action.decide(vote).expect("voted"));
        events
            .into_iter()
            .zip(1..)
            .map(|(event, sequence)| Recorded {
                sequence,
                position: sequence,
                event,
            })
            .collect()
    }

    #[test]
    fn a_vote_bound_to_the_payload_that_ran_replays() {
        let events = recorded();
        assert!(
            matches!(&events[1].event, ActionEvent::VoteCast(vote) if vote.execution_key.is_some())
        );
        assert_eq!(check_action(&events), Ok(2));
    }

    #[test]
    fn an_execution_requested_by_an_owner_who_is_not_the_requester_replays() {
        let mut events = recorded();
        let mut action = Action::default();
        for recorded in &events {
            action.apply(recorded.event.clone());
        }
        let request = ActionCommand::RequestExecution(RequestExecution {
            context: context(&principal("olga", &["owner"]), 9),
            mode: NOT_SAFE,
        });
        let requested = action
            .decide(request)
            .expect("an owner may request execution");
        assert!(
            requested
                .iter()
                .any(|event| matches!(event, ActionEvent::ExecutionRequested(_)))
        );
        let next = i64::try_from(events.len()).expect("a few events") + 1;
        events.extend(
            requested
                .into_iter()
                .zip(next..)
                .map(|(event, sequence)| Recorded {
                    sequence,
                    position: sequence,
                    event,
                }),
        );
        assert_eq!(check_action(&events), Ok(3));
    }

    #[test]
    fn a_bound_vote_whose_key_was_changed_in_the_store_is_named() {
        let mut events = recorded();
        let ActionEvent::VoteCast(vote) = &mut events[1].event else {
            panic!("a vote");
        };
        vote.execution_key = serde_json::from_value(json!("0".repeat(64))).expect("a key");
        let (at, why) = check_action(&events).expect_err("a mismatch");
        assert_eq!(at, 1, "the vote's run");
        assert!(why.contains("another payload"), "{why}");
    }
}
