//! `/v1/actions`: submit, the inbox, detail, votes, cancel, execute, audit, stream, rollback.
//! Each handler parses its request, calls one use case of `countersign_app::actions` as the
//! caller, and replies.

use std::convert::Infallible;
use std::time::Duration;

use aide::axum::ApiRouter;
use aide::axum::routing::{get, post};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use countersign_app::Actor;
use countersign_app::actions::{self, AuditTrail, Ballot, ExecutionPreview};
use countersign_app::batch;
use countersign_domain::action::{ActionStatus, ReviewVerdict};
use countersign_domain::canonical::ExecutionKey;
use countersign_domain::quorum::Vote;
use countersign_domain::risk::RiskLevel;
use countersign_domain::submission::Submission;
use countersign_domain::{CapabilityName, Comment, IdempotencyKey, ModuleSlug, UserId};
use countersign_projections::{ActionDetail, InboxFilter, InboxPage, InboxSort};
use futures::Stream;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::CredentialWatch;
use crate::error::{ApiError, Problem};
use crate::extract::{
    Acting, ActionPath, CONSISTENCY_TOKEN_PATTERN, CURSOR_PATTERN, Created, EventStream,
    NO_NUL_PATTERN, OptionalJson, ReadQuery, Reply, StrictJson, StrictQuery, comma_list,
    comma_list_pattern, consistent_with,
};
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
        .api_route("/v1/actions/execute", post(execute_batch))
        .api_route("/v1/actions/{id}/audit", get(audit))
        .api_route("/v1/actions/{id}/stream", get(stream))
        .api_route("/v1/actions/{id}/rollback", post(rollback))
        .api_route("/v1/actions/{id}/break-glass", post(break_glass))
        .api_route("/v1/actions/{id}/review", post(review))
}

/// The `Idempotency-Key` header, when sent.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let invalid = |detail: String| {
        ApiError::bad_request("invalid_header", detail).with_field("Idempotency-Key")
    };
    match headers.get("idempotency-key").map(|value| value.to_str()) {
        None => Ok(None),
        Some(Ok(key)) => IdempotencyKey::parse(key)
            .map(Some)
            .map_err(|err| invalid(format!("Idempotency-Key: {}", err.message))),
        Some(Err(_)) => Err(invalid("Idempotency-Key must be printable ASCII".into())),
    }
}

/// Submit an action. With `Idempotency-Key`, a repeat of the same submission answers 200 with
/// the existing action; the same key with different content is refused.
async fn submit(
    State(state): State<AppState>,
    Acting(actor): Acting,
    headers: HeaderMap,
    StrictJson(submission): StrictJson<Submission>,
) -> Result<Created<ActionDetail>, ApiError> {
    let key = idempotency_key(&headers)?;
    Ok(actions::submit(&state.app, &actor, submission, key)
        .await?
        .into())
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
    pub fn filter(&self, actor: &Actor) -> Result<InboxFilter, ApiError> {
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
            Some("me") => Some(actor.principal.clone()),
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
    Acting(actor): Acting,
    StrictQuery(query): StrictQuery<InboxQuery>,
) -> Result<Reply<InboxPage>, ApiError> {
    let filter = query.filter(&actor)?;
    let wanted = consistent_with(query.consistent_with.as_deref())?;
    let page = actions::inbox(&state.app, &actor, &filter, wanted).await?;
    Ok(Reply::new(page))
}

/// An action: status, request, risk, policy, stage progress, votes, executions. Always at least
/// as new as the latest write to it that has answered; `consistent_with` is accepted and
/// already met.
async fn detail(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(path): Path<ActionPath>,
    StrictQuery(query): StrictQuery<ReadQuery>,
) -> Result<Reply<ActionDetail>, ApiError> {
    state.app.require_written(query.cursor()?).await?;
    Ok(Reply::new(
        actions::detail(&state.app, &actor, path.id()?).await?,
    ))
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VoteBody {
    pub vote: Vote,
    #[serde(default)]
    pub comment: Option<Comment>,
    /// The execution key the voter was shown: the vote is refused (`payload_changed`) unless it
    /// is the action's, and recorded with it.
    #[serde(default)]
    pub execution_key: Option<ExecutionKey>,
    /// Vote in this member's place, through a delegation window they gave the caller that is
    /// active now (422 `no_active_delegation` otherwise).
    #[serde(default)]
    pub on_behalf_of: Option<UserId>,
    /// The caller's Ed25519 signature of the vote, 128 hex digits, made with the key they
    /// registered (docs/governance.md, "Signed votes"); needs `execution_key` and `signed_at`.
    #[serde(default)]
    pub signature: Option<countersign_domain::signing::VoteSignatureBytes>,
    /// When the vote was signed: RFC 3339, whole seconds, within five minutes of now.
    #[serde(default)]
    pub signed_at: Option<countersign_domain::Timestamp>,
    /// The id of the key that signed (optional, 16 lowercase hex digits): refused unless it is
    /// the caller's active key.
    #[serde(default)]
    #[schemars(extend("pattern" = "^[0-9a-f]{16}$"))]
    pub key_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentBody {
    #[serde(default)]
    pub comment: Option<Comment>,
}

/// An approval or a rejection, with an optional comment and the execution key the voter saw.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBody {
    #[serde(default)]
    pub comment: Option<Comment>,
    /// The execution key the voter was shown: the vote is refused (`payload_changed`) unless it
    /// is the action's, and recorded with it.
    #[serde(default)]
    pub execution_key: Option<ExecutionKey>,
    /// Vote in this member's place (see the vote body).
    #[serde(default)]
    pub on_behalf_of: Option<UserId>,
    /// The caller's Ed25519 signature of the vote, 128 hex digits, made with the key they
    /// registered (docs/governance.md, "Signed votes"); needs `execution_key` and `signed_at`.
    #[serde(default)]
    pub signature: Option<countersign_domain::signing::VoteSignatureBytes>,
    /// When the vote was signed: RFC 3339, whole seconds, within five minutes of now.
    #[serde(default)]
    pub signed_at: Option<countersign_domain::Timestamp>,
    /// The id of the key that signed (optional, 16 lowercase hex digits): refused unless it is
    /// the caller's active key.
    #[serde(default)]
    #[schemars(extend("pattern" = "^[0-9a-f]{16}$"))]
    pub key_id: Option<String>,
}

/// Casts the caller's vote (signed, when a signature comes with it), or one in a delegator's
/// place.
#[expect(
    clippy::too_many_arguments,
    reason = "each is one part of the vote as the body gave it"
)]
async fn cast(
    state: &AppState,
    actor: &Actor,
    id: countersign_domain::ActionId,
    vote: Vote,
    comment: Option<Comment>,
    execution_key: Option<ExecutionKey>,
    on_behalf_of: Option<UserId>,
    signed: Option<countersign_app::signed_votes::SignedBy>,
) -> Result<Reply<ActionDetail>, ApiError> {
    if on_behalf_of.is_some() && signed.is_some() {
        return Err(crate::routes::signing_keys::delegated_signature());
    }
    if let Some(signed) = signed {
        let written = countersign_app::signed_votes::vote_signed(
            &state.app,
            actor,
            id,
            vote,
            comment,
            execution_key,
            signed,
        )
        .await?;
        return Ok(written.into());
    }
    let written = match on_behalf_of {
        Some(delegator) => {
            actions::vote_for(
                &state.app,
                actor,
                id,
                &delegator,
                vote,
                comment,
                execution_key,
            )
            .await?
        }
        None => actions::vote_bound(&state.app, actor, id, vote, comment, execution_key).await?,
    };
    Ok(written.into())
}

/// Vote on the current stage; a later vote replaces the earlier.
async fn vote(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(path): Path<ActionPath>,
    StrictJson(body): StrictJson<VoteBody>,
) -> Result<Reply<ActionDetail>, ApiError> {
    let id = path.id()?;
    cast(
        &state,
        &actor,
        id,
        body.vote,
        body.comment,
        body.execution_key,
        body.on_behalf_of,
        crate::routes::signing_keys::signed_by(body.signature, body.signed_at, body.key_id)?,
    )
    .await
}

/// Approve, with an optional comment.
async fn approve(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(path): Path<ActionPath>,
    OptionalJson(body): OptionalJson<ApprovalBody>,
) -> Result<Reply<ActionDetail>, ApiError> {
    let id = path.id()?;
    cast(
        &state,
        &actor,
        id,
        Vote::Approve,
        body.comment,
        body.execution_key,
        body.on_behalf_of,
        crate::routes::signing_keys::signed_by(body.signature, body.signed_at, body.key_id)?,
    )
    .await
}

/// Reject, with an optional comment.
async fn reject(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(path): Path<ActionPath>,
    OptionalJson(body): OptionalJson<ApprovalBody>,
) -> Result<Reply<ActionDetail>, ApiError> {
    let id = path.id()?;
    cast(
        &state,
        &actor,
        id,
        Vote::Reject,
        body.comment,
        body.execution_key,
        body.on_behalf_of,
        crate::routes::signing_keys::signed_by(body.signature, body.signed_at, body.key_id)?,
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

impl BulkVoteResults {
    /// The answers in order, and the token of the last recorded vote.
    fn reply(
        ids: Vec<String>,
        outcomes: Vec<Result<actions::Written<ActionDetail>, countersign_app::AppError>>,
    ) -> Reply<Self> {
        let mut last = None;
        let results = ids
            .into_iter()
            .zip(outcomes)
            .map(|(action_id, outcome)| match outcome {
                Ok(written) => {
                    last = last.max(written.cursor);
                    BulkVoteResult {
                        action_id,
                        status: 200,
                        action: Some(written.value),
                        error: None,
                    }
                }
                Err(err) => {
                    let err = ApiError::from(err);
                    BulkVoteResult {
                        action_id,
                        status: err.status.as_u16(),
                        action: None,
                        error: Some(err.problem()),
                    }
                }
            })
            .collect();
        Reply::new(Self { results }).at(last)
    }
}

/// Vote on several actions; each vote is answered on its own.
async fn bulk_votes(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictJson(body): StrictJson<BulkVotes>,
) -> Result<Reply<BulkVoteResults>, ApiError> {
    let ids = body
        .votes
        .iter()
        .map(|item| item.action_id.clone())
        .collect();
    let ballots = body.votes.into_iter().map(|item| Ballot {
        action_id: item.action_id,
        vote: item.vote,
        comment: item.comment,
    });
    let outcomes = actions::vote_many(&state.app, &actor, ballots.collect()).await?;
    Ok(BulkVoteResults::reply(ids, outcomes))
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
    Acting(actor): Acting,
    Path(path): Path<ActionPath>,
    OptionalJson(body): OptionalJson<CancelBody>,
) -> Result<Reply<ActionDetail>, ApiError> {
    let id = path.id()?;
    Ok(actions::cancel(&state.app, &actor, id, body.reason)
        .await?
        .into())
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteBody {
    /// Answer what would run, and change nothing.
    #[serde(default)]
    pub dry_run: bool,
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
    Acting(actor): Acting,
    Path(path): Path<ActionPath>,
    OptionalJson(body): OptionalJson<ExecuteBody>,
) -> Result<Reply<ExecuteResult, 202>, ApiError> {
    let id = path.id()?;
    if body.dry_run {
        let preview = actions::preview_execution(&state.app, &actor, id).await?;
        return Ok(Reply::new(ExecuteResult::Preview(preview)));
    }
    let written = actions::request_execution(&state.app, &actor, id).await?;
    Ok(Reply::new(ExecuteResult::Requested(Box::new(written.value))).at(written.cursor))
}

/// A batch execution request: exactly the named `ids`, or the approved actions matching the
/// filter (newest first). Callers who are neither admin nor owner reach through a filter only the
/// actions they requested.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchExecuteBody {
    /// These actions (1 to 100 UUIDs), instead of a filter.
    #[serde(default)]
    #[schemars(extend(
        "maxItems" = 100,
        "items" = { "type": "string", "format": "uuid" }
    ))]
    pub ids: Vec<String>,
    pub module: Option<ModuleSlug>,
    pub capability: Option<CapabilityName>,
    /// Risk levels (any of them).
    #[serde(default)]
    pub risk: Vec<RiskLevel>,
    /// 1–100, default 50: how many matching approved actions are reached.
    #[schemars(extend("minimum" = 1, "maximum" = 100))]
    pub limit: Option<u32>,
    /// Decide every request without recording any.
    #[serde(default)]
    pub dry_run: bool,
}

/// Ask every approved action matching a filter (or named by id) to run, or preview them all
/// with `dry_run`: one result per action, each decided as a single execution request is (its
/// requester, an admin or an owner). A refusal of one action never stops the others.
async fn execute_batch(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictQuery(query): StrictQuery<ReadQuery>,
    StrictJson(body): StrictJson<BatchExecuteBody>,
) -> Result<Reply<batch::BatchExecution>, ApiError> {
    let ids = body
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            countersign_domain::ActionId::parse(id).map_err(|error| {
                countersign_app::AppError::from(countersign_domain::ParseError::new(
                    format!("ids[{i}]"),
                    error.message,
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let selection = batch::BatchSelection {
        ids,
        module: body.module,
        capability: body.capability,
        risk_levels: body.risk,
        limit: body.limit,
    };
    let (done, cursor) = batch::execute_batch(
        &state.app,
        &actor,
        &selection,
        body.dry_run,
        query.cursor()?,
    )
    .await?;
    Ok(Reply::new(done).at(cursor))
}

/// Every event of an action with actor, time, type, content and log position (owner, admin,
/// auditor). Like the detail, always at least as new as the latest write to the action.
async fn audit(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(path): Path<ActionPath>,
    StrictQuery(query): StrictQuery<ReadQuery>,
) -> Result<Reply<AuditTrail>, ApiError> {
    state.app.require_written(query.cursor()?).await?;
    let trail = actions::audit(&state.app, &actor, path.id()?).await?;
    Ok(Reply::new(trail).no_store())
}

/// Server-sent events: the action's status now, then every change (`event:` is the event type,
/// `data:` carries the status after it and the event's content). The stream ends when the
/// action is finished, or with a `closed` event (a problem document) once the caller's key is
/// revoked or token expires.
async fn stream(
    State(state): State<AppState>,
    Acting(actor): Acting,
    headers: HeaderMap,
    Path(path): Path<ActionPath>,
) -> Result<EventStream<impl Stream<Item = Result<Event, Infallible>> + Send + 'static>, ApiError> {
    let credential = CredentialWatch::new(&state, &headers);
    let subscription = ActionStream::open(&state, &actor, path.id()?, credential).await?;
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
    Acting(actor): Acting,
    Path(path): Path<ActionPath>,
) -> Result<Created<ActionDetail>, ApiError> {
    Ok(actions::roll_back(&state.app, &actor, path.id()?)
        .await?
        .into())
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassBody {
    /// Why the action could not wait for its approvers (1 to 2000 visible characters).
    pub justification: Comment,
}

/// Approve a pending action alone in an emergency (the `break_glass` role, never on one's own
/// request): approved at once, marked `break_glass`, its approvers and the tenant's owners told,
/// and a review due the tenant's `break_glass_review_seconds` later (a day unless set), after
/// which it escalates.
async fn break_glass(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(path): Path<ActionPath>,
    StrictJson(body): StrictJson<BreakGlassBody>,
) -> Result<Reply<ActionDetail>, ApiError> {
    let id = path.id()?;
    Ok(
        actions::break_glass(&state.app, &actor, id, body.justification)
            .await?
            .into(),
    )
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    pub verdict: ReviewVerdict,
    #[serde(default)]
    pub comment: Option<Comment>,
}

/// Review a break-glass approval after the fact (a member eligible in one of the action's
/// stages, neither the breaker nor the requester; once).
async fn review(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(path): Path<ActionPath>,
    StrictJson(body): StrictJson<ReviewBody>,
) -> Result<Reply<ActionDetail>, ApiError> {
    let id = path.id()?;
    Ok(
        actions::review_break_glass(&state.app, &actor, id, body.verdict, body.comment)
            .await?
            .into(),
    )
}
