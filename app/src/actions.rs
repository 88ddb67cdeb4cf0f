//! Use cases on actions: submit, vote, cancel, request execution, preview, roll back, and the
//! views of one action (detail, audit trail, the state a stream starts from).

use countersign_domain::action::{
    Action, ActionCommand, ActionError, ActionEvent, ActionState, ActionStatus, BreakGlassApprove,
    CancelAction, CastBoundVote, CastDelegatedVote, CastVote, RequestExecution, RequestRollback,
    ReviewBreakGlass, ReviewVerdict, SubmitAction,
};
use countersign_domain::canonical::ExecutionKey;
use countersign_domain::policy::{PolicySnapshot, resolve};
use countersign_domain::quorum::Vote;
use countersign_domain::risk::assess;
use countersign_domain::submission::Submission;
use countersign_domain::tenant::{PolicySet, TenantSettings};
use countersign_domain::{
    ActionId, Comment, IdempotencyKey, Source, Summary, TenantId, TenantMode, UserId,
};
use countersign_ledger::{Committed, Ledger, LedgerError, LogCursor, LoggedEvent};
use countersign_projections::{ActionDetail, AuditEntry, InboxFilter, InboxPage, Projection};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tenant::count;
use crate::{Actor, App, AppError, roles};

/// What a write answers: the value after it and where its last event landed in the log (reads
/// of lists pass it back to wait for the write).
#[derive(Debug)]
pub struct Written<T> {
    pub value: T,
    pub cursor: Option<LogCursor>,
}

/// A submission's outcome: a new action, or the one an earlier identical request created.
#[derive(Debug)]
pub enum Submitted {
    New(Written<ActionDetail>),
    Existing(Written<ActionDetail>),
}

/// Runs an action command for the actor's tenant and counts its outcome, in a span naming the
/// tenant, the action, the command, the actor and the correlation id.
#[tracing::instrument(name = "command", skip_all, fields(
    command = command.name(),
    tenant = %actor.tenant,
    action_id = %id,
    principal = %actor.principal.id,
    channel = actor.channel.as_str(),
    correlation_id = command.context().correlation_id.as_ref().map(|id| id.as_str()),
))]
pub(crate) async fn run(
    app: &App,
    actor: &Actor,
    id: ActionId,
    command: ActionCommand,
) -> Result<Committed<Action>, LedgerError<ActionError>> {
    let name = command.name();
    let metadata = actor.metadata(command.context().correlation_id.clone());
    let result = app.ledger.execute::<Action>(&id, command, &metadata).await;
    count(name, &result, ActionError::code);
    result
}

pub(crate) fn written(committed: &Committed<Action>) -> Result<Written<ActionDetail>, AppError> {
    let state = committed
        .aggregate
        .state()
        .ok_or_else(AppError::action_not_found)?;
    Ok(Written {
        value: ActionDetail::from_state(state, committed.last_position().unwrap_or(-1)),
        cursor: committed.last_cursor(),
    })
}

/// The action as the ledger holds it now, with the log position of its last event, when it
/// exists in the actor's tenant: another tenant's action answers exactly like a missing one.
async fn current(app: &App, actor: &Actor, id: ActionId) -> Result<(ActionState, i64), AppError> {
    let (action, position) = fold(app, id, |_, _| Ok(())).await?;
    action
        .into_state()
        .filter(|state| state.tenant == actor.tenant)
        .map(|state| (state, position))
        .ok_or_else(AppError::action_not_found)
}

/// Folds an action's stream from the log into the aggregate and its last event's position,
/// showing `each` every event as stored and decoded (the audit trail builds its entries there;
/// the detail needs none).
async fn fold(
    app: &App,
    id: ActionId,
    mut each: impl FnMut(&LoggedEvent, &ActionEvent) -> anyhow::Result<()>,
) -> Result<(Action, i64), AppError> {
    let mut action = Action::default();
    let mut position = -1;
    for logged in &app.ledger.stream_of::<Action>(&id).await? {
        let event: ActionEvent = logged.decode::<Action>()?;
        each(logged, &event)?;
        action.apply(event);
        position = logged.cursor.position;
    }
    Ok((action, position))
}

/// The tenant's mode and the policy that governs `submission` by the actor.
pub async fn policy_for(
    app: &App,
    actor: &Actor,
    submission: &Submission,
) -> Result<(TenantMode, PolicySnapshot), AppError> {
    governing(&app.ledger, &actor.tenant, &actor.principal.id, submission).await
}

/// The tenant's mode and the policy that governs `submission` by `requester`, from the tenant's
/// settings and policies as the ledger holds them now: the one resolution every submission
/// goes through (the API, rollbacks, the demo loader).
pub async fn governing(
    ledger: &Ledger,
    tenant: &TenantId,
    requester: &UserId,
    submission: &Submission,
) -> Result<(TenantMode, PolicySnapshot), AppError> {
    let ((settings, _), (policies, _)) = ledger
        .load_pair::<TenantSettings, PolicySet>(tenant, tenant)
        .await?;
    let risk = assess(submission);
    let facts = submission.facts(requester, &risk);
    Ok((
        settings.settings.mode,
        resolve(
            &policies.list(),
            &facts,
            &settings.settings.default_requirements,
        ),
    ))
}

/// Submits `submission` under the policy in force. With an idempotency key, a repeat of the same
/// submission answers the existing action; the same key with other content is refused.
pub async fn submit(
    app: &App,
    actor: &Actor,
    submission: Submission,
    idempotency_key: Option<IdempotencyKey>,
) -> Result<Submitted, AppError> {
    actor.require(
        &[
            roles::OWNER,
            roles::ADMIN,
            roles::APPROVER,
            roles::REQUESTER,
        ],
        "submitting actions",
    )?;
    let id = match &idempotency_key {
        Some(key) => ActionId::for_idempotency_key(&actor.tenant, key),
        None => ActionId::from_uuid(uuid::Uuid::now_v7()),
    };
    submit_as(app, actor, id, submission, idempotency_key, None).await
}

async fn submit_as(
    app: &App,
    actor: &Actor,
    id: ActionId,
    submission: Submission,
    idempotency_key: Option<IdempotencyKey>,
    rollback_of: Option<ActionId>,
) -> Result<Submitted, AppError> {
    let (mode, policy) = policy_for(app, actor, &submission).await?;
    let command = ActionCommand::SubmitAction(Box::new(SubmitAction {
        context: actor.context(),
        action_id: id,
        submission,
        mode,
        policy,
        idempotency_key,
        rollback_of,
    }));
    match run(app, actor, id, command).await {
        Ok(committed) => Ok(Submitted::New(written(&committed)?)),
        Err(LedgerError::Rejected(ActionError::AlreadySubmitted { action_id })) => {
            Ok(Submitted::Existing(Written {
                value: detail(app, actor, action_id).await?,
                cursor: None,
            }))
        }
        Err(err) => Err(err.into()),
    }
}

/// Votes on the action's current stage; a later vote replaces the earlier.
pub async fn vote(
    app: &App,
    actor: &Actor,
    id: ActionId,
    vote: Vote,
    comment: Option<Comment>,
) -> Result<Written<ActionDetail>, AppError> {
    vote_bound(app, actor, id, vote, comment, None).await
}

/// Votes on the action's current stage, bound to the execution key the voter saw when one is
/// given: refused with `payload_changed` when it is not the action's, recorded in the vote
/// otherwise (see docs/governance.md).
pub async fn vote_bound(
    app: &App,
    actor: &Actor,
    id: ActionId,
    vote: Vote,
    comment: Option<Comment>,
    execution_key: Option<ExecutionKey>,
) -> Result<Written<ActionDetail>, AppError> {
    let cast = CastVote {
        context: actor.context(),
        vote,
        comment,
    };
    let command = match execution_key {
        Some(execution_key) => ActionCommand::CastBoundVote(CastBoundVote {
            vote: cast,
            execution_key,
            signature: None,
        }),
        None => ActionCommand::CastVote(cast),
    };
    written(&run(app, actor, id, command).await?)
}

/// Votes in `delegator`'s place through a delegation window active now (see
/// [`crate::delegations`]): the ballot is the delegator's, counted with the roles they lent,
/// recorded as cast by the actor. The domain refuses a vote on either one's own request and a
/// second ballot of the actor's in the stage.
pub async fn vote_for(
    app: &App,
    actor: &Actor,
    id: ActionId,
    delegator: &UserId,
    vote: Vote,
    comment: Option<Comment>,
    execution_key: Option<ExecutionKey>,
) -> Result<Written<ActionDetail>, AppError> {
    let context = actor.context();
    let delegation = crate::delegations::active(app, actor, delegator, context.at).await?;
    let command = ActionCommand::CastDelegatedVote(CastDelegatedVote {
        vote: CastVote {
            context,
            vote,
            comment,
        },
        on_behalf_of: delegation.delegator,
        execution_key,
    });
    written(&run(app, actor, id, command).await?)
}

/// One vote of a bulk vote; an id that is not an action's answers `action_not_found`.
#[derive(Debug, Clone)]
pub struct Ballot {
    pub action_id: String,
    pub vote: Vote,
    pub comment: Option<Comment>,
}

/// The most votes one bulk vote carries.
pub const MAX_BULK_VOTES: usize = 100;

/// Votes on several actions, each answered on its own, in order.
pub async fn vote_many(
    app: &App,
    actor: &Actor,
    ballots: Vec<Ballot>,
) -> Result<Vec<Result<Written<ActionDetail>, AppError>>, AppError> {
    if ballots.is_empty() || ballots.len() > MAX_BULK_VOTES {
        return Err(AppError::InvalidInput(countersign_domain::ParseError::new(
            "votes",
            format!("between 1 and {MAX_BULK_VOTES} votes"),
        )));
    }
    let mut results = Vec::with_capacity(ballots.len());
    for ballot in ballots {
        results.push(match ActionId::parse(&ballot.action_id) {
            Ok(id) => vote(app, actor, id, ballot.vote, ballot.comment).await,
            Err(_) => Err(AppError::action_not_found()),
        });
    }
    Ok(results)
}

/// Withdraws a pending action (its requester, an admin or an owner).
pub async fn cancel(
    app: &App,
    actor: &Actor,
    id: ActionId,
    reason: Option<Comment>,
) -> Result<Written<ActionDetail>, AppError> {
    let command = ActionCommand::CancelAction(CancelAction {
        context: actor.context(),
        reason,
    });
    written(&run(app, actor, id, command).await?)
}

/// Approves a pending action alone in an emergency (a member holding the `break_glass` role,
/// never on their own request), with a justification; its review is due the tenant's
/// `break_glass_review_seconds` later (a day unless set), then it escalates.
pub async fn break_glass(
    app: &App,
    actor: &Actor,
    id: ActionId,
    justification: Comment,
) -> Result<Written<ActionDetail>, AppError> {
    let (settings, _) = app.ledger.load::<TenantSettings>(&actor.tenant).await?;
    let context = actor.context();
    let review_due = context.at + settings.settings.break_glass_review_seconds.duration();
    let command = ActionCommand::BreakGlassApprove(BreakGlassApprove {
        context,
        justification,
        review_due,
    });
    written(&run(app, actor, id, command).await?)
}

/// Records the review after the fact of a break-glass approval (a member eligible in one of the
/// action's stages, neither the breaker nor the requester; once).
pub async fn review_break_glass(
    app: &App,
    actor: &Actor,
    id: ActionId,
    verdict: ReviewVerdict,
    comment: Option<Comment>,
) -> Result<Written<ActionDetail>, AppError> {
    let command = ActionCommand::ReviewBreakGlass(ReviewBreakGlass {
        context: actor.context(),
        verdict,
        comment,
    });
    written(&run(app, actor, id, command).await?)
}

/// The tenant's mode as the ledger holds it now.
pub async fn current_mode(ledger: &Ledger, tenant: &TenantId) -> Result<TenantMode, AppError> {
    let (settings, _) = ledger.load::<TenantSettings>(tenant).await?;
    Ok(settings.settings.mode)
}

/// Asks an approved action to run (its requester, an admin or an owner), or one skipped because
/// the tenant was in safe mode to run again now that it is not (refused while it still is).
pub async fn request_execution(
    app: &App,
    actor: &Actor,
    id: ActionId,
) -> Result<Written<ActionDetail>, AppError> {
    let mode = current_mode(&app.ledger, &actor.tenant).await?;
    let command = ActionCommand::RequestExecution(RequestExecution {
        context: actor.context(),
        mode,
    });
    written(&run(app, actor, id, command).await?)
}

/// What an execution would do.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ExecutionPreview {
    pub action_id: ActionId,
    pub action_type: String,
    pub execution_key: ExecutionKey,
    pub payload: Value,
    pub status: ActionStatus,
    /// Whether a real request would start it now.
    pub would_execute: bool,
    /// Why not, when it would not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the capability says it would do (when this process runs an executor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capability_preview: Option<Value>,
    /// Why the capability could not preview it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capability_error: Option<String>,
}

/// What asking the action to run would do, changing nothing (whoever may ask it to run).
pub async fn preview_execution(
    app: &App,
    actor: &Actor,
    id: ActionId,
) -> Result<ExecutionPreview, AppError> {
    let (current, _) = current(app, actor, id).await?;
    current.may_be_directed_by(&actor.principal, "execute")?;
    let mode = current_mode(&app.ledger, &actor.tenant).await?;
    let resumable = current.status == ActionStatus::Skipped && current.execution.resumable;
    let reason = match (current.status, current.mode, mode) {
        (ActionStatus::Approved, TenantMode::Safe, _) => {
            Some("the tenant was in safe mode at submission: it will be skipped".to_owned())
        }
        (ActionStatus::Approved, _, TenantMode::Safe) => {
            Some("the tenant is in safe mode: it will be skipped".to_owned())
        }
        (ActionStatus::Approved, ..) => None,
        (ActionStatus::Skipped, _, TenantMode::Safe) if resumable => Some(
            "skipped for safe mode: it can run again once the tenant leaves safe mode".to_owned(),
        ),
        (ActionStatus::Skipped, ..) if resumable => None,
        (status, ..) => Some(format!("the action is {status}, not approved")),
    };
    let (capability_preview, capability_error) = match &app.previewer {
        Some(previewer) => match previewer
            .preview(&id)
            .await
            .map_err(|err| AppError::internal("previewing a capability", err))?
        {
            Ok(preview) => (Some(preview), None),
            Err(reason) => (None, Some(reason)),
        },
        None => (None, None),
    };
    Ok(ExecutionPreview {
        action_id: id,
        action_type: current.action_type.to_string(),
        execution_key: current.execution_key.clone(),
        payload: current.submission.payload.clone(),
        status: current.status,
        would_execute: reason.is_none() && capability_error.is_none(),
        reason: reason.or_else(|| capability_error.clone()),
        capability_preview,
        capability_error,
    })
}

/// Rolls an executed action back: records on the original that a rollback was asked (the domain
/// decides who may and whether there is anything to undo), then submits the rollback action —
/// the stored undo payload through the same capability, governed by its own policy. Asking again
/// answers the same rollback action; if the submission failed after the request was recorded,
/// asking again completes it.
pub async fn roll_back(app: &App, actor: &Actor, id: ActionId) -> Result<Submitted, AppError> {
    let (original, _) = current(app, actor, id).await?;
    let key = IdempotencyKey::parse(format!("rollback:{id}"))
        .map_err(|err| AppError::internal("deriving the rollback key", err))?;
    let rollback_id = ActionId::for_idempotency_key(&actor.tenant, &key);
    let link = ActionCommand::RequestRollback(RequestRollback {
        context: actor.context(),
        rollback_action_id: rollback_id,
    });
    let linked = run(app, actor, id, link).await?;
    let undo_payload = original
        .execution
        .undo_payload
        .clone()
        .ok_or(ActionError::NothingToRollBack)?;
    let mut submission = original.submission.clone();
    submission.payload = undo_payload;
    submission.undo_payload = None;
    submission.summary = Summary::parse(
        format!("Roll back: {}", original.submission.summary.as_str())
            .chars()
            .take(500)
            .collect::<String>(),
    )?;
    submission.source = Source::parse("rollback")?;
    let submitted = submit_as(app, actor, rollback_id, submission, Some(key), Some(id)).await?;
    Ok(match submitted {
        Submitted::New(mut written) => {
            written.cursor = written.cursor.max(linked.last_cursor());
            Submitted::New(written)
        }
        Submitted::Existing(mut written) => {
            written.cursor = written.cursor.max(linked.last_cursor());
            Submitted::Existing(written)
        }
    })
}

/// An action: status, request, risk, policy, stage progress, votes, executions — built from the
/// ledger, so it reflects every write to the action that has answered, whichever process made it.
pub async fn detail(app: &App, actor: &Actor, id: ActionId) -> Result<ActionDetail, AppError> {
    let (state, position) = current(app, actor, id).await?;
    Ok(ActionDetail::from_state(&state, position))
}

/// An action's audit trail: every event with actor, time, type, content and log position (owner,
/// admin, auditor) — from the ledger, like [`detail`].
pub async fn audit(app: &App, actor: &Actor, id: ActionId) -> Result<AuditTrail, AppError> {
    actor.require(
        &[roles::OWNER, roles::ADMIN, roles::AUDITOR],
        "reading audit trails",
    )?;
    let (_, events) = with_trail(app, actor, id).await?;
    Ok(AuditTrail {
        action_id: id,
        events,
    })
}

/// The action and its audit entries from one read of its stream; another tenant's action is a
/// missing one. The caller checks who may read trails.
async fn with_trail(
    app: &App,
    actor: &Actor,
    id: ActionId,
) -> Result<(Action, Vec<AuditEntry>), AppError> {
    let mut events = Vec::new();
    let (action, _) = fold(app, id, |logged, event| {
        events.push(AuditEntry::from_logged(logged, event)?);
        Ok(())
    })
    .await?;
    if action
        .state()
        .is_none_or(|state| state.tenant != actor.tenant)
    {
        return Err(AppError::action_not_found());
    }
    Ok((action, events))
}

/// An action as [`watch`] gives it, with its audit trail (as [`audit`] gives it) when the actor
/// may read audit trails (owner, admin, auditor), from one read of its stream: what a page
/// showing both reads.
pub async fn watch_with_audit(
    app: &App,
    actor: &Actor,
    id: ActionId,
) -> Result<(Action, Option<Vec<AuditEntry>>), AppError> {
    if !actor.has_any(&[roles::OWNER, roles::ADMIN, roles::AUDITOR]) {
        let (action, _) = watch(app, actor, id).await?;
        return Ok((action, None));
    }
    let (action, events) = with_trail(app, actor, id).await?;
    Ok((action, Some(events)))
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct AuditTrail {
    pub action_id: ActionId,
    pub events: Vec<AuditEntry>,
}

/// The inbox: filtered, sorted, keyset-paginated, at least as new as `consistent_with`.
pub async fn inbox(
    app: &App,
    actor: &Actor,
    filter: &InboxFilter,
    consistent_with: Option<LogCursor>,
) -> Result<InboxPage, AppError> {
    if let Some(user) = &filter.requested_by {
        actor.may_read_history_of(user)?;
    }
    app.wait_for(Projection::Actions, consistent_with).await?;
    // The actor's own `eligible` view also holds what members who delegated to them may vote on.
    if filter
        .eligible
        .as_ref()
        .is_some_and(|me| me.id == actor.principal.id)
    {
        let at = actor.tenant_context().at;
        let (set, _) = app
            .ledger()
            .load::<countersign_domain::delegation::DelegationSet>(&actor.tenant)
            .await
            .map_err(|error| AppError::internal("loading the tenant's delegations", error))?;
        let delegators: Vec<_> = set
            .delegations
            .values()
            .filter(|delegation| {
                delegation.delegate == actor.principal.id && delegation.is_active_at(at)
            })
            .map(|delegation| delegation.delegator.clone())
            .collect();
        if !delegators.is_empty() {
            return Ok(app
                .projections
                .inbox_with_delegations(&actor.tenant, filter, &delegators)
                .await?);
        }
    }
    Ok(app.projections.inbox(&actor.tenant, filter).await?)
}

/// The action a stream starts from, with its stream version (another tenant's action answers
/// like a missing one).
pub async fn watch(app: &App, actor: &Actor, id: ActionId) -> Result<(Action, u64), AppError> {
    let (action, sequence) = app.ledger.load::<Action>(&id).await?;
    if action
        .state()
        .is_none_or(|state| state.tenant != actor.tenant)
    {
        return Err(AppError::action_not_found());
    }
    Ok((action, sequence))
}
