//! One action: the full page, or the inbox's drawer when htmx asks. Its buttons are shown from
//! the domain's own predicates (`ActionState::can_vote`, `may_be_directed_by`, the states each
//! command accepts); every POST still goes through the use case, which refuses what the domain
//! refuses. Forms POST and redirect (they work without JavaScript).

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use countersign_app::AppError;
use countersign_app::actions::{self, Submitted};
use countersign_domain::action::{ActionState, ActionStatus, AttemptOutcome, StageSkip};
use countersign_domain::canonical::ExecutionKey;
use countersign_domain::delegation::Delegation;
use countersign_domain::quorum::Vote;
use countersign_domain::{ActionId, Comment};
use countersign_projections::ActionDetail;
use serde::Deserialize;

use crate::Console;
use crate::error::PageError;
use crate::pages::is_htmx;
use crate::session::{Posted, Session};
use crate::view::{self, Layout, PayloadEntry, Risk};

/// An action id from the path; anything that is not one answers 404 like a missing action.
pub(crate) fn action_id(raw: &str) -> Result<ActionId, PageError> {
    ActionId::parse(raw).map_err(|_| PageError::from(AppError::action_not_found()))
}

#[derive(Debug)]
pub struct RuleRow {
    pub text: String,
    pub counted: u32,
    pub needed: u32,
    pub satisfied: bool,
}

#[derive(Debug)]
pub struct VoteRow {
    pub voter: String,
    pub vote: &'static str,
    pub roles: String,
    pub comment: String,
    pub at: String,
    pub at_relative: String,
}

#[derive(Debug)]
pub struct StageRow {
    pub number: u32,
    pub name: String,
    pub state: String,
    /// Why the stage was skipped, when it was (`state` is then `skipped`): it was not voted on.
    pub skipped: String,
    pub rules: Vec<RuleRow>,
    pub votes: Vec<VoteRow>,
}

/// Why an optional stage was skipped, as the drawer says it.
fn skip_reason(stage: &countersign_domain::policy::Stage, skip: &StageSkip) -> String {
    match (skip, &stage.skip_when) {
        (StageSkip::SkipWhenHeld, Some(rule)) => format!(
            "the previous stage's votes met its skip rule ({})",
            view::rule_text(rule)
        ),
        (StageSkip::SkipWhenHeld, None) => {
            "the previous stage's votes met its skip rule".to_owned()
        }
        (StageSkip::NoEligibleVoter, _) => "no member could vote in it".to_owned(),
    }
}

#[derive(Debug)]
pub struct AttemptRow {
    pub attempt: u32,
    pub executor: String,
    pub started: String,
    pub outcome: String,
    pub duration: String,
    pub error: String,
}

#[derive(Debug)]
pub struct TimelineRow {
    pub event_type: String,
    pub actor: String,
    pub at: String,
    pub at_relative: String,
    pub position: i64,
    pub content: String,
}

/// What the person may do with the action now, as the domain would judge it.
#[derive(Debug, Default)]
pub struct Allowed {
    pub vote: bool,
    pub cancel: bool,
    pub execute: bool,
    pub preview: bool,
    pub rollback: bool,
    /// Approve alone by break-glass (`ActionState::may_break_glass`).
    pub break_glass: bool,
    /// Review a break-glass approval (`ActionState::may_review_break_glass`).
    pub review: bool,
    /// The members in whose place the person may vote now, through a delegation window to them
    /// active now: each may vote in the current stage and has not, and it is neither's request.
    pub vote_for: Vec<String>,
}

impl Allowed {
    fn of(state: &ActionState, session: &Session) -> Self {
        let by = &session.actor.principal;
        let directs = state.may_be_directed_by(by, "direct").is_ok();
        let resumable = state.status == ActionStatus::Skipped && state.execution.resumable;
        let approved = state.status == ActionStatus::Approved;
        Self {
            vote: state.can_vote(by),
            cancel: directs && state.status.is_open(),
            execute: directs && ((approved && !state.execution.requested) || resumable),
            preview: directs && (approved || resumable),
            rollback: directs
                && state.status == ActionStatus::Executed
                && state.execution.undo_payload.is_some()
                && state.rolled_back_by.is_none(),
            break_glass: state.may_break_glass(by).is_ok(),
            review: state.may_review_break_glass(by).is_ok(),
            vote_for: Vec::new(),
        }
    }

    pub fn any(&self) -> bool {
        self.vote
            || self.cancel
            || self.execute
            || self.preview
            || self.rollback
            || self.break_glass
            || self.review
            || !self.vote_for.is_empty()
    }
}

#[derive(Debug)]
pub struct DetailView {
    pub id: String,
    pub summary: String,
    pub status: &'static str,
    pub module: String,
    pub capability: String,
    pub requested_by: String,
    pub requester_roles: String,
    pub risk: Risk,
    pub reasons: Vec<(String, u8)>,
    pub payload: Vec<PayloadEntry>,
    pub impact: String,
    pub scope: String,
    pub flags: String,
    pub connectors: String,
    pub source: String,
    pub submitted: String,
    pub submitted_at: String,
    pub deadline: String,
    pub deadline_at: String,
    pub open: bool,
    pub escalations: u32,
    pub progress: String,
    pub policy: String,
    pub policy_default: bool,
    pub stages: Vec<StageRow>,
    pub decision: String,
    pub execution_requested: bool,
    pub attempts: Vec<AttemptRow>,
    pub running: bool,
    /// Whether the action may still run (not finished): the page follows its execution live.
    pub live: bool,
    pub last_error: String,
    pub result: String,
    pub rollback_of: String,
    pub rolled_back_by: String,
    pub timeline: Option<Vec<TimelineRow>>,
    pub allowed: Allowed,
    /// The person's own vote in the current stage.
    pub my_vote: String,
    /// The execution key of the payload shown: a vote from this page is bound to it.
    pub execution_key: String,
    /// The break-glass approval, when the action had one.
    pub glass: Option<GlassView>,
}

/// A break-glass approval as the drawer marks it.
#[derive(Debug)]
pub struct GlassView {
    pub by: String,
    pub at: String,
    pub justification: String,
    pub review_due: String,
    /// `upheld by ana: comment`, once reviewed.
    pub review: String,
    /// The review was not done in time and was escalated.
    pub overdue: bool,
}

impl GlassView {
    fn of(glass: &countersign_domain::action::BreakGlass) -> Self {
        Self {
            by: glass.by.to_string(),
            at: glass.at.to_rfc3339(),
            justification: glass.justification.to_string(),
            review_due: glass.review_due.format("%Y-%m-%d %H:%M UTC").to_string(),
            review: glass
                .review
                .as_ref()
                .map(|review| {
                    let verdict = match review.verdict {
                        countersign_domain::action::ReviewVerdict::Upheld => "upheld",
                        countersign_domain::action::ReviewVerdict::Disputed => "disputed",
                    };
                    match &review.comment {
                        Some(comment) => format!("{verdict} by {}: {comment}", review.by),
                        None => format!("{verdict} by {}", review.by),
                    }
                })
                .unwrap_or_default(),
            overdue: glass.overdue.is_some(),
        }
    }
}

/// Who lent the person their eligibility through a window active now and may vote on `state`
/// in its current stage, has not, and did not request it (nor did the person).
fn delegated_places(
    delegations: Result<Vec<Delegation>, AppError>,
    session: &Session,
    state: &ActionState,
) -> Result<Vec<String>, AppError> {
    let me = &session.actor.principal;
    if !state.status.is_open() || state.requester.id == me.id {
        return Ok(Vec::new());
    }
    let now = chrono::Utc::now();
    let mut places: Vec<String> = delegations?
        .into_iter()
        .filter(|delegation| delegation.delegate == me.id && delegation.is_active_at(now))
        .map(|delegation| delegation.delegator)
        .filter(|delegator| {
            delegator.id != me.id
                && state.can_vote(delegator)
                && !state
                    .current_voters()
                    .any(|voter| *voter == delegator.id || *voter == me.id)
        })
        .map(|delegator| delegator.id.to_string())
        .collect();
    places.sort_unstable();
    places.dedup();
    Ok(places)
}

fn vote_name(vote: Vote) -> &'static str {
    match vote {
        Vote::Approve => "approve",
        Vote::Reject => "reject",
        Vote::Abstain => "abstain",
    }
}

async fn load(console: &Console, session: &Session, id: ActionId) -> Result<DetailView, PageError> {
    let app = &console.gateway.app;
    // One read of the action's stream gives both its state and (for who may read it) its audit
    // trail; the delegations (whose place the person may vote in) are read beside it.
    let (read, delegations) = tokio::join!(
        actions::watch_with_audit(app, &session.actor, id),
        countersign_app::delegations::list(app, &session.actor),
    );
    let (action, trail) = read?;
    let state = action.state().ok_or_else(AppError::action_not_found)?;
    let detail = ActionDetail::from_state(state, -1);
    let timeline = trail.map(|events| {
        events
            .into_iter()
            .map(|entry| TimelineRow {
                event_type: entry.event_type,
                actor: entry.actor,
                at: view::stamp(entry.at),
                at_relative: view::relative(entry.at),
                position: entry.position,
                content: view::pretty(&entry.content),
            })
            .collect()
    });
    let stages = detail
        .policy
        .requirements
        .stages
        .as_slice()
        .iter()
        .zip(&detail.stages)
        .map(|(stage, view)| StageRow {
            number: view.index + 1,
            name: view.name.clone().unwrap_or_default(),
            state: view.state.clone(),
            skipped: view
                .skipped
                .as_ref()
                .map(|skip| skip_reason(stage, skip))
                .unwrap_or_default(),
            rules: stage
                .rules
                .as_slice()
                .iter()
                .enumerate()
                .map(|(index, rule)| {
                    let progress = view
                        .progress
                        .as_ref()
                        .and_then(|progress| progress.rules.get(index));
                    RuleRow {
                        text: view::rule_text(rule),
                        counted: progress.map_or(0, |p| p.counted),
                        needed: progress.map_or(0, |p| p.needed),
                        satisfied: progress.is_some_and(|p| p.satisfied),
                    }
                })
                .collect(),
            votes: view
                .votes
                .iter()
                .map(|vote| VoteRow {
                    voter: match &vote.ballot.cast_by {
                        Some(delegate) => format!("{} (cast by {delegate})", vote.voter),
                        None => vote.voter.to_string(),
                    },
                    vote: vote_name(vote.ballot.vote),
                    roles: vote
                        .ballot
                        .roles
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    comment: vote
                        .ballot
                        .comment
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    at: view::stamp(vote.ballot.cast_at),
                    at_relative: view::relative(vote.ballot.cast_at),
                })
                .collect(),
        })
        .collect();
    let my_vote = state
        .ballots
        .get(state.stage as usize)
        .and_then(|ballots| ballots.get(&session.actor.principal.id))
        .map(|ballot| vote_name(ballot.vote).to_owned())
        .unwrap_or_default();
    let execution = &state.execution;
    let request = &state.submission;
    Ok(DetailView {
        id: state.id.to_string(),
        summary: request.summary.to_string(),
        status: state.status.as_str(),
        module: request.module.to_string(),
        capability: request.capability.to_string(),
        requested_by: state.requester.id.to_string(),
        requester_roles: state
            .requester
            .roles
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        risk: Risk::new(state.risk.level, state.risk.score.value()),
        reasons: state
            .risk
            .reasons
            .iter()
            .map(|reason| (reason.label.clone(), reason.points))
            .collect(),
        payload: view::payload_entries(&request.payload),
        impact: request.impact.to_string(),
        scope: request.scope.to_string(),
        flags: request
            .flags
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        connectors: request
            .connectors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        source: request.source.to_string(),
        submitted: view::relative(state.submitted_at),
        submitted_at: view::stamp(state.submitted_at),
        deadline: view::relative(state.expires_at),
        deadline_at: view::stamp(state.expires_at),
        open: state.status.is_open(),
        escalations: state.escalations,
        progress: view::stage_progress(&detail),
        policy: format!(
            "{} (v{}, priority {})",
            state.policy.name, state.policy.version, state.policy.priority
        ),
        policy_default: state.policy.is_default,
        stages,
        decision: state
            .decision
            .as_ref()
            .map(|decision| {
                format!(
                    "{} by {} {}",
                    decision.status,
                    decision.by,
                    view::relative(decision.at)
                )
            })
            .unwrap_or_default(),
        execution_requested: execution.requested || state.policy.requirements.auto_execute,
        attempts: execution
            .history
            .iter()
            .map(|attempt| {
                let (outcome, duration, error) = match &attempt.outcome {
                    AttemptOutcome::Running => ("running".to_owned(), String::new(), String::new()),
                    AttemptOutcome::Succeeded { duration_ms } => (
                        "succeeded".to_owned(),
                        format!("{duration_ms} ms"),
                        String::new(),
                    ),
                    AttemptOutcome::Failed { error, retryable } => (
                        if *retryable {
                            "failed (will retry)".to_owned()
                        } else {
                            "failed".to_owned()
                        },
                        attempt
                            .finished_at
                            .map(|end| {
                                format!("{} ms", (end - attempt.started_at).num_milliseconds())
                            })
                            .unwrap_or_default(),
                        error.clone(),
                    ),
                };
                AttemptRow {
                    attempt: attempt.attempt,
                    executor: attempt.executor.to_string(),
                    started: view::stamp(attempt.started_at),
                    outcome,
                    duration,
                    error,
                }
            })
            .collect(),
        running: execution.running.is_some(),
        live: !matches!(
            state.status,
            ActionStatus::Executed
                | ActionStatus::Failed
                | ActionStatus::Rejected
                | ActionStatus::Expired
                | ActionStatus::Cancelled
                | ActionStatus::Skipped
        ),
        last_error: execution.last_error.clone().unwrap_or_default(),
        result: execution
            .result
            .as_ref()
            .map(view::pretty)
            .unwrap_or_default(),
        rollback_of: state
            .rollback_of
            .map(|id| id.to_string())
            .unwrap_or_default(),
        rolled_back_by: state
            .rolled_back_by
            .map(|id| id.to_string())
            .unwrap_or_default(),
        timeline,
        allowed: Allowed {
            vote_for: delegated_places(delegations, session, state)?,
            ..Allowed::of(state, session)
        },
        my_vote,
        execution_key: state.execution_key.as_str().to_owned(),
        glass: state.break_glass.as_ref().map(GlassView::of),
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "detail.html")]
struct DetailPage {
    layout: Layout,
    d: DetailView,
    return_to: String,
    drawer: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "detail_body.html")]
struct DrawerFragment {
    layout: Layout,
    d: DetailView,
    return_to: String,
    drawer: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct DetailQuery {
    notice: Option<String>,
}

/// `GET /actions/{id}`: the page, or the drawer's content when htmx asks for it.
pub async fn page(
    State(console): State<Console>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<DetailQuery>,
) -> Result<Response, PageError> {
    let id = action_id(&id)?;
    let (layout, d) = tokio::try_join!(
        Layout::new(&console, &session, "inbox"),
        load(&console, &session, id),
    )?;
    let layout = layout.with_notice(query.notice.as_deref());
    if is_htmx(&headers) {
        return Ok(DrawerFragment {
            layout,
            d,
            return_to: "/inbox".to_owned(),
            drawer: true,
        }
        .into_response());
    }
    Ok(DetailPage {
        layout,
        return_to: format!("/actions/{id}"),
        d,
        drawer: false,
    }
    .into_response())
}

/// Where a form goes back to, with a confirmation.
pub(crate) fn back(posted: &Posted, id: ActionId, notice: &str) -> Response {
    let path =
        view::local_path(posted.get("return_to")).unwrap_or_else(|| format!("/actions/{id}"));
    Redirect::to(&view::with_notice(&path, notice)).into_response()
}

/// The execution key a vote form carries: 64 lowercase hexadecimal digits.
fn execution_key(raw: &str) -> Result<ExecutionKey, PageError> {
    let well_formed = raw.len() == 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let invalid = || {
        PageError::from(AppError::InvalidInput(countersign_domain::ParseError::new(
            "execution_key",
            "must be 64 lowercase hexadecimal digits",
        )))
    };
    if !well_formed {
        return Err(invalid());
    }
    serde_json::from_value(serde_json::Value::String(raw.to_owned())).map_err(|_| invalid())
}

pub(crate) fn comment(posted: &Posted, name: &str) -> Result<Option<Comment>, PageError> {
    posted
        .get(name)
        .map(Comment::parse)
        .transpose()
        .map_err(|err| PageError::from(AppError::InvalidInput(err)))
}

/// `POST /actions/{id}/vote`: approve, reject or abstain, with a comment, bound to the payload
/// the page showed (a vote on a payload that is no longer the action's is refused).
pub async fn vote(
    State(console): State<Console>,
    Path(id): Path<String>,
    posted: Posted,
) -> Result<Response, PageError> {
    let id = action_id(&id)?;
    let vote = match posted.get("vote") {
        Some("approve") => Vote::Approve,
        Some("reject") => Vote::Reject,
        Some("abstain") => Vote::Abstain,
        _ => {
            return Err(PageError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "vote: choose approve, reject or abstain",
            ));
        }
    };
    let comment = comment(&posted, "comment")?;
    let key = posted.get("execution_key").map(execution_key).transpose()?;
    let app = &console.gateway.app;
    let actor = &posted.session.actor;
    match posted.get("on_behalf_of").filter(|raw| !raw.is_empty()) {
        Some(raw) => {
            let delegator = countersign_domain::UserId::parse(raw).map_err(|error| {
                PageError::from(AppError::InvalidInput(countersign_domain::ParseError::new(
                    "on_behalf_of",
                    error.message,
                )))
            })?;
            actions::vote_for(app, actor, id, &delegator, vote, comment, key).await?;
        }
        None => {
            actions::vote_bound(app, actor, id, vote, comment, key).await?;
        }
    }
    Ok(back(&posted, id, vote_name(vote)))
}

/// `POST /actions/{id}/cancel`.
pub async fn cancel(
    State(console): State<Console>,
    Path(id): Path<String>,
    posted: Posted,
) -> Result<Response, PageError> {
    let id = action_id(&id)?;
    let reason = comment(&posted, "reason")?;
    actions::cancel(&console.gateway.app, &posted.session.actor, id, reason).await?;
    Ok(back(&posted, id, "cancelled"))
}

/// `POST /actions/{id}/execute`.
pub async fn execute(
    State(console): State<Console>,
    Path(id): Path<String>,
    posted: Posted,
) -> Result<Response, PageError> {
    let id = action_id(&id)?;
    actions::request_execution(&console.gateway.app, &posted.session.actor, id).await?;
    Ok(back(&posted, id, "execution"))
}

/// `POST /actions/{id}/rollback`: goes to the rollback action.
pub async fn roll_back(
    State(console): State<Console>,
    Path(id): Path<String>,
    posted: Posted,
) -> Result<Response, PageError> {
    let id = action_id(&id)?;
    let rollback = match actions::roll_back(&console.gateway.app, &posted.session.actor, id).await?
    {
        Submitted::New(written) | Submitted::Existing(written) => written.value.id,
    };
    Ok(Redirect::to(&format!("/actions/{rollback}?notice=rollback")).into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "preview.html")]
struct PreviewPage {
    layout: Layout,
    id: String,
    would_execute: bool,
    reason: String,
    payload: String,
    capability_preview: String,
    execution_key: String,
}

/// `GET /actions/{id}/preview`: what asking it to run would do (a dry run; changes nothing).
pub async fn preview(
    State(console): State<Console>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let id = action_id(&id)?;
    let layout = Layout::new(&console, &session, "inbox").await?;
    let preview = actions::preview_execution(&console.gateway.app, &session.actor, id).await?;
    Ok(PreviewPage {
        layout,
        id: id.to_string(),
        would_execute: preview.would_execute,
        reason: preview.reason.unwrap_or_default(),
        payload: view::pretty(&preview.payload),
        capability_preview: preview
            .capability_preview
            .as_ref()
            .map(view::pretty)
            .unwrap_or_default(),
        execution_key: view::pretty(&preview.execution_key),
    }
    .into_response())
}
