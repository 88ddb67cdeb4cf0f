//! `/v1/actions`: submit, the inbox, detail, votes, cancel, execute, audit, stream.

use std::convert::Infallible;
use std::time::Duration;

use aide::axum::ApiRouter;
use aide::axum::routing::{get, post};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use countersign_domain::action::{
    Action, ActionCommand, ActionError, ActionState, ActionStatus, CancelAction, CastVote,
    CommandContext, RequestExecution, SubmitAction,
};
use countersign_domain::canonical::ExecutionKey;
use countersign_domain::quorum::Vote;
use countersign_domain::risk::RiskLevel;
use countersign_domain::submission::Submission;
use countersign_domain::{
    ActionId, CapabilityName, Comment, IdempotencyKey, ModuleSlug, TenantMode, UserId,
};
use countersign_ledger::{Committed, LedgerError};
use countersign_projections::{
    ActionDetail, AuditEntry, InboxFilter, InboxPage, InboxSort, Projection,
};
use futures::Stream;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AppState;
use crate::auth::{Caller, CredentialWatch, roles};
use crate::error::{ApiError, Problem};
use crate::extract::{
    ActionPath, CONSISTENCY_TOKEN_PATTERN, CURSOR_PATTERN, Created, EventStream, NO_NUL_PATTERN,
    OptionalJson, ReadQuery, Reply, StrictJson, StrictQuery, action_id, comma_list,
    comma_list_pattern, correlation_id, wait_for,
};
use crate::service;
use crate::stream::ActionStream;

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/actions", post(submit).get(inbox))
        .api_route("/v1/actions/{id}", get(detail))
        .api_route("/v1/actions/{id}/votes", post(vote))
        .api_route("/v1/actions/{id}/approve", post(approve))
        .api_route("/v1/actions/{id}/reject", post(reject))
        .api_route("/v1/votes", post(bulk_votes))
        .api_route("/v1/actions/{id}/cancel", post(cancel))
        .api_route("/v1/actions/{id}/execute", post(execute))
        .api_route("/v1/actions/{id}/audit", get(audit))
        .api_route("/v1/actions/{id}/stream", get(stream))
        .api_route("/v1/actions/{id}/rollback", post(rollback))
}

fn context(caller: &Caller, headers: &HeaderMap) -> Result<CommandContext, ApiError> {
    Ok(CommandContext {
        tenant: caller.tenant.clone(),
        by: caller.principal.clone(),
        at: chrono::Utc::now(),
        correlation_id: correlation_id(headers)?,
    })
}

/// The action and its stream's version as the ledger holds them, when it exists in the
/// caller's tenant: another tenant's action answers exactly like a missing one.
async fn load_action(
    state: &AppState,
    caller: &Caller,
    id: ActionId,
) -> Result<(ActionState, u64), ApiError> {
    let (action, sequence) = state.ledger.load::<Action>(&id.to_string()).await?;
    let current = action
        .into_state()
        .filter(|current| current.tenant == caller.tenant)
        .ok_or_else(|| ApiError::not_found("action_not_found", "action"))?;
    Ok((current, sequence))
}

fn detail_of(committed: &Committed<Action>) -> Result<ActionDetail, ApiError> {
    let state = committed
        .aggregate
        .state()
        .ok_or_else(|| ApiError::not_found("action_not_found", "action"))?;
    Ok(ActionDetail::from_state(
        state,
        committed.last_position().unwrap_or(-1),
    ))
}

/// Submit an action. With `Idempotency-Key`, a repeat of the same submission answers 200 with
/// the existing action; the same key with different content is refused.
async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    StrictJson(submission): StrictJson<Submission>,
) -> Result<Created<ActionDetail>, ApiError> {
    caller.require(
        &[
            roles::OWNER,
            roles::ADMIN,
            roles::APPROVER,
            roles::REQUESTER,
        ],
        "submitting actions",
    )?;
    let context = context(&caller, &headers)?;
    let idempotency_key = match headers.get("idempotency-key").map(|value| value.to_str()) {
        None => None,
        Some(Ok(key)) => Some(IdempotencyKey::parse(key).map_err(|err| {
            ApiError::bad_request(
                "invalid_header",
                format!("Idempotency-Key: {}", err.message),
            )
            .with_field("Idempotency-Key")
        })?),
        Some(Err(_)) => {
            return Err(ApiError::bad_request(
                "invalid_header",
                "Idempotency-Key must be printable ASCII",
            )
            .with_field("Idempotency-Key"));
        }
    };
    let id = match &idempotency_key {
        Some(key) => ActionId::for_idempotency_key(&caller.tenant, key),
        None => ActionId::from_uuid(uuid::Uuid::now_v7()),
    };
    let (mode, policy) = service::resolve_policy(&state, &caller, &submission).await?;
    let command = ActionCommand::SubmitAction(Box::new(SubmitAction {
        context,
        action_id: id,
        submission,
        mode,
        policy,
        idempotency_key,
        rollback_of: None,
    }));
    match service::execute_action(&state, &caller, id, command).await {
        Ok(committed) => Ok(Created::New(
            Reply::new(detail_of(&committed)?).at(committed.last_cursor()),
        )),
        Err(LedgerError::Rejected(ActionError::AlreadySubmitted { action_id })) => {
            let (existing, _) = load_action(&state, &caller, action_id).await?;
            Ok(Created::Existing(Reply::new(ActionDetail::from_state(
                &existing, -1,
            ))))
        }
        Err(err) => Err(err.into()),
    }
}

/// Inbox query parameters. Lists are comma-separated.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InboxQuery {
    /// Statuses (default `pending`, which includes escalated actions); `all` for every status.
    #[schemars(extend("pattern" = status_pattern()))]
    pub status: Option<String>,
    /// Risk levels: `low`, `medium`, `high`.
    #[schemars(extend("pattern" = comma_list_pattern(&["low", "medium", "high"])))]
    pub risk: Option<String>,
    /// 0–100.
    #[schemars(extend("maximum" = 100))]
    pub min_score: Option<u8>,
    /// 0–100.
    #[schemars(extend("maximum" = 100))]
    pub max_score: Option<u8>,
    pub module: Option<ModuleSlug>,
    pub capability: Option<CapabilityName>,
    pub requested_by: Option<UserId>,
    /// RFC 3339; submitted at or after.
    pub created_from: Option<chrono::DateTime<chrono::Utc>>,
    /// RFC 3339; submitted before.
    pub created_before: Option<chrono::DateTime<chrono::Utc>>,
    /// `me`: only actions the caller may vote on now and has not voted on yet.
    #[schemars(extend("enum" = ["me"]))]
    pub eligible: Option<String>,
    /// `created` (newest first, default), `risk` (highest first) or `deadline` (soonest first).
    pub sort: Option<InboxSort>,
    /// The previous page's `next_cursor`, with the same `sort`.
    #[schemars(extend("pattern" = CURSOR_PATTERN))]
    pub cursor: Option<String>,
    /// 1–200, default 50.
    #[schemars(extend("minimum" = 1, "maximum" = 200))]
    pub limit: Option<u32>,
    /// Wait until the inbox reflects the write that returned this `X-Consistency-Token`.
    #[schemars(extend("pattern" = CONSISTENCY_TOKEN_PATTERN))]
    pub consistent_with: Option<String>,
}

/// `all`, or a comma list of statuses.
fn status_pattern() -> String {
    let names: Vec<&str> = ActionStatus::ALL
        .iter()
        .map(|status| status.as_str())
        .collect();
    format!("^(?:all|{})$", comma_list(&names))
}

fn parse_statuses(raw: Option<&str>) -> Result<Vec<ActionStatus>, ApiError> {
    let raw = raw.unwrap_or("pending");
    if raw == "all" {
        return Ok(Vec::new());
    }
    let mut statuses = Vec::new();
    for name in raw.split(',').map(str::trim) {
        let status = ActionStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == name)
            .ok_or_else(|| {
                ApiError::bad_request("invalid_query", format!("status: unknown status `{name}`"))
                    .with_field("status")
            })?;
        statuses.push(status);
        if status == ActionStatus::Pending {
            statuses.push(ActionStatus::Escalated);
        }
    }
    Ok(statuses)
}

impl InboxQuery {
    pub fn filter(&self, caller: &Caller) -> Result<InboxFilter, ApiError> {
        if let Some(user) = &self.requested_by {
            caller.may_read_history_of(user.as_str())?;
        }
        let risk_levels = match &self.risk {
            None => Vec::new(),
            Some(raw) => raw
                .split(',')
                .map(|level| {
                    RiskLevel::parse(level.trim()).ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_query",
                            format!("risk: unknown level `{level}`"),
                        )
                        .with_field("risk")
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let eligible = match self.eligible.as_deref() {
            None => None,
            Some("me") => Some(caller.principal.clone()),
            Some(other) => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("eligible: `{other}` is not supported (use `me`)"),
                )
                .with_field("eligible"));
            }
        };
        let limit = self.limit.unwrap_or(50);
        if !(1..=200).contains(&limit) {
            return Err(
                ApiError::bad_request("invalid_query", "limit: must be between 1 and 200")
                    .with_field("limit"),
            );
        }
        if self.min_score.is_some_and(|s| s > 100) || self.max_score.is_some_and(|s| s > 100) {
            return Err(
                ApiError::bad_request("invalid_query", "scores are between 0 and 100")
                    .with_field("min_score"),
            );
        }
        Ok(InboxFilter {
            statuses: parse_statuses(self.status.as_deref())?,
            risk_levels,
            min_score: self.min_score,
            max_score: self.max_score,
            module: self.module.as_ref().map(ToString::to_string),
            capability: self.capability.as_ref().map(ToString::to_string),
            requested_by: self.requested_by.as_ref().map(ToString::to_string),
            created_from: self.created_from,
            created_before: self.created_before,
            eligible,
            sort: self.sort.unwrap_or_default(),
            cursor: self.cursor.clone(),
            limit,
        })
    }
}

/// The inbox: filtered, sorted, keyset-paginated.
async fn inbox(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(query): StrictQuery<InboxQuery>,
) -> Result<Reply<InboxPage>, ApiError> {
    let filter = query.filter(&caller)?;
    wait_for(
        &state,
        Projection::Actions,
        query.consistent_with.as_deref(),
    )
    .await?;
    Ok(Reply::new(
        state.projections.inbox(&caller.tenant, &filter).await?,
    ))
}

/// An action: status, request, risk, policy, stage progress, votes, executions.
async fn detail(
    State(state): State<AppState>,
    caller: Caller,
    Path(ActionPath { id }): Path<ActionPath>,
    StrictQuery(query): StrictQuery<ReadQuery>,
) -> Result<Reply<ActionDetail>, ApiError> {
    let id = action_id(&id)?;
    wait_for(
        &state,
        Projection::Actions,
        query.consistent_with.as_deref(),
    )
    .await?;
    let detail = state
        .projections
        .action(&caller.tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("action_not_found", "action"))?;
    Ok(Reply::new(detail))
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VoteBody {
    pub vote: Vote,
    #[serde(default)]
    pub comment: Option<Comment>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentBody {
    #[serde(default)]
    pub comment: Option<Comment>,
}

async fn cast(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    id: ActionId,
    vote: Vote,
    comment: Option<Comment>,
) -> Result<Reply<ActionDetail>, ApiError> {
    let command = ActionCommand::CastVote(CastVote {
        context: context(caller, headers)?,
        vote,
        comment,
    });
    let committed = service::execute_action(state, caller, id, command).await?;
    Ok(Reply::new(detail_of(&committed)?).at(committed.last_cursor()))
}

/// Vote on the current stage; a later vote replaces the earlier.
async fn vote(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(ActionPath { id }): Path<ActionPath>,
    StrictJson(body): StrictJson<VoteBody>,
) -> Result<Reply<ActionDetail>, ApiError> {
    cast(
        &state,
        &caller,
        &headers,
        action_id(&id)?,
        body.vote,
        body.comment,
    )
    .await
}

/// Approve, with an optional comment.
async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(ActionPath { id }): Path<ActionPath>,
    OptionalJson(body): OptionalJson<CommentBody>,
) -> Result<Reply<ActionDetail>, ApiError> {
    cast(
        &state,
        &caller,
        &headers,
        action_id(&id)?,
        Vote::Approve,
        body.comment,
    )
    .await
}

/// Reject, with an optional comment.
async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(ActionPath { id }): Path<ActionPath>,
    OptionalJson(body): OptionalJson<CommentBody>,
) -> Result<Reply<ActionDetail>, ApiError> {
    cast(
        &state,
        &caller,
        &headers,
        action_id(&id)?,
        Vote::Reject,
        body.comment,
    )
    .await
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkVoteItem {
    /// An action's id; one that is not answers 404 in its result.
    #[schemars(extend("pattern" = NO_NUL_PATTERN))]
    pub action_id: String,
    pub vote: Vote,
    #[serde(default)]
    pub comment: Option<Comment>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkVotes {
    /// 1 to 100 votes.
    #[schemars(length(min = 1, max = 100))]
    pub votes: Vec<BulkVoteItem>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct BulkVoteResult {
    pub action_id: String,
    /// The HTTP status this vote alone would have had.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionDetail>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct BulkVoteResults {
    pub results: Vec<BulkVoteResult>,
}

/// Vote on several actions; each vote is answered on its own.
async fn bulk_votes(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    StrictJson(body): StrictJson<BulkVotes>,
) -> Result<Reply<BulkVoteResults>, ApiError> {
    if body.votes.is_empty() || body.votes.len() > 100 {
        return Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "votes: between 1 and 100 votes",
        )
        .with_field("votes"));
    }
    let mut results = Vec::with_capacity(body.votes.len());
    let mut last = None;
    for item in body.votes {
        let outcome = match action_id(&item.action_id) {
            Ok(id) => cast(&state, &caller, &headers, id, item.vote, item.comment).await,
            Err(err) => Err(err),
        };
        results.push(match outcome {
            Ok(reply) => {
                last = last.max(reply.token);
                BulkVoteResult {
                    action_id: item.action_id,
                    status: 200,
                    action: Some(reply.body),
                    error: None,
                }
            }
            Err(err) => BulkVoteResult {
                action_id: item.action_id,
                status: err.status.as_u16(),
                action: None,
                error: Some(err.problem()),
            },
        });
    }
    Ok(Reply::new(BulkVoteResults { results }).at(last))
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    #[serde(default)]
    pub reason: Option<Comment>,
}

/// Withdraw a pending action (its requester, an admin or an owner).
async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(ActionPath { id }): Path<ActionPath>,
    OptionalJson(body): OptionalJson<CancelBody>,
) -> Result<Reply<ActionDetail>, ApiError> {
    let id = action_id(&id)?;
    let command = ActionCommand::CancelAction(CancelAction {
        context: context(&caller, &headers)?,
        reason: body.reason,
    });
    let committed = service::execute_action(&state, &caller, id, command).await?;
    Ok(Reply::new(detail_of(&committed)?).at(committed.last_cursor()))
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteBody {
    /// Answer what would run, and change nothing.
    #[serde(default)]
    pub dry_run: bool,
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

#[derive(Debug, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ExecuteResult {
    Preview(ExecutionPreview),
    Requested(Box<ActionDetail>),
}

/// Ask an approved action to run (owner, admin, or its requester); `dry_run` previews it.
async fn execute(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(ActionPath { id }): Path<ActionPath>,
    OptionalJson(body): OptionalJson<ExecuteBody>,
) -> Result<Reply<ExecuteResult, 202>, ApiError> {
    let id = action_id(&id)?;
    let (current, _) = load_action(&state, &caller, id).await?;
    if !caller.has_any(&[roles::OWNER, roles::ADMIN]) && current.requester.id != caller.principal.id
    {
        return Err(ApiError::forbidden(
            "executing an action requires the owner or admin role, or being its requester",
        ));
    }
    if body.dry_run {
        let reason = match (current.status, current.mode) {
            (ActionStatus::Approved, TenantMode::Safe) => {
                Some("the tenant was in safe mode at submission: it will be skipped".to_owned())
            }
            (ActionStatus::Approved, _) => None,
            (status, _) => Some(format!("the action is {status}, not approved")),
        };
        let (capability_preview, capability_error) = match &state.executor {
            Some(executor) => match executor.preview(&id).await? {
                Ok(preview) => (Some(preview), None),
                Err(failure) => (None, Some(failure.message)),
            },
            None => (None, None),
        };
        return Ok(Reply::new(ExecuteResult::Preview(ExecutionPreview {
            action_id: id,
            action_type: current.action_type.to_string(),
            execution_key: current.execution_key.clone(),
            payload: current.submission.payload.clone(),
            status: current.status,
            would_execute: reason.is_none() && capability_error.is_none(),
            reason: reason.or_else(|| capability_error.clone()),
            capability_preview,
            capability_error,
        })));
    }
    let command = ActionCommand::RequestExecution(RequestExecution {
        context: context(&caller, &headers)?,
    });
    let committed = service::execute_action(&state, &caller, id, command).await?;
    Ok(
        Reply::new(ExecuteResult::Requested(Box::new(detail_of(&committed)?)))
            .at(committed.last_cursor()),
    )
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AuditTrail {
    pub action_id: ActionId,
    pub events: Vec<AuditEntry>,
}

/// Every event of an action with actor, time, type, content and log position (owner, admin,
/// auditor).
async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    Path(ActionPath { id }): Path<ActionPath>,
    StrictQuery(query): StrictQuery<ReadQuery>,
) -> Result<Reply<AuditTrail>, ApiError> {
    caller.require(
        &[roles::OWNER, roles::ADMIN, roles::AUDITOR],
        "reading audit trails",
    )?;
    let id = action_id(&id)?;
    wait_for(&state, Projection::Audit, query.consistent_with.as_deref()).await?;
    let events = state.projections.audit(&caller.tenant, &id).await?;
    if events.is_empty() {
        return Err(ApiError::not_found("action_not_found", "action"));
    }
    Ok(Reply::new(AuditTrail {
        action_id: id,
        events,
    })
    .no_store())
}

/// Server-sent events: the action's status now, then every change (`event:` is the event type,
/// `data:` carries the status after it and the event's content). The stream ends when the
/// action is finished, or with a `closed` event (a problem document) once the caller's key is
/// revoked or token expires.
async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(ActionPath { id }): Path<ActionPath>,
) -> Result<EventStream<impl Stream<Item = Result<Event, Infallible>> + Send + 'static>, ApiError> {
    let id = action_id(&id)?;
    let credential = CredentialWatch::new(&state, &headers);
    let subscription = ActionStream::open(&state, &caller, id, credential).await?;
    Ok(EventStream(
        Sse::new(subscription.into_stream())
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    ))
}

/// Roll an executed action back: submits a new action that runs the stored undo payload through
/// the same capability, linked to the original and governed by its own policy (owner, admin, or
/// the original's requester). Asking again answers the same rollback action.
async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(ActionPath { id }): Path<ActionPath>,
) -> Result<Created<ActionDetail>, ApiError> {
    let id = action_id(&id)?;
    let (original, _) = load_action(&state, &caller, id).await?;
    if !caller.has_any(&[roles::OWNER, roles::ADMIN])
        && original.requester.id != caller.principal.id
    {
        return Err(ApiError::forbidden(
            "rolling back an action requires the owner or admin role, or being its requester",
        ));
    }
    if original.status != ActionStatus::Executed {
        return Err(ActionError::NothingToRollBack.into());
    }
    let undo_payload = original
        .execution
        .undo_payload
        .clone()
        .ok_or_else(|| ApiError::from(ActionError::NothingToRollBack))?;
    let key = IdempotencyKey::parse(format!("rollback:{id}"))
        .map_err(|err| ApiError::internal(err.message))?;
    let rollback_id = ActionId::for_idempotency_key(&caller.tenant, &key);
    if let Some(existing) = original
        .rolled_back_by
        .filter(|existing| *existing != rollback_id)
    {
        return Err(ActionError::AlreadyRolledBack {
            rollback_action_id: existing,
        }
        .into());
    }
    let mut submission = original.submission.clone();
    submission.payload = undo_payload;
    submission.undo_payload = None;
    submission.summary = countersign_domain::Summary::parse(
        format!("Roll back: {}", original.submission.summary.as_str())
            .chars()
            .take(500)
            .collect::<String>(),
    )
    .map_err(ApiError::invalid_input)?;
    submission.source =
        countersign_domain::Source::parse("rollback").map_err(ApiError::invalid_input)?;
    let (mode, policy) = service::resolve_policy(&state, &caller, &submission).await?;
    let command = ActionCommand::SubmitAction(Box::new(SubmitAction {
        context: context(&caller, &headers)?,
        action_id: rollback_id,
        submission,
        mode,
        policy,
        idempotency_key: Some(key),
        rollback_of: Some(id),
    }));
    let (detail, cursor, created) =
        match service::execute_action(&state, &caller, rollback_id, command).await {
            Ok(committed) => (detail_of(&committed)?, committed.last_cursor(), true),
            Err(LedgerError::Rejected(ActionError::AlreadySubmitted { .. })) => {
                let (existing, _) = load_action(&state, &caller, rollback_id).await?;
                (ActionDetail::from_state(&existing, -1), None, false)
            }
            Err(err) => return Err(err.into()),
        };
    let link = ActionCommand::RequestRollback(countersign_domain::action::RequestRollback {
        context: context(&caller, &headers)?,
        rollback_action_id: rollback_id,
    });
    let linked = service::execute_action(&state, &caller, id, link).await?;
    let cursor = cursor.max(linked.last_cursor());
    Ok(if created {
        Created::New(Reply::new(detail).at(cursor))
    } else {
        Created::Existing(Reply::new(detail).at(cursor))
    })
}
