//! Policy backtesting: what a draft policy set would have done to the actions submitted in a
//! time range.
//!
//! The draft is the tenant's current policies with changes applied (add, change, remove — checked
//! exactly like real edits, through [`PolicySet::decide`], but never recorded), and optionally other
//! default requirements. Every action submitted in the range is replayed through the pure domain:
//! its submission is scored and matched against the draft ([`resolve`]), then submitted to a fresh
//! [`Action`] under the draft's policy with the recorded time, requester and mode; its recorded
//! ballots are cast again in their recorded order and at their recorded times (a ballot the draft
//! does not accept — a voter not eligible in the draft's current stage, a vote after the draft
//! already decided — is counted as ignored), its recorded cancellation is replayed, and the
//! draft's own deadlines fire at their times (escalation, expiry or rejection) up to now. The
//! result is compared with what was recorded (with the deadlines that passed since applied, as
//! the deadline reactor is about to).
//!
//! Read-only: nothing is appended. Bounded by a time limit and a number of actions; a report cut
//! short says so. Progress is logged every [`PROGRESS_EVERY`] actions and sent to a watcher (the
//! gateway's streamed variant) once the selection is known, then every [`WATCH_EVERY`] actions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use countersign_domain::action::{
    Action, ActionCommand, ActionEvent, ActionState, ActionStatus, CancelAction, CommandContext,
    ExpireAction, SubmitAction,
};
use countersign_domain::policy::{PolicySnapshot, Requirements, resolve};
use countersign_domain::quorum::StageContext;
use countersign_domain::risk::assess;
use countersign_domain::tenant::{
    PolicyCommand, PolicyDraft, PolicySet, TenantCommandContext, TenantError, TenantSettings,
};
use countersign_domain::{ActionId, ParseError, PolicyId, Principal, Role, Timestamp, UserId};
use countersign_ledger::LogCursor;
use countersign_projections::{InboxFilter, InboxSort, Projection};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Actor, App, AppError, roles};

/// Actions replayed when the request names no limit.
pub const DEFAULT_MAX_ACTIONS: u32 = 10_000;
/// The most actions one backtest replays.
pub const MAX_ACTIONS: u32 = 100_000;
/// Seconds a backtest may run when the request names no limit.
pub const DEFAULT_TIME_LIMIT_SECONDS: u32 = 20;
/// The longest a backtest may run (below the gateway's request timeout).
pub const MAX_TIME_LIMIT_SECONDS: u32 = 25;
/// The longest a streamed backtest may run (`Accept: text/event-stream`: the answer is not held
/// back until the end, so the request timeout does not bound it).
pub const MAX_STREAMED_TIME_LIMIT_SECONDS: u32 = 600;
/// Actions listed one by one in a report (the counts cover every replayed action).
pub const MAX_LISTED: usize = 1_000;
/// A progress line is logged every this many replayed actions.
pub const PROGRESS_EVERY: u64 = 1_000;
/// A watcher is told how far the replay is every this many replayed actions.
pub const WATCH_EVERY: u64 = 50;
/// Actions whose histories are read with one statement.
const READ_BATCH: usize = 500;

/// The most a caller may ask of one backtest: over HTTP it must end within the gateway's request
/// timeout; an operator at the CLI (or the bench) may replay a whole history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceiling {
    pub max_actions: u32,
    pub time_limit_seconds: u32,
}

impl Ceiling {
    /// `POST /v1/policies/backtest` and the console.
    pub const REQUEST: Self = Self {
        max_actions: MAX_ACTIONS,
        time_limit_seconds: MAX_TIME_LIMIT_SECONDS,
    };
    /// `POST /v1/policies/backtest` with `Accept: text/event-stream`: progress is streamed as
    /// the replay goes, so it may run longer than a request that answers once.
    pub const STREAMED: Self = Self {
        max_actions: MAX_ACTIONS,
        time_limit_seconds: MAX_STREAMED_TIME_LIMIT_SECONDS,
    };
    /// `countersign policies backtest`, run by an operator against the store.
    pub const OPERATOR: Self = Self {
        max_actions: 10_000_000,
        time_limit_seconds: 3_600,
    };
}

/// How far a running backtest is: sent to a watcher once the actions to replay are selected
/// (`replayed: 0`), then every [`WATCH_EVERY`] actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Progress {
    /// Actions replayed so far.
    pub replayed: u64,
    /// Actions selected for replay (those of the range, at most `max_actions`).
    pub of: u64,
    /// Since the backtest started, in milliseconds.
    pub elapsed_ms: u64,
}

impl Progress {
    fn at(replayed: u64, of: usize, started: Instant) -> Self {
        Self {
            replayed,
            of: of as u64,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }
}
/// Deadlines one replayed action may pass (escalations included) before the replay stops
/// following it: a policy with a one-second timeout and unbounded escalations stays finite.
const MAX_DEADLINES: u32 = 10_000;

/// What a change does to the current policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    /// A policy that does not exist yet (`policy` required).
    Add,
    /// New fields for an existing policy (`policy` required).
    Change,
    /// An existing policy left out (no `policy`).
    Remove,
}

/// One change of the draft, relative to the tenant's current policies.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    pub op: ChangeOp,
    pub id: PolicyId,
    /// The policy's fields, for `add` and `change`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyDraft>,
}

/// What to backtest: a draft and a range of submission times.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BacktestRequest {
    /// Actions submitted at or after this moment (RFC 3339).
    pub from: Timestamp,
    /// Actions submitted before this moment (RFC 3339); after `from`.
    pub to: Timestamp,
    /// Changes to the current policies, applied in order (none: the current policies as they are).
    #[serde(default)]
    pub changes: Vec<PolicyChange>,
    /// Requirements of the draft's tenant default (none: the tenant's current default).
    #[serde(default)]
    pub default_requirements: Option<Requirements>,
    /// The most actions to replay, newest first (default 10000, at most 100000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100_000))]
    pub max_actions: Option<u32>,
    /// Seconds the replay may take (default 20, at most 25; at most 600 when streamed with
    /// `Accept: text/event-stream`); a report cut short says so.
    #[serde(default)]
    #[schemars(range(min = 1, max = 600))]
    pub time_limit_seconds: Option<u32>,
}

/// How the vote-collecting part of an action ended (or that it did not).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Approved,
    Rejected,
    Expired,
    Cancelled,
    /// Still collecting votes.
    Waiting,
}

impl Outcome {
    fn of(state: &ActionState) -> (Self, Option<Timestamp>) {
        let Some(decision) = &state.decision else {
            return (Self::Waiting, None);
        };
        let outcome = match decision.status {
            ActionStatus::Approved => Self::Approved,
            ActionStatus::Rejected => Self::Rejected,
            ActionStatus::Expired => Self::Expired,
            ActionStatus::Cancelled => Self::Cancelled,
            _ => Self::Waiting,
        };
        (outcome, Some(decision.at))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Waiting => "waiting",
        }
    }
}

/// One side of a comparison: as recorded, or under the draft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Replayed {
    pub policy_id: PolicyId,
    pub policy_version: u32,
    pub policy_name: String,
    pub outcome: Outcome,
    pub decided_at: Option<Timestamp>,
    /// From submission to decision.
    pub seconds_to_decision: Option<i64>,
    /// Stages reached (1 for a single-stage policy).
    pub stages_reached: u32,
    /// Ballots that counted.
    pub votes_counted: u32,
}

/// One action whose policy, requirements or outcome the draft changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ActionDiff {
    pub action_id: ActionId,
    pub action_type: String,
    pub summary: String,
    pub submitted_at: Timestamp,
    /// Another policy would govern it.
    pub policy_changed: bool,
    /// It would be held to other requirements (another policy, or the same one edited).
    pub requirements_changed: bool,
    /// Its decision would come out differently.
    pub outcome_changed: bool,
    pub recorded: Replayed,
    pub draft: Replayed,
    /// Recorded ballots the draft did not accept (not eligible in the draft's stage, or cast
    /// after the draft had decided).
    pub ignored_votes: u32,
}

/// Recorded and draft figures side by side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Compared {
    pub recorded: u64,
    pub draft: u64,
}

/// Times to decision of the decided actions, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DecisionTimes {
    pub decided: u64,
    pub median_seconds: Option<i64>,
    pub p90_seconds: Option<i64>,
    pub max_seconds: Option<i64>,
}

impl DecisionTimes {
    fn of(mut seconds: Vec<i64>) -> Self {
        seconds.sort_unstable();
        let at = |share: usize| {
            (!seconds.is_empty()).then(|| seconds[(seconds.len() - 1) * share / 100])
        };
        Self {
            decided: seconds.len() as u64,
            median_seconds: at(50),
            p90_seconds: at(90),
            max_seconds: seconds.last().copied(),
        }
    }
}

/// The approval load: per role, the actions whose reached stages it could vote in; per member,
/// the ballots that counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Load {
    pub roles: BTreeMap<String, Compared>,
    pub members: BTreeMap<String, Compared>,
}

/// Why a backtest stopped before replaying every action of the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Cutoff {
    /// The range holds more actions than `max_actions`: the newest were replayed.
    MaxActions,
    /// The time limit ran out: the oldest actions of the selection were replayed.
    TimeLimit,
}

/// What the draft would have done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BacktestReport {
    pub from: Timestamp,
    pub to: Timestamp,
    /// Deadlines were followed up to this moment.
    pub as_of: Timestamp,
    /// Actions replayed.
    pub replayed: u64,
    /// Whether every action submitted in the range was replayed.
    pub complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cutoff: Option<Cutoff>,
    /// Actions that another policy would govern.
    pub policy_changed: u64,
    /// Actions held to other requirements.
    pub requirements_changed: u64,
    /// Actions whose decision would come out differently.
    pub outcome_changed: u64,
    /// Outcome changes by kind (`approved_to_waiting`, `waiting_to_approved`, …).
    pub transitions: BTreeMap<String, u64>,
    /// Outcomes of the replayed actions.
    pub outcomes: BTreeMap<String, Compared>,
    pub time_to_decision_recorded: DecisionTimes,
    pub time_to_decision_draft: DecisionTimes,
    pub load: Load,
    /// The changed actions, oldest first (at most 1000; the counts cover all).
    pub actions: Vec<ActionDiff>,
}

/// Applies the changes to the current policies in memory, refusing what a real edit would
/// refuse; errors name the change (`changes[1].id`, `changes[0].policy.name`).
pub fn draft_policies(
    current: &PolicySet,
    context: &TenantCommandContext,
    changes: &[PolicyChange],
) -> Result<PolicySet, ParseError> {
    let mut set = current.clone();
    for (index, change) in changes.iter().enumerate() {
        let (id, policy) = (change.id.clone(), change.policy.clone());
        let command = match (change.op, policy) {
            (ChangeOp::Add, Some(draft)) => PolicyCommand::CreatePolicy {
                context: context.clone(),
                id,
                draft,
            },
            (ChangeOp::Change, Some(draft)) => PolicyCommand::UpdatePolicy {
                context: context.clone(),
                id,
                draft,
                expected_version: None,
            },
            (ChangeOp::Remove, None) => PolicyCommand::DeletePolicy {
                context: context.clone(),
                id,
            },
            (ChangeOp::Remove, Some(_)) => {
                return Err(ParseError::new(
                    format!("changes[{index}].policy"),
                    "must be absent when removing a policy",
                ));
            }
            (ChangeOp::Add | ChangeOp::Change, None) => {
                return Err(ParseError::new(
                    format!("changes[{index}].policy"),
                    "is required to add or change a policy",
                ));
            }
        };
        let events = set.decide(command).map_err(|err| match err {
            TenantError::InvalidInput(inner) if inner.field.is_empty() => {
                ParseError::new(format!("changes[{index}].policy"), inner.message)
            }
            TenantError::InvalidInput(inner) => ParseError::new(
                format!("changes[{index}].policy.{}", inner.field),
                inner.message,
            ),
            other => ParseError::new(format!("changes[{index}].id"), other.to_string()),
        })?;
        for event in events {
            set.apply(event);
        }
    }
    Ok(set)
}

/// The draft: policies and default requirements.
#[derive(Debug, Clone)]
pub struct Draft {
    pub policies: Vec<countersign_domain::policy::Policy>,
    pub default: Requirements,
}

/// What replaying one action gives.
#[derive(Debug, Clone)]
struct Replay {
    diff: ActionDiff,
    recorded_roles: BTreeSet<Role>,
    draft_roles: BTreeSet<Role>,
    recorded_voters: Vec<UserId>,
    draft_voters: Vec<UserId>,
}

fn seconds_between(from: Timestamp, to: Option<Timestamp>) -> Option<i64> {
    to.map(|to| (to - from).num_seconds())
}

/// The roles that could vote in the stages the action reached.
fn reached_roles(state: &ActionState) -> BTreeSet<Role> {
    let requirements = &state.policy.requirements;
    let escalation_role = requirements
        .escalation_role
        .as_ref()
        .filter(|_| state.escalations > 0);
    requirements
        .stages
        .as_slice()
        .iter()
        .take(state.stage as usize + 1)
        .flat_map(|stage| {
            StageContext {
                stage,
                requester: &state.requester.id,
                allow_self_approval: requirements.allow_self_approval,
                escalation_role,
            }
            .electorate()
            .0
        })
        .collect()
}

fn counted_voters(state: &ActionState) -> Vec<UserId> {
    state
        .ballots
        .iter()
        .flat_map(|ballots| ballots.keys().cloned())
        .collect()
}

fn side(state: &ActionState) -> Replayed {
    let (outcome, decided_at) = Outcome::of(state);
    Replayed {
        policy_id: state.policy.id.clone(),
        policy_version: state.policy.version,
        policy_name: state.policy.name.clone(),
        outcome,
        decided_at,
        seconds_to_decision: seconds_between(state.submitted_at, decided_at),
        stages_reached: state.stage + 1,
        votes_counted: u32::try_from(counted_voters(state).len()).unwrap_or(u32::MAX),
    }
}

/// Applies one command to the replayed action; a refusal changes nothing and answers false.
fn step(action: &mut Action, command: ActionCommand) -> bool {
    match action.decide(command) {
        Ok(events) => {
            let changed = !events.is_empty();
            for event in events {
                action.apply(event);
            }
            changed
        }
        Err(_) => false,
    }
}

/// Fires the draft's deadlines that fall at or before `until`, as the deadline reactor would.
fn pass_deadlines(action: &mut Action, until: Timestamp) {
    let Ok(reactor) = UserId::parse(DEADLINE_REACTOR) else {
        return;
    };
    for _ in 0..MAX_DEADLINES {
        let Some(state) = action.state() else { return };
        if !state.status.is_open() || state.expires_at > until {
            return;
        }
        let context = CommandContext {
            tenant: state.tenant.clone(),
            by: Principal::new(reactor.clone(), []),
            at: state.expires_at,
            correlation_id: state.correlation_id.clone(),
        };
        if !step(
            action,
            ActionCommand::ExpireAction(ExpireAction { context }),
        ) {
            return;
        }
    }
}

/// Who fires the replayed deadlines.
const DEADLINE_REACTOR: &str = "system:deadlines";

/// Replays one action's recorded history under the draft. Pure: the same events, draft and
/// moment always give the same answer.
fn replay(events: &[ActionEvent], draft: &Draft, as_of: Timestamp) -> Option<Replay> {
    // What was recorded, with the deadlines that passed since and the deadline reactor has not
    // acted on yet: so that a draft equal to the policies in force changes nothing.
    let mut recorded = Action::from_events(events);
    pass_deadlines(&mut recorded, as_of);
    let recorded = recorded.into_state()?;
    let Some(ActionEvent::ActionSubmitted(submitted)) = events.first() else {
        return None;
    };
    let risk = assess(&submitted.submission);
    let facts = submitted.submission.facts(&recorded.requester.id, &risk);
    let policy: PolicySnapshot = resolve(&draft.policies, &facts, &draft.default);
    let context = |by: Principal, at: Timestamp, event: &ActionEvent| CommandContext {
        tenant: recorded.tenant.clone(),
        by,
        at,
        correlation_id: event.context().correlation_id.clone(),
    };
    let mut action = Action::default();
    step(
        &mut action,
        ActionCommand::SubmitAction(Box::new(SubmitAction {
            context: context(
                recorded.requester.clone(),
                recorded.submitted_at,
                &events[0],
            ),
            action_id: recorded.id,
            submission: submitted.submission.clone(),
            mode: submitted.mode,
            policy: policy.clone(),
            idempotency_key: submitted.idempotency_key.clone(),
            rollback_of: submitted.rollback_of,
        })),
    );
    let mut ignored_votes = 0;
    for event in &events[1..] {
        let at = event.context().at;
        pass_deadlines(&mut action, at);
        match event {
            ActionEvent::VoteCast(vote) if !step(&mut action, vote.command()) => {
                ignored_votes += 1;
            }
            ActionEvent::ActionCancelled(cancelled) => {
                // The recorded cancellation was permitted then (its requester, or an admin).
                let by = if cancelled.context.actor == recorded.requester.id {
                    recorded.requester.clone()
                } else {
                    Principal::new(cancelled.context.actor.clone(), [Role::admin()])
                };
                step(
                    &mut action,
                    ActionCommand::CancelAction(CancelAction {
                        context: context(by, at, event),
                        reason: cancelled.reason.clone(),
                    }),
                );
            }
            _ => {}
        }
    }
    pass_deadlines(&mut action, as_of);
    let replayed = action.into_state()?;
    let (recorded_side, draft_side) = (side(&recorded), side(&replayed));
    Some(Replay {
        diff: ActionDiff {
            action_id: recorded.id,
            action_type: recorded.action_type.to_string(),
            summary: recorded.submission.summary.to_string(),
            submitted_at: recorded.submitted_at,
            policy_changed: recorded.policy.id != policy.id,
            requirements_changed: recorded.policy.requirements != policy.requirements,
            outcome_changed: recorded_side.outcome != draft_side.outcome,
            recorded: recorded_side,
            draft: draft_side,
            ignored_votes,
        },
        recorded_roles: reached_roles(&recorded),
        draft_roles: reached_roles(&replayed),
        recorded_voters: counted_voters(&recorded),
        draft_voters: counted_voters(&replayed),
    })
}

/// Folds replayed actions into a report.
#[derive(Debug, Default)]
struct Tally {
    replayed: u64,
    policy_changed: u64,
    requirements_changed: u64,
    outcome_changed: u64,
    transitions: BTreeMap<String, u64>,
    outcomes: BTreeMap<String, Compared>,
    recorded_times: Vec<i64>,
    draft_times: Vec<i64>,
    load: Load,
    actions: Vec<ActionDiff>,
}

impl Tally {
    fn add(&mut self, replay: Replay) {
        let diff = replay.diff;
        self.replayed += 1;
        self.policy_changed += u64::from(diff.policy_changed);
        self.requirements_changed += u64::from(diff.requirements_changed);
        self.outcome_changed += u64::from(diff.outcome_changed);
        if diff.outcome_changed {
            *self
                .transitions
                .entry(format!(
                    "{}_to_{}",
                    diff.recorded.outcome.as_str(),
                    diff.draft.outcome.as_str()
                ))
                .or_default() += 1;
        }
        self.outcomes
            .entry(diff.recorded.outcome.as_str().to_owned())
            .or_default()
            .recorded += 1;
        self.outcomes
            .entry(diff.draft.outcome.as_str().to_owned())
            .or_default()
            .draft += 1;
        self.recorded_times
            .extend(diff.recorded.seconds_to_decision);
        self.draft_times.extend(diff.draft.seconds_to_decision);
        for role in replay.recorded_roles {
            self.load
                .roles
                .entry(role.to_string())
                .or_default()
                .recorded += 1;
        }
        for role in replay.draft_roles {
            self.load.roles.entry(role.to_string()).or_default().draft += 1;
        }
        for voter in replay.recorded_voters {
            self.load
                .members
                .entry(voter.to_string())
                .or_default()
                .recorded += 1;
        }
        for voter in replay.draft_voters {
            self.load
                .members
                .entry(voter.to_string())
                .or_default()
                .draft += 1;
        }
        let changed = diff.policy_changed || diff.requirements_changed || diff.outcome_changed;
        if changed && self.actions.len() < MAX_LISTED {
            self.actions.push(diff);
        }
    }
}

fn check(request: &BacktestRequest, ceiling: Ceiling) -> Result<(u32, Duration), ParseError> {
    if request.to <= request.from {
        return Err(ParseError::new("to", "must be after `from`"));
    }
    let max_actions = request.max_actions.unwrap_or(DEFAULT_MAX_ACTIONS);
    if !(1..=ceiling.max_actions).contains(&max_actions) {
        return Err(ParseError::new(
            "max_actions",
            format!("must be between 1 and {}", ceiling.max_actions),
        ));
    }
    let seconds = request
        .time_limit_seconds
        .unwrap_or(DEFAULT_TIME_LIMIT_SECONDS);
    if !(1..=ceiling.time_limit_seconds).contains(&seconds) {
        return Err(ParseError::new(
            "time_limit_seconds",
            format!("must be between 1 and {}", ceiling.time_limit_seconds),
        ));
    }
    Ok((max_actions, Duration::from_secs(u64::from(seconds))))
}

/// The actions of the actor's tenant submitted in `[from, to)`, newest first, at most `limit`
/// (and whether there were more).
async fn actions_in_range(
    app: &App,
    actor: &Actor,
    request: &BacktestRequest,
    limit: u32,
) -> Result<(Vec<ActionId>, bool), AppError> {
    let mut ids = Vec::new();
    let mut cursor = None;
    loop {
        let page = app
            .projections
            .inbox(
                &actor.tenant,
                &InboxFilter {
                    created_from: Some(request.from),
                    created_before: Some(request.to),
                    sort: InboxSort::Created,
                    cursor: cursor.take(),
                    limit: 500,
                    ..InboxFilter::default()
                },
            )
            .await?;
        for item in page.items {
            if ids.len() == limit as usize {
                return Ok((ids, true));
            }
            let id = ActionId::parse(&item.id)
                .map_err(|err| AppError::internal("an action id in the read model", err))?;
            ids.push(id);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok((ids, false)),
        }
    }
}

/// Replays the actions submitted in the range under the draft (owner, admin, auditor), within
/// the bounds of a request ([`Ceiling::REQUEST`]). Changes nothing.
pub async fn backtest(
    app: &App,
    actor: &Actor,
    request: &BacktestRequest,
    consistent_with: Option<LogCursor>,
) -> Result<BacktestReport, AppError> {
    backtest_watched(app, actor, request, consistent_with, Ceiling::REQUEST, None).await
}

/// [`backtest`] within `ceiling`, telling `watcher` (when given) how far it is once the actions
/// are selected and then every [`WATCH_EVERY`] actions (a full watcher misses an update, never
/// holds the replay back). A watcher that went away does not stop the replay: to stop it, drop
/// the future (the replay yields at every read of the store).
#[tracing::instrument(name = "backtest", skip_all, fields(
    tenant = %actor.tenant,
    principal = %actor.principal.id,
    correlation_id = actor.correlation_id.as_ref().map(|id| id.as_str()),
))]
pub async fn backtest_watched(
    app: &App,
    actor: &Actor,
    request: &BacktestRequest,
    consistent_with: Option<LogCursor>,
    ceiling: Ceiling,
    watcher: Option<tokio::sync::mpsc::Sender<Progress>>,
) -> Result<BacktestReport, AppError> {
    actor.require(
        &[roles::OWNER, roles::ADMIN, roles::AUDITOR],
        "backtesting policies",
    )?;
    let (max_actions, time_limit) = check(request, ceiling)?;
    let started = Instant::now();
    let context = actor.tenant_context();
    let as_of = context.at;
    let ((settings, _), (policies, _)) = tokio::try_join!(
        app.ledger.load::<TenantSettings>(&actor.tenant),
        app.ledger.load::<PolicySet>(&actor.tenant),
    )?;
    let draft_set = draft_policies(&policies, &context, &request.changes)?;
    let draft = Draft {
        policies: draft_set.list(),
        default: request
            .default_requirements
            .clone()
            .unwrap_or_else(|| settings.settings.default_requirements.clone()),
    };
    app.wait_for(Projection::Actions, consistent_with).await?;
    let (mut ids, more) = actions_in_range(app, actor, request, max_actions).await?;
    ids.reverse();
    let selected = ids.len();
    tracing::info!(actions = selected, more, "backtest: replaying");
    if let Some(watcher) = &watcher {
        let _ = watcher.try_send(Progress::at(0, selected, started));
    }
    let mut tally = Tally::default();
    let mut cutoff = more.then_some(Cutoff::MaxActions);
    'batches: for batch in ids.chunks(READ_BATCH) {
        if started.elapsed() >= time_limit {
            cutoff = Some(Cutoff::TimeLimit);
            break;
        }
        for stream in app.ledger.streams_of::<Action, _>(batch).await? {
            if started.elapsed() >= time_limit {
                cutoff = Some(Cutoff::TimeLimit);
                break 'batches;
            }
            let mut events = Vec::with_capacity(stream.len());
            for logged in stream {
                events.push(logged.decode::<Action>()?);
            }
            let belongs = events
                .first()
                .is_some_and(|event| event.context().tenant == actor.tenant);
            let Some(replayed) = belongs.then(|| replay(&events, &draft, as_of)).flatten() else {
                continue;
            };
            tally.add(replayed);
            if tally.replayed.is_multiple_of(PROGRESS_EVERY) {
                let progress = Progress::at(tally.replayed, selected, started);
                tracing::info!(
                    replayed = progress.replayed,
                    of = progress.of,
                    elapsed_ms = progress.elapsed_ms,
                    "backtest: progress"
                );
            }
            if let Some(watcher) = &watcher
                && tally.replayed.is_multiple_of(WATCH_EVERY)
            {
                let _ = watcher.try_send(Progress::at(tally.replayed, selected, started));
            }
        }
    }
    tracing::info!(
        replayed = tally.replayed,
        outcome_changed = tally.outcome_changed,
        cutoff = ?cutoff,
        "backtest: done"
    );
    Ok(BacktestReport {
        from: request.from,
        to: request.to,
        as_of,
        replayed: tally.replayed,
        complete: cutoff.is_none(),
        cutoff,
        policy_changed: tally.policy_changed,
        requirements_changed: tally.requirements_changed,
        outcome_changed: tally.outcome_changed,
        transitions: tally.transitions,
        outcomes: tally.outcomes,
        time_to_decision_recorded: DecisionTimes::of(tally.recorded_times),
        time_to_decision_draft: DecisionTimes::of(tally.draft_times),
        load: tally.load,
        actions: tally.actions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_reactor_id_is_a_valid_user() {
        assert!(UserId::parse(DEADLINE_REACTOR).is_ok());
    }

    #[test]
    fn decision_times_take_the_median_and_the_90th_percentile() {
        let times = DecisionTimes::of(vec![10, 1, 5, 7, 3, 2, 9, 4, 8, 6]);
        assert_eq!(times.decided, 10);
        assert_eq!(times.median_seconds, Some(5));
        assert_eq!(times.p90_seconds, Some(9));
        assert_eq!(times.max_seconds, Some(10));
        assert_eq!(DecisionTimes::of(Vec::new()).median_seconds, None);
    }
}
