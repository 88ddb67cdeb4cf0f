//! The rows of every projection, as pure functions of the folded action state and the events.
//! The database runner and the in-memory replay both use these, so they agree by construction.

use countersign_domain::action::{ActionEvent, ActionState, ActionStatus};
use countersign_ledger::LoggedEvent;

use crate::micros;

/// One action: what the inbox filters and sorts on, plus the folded state the detail is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRow {
    pub action_id: String,
    pub tenant: String,
    pub status: &'static str,
    pub action_type: String,
    pub module: String,
    pub capability: String,
    pub summary: String,
    pub requested_by: String,
    pub risk_score: i64,
    pub risk_level: &'static str,
    pub stage: i64,
    pub escalations: i64,
    pub allow_self_approval: i64,
    pub submitted_at: i64,
    pub expires_at: i64,
    pub decided_at: Option<i64>,
    /// When the deadline reactor has to escalate a break-glass approval's review (while it is
    /// neither recorded nor escalated).
    pub review_due: Option<i64>,
    /// The current stage's progress (`StageProgress`: tally and each rule's counted/needed), as
    /// JSON: the inbox's vote summary.
    pub vote_summary: Option<String>,
    /// The break-glass approval's mark (`BreakGlassMark`), as JSON, when it had one.
    pub break_glass: Option<String>,
    /// How many stages the policy has and the current stage's rules (`StageRules`), as JSON:
    /// the console's words for the progress.
    pub stage_rules: Option<String>,
    /// Global position of the last event folded in.
    pub position: i64,
    /// The folded `ActionState`, as JSON.
    pub state: String,
}

impl ActionRow {
    pub fn from_state(state: &ActionState, position: i64) -> anyhow::Result<Self> {
        Ok(Self {
            action_id: state.id.to_string(),
            tenant: state.tenant.to_string(),
            status: state.status.as_str(),
            action_type: state.action_type.to_string(),
            module: state.submission.module.to_string(),
            capability: state.submission.capability.to_string(),
            summary: state.submission.summary.to_string(),
            requested_by: state.requester.id.to_string(),
            risk_score: i64::from(state.risk.score.value()),
            risk_level: state.risk.level.as_str(),
            stage: i64::from(state.stage),
            escalations: i64::from(state.escalations),
            allow_self_approval: i64::from(state.policy.requirements.allow_self_approval),
            submitted_at: micros(state.submitted_at),
            expires_at: micros(state.expires_at),
            decided_at: state.decision.as_ref().map(|decision| micros(decision.at)),
            review_due: state
                .break_glass
                .as_ref()
                .and_then(countersign_domain::action::BreakGlass::escalation_due)
                .map(micros),
            vote_summary: state
                .stage_progress()
                .get(state.stage as usize)
                .map(serde_json::to_string)
                .transpose()?,
            break_glass: state
                .break_glass
                .as_ref()
                .map(|glass| serde_json::to_string(&crate::query::BreakGlassMark::of(glass)))
                .transpose()?,
            stage_rules: Some(serde_json::to_string(&crate::query::StageRules::of(state))?),
            position,
            state: serde_json::to_string(state)?,
        })
    }
}

/// Who may vote on an open action (`role`, `user`) and who already has in its current stage
/// (`voted`: each ballot's holder, and the delegate who cast one in a holder's place — nobody
/// holds or casts two ballots of a stage).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EligibilityRow {
    pub action_id: String,
    pub tenant: String,
    pub kind: &'static str,
    pub principal: String,
}

pub fn eligibility(state: &ActionState) -> Vec<EligibilityRow> {
    let Some((roles, users)) = state.electorate() else {
        return Vec::new();
    };
    let row = |kind, principal: String| EligibilityRow {
        action_id: state.id.to_string(),
        tenant: state.tenant.to_string(),
        kind,
        principal,
    };
    roles
        .iter()
        .map(|role| row("role", role.to_string()))
        .chain(users.iter().map(|user| row("user", user.to_string())))
        .chain(
            state
                .current_voters()
                .chain(
                    state
                        .ballots
                        .get(state.stage as usize)
                        .into_iter()
                        .flat_map(|ballots| ballots.values())
                        .filter_map(|ballot| ballot.cast_by.as_ref()),
                )
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(|voter| row("voted", voter.to_string())),
        )
        .collect()
}

/// One event in an action's audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub action_id: String,
    pub sequence: i64,
    pub tenant: String,
    pub position: i64,
    pub event_type: String,
    pub event_version: String,
    pub actor: String,
    pub at: i64,
    pub recorded_at: i64,
    pub correlation_id: Option<String>,
    /// The event's fields, as JSON.
    pub content: String,
}

pub fn audit_row(logged: &LoggedEvent, event: &ActionEvent) -> anyhow::Result<AuditRow> {
    let context = event.context();
    let content = match serde_json::to_value(event)? {
        // The variant's content, taken out of its tag (not copied).
        serde_json::Value::Object(mut tagged) if tagged.contains_key(event.event_type()) => tagged
            .remove(event.event_type())
            .unwrap_or(serde_json::Value::Null),
        stored => stored,
    };
    Ok(AuditRow {
        action_id: logged.aggregate_id.clone(),
        sequence: logged.sequence,
        tenant: logged.tenant.clone(),
        position: logged.cursor.position,
        event_type: logged.event_type.clone(),
        event_version: logged.event_version.clone(),
        actor: context.actor.to_string(),
        at: micros(context.at),
        recorded_at: micros(logged.recorded_at),
        correlation_id: context.correlation_id.as_ref().map(ToString::to_string),
        content: serde_json::to_string(&content)?,
    })
}

/// One vote, for the history of the member whose ballot it is (the delegator's, when a delegate
/// cast it in their place: the audit row of the same event names the delegate as its actor).
#[derive(Debug, Clone, PartialEq)]
pub struct VoteRow {
    pub action_id: String,
    pub sequence: i64,
    pub tenant: String,
    pub voter: String,
    pub stage: i64,
    pub vote: &'static str,
    pub comment: Option<String>,
    /// The voter's roles, as a JSON array.
    pub roles: String,
    pub at: i64,
}

pub fn vote_row(logged: &LoggedEvent, event: &ActionEvent) -> anyhow::Result<Option<VoteRow>> {
    let ActionEvent::VoteCast(cast) = event else {
        return Ok(None);
    };
    Ok(Some(VoteRow {
        action_id: logged.aggregate_id.clone(),
        sequence: logged.sequence,
        tenant: logged.tenant.clone(),
        voter: cast.ballot_of().to_string(),
        stage: i64::from(cast.stage),
        vote: match cast.vote {
            countersign_domain::quorum::Vote::Approve => "approve",
            countersign_domain::quorum::Vote::Reject => "reject",
            countersign_domain::quorum::Vote::Abstain => "abstain",
        },
        comment: cast.comment.as_ref().map(ToString::to_string),
        roles: serde_json::to_string(&cast.voter_roles)?,
        at: micros(cast.context.at),
    }))
}

/// Stats counters, keyed by (metric, key). Every counter changes by a difference between the
/// state before and after some events, so the totals do not depend on batch boundaries.
pub mod metric {
    /// Current number of actions per status.
    pub const STATUS: &str = "status";
    /// Submissions per risk level.
    pub const RISK: &str = "risk";
    /// Submissions per module.
    pub const MODULE: &str = "module";
    /// Decisions by outcome (`approved`, `rejected`, `expired`, `cancelled`), decisions taken by
    /// the deadline (`timed_out`), escalated actions (`escalated`), and submissions (`submitted`).
    pub const OUTCOME: &str = "outcome";
    /// Actions whose execution is finished (`succeeded`, `failed`, `skipped`); an action skipped
    /// for safe mode and resumed leaves `skipped`.
    pub const EXECUTION: &str = "execution";
    /// Decision latency histogram: bucket index → count (see [`super::latency_bucket`]).
    pub const LATENCY: &str = "latency";
    /// Votes cast (`cast`), and decided actions that received at least one vote (`decided_with_votes`).
    pub const VOTES: &str = "votes";
}

/// Growth factor between latency bucket bounds: answers are within 10%.
const BUCKET_GROWTH: f64 = 1.1;

/// The bucket of a decision latency in seconds: bucket `i` holds latencies up to
/// `1.1^i` seconds (bucket 0: up to one second).
pub fn latency_bucket(seconds: f64) -> i64 {
    if seconds <= 1.0 {
        return 0;
    }
    (seconds.ln() / BUCKET_GROWTH.ln()).ceil() as i64
}

/// The upper bound, in seconds, of a latency bucket.
pub fn latency_bucket_bound(bucket: i64) -> f64 {
    BUCKET_GROWTH.powi(i32::try_from(bucket).unwrap_or(i32::MAX))
}

/// How the counters change between two states of one action; `votes_cast` is the number of
/// `VoteCast` events between them.
pub fn stats_delta(
    before: Option<&ActionState>,
    after: &ActionState,
    votes_cast: i64,
) -> Vec<(&'static str, String, i64)> {
    let mut delta = Vec::new();
    match before {
        None => {
            delta.push((metric::OUTCOME, "submitted".to_owned(), 1));
            delta.push((metric::RISK, after.risk.level.as_str().to_owned(), 1));
            delta.push((metric::MODULE, after.submission.module.to_string(), 1));
            delta.push((metric::STATUS, after.status.as_str().to_owned(), 1));
        }
        Some(before) if before.status != after.status => {
            delta.push((metric::STATUS, before.status.as_str().to_owned(), -1));
            delta.push((metric::STATUS, after.status.as_str().to_owned(), 1));
        }
        Some(_) => {}
    }
    let was_decided = before.is_some_and(|state| state.decision.is_some());
    if let (false, Some(decision)) = (was_decided, &after.decision) {
        delta.push((metric::OUTCOME, decision.status.as_str().to_owned(), 1));
        let timed_out = decision.status == ActionStatus::Expired
            || decision.rejection == Some(countersign_domain::action::Rejection::Timeout);
        if timed_out {
            delta.push((metric::OUTCOME, "timed_out".to_owned(), 1));
        }
        if decision.status != ActionStatus::Cancelled {
            let seconds = (decision.at - after.submitted_at).num_milliseconds() as f64 / 1000.0;
            delta.push((
                metric::LATENCY,
                latency_bucket(seconds.max(0.0)).to_string(),
                1,
            ));
        }
        let voted = after.ballots.iter().any(|stage| !stage.is_empty());
        if voted {
            delta.push((metric::VOTES, "decided_with_votes".to_owned(), 1));
        }
    }
    if before.is_none_or(|state| state.escalations == 0) && after.escalations > 0 {
        delta.push((metric::OUTCOME, "escalated".to_owned(), 1));
    }
    if before.is_none_or(|state| state.break_glass.is_none()) && after.break_glass.is_some() {
        delta.push((metric::OUTCOME, "break_glass".to_owned(), 1));
    }
    let overdue = |state: &ActionState| {
        state
            .break_glass
            .as_ref()
            .is_some_and(|glass| glass.overdue.is_some())
    };
    if !before.is_some_and(overdue) && overdue(after) {
        delta.push((metric::OUTCOME, "break_glass_overdue".to_owned(), 1));
    }
    // How the action's execution finished, if it has. A skip for safe mode can be resumed (back
    // to approved), so this counts the actions that are finished now: a difference of two
    // states, whatever events lie between them.
    let finished = |state: &ActionState| match state.status {
        ActionStatus::Executed => Some("succeeded"),
        ActionStatus::Failed => Some("failed"),
        ActionStatus::Skipped => Some("skipped"),
        _ => None,
    };
    let (was, is) = (before.and_then(finished), finished(after));
    if was != is {
        if let Some(was) = was {
            delta.push((metric::EXECUTION, was.to_owned(), -1));
        }
        if let Some(is) = is {
            delta.push((metric::EXECUTION, is.to_owned(), 1));
        }
    }
    if votes_cast > 0 {
        delta.push((metric::VOTES, "cast".to_owned(), votes_cast));
    }
    delta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_bound_their_latencies_within_ten_percent() {
        for seconds in [0.2, 1.0, 1.05, 2.0, 59.0, 3600.0, 86_400.0 * 3.0] {
            let bucket = latency_bucket(seconds);
            let upper = latency_bucket_bound(bucket);
            assert!(
                upper >= seconds - 1e-9,
                "{seconds} above its bucket {upper}"
            );
            assert!(
                seconds <= 1.0 || upper <= seconds * BUCKET_GROWTH + 1e-9,
                "{seconds} → {upper}"
            );
        }
    }

    /// An action skipped for safe mode, resumed and executed: the counters over every batching
    /// of its events add up to the same totals (it ends counted once, as succeeded).
    #[test]
    fn stats_of_a_skip_and_resume_do_not_depend_on_batch_boundaries() {
        use countersign_domain::TenantMode;
        use countersign_domain::action::{
            Action, ActionCommand, RecordExecutionSuccess, RequestExecution, StartExecution,
        };
        use countersign_domain::quorum::Vote;
        use countersign_ledger::testing::actions::{self, principal};
        use std::collections::BTreeMap;

        let tenant = actions::tenant("acme");
        let now = chrono::Utc::now();
        let at = |by: &countersign_domain::Principal, seconds| {
            actions::context(&tenant, by, now + chrono::Duration::seconds(seconds))
        };
        let (rita, ana) = (
            principal("rita", &["requester"]),
            principal("ana", &["approver"]),
        );
        let executor = principal("executor:one", &[]);
        let start = |seconds, mode| {
            ActionCommand::StartExecution(StartExecution {
                context: at(&executor, seconds),
                lease_seconds: 60,
                mode,
            })
        };
        let commands = [
            actions::submit(
                at(&rita, 0),
                actions::new_id(),
                actions::submission("billing", "refund", "Refund", serde_json::json!({})),
                &actions::any_of(1),
                TenantMode::RequireApproval,
            ),
            actions::vote(at(&ana, 1), Vote::Approve, None),
            actions::request_execution(at(&rita, 2)),
            start(3, TenantMode::Safe),
            ActionCommand::RequestExecution(RequestExecution {
                context: at(&rita, 4),
                mode: TenantMode::RequireApproval,
            }),
            start(5, TenantMode::RequireApproval),
            ActionCommand::RecordExecutionSuccess(RecordExecutionSuccess {
                context: at(&executor, 6),
                attempt: 1,
                result: serde_json::json!({}),
                undo_payload: None,
                duration_ms: 1,
            }),
        ];
        let mut action = Action::default();
        let mut states = vec![None];
        for command in commands {
            for event in action.decide(command).expect("decided") {
                action.apply(event);
                states.push(action.state().cloned());
            }
        }
        let totals = |cuts: &[usize]| {
            let mut totals: BTreeMap<(&str, String), i64> = BTreeMap::new();
            for pair in cuts.windows(2) {
                let after = states[pair[1]].as_ref().expect("submitted");
                for (metric, key, change) in stats_delta(states[pair[0]].as_ref(), after, 0) {
                    *totals.entry((metric, key)).or_default() += change;
                }
            }
            totals.retain(|_, total| *total != 0);
            totals
        };
        let last = states.len() - 1;
        let every_event: Vec<usize> = (0..=last).collect();
        let whole = totals(&[0, last]);
        assert_eq!(totals(&every_event), whole);
        let skipped = states
            .iter()
            .position(|state| {
                state
                    .as_ref()
                    .is_some_and(|s| s.status == ActionStatus::Skipped)
            })
            .expect("skipped on the way");
        assert_eq!(totals(&[0, skipped, last]), whole);
        assert_eq!(
            whole.get(&(metric::EXECUTION, "succeeded".to_owned())),
            Some(&1)
        );
        assert_eq!(whole.get(&(metric::EXECUTION, "skipped".to_owned())), None);
    }
}
