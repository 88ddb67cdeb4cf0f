//! Workflows (issue 17): definitions (list, create, read, update, enable, disable, delete, dry
//! run), event intake (one CloudEvent or a batch, from HTTP or NATS), runs (list, read, approve,
//! deny) and the steps the workflow engine takes to move a run on ([`start_runs`], [`advance`],
//! [`run_of_action`], [`index_run`]).
//!
//! A step's action is submitted as any action is — scored, matched to a policy, waiting for votes
//! or approved at once — by the workflow's own principal (`workflow:<id>`, role `requester`),
//! with the event id as correlation id and an idempotency key derived from (run, step), so that
//! however often the engine replays a run, each step submits once. A step that requires approval
//! is submitted under its governing policy with `auto_approve` off: it waits for votes even where
//! the policy would have approved at once.

use std::collections::BTreeSet;

use countersign_domain::action::{
    Action, ActionCommand, ActionError, ActionStatus, ActionSubmitted, SubmitAction,
};
use countersign_domain::policy::PolicySnapshot;
use countersign_domain::quorum::Vote;
use countersign_domain::risk::{RiskAssessment, assess};
use countersign_domain::submission::Submission;
use countersign_domain::tenant::{ApiKeys, TenantSettings};
use countersign_domain::workflow::{
    self, CloudEvent, IntakeCommand, IntakeEvent, IntakeKey, RunCommand, RunEvent, RunId, RunStart,
    RunState, RunStatus, SkipReason, StepOutcome, Workflow, WorkflowCommand, WorkflowDraft,
    WorkflowError, WorkflowId, WorkflowRun, WorkflowSet,
};
use countersign_domain::{
    ActionId, Comment, CorrelationId, IdempotencyKey, ParseError, Principal, Role, TenantId,
    TenantMode, UserId,
};
use countersign_ledger::{Backend, LedgerError};
use countersign_projections::ActionDetail;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::actions::{self, Submitted, Written};
use crate::tenant::count;
use crate::{Actor, App, AppError, Channel, roles};

/// The most events one intake request carries.
pub const MAX_BATCH: usize = 100;
/// The principal a workflow's actions are requested by: `workflow:<id>`.
pub const PRINCIPAL_PREFIX: &str = "workflow:";
/// The idempotency key of a step's action: `workflow-run:<run>:<step>`.
const KEY_PREFIX: &str = "workflow-run:";

impl From<WorkflowError> for AppError {
    fn from(error: WorkflowError) -> Self {
        match error {
            WorkflowError::InvalidInput(parse) => Self::InvalidInput(parse),
            WorkflowError::NotFound => workflow_not_found(),
            error @ (WorkflowError::Exists(_) | WorkflowError::StaleVersion { .. }) => {
                Self::NotYet {
                    code: error.code(),
                    message: error.to_string(),
                }
            }
            error => Self::CannotDo {
                code: error.code(),
                message: error.to_string(),
            },
        }
    }
}

fn workflow_not_found() -> AppError {
    AppError::not_found("workflow_not_found", "workflow")
}

fn run_not_found() -> AppError {
    AppError::not_found("run_not_found", "workflow run")
}

fn admin(actor: &Actor) -> Result<(), AppError> {
    actor.require(&[roles::OWNER, roles::ADMIN], "managing workflows")
}

// -------------------------------------------------------------------------------- definitions

async fn change(
    app: &App,
    actor: &Actor,
    name: &'static str,
    id: &WorkflowId,
    command: WorkflowCommand,
) -> Result<Written<Option<Workflow>>, AppError> {
    admin(actor)?;
    let result = app
        .ledger
        .execute::<WorkflowSet>(
            &actor.tenant,
            command,
            &actor.metadata(actor.correlation_id.clone()),
        )
        .await;
    count(name, &result, WorkflowError::code);
    let committed = result?;
    Ok(Written {
        value: committed.aggregate.workflows.get(id).cloned(),
        cursor: committed.last_cursor(),
    })
}

fn found(written: Written<Option<Workflow>>) -> Result<Written<Workflow>, AppError> {
    Ok(Written {
        value: written.value.ok_or_else(workflow_not_found)?,
        cursor: written.cursor,
    })
}

/// The tenant's workflows (owner, admin).
pub async fn list(app: &App, actor: &Actor) -> Result<Vec<Workflow>, AppError> {
    admin(actor)?;
    Ok(app
        .ledger
        .load::<WorkflowSet>(&actor.tenant)
        .await?
        .0
        .list())
}

/// One workflow (owner, admin).
pub async fn read(app: &App, actor: &Actor, id: &WorkflowId) -> Result<Workflow, AppError> {
    admin(actor)?;
    let (set, _) = app.ledger.load::<WorkflowSet>(&actor.tenant).await?;
    set.workflows
        .get(id)
        .cloned()
        .ok_or_else(workflow_not_found)
}

/// Creates a workflow (owner, admin); a template that does not compile is refused naming its
/// step.
pub async fn create(
    app: &App,
    actor: &Actor,
    id: WorkflowId,
    draft: WorkflowDraft,
) -> Result<Written<Workflow>, AppError> {
    let command = WorkflowCommand::CreateWorkflow {
        context: actor.tenant_context(),
        id: id.clone(),
        draft,
    };
    found(change(app, actor, "CreateWorkflow", &id, command).await?)
}

/// Replaces a workflow's fields (owner, admin); `expected_version` refuses a lost update.
pub async fn update(
    app: &App,
    actor: &Actor,
    id: WorkflowId,
    draft: WorkflowDraft,
    expected_version: Option<u32>,
) -> Result<Written<Workflow>, AppError> {
    let command = WorkflowCommand::UpdateWorkflow {
        context: actor.tenant_context(),
        id: id.clone(),
        draft,
        expected_version,
    };
    found(change(app, actor, "UpdateWorkflow", &id, command).await?)
}

/// Enables or disables a workflow (owner, admin): a disabled workflow starts no run, and the
/// events it would have started are still recorded.
pub async fn set_enabled(
    app: &App,
    actor: &Actor,
    id: WorkflowId,
    enabled: bool,
) -> Result<Written<Workflow>, AppError> {
    let command = WorkflowCommand::SetEnabled {
        context: actor.tenant_context(),
        id: id.clone(),
        enabled,
    };
    found(change(app, actor, "SetWorkflowEnabled", &id, command).await?)
}

/// Deletes a workflow (owner, admin); runs already started go on with the version they started
/// with.
pub async fn delete(app: &App, actor: &Actor, id: WorkflowId) -> Result<Written<()>, AppError> {
    let command = WorkflowCommand::DeleteWorkflow {
        context: actor.tenant_context(),
        id: id.clone(),
    };
    let written = change(app, actor, "DeleteWorkflow", &id, command).await?;
    Ok(Written {
        value: (),
        cursor: written.cursor,
    })
}

/// What one step would do for the sample event.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DryRunStep {
    pub index: usize,
    pub capability: String,
    /// The action it would submit, rendered from the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submission: Option<Submission>,
    /// Why it could not be rendered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<RiskAssessment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySnapshot>,
    pub mode: TenantMode,
    /// Whether it would wait for votes (its policy, the tenant's mode, or the step itself).
    pub waits_for_approval: bool,
    pub require_approval: bool,
}

/// A dry run: whether the sample event would start a run, and what each step would submit.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DryRun {
    pub workflow_id: WorkflowId,
    pub version: u32,
    /// Whether the event's type is one of the triggers.
    pub triggered: bool,
    /// Whether the condition holds.
    pub condition_matches: bool,
    /// Whether the event would start a run now (triggered, enabled, condition holds).
    pub would_start: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<SkipReason>,
    pub steps: Vec<DryRunStep>,
}

/// What a sample event would do with a workflow, changing nothing (owner, admin).
pub async fn dry_run(
    app: &App,
    actor: &Actor,
    id: &WorkflowId,
    sample: &Value,
) -> Result<DryRun, AppError> {
    let workflow = read(app, actor, id).await?;
    let event = CloudEvent::parse(sample).map_err(|err| err.within("event"))?;
    let admission = workflow.admits(&event);
    let requester = principal_of(&workflow.id)?;
    let mut steps = Vec::new();
    for (index, step) in workflow.steps.iter().enumerate() {
        let rendered = workflow::render_step(step, index, &event, &workflow.constants);
        let mut dry = DryRunStep {
            index,
            capability: step.capability.to_string(),
            submission: None,
            error: None,
            risk: None,
            policy: None,
            mode: TenantMode::default(),
            waits_for_approval: true,
            require_approval: step.require_approval,
        };
        match rendered {
            Ok(submission) => {
                let (mode, policy) =
                    actions::governing(&app.ledger, &actor.tenant, &requester.id, &submission)
                        .await?;
                dry.waits_for_approval = step.require_approval
                    || mode != TenantMode::Auto
                    || !policy.requirements.auto_approve;
                dry.mode = mode;
                dry.risk = Some(assess(&submission));
                dry.policy = Some(policy);
                dry.submission = Some(submission);
            }
            Err(err) => dry.error = Some(err.to_string()),
        }
        steps.push(dry);
    }
    Ok(DryRun {
        workflow_id: workflow.id.clone(),
        version: workflow.version,
        triggered: workflow.triggers.contains(&event.event_type),
        condition_matches: workflow.condition.matches(&event),
        would_start: admission == workflow::Admission::Starts,
        skipped: match admission {
            workflow::Admission::Skipped(reason) => Some(reason),
            _ => None,
        },
        steps,
    })
}

// ------------------------------------------------------------------------------------- intake

/// What became of one received event.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Receipt {
    pub id: String,
    /// `accepted`, or `duplicate` when the tenant received this event id before (ignored).
    pub status: ReceiptStatus,
    /// The runs it starts (none for a duplicate).
    pub runs: Vec<RunId>,
    /// Workflows listening to its type that it does not start, and why.
    pub skipped: Vec<workflow::Skipped>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    Accepted,
    Duplicate,
}

/// Parses a request body of one CloudEvent or an array of them (1 to [`MAX_BATCH`]); every
/// event must be valid, or none is taken (the error names the event's index).
pub fn parse_events(body: &Value) -> Result<Vec<CloudEvent>, ParseError> {
    match body {
        Value::Array(items) => {
            if items.is_empty() || items.len() > MAX_BATCH {
                return Err(ParseError::new(
                    "",
                    format!("a batch holds 1 to {MAX_BATCH} events"),
                ));
            }
            let events = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    CloudEvent::parse(item).map_err(|err| err.within(&format!("[{i}]")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut ids = BTreeSet::new();
            if let Some(repeat) = events.iter().position(|event| !ids.insert(&event.id)) {
                return Err(ParseError::new(
                    format!("[{repeat}].id"),
                    "appears twice in the batch",
                ));
            }
            Ok(events)
        }
        single => Ok(vec![CloudEvent::parse(single)?]),
    }
}

/// Whether the tenant exists: it has settings, API keys or workflows in the ledger.
pub async fn tenant_known(app: &App, tenant: &TenantId) -> Result<bool, AppError> {
    if app.ledger.load::<WorkflowSet>(tenant).await?.1 > 0 {
        return Ok(true);
    }
    let (settings, keys) = tokio::try_join!(
        app.ledger.load::<TenantSettings>(tenant),
        app.ledger.load::<ApiKeys>(tenant),
    )?;
    Ok(settings.1 > 0 || keys.1 > 0)
}

/// Receives a request body of one CloudEvent or a batch for the actor's tenant (publisher,
/// owner, admin): the role is checked first, then every event, then each is recorded.
pub async fn publish(
    app: &App,
    actor: &Actor,
    body: &Value,
    channel: &str,
) -> Result<Vec<Receipt>, AppError> {
    require_publisher(actor)?;
    let events = parse_events(body)?;
    receive(app, actor, events, channel).await
}

fn require_publisher(actor: &Actor) -> Result<(), AppError> {
    actor.require(
        &[roles::PUBLISHER, roles::OWNER, roles::ADMIN],
        "publishing events",
    )
}

/// Receives events for the actor's tenant (publisher, owner, admin): records each one with the
/// runs it starts; an event id received before is ignored.
pub async fn receive(
    app: &App,
    actor: &Actor,
    events: Vec<CloudEvent>,
    channel: &str,
) -> Result<Vec<Receipt>, AppError> {
    require_publisher(actor)?;
    receive_batch(app, actor, events, channel).await
}

/// Records a batch of one tenant's events: the tenant's workflows are read once, each event is
/// admitted against them, and the events are recorded together (their streams started by one
/// statement; a repeat, in the batch or from before, is answered `duplicate`). Answers a receipt
/// per event in order, or the first failure (events recorded before it stay recorded, and
/// receiving the batch again answers them as duplicates).
#[tracing::instrument(name = "intake", skip_all, fields(
    tenant = %actor.tenant, events = events.len(), channel,
))]
async fn receive_batch(
    app: &App,
    actor: &Actor,
    events: Vec<CloudEvent>,
    channel: &str,
) -> Result<Vec<Receipt>, AppError> {
    let (set, _) = app.ledger.load::<WorkflowSet>(&actor.tenant).await?;
    let mut admitted = Vec::with_capacity(events.len());
    let mut keys = Vec::with_capacity(events.len());
    let mut commands = Vec::with_capacity(events.len());
    for event in events {
        let (starts, skipped) = workflow::admit(&actor.tenant, &set, &event);
        let runs: Vec<RunId> = starts.iter().map(|start| start.run_id).collect();
        let key = IntakeKey::of(&actor.tenant, &event.id);
        let metadata = actor.metadata(CorrelationId::parse(event.id.clone()).ok());
        admitted.push((event.id.clone(), runs, skipped.clone()));
        let command = IntakeCommand::RecordEvent {
            tenant: actor.tenant.clone(),
            at: chrono::Utc::now(),
            channel: channel.to_owned(),
            event,
            starts,
            skipped,
        };
        keys.push(key);
        commands.push((command, metadata));
    }
    let results = app
        .ledger
        .execute_creations::<IntakeEvent>(
            keys.iter()
                .zip(commands)
                .map(|(key, (command, metadata))| (key, command, metadata))
                .collect(),
        )
        .await;
    let mut receipts = Vec::with_capacity(results.len());
    for ((id, runs, skipped), result) in admitted.into_iter().zip(results) {
        count("RecordEvent", &result, WorkflowError::code);
        match result {
            Ok(_) => {
                metrics::counter!("countersign_intake_events_total", "outcome" => "accepted")
                    .increment(1);
                receipts.push(Receipt {
                    id,
                    status: ReceiptStatus::Accepted,
                    runs,
                    skipped,
                });
            }
            Err(LedgerError::Rejected(WorkflowError::AlreadyReceived)) => {
                metrics::counter!("countersign_intake_events_total", "outcome" => "duplicate")
                    .increment(1);
                receipts.push(Receipt {
                    id,
                    status: ReceiptStatus::Duplicate,
                    runs: Vec::new(),
                    skipped: Vec::new(),
                });
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(receipts)
}

/// The actor of an intake that has no credential of its own (NATS): the tenant named on the
/// subject, as the `intake` service principal holding the publisher role.
pub fn intake_actor(tenant: TenantId) -> Result<Actor, AppError> {
    let principal = Principal::new(
        UserId::parse("intake:nats")?,
        [Role::parse(roles::PUBLISHER)?],
    );
    Ok(Actor::new(tenant, principal, Channel::System))
}

// -------------------------------------------------------------------------------- the engine

fn principal_of(workflow: &WorkflowId) -> Result<Principal, AppError> {
    Ok(Principal::new(
        UserId::parse(format!("{PRINCIPAL_PREFIX}{workflow}"))?,
        [Role::parse(roles::REQUESTER)?],
    ))
}

fn step_key(run: RunId, step: usize) -> Result<IdempotencyKey, AppError> {
    Ok(IdempotencyKey::parse(format!("{KEY_PREFIX}{run}:{step}"))?)
}

/// The run a step's action belongs to, from the action's idempotency key.
pub fn run_of_key(key: &IdempotencyKey) -> Option<RunId> {
    let rest = key.as_str().strip_prefix(KEY_PREFIX)?;
    let (run, _) = rest.rsplit_once(':')?;
    RunId::parse(run).ok()
}

/// The run whose step submitted this action, if a workflow's step did.
pub async fn run_of_action(app: &App, id: ActionId) -> Result<Option<RunId>, AppError> {
    let (action, _) = app.ledger.load::<Action>(&id).await?;
    Ok(action
        .state()
        .and_then(|state| owning_run(&state.requester.id, state.idempotency_key.as_ref())))
}

/// The run whose step submitted an action, read from the action's submission (no store read:
/// the engine learns it from the log as it passes).
pub fn run_of_submission(submitted: &ActionSubmitted) -> Option<RunId> {
    owning_run(&submitted.context.actor, submitted.idempotency_key.as_ref())
}

fn owning_run(requester: &UserId, key: Option<&IdempotencyKey>) -> Option<RunId> {
    requester
        .as_str()
        .starts_with(PRINCIPAL_PREFIX)
        .then(|| key.and_then(run_of_key))
        .flatten()
}

/// A run's fold and its stream's length, as loaded or as a command left it.
pub type RunFold = (RunState, u64);

/// Starts the runs received events asked for (each with its event, the event id as correlation
/// id), their first events appended together; a run already started is left alone. Answers the
/// runs it started, each as its first event left it.
pub async fn start_runs(
    app: &App,
    received: Vec<(TenantId, CloudEvent, Vec<RunStart>)>,
) -> Result<Vec<RunFold>, AppError> {
    let mut ids = Vec::new();
    let mut commands = Vec::new();
    for (tenant, event, starts) in received {
        let correlation = CorrelationId::parse(event.id.clone()).ok();
        for start in starts {
            let actor = engine_actor(&tenant, &start.workflow.id, correlation.clone())?;
            let metadata = actor.metadata(actor.correlation_id.clone());
            ids.push(start.run_id);
            commands.push((
                RunCommand::StartRun {
                    tenant: tenant.clone(),
                    at: chrono::Utc::now(),
                    run_id: start.run_id,
                    workflow: Box::new(start.workflow),
                    event: Box::new(event.clone()),
                },
                metadata,
            ));
        }
    }
    let results = app
        .ledger
        .execute_creations::<WorkflowRun>(
            ids.iter()
                .zip(commands)
                .map(|(id, (command, metadata))| (id, command, metadata))
                .collect(),
        )
        .await;
    let mut started = Vec::new();
    for result in results {
        count("RunCommand", &result, WorkflowError::code);
        match result {
            Ok(committed) => started.extend(fold_of(committed)),
            Err(LedgerError::Rejected(WorkflowError::AlreadyStarted)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(started)
}

fn engine_actor(
    tenant: &TenantId,
    workflow: &WorkflowId,
    correlation: Option<CorrelationId>,
) -> Result<Actor, AppError> {
    Ok(
        Actor::new(tenant.clone(), principal_of(workflow)?, Channel::System)
            .with_correlation_id(correlation),
    )
}

/// Runs a command on a run; answers the run as the command left it (`None` when it recorded
/// nothing).
async fn run_command(
    app: &App,
    actor: &Actor,
    run: RunId,
    command: RunCommand,
) -> Result<Option<RunFold>, AppError> {
    let result = app
        .ledger
        .execute::<WorkflowRun>(&run, command, &actor.metadata(actor.correlation_id.clone()))
        .await;
    count("RunCommand", &result, WorkflowError::code);
    Ok(fold_of(result?))
}

/// The run as a command left it, with its stream's length (`None` when it recorded nothing).
fn fold_of(committed: countersign_ledger::Committed<WorkflowRun>) -> Option<RunFold> {
    let sequence = committed.events.last().map(|event| event.sequence);
    sequence
        .zip(committed.aggregate.state)
        .map(|(sequence, state)| (*state, sequence))
}

/// A run as the ledger holds it now, with its stream's length.
pub async fn load_run(app: &App, run: RunId) -> Result<Option<RunFold>, AppError> {
    let (aggregate, sequence) = app.ledger.load::<WorkflowRun>(&run).await?;
    Ok(aggregate.state.map(|state| (*state, sequence)))
}

/// What the engine did to a run in one look.
enum Advanced {
    /// Recorded something: `after` is the run as the command left it (`None`: read it again),
    /// `submitted` the action it just submitted and that action's status then.
    Moved {
        after: Option<Box<RunFold>>,
        submitted: Option<(ActionId, ActionStatus)>,
    },
    /// Waiting for votes or an execution, or ended.
    Idle,
}

/// Moves a run on as far as it can go now: submits the current step's action, records that it
/// waits for votes, asks an approved action to run, records a step's outcome and goes to the
/// next. Every command is refused by the run when another engine (or an earlier attempt) got
/// there first, so calling it again, from anywhere, is always safe.
///
/// The run is read once; after each command its state is the one the command left (the ledger
/// answers it), so a step costs its own commands and no re-reads. Answers the run as it left it
/// (`None`: no such run).
pub async fn advance(app: &App, run: RunId) -> Result<Option<RunFold>, AppError> {
    let Some(fold) = load_run(app, run).await? else {
        return Ok(None);
    };
    advance_from(app, run, fold).await.map(Some)
}

/// [`advance`] from a fold the caller already holds (a run it just started).
#[tracing::instrument(name = "workflow_run", skip_all, fields(
    run_id = %run, tenant = tracing::field::Empty, correlation_id = tracing::field::Empty,
))]
pub async fn advance_from(app: &App, run: RunId, mut fold: RunFold) -> Result<RunFold, AppError> {
    let span = tracing::Span::current();
    span.record("tenant", fold.0.tenant.as_str());
    span.record("correlation_id", fold.0.event.id.as_str());
    let mut submitted = None;
    for _ in 0..=(2 * workflow::MAX_STEPS + 4) {
        match advance_once(app, run, &fold.0, submitted.take()).await? {
            Advanced::Idle => break,
            Advanced::Moved {
                after,
                submitted: just,
            } => {
                fold = match after {
                    Some(after) => *after,
                    None => match load_run(app, run).await? {
                        Some(fold) => fold,
                        None => break,
                    },
                };
                submitted = just;
            }
        }
    }
    Ok(fold)
}

async fn advance_once(
    app: &App,
    run: RunId,
    state: &RunState,
    submitted: Option<(ActionId, ActionStatus)>,
) -> Result<Advanced, AppError> {
    if state.status.is_final() {
        return Ok(Advanced::Idle);
    }
    let correlation = CorrelationId::parse(state.event.id.clone()).ok();
    let actor = engine_actor(&state.tenant, &state.workflow.id, correlation)?;
    let step = state.step;
    let at = chrono::Utc::now();
    let outcome = match state.actions.get(&step).copied() {
        None => {
            let Some(definition) = state.workflow.steps.get(step) else {
                return Ok(Advanced::Idle);
            };
            match workflow::render_step(definition, step, &state.event, &state.workflow.constants) {
                Ok(submission) => {
                    let key = step_key(run, step)?;
                    match submit_step(app, &actor, submission, key, definition.require_approval)
                        .await
                    {
                        Ok(detail) => {
                            tracing::info!(action_id = %detail.id, step, status = ?detail.status, "workflow step submitted");
                            let command = RunCommand::RecordSubmitted {
                                at,
                                step,
                                action_id: detail.id,
                                pending: matches!(
                                    detail.status,
                                    ActionStatus::Pending | ActionStatus::Escalated
                                ),
                            };
                            return moved(
                                run_command(app, &actor, run, command).await,
                                Some((detail.id, detail.status)),
                            );
                        }
                        // A refusal is the step's outcome; a store failure is retried.
                        Err(
                            err @ (AppError::Action(_)
                            | AppError::InvalidInput(_)
                            | AppError::Forbidden(_)
                            | AppError::Unreadable(_)),
                        ) => StepOutcome::Failed {
                            reason: format!("the action was refused: {err}"),
                        },
                        Err(err) => return Err(err),
                    }
                }
                Err(err) => StepOutcome::Failed {
                    reason: format!("rendering the step: {err}"),
                },
            }
        }
        Some(action_id) => {
            // Just submitted and waiting for votes, and recorded so: nothing to read. A vote
            // since then is an event of the action, which brings the engine back.
            if state.status == RunStatus::PendingApproval
                && submitted.is_some_and(|(id, status)| {
                    id == action_id
                        && matches!(status, ActionStatus::Pending | ActionStatus::Escalated)
                })
            {
                return Ok(Advanced::Idle);
            }
            let (action, _) = app.ledger.load::<Action>(&action_id).await?;
            let Some(current) = action.state() else {
                return Ok(Advanced::Idle);
            };
            match current.status {
                ActionStatus::Pending | ActionStatus::Escalated => {
                    if state.status == RunStatus::PendingApproval {
                        return Ok(Advanced::Idle);
                    }
                    return moved(
                        run_command(app, &actor, run, RunCommand::RecordPending { at, step }).await,
                        None,
                    );
                }
                ActionStatus::Approved => {
                    if !current.execution.requested {
                        match actions::request_execution(app, &actor, action_id).await {
                            Ok(_)
                            | Err(AppError::Action(
                                ActionError::InvalidState { .. }
                                | ActionError::AlreadyExecuting { .. }
                                | ActionError::AlreadyExecuted,
                            )) => {}
                            Err(err) => return Err(err),
                        }
                    }
                    return Ok(Advanced::Idle);
                }
                ActionStatus::Executing => return Ok(Advanced::Idle),
                ActionStatus::Executed => StepOutcome::Executed,
                ActionStatus::Failed => StepOutcome::Failed {
                    reason: current
                        .execution
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "the action failed".into()),
                },
                ActionStatus::Skipped => StepOutcome::Failed {
                    reason: "skipped: the tenant is in safe mode".into(),
                },
                status @ (ActionStatus::Rejected
                | ActionStatus::Expired
                | ActionStatus::Cancelled) => StepOutcome::Denied {
                    reason: format!("the action was {status}"),
                },
            }
        }
    };
    moved(
        run_command(
            app,
            &actor,
            run,
            RunCommand::RecordOutcome { at, step, outcome },
        )
        .await,
        None,
    )
}

fn moved(
    result: Result<Option<RunFold>, AppError>,
    submitted: Option<(ActionId, ActionStatus)>,
) -> Result<Advanced, AppError> {
    match result {
        Ok(after) => Ok(Advanced::Moved {
            after: after.map(Box::new),
            submitted,
        }),
        // Another engine recorded it first: look again.
        Err(AppError::CannotDo {
            code: "not_at_step",
            ..
        }) => Ok(Advanced::Moved {
            after: None,
            submitted: None,
        }),
        Err(err) => Err(err),
    }
}

/// Submits a step's action: through [`actions::submit`], or — when the step requires approval —
/// under the governing policy with `auto_approve` off, so that it waits for votes. The action
/// is answered as the submission left it (no re-read).
async fn submit_step(
    app: &App,
    actor: &Actor,
    submission: Submission,
    key: IdempotencyKey,
    require_approval: bool,
) -> Result<ActionDetail, AppError> {
    if !require_approval {
        return Ok(
            match actions::submit(app, actor, submission, Some(key)).await? {
                Submitted::New(written) | Submitted::Existing(written) => written.value,
            },
        );
    }
    let (mode, mut policy) = actions::policy_for(app, actor, &submission).await?;
    policy.requirements.auto_approve = false;
    let id = ActionId::for_idempotency_key(&actor.tenant, &key);
    let command = ActionCommand::SubmitAction(Box::new(SubmitAction {
        context: actor.context(),
        action_id: id,
        submission,
        mode,
        policy,
        idempotency_key: Some(key),
        rollback_of: None,
    }));
    let result = app
        .ledger
        .execute::<Action>(&id, command, &actor.metadata(actor.correlation_id.clone()))
        .await;
    count("SubmitAction", &result, ActionError::code);
    match result {
        Ok(committed) => match committed.aggregate.state() {
            Some(state) => Ok(ActionDetail::from_state(
                state,
                committed.last_position().unwrap_or(-1),
            )),
            None => actions::detail(app, actor, id).await,
        },
        Err(LedgerError::Rejected(ActionError::AlreadySubmitted { .. })) => {
            actions::detail(app, actor, id).await
        }
        Err(err) => Err(err.into()),
    }
}

// --------------------------------------------------------------------------------- run index

fn sql(backend: &Backend, statement: &str) -> String {
    match backend {
        Backend::Postgres(_) => statement.to_owned(),
        Backend::Sqlite(_) => statement.replace('$', "?"),
    }
}

/// Writes a run's row in the runs index from its fold (an older fold never overwrites a newer).
pub async fn index_run(app: &App, state: &RunState, sequence: u64) -> Result<(), AppError> {
    let backend = app.ledger.backend();
    let statement = sql(
        backend,
        "INSERT INTO workflow_runs (run_id, tenant, workflow_id, event_id, event_type, status, \
         action_id, started_us, updated_us, sequence) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, action_id = excluded.action_id, \
         updated_us = excluded.updated_us, sequence = excluded.sequence \
         WHERE workflow_runs.sequence < excluded.sequence",
    );
    let action = state.current_action().map(|id| id.to_string());
    let sequence = i64::try_from(sequence).unwrap_or(i64::MAX);
    let run_id = state.run_id.to_string();
    macro_rules! bind {
        ($query:expr) => {
            $query
                .bind(&run_id)
                .bind(state.tenant.as_str())
                .bind(state.workflow.id.as_str())
                .bind(&state.event.id)
                .bind(state.event.event_type.as_str())
                .bind(state.status.as_str())
                .bind(&action)
                .bind(state.started_at.timestamp_micros())
                .bind(state.updated_at.timestamp_micros())
                .bind(sequence)
        };
    }
    match backend {
        Backend::Postgres(pool) => bind!(sqlx::query(&statement)).execute(pool).await.map(drop),
        Backend::Sqlite(pool) => bind!(sqlx::query(&statement)).execute(pool).await.map(drop),
    }
    .map_err(|err| AppError::internal("indexing a workflow run", err))
}

/// Filters of the runs list.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunFilter {
    pub workflow: Option<WorkflowId>,
    /// `running`, `pending_approval`, `completed`, `failed`, `denied`.
    pub status: Option<RunStatus>,
    pub event_type: Option<workflow::EventType>,
    /// Runs started at or after (RFC 3339).
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// Runs started before (RFC 3339).
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// 1 to 200 (default 50).
    #[schemars(extend("minimum" = 1, "maximum" = 200))]
    pub limit: Option<u32>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// One run in a list.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunSummary {
    pub run_id: String,
    pub workflow_id: String,
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    /// The action of the step now running, once submitted.
    pub action_id: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    /// Pass it as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// A cursor this list did not issue: 400 `invalid_cursor`, as for every other list.
fn invalid_cursor() -> AppError {
    AppError::Query(countersign_projections::QueryError::InvalidCursor)
}

/// The tenant's runs, newest first, filtered, keyset-paginated (owner, admin).
pub async fn list_runs(app: &App, actor: &Actor, filter: &RunFilter) -> Result<RunPage, AppError> {
    admin(actor)?;
    let limit = filter.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ParseError::new("limit", "between 1 and 200").into());
    }
    let after = match &filter.cursor {
        Some(cursor) => {
            let (micros, run) = cursor.split_once('_').ok_or_else(invalid_cursor)?;
            let micros: i64 = micros.parse().map_err(|_| invalid_cursor())?;
            RunId::parse(run).map_err(|_| invalid_cursor())?;
            Some((micros, run.to_owned()))
        }
        None => None,
    };
    let backend = app.ledger.backend();
    let statement = sql(
        backend,
        "SELECT run_id, workflow_id, event_id, event_type, status, action_id, started_us, updated_us \
         FROM workflow_runs WHERE tenant = $1 \
         AND ($2 IS NULL OR workflow_id = $2) AND ($3 IS NULL OR status = $3) \
         AND ($4 IS NULL OR event_type = $4) AND ($5 IS NULL OR started_us >= $5) \
         AND ($6 IS NULL OR started_us < $6) \
         AND ($7 IS NULL OR started_us < $7 OR (started_us = $7 AND run_id < $8)) \
         ORDER BY started_us DESC, run_id DESC LIMIT $9",
    );
    type Row = (
        String,
        String,
        String,
        String,
        String,
        Option<String>,
        i64,
        i64,
    );
    let (after_us, after_run) = after.unzip();
    macro_rules! bind {
        ($query:expr) => {
            $query
                .bind(actor.tenant.as_str())
                .bind(filter.workflow.as_ref().map(WorkflowId::as_str))
                .bind(filter.status.map(RunStatus::as_str))
                .bind(filter.event_type.as_ref().map(workflow::EventType::as_str))
                .bind(filter.from.map(|at| at.timestamp_micros()))
                .bind(filter.to.map(|at| at.timestamp_micros()))
                .bind(after_us)
                .bind(after_run.clone().unwrap_or_default())
                .bind(i64::from(limit) + 1)
        };
    }
    let mut rows: Vec<Row> = match backend {
        Backend::Postgres(pool) => {
            bind!(sqlx::query_as::<_, Row>(&statement))
                .fetch_all(pool)
                .await
        }
        Backend::Sqlite(pool) => {
            bind!(sqlx::query_as::<_, Row>(&statement))
                .fetch_all(pool)
                .await
        }
    }
    .map_err(|err| AppError::internal("listing workflow runs", err))?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let time = |micros: i64| chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default();
    let next_cursor = more
        .then(|| rows.last().map(|row| format!("{}_{}", row.6, row.0)))
        .flatten();
    Ok(RunPage {
        runs: rows
            .into_iter()
            .map(|row| RunSummary {
                run_id: row.0,
                workflow_id: row.1,
                event_id: row.2,
                event_type: row.3,
                status: row.4,
                action_id: row.5,
                started_at: time(row.6),
                updated_at: time(row.7),
            })
            .collect(),
        next_cursor,
    })
}

/// One entry of a run's timeline.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TimelineEntry {
    pub position: i64,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    #[serde(flatten)]
    pub event: RunEvent,
}

/// A run: its state, its timeline, and the actions its steps submitted with their votes.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunState,
    /// The event id: the correlation id of every action the run submitted.
    pub correlation_id: String,
    pub timeline: Vec<TimelineEntry>,
    pub actions: Vec<ActionDetail>,
}

/// One run of the actor's tenant (owner, admin); another tenant's answers like a missing one.
pub async fn read_run(app: &App, actor: &Actor, run: RunId) -> Result<RunDetail, AppError> {
    admin(actor)?;
    let mut aggregate = WorkflowRun::default();
    let mut timeline = Vec::new();
    for logged in app.ledger.stream_of::<WorkflowRun>(&run).await? {
        let event = logged.decode::<WorkflowRun>()?;
        timeline.push(TimelineEntry {
            position: logged.cursor.position,
            recorded_at: logged.recorded_at,
            event: event.clone(),
        });
        aggregate.apply(event);
    }
    let state = aggregate
        .state
        .filter(|state| state.tenant == actor.tenant)
        .ok_or_else(run_not_found)?;
    let mut details = Vec::new();
    for action in state.actions.values() {
        details.push(actions::detail(app, actor, *action).await?);
    }
    Ok(RunDetail {
        correlation_id: state.event.id.clone(),
        run: *state,
        timeline,
        actions: details,
    })
}

/// Approves or denies a run waiting for approval: the actor's vote on the pending step's action,
/// through the same use case as any vote (owner, admin; the action's policy decides whether the
/// vote counts).
pub async fn decide_run(
    app: &App,
    actor: &Actor,
    run: RunId,
    approve: bool,
    comment: Option<Comment>,
) -> Result<Written<ActionDetail>, AppError> {
    admin(actor)?;
    let (state, _) = load_run(app, run)
        .await?
        .filter(|(state, _)| state.tenant == actor.tenant)
        .ok_or_else(run_not_found)?;
    let action = match (state.status, state.current_action()) {
        (RunStatus::PendingApproval, Some(action)) => action,
        (status, _) => {
            return Err(AppError::NotYet {
                code: "run_not_pending",
                message: format!("the run is {}, not pending_approval", status.as_str()),
            });
        }
    };
    let vote = if approve { Vote::Approve } else { Vote::Reject };
    actions::vote(app, actor, action, vote, comment).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_key_names_its_run_and_nothing_else_does() {
        let tenant = TenantId::parse("acme").expect("tenant");
        let workflow = WorkflowId::parse("refunds").expect("id");
        let run = RunId::of(&tenant, "e-1", &workflow);
        let key = step_key(run, 3).expect("key");
        assert_eq!(run_of_key(&key), Some(run));
        for other in ["rollback:x", "workflow-run:not-a-uuid:1", "workflow-run:"] {
            let key = IdempotencyKey::parse(other).expect("key");
            assert_eq!(run_of_key(&key), None, "{other}");
        }
    }
}
