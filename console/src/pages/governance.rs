//! Governance pages: delegation windows (every member: the ones they give or receive; owners
//! and admins: all) with grant and revoke, and policy backtesting (owners, admins, auditors): a
//! draft and a range in, the diff of decisions out. Both call the application's use cases; the
//! rules (who may grant, revoke, backtest) are theirs.

use std::collections::BTreeMap;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use countersign_app::backtest::{self, BacktestReport, BacktestRequest, PolicyChange};
use countersign_app::{actions, delegations};
use countersign_domain::action::ReviewVerdict;
use countersign_domain::policy::Requirements;
use countersign_domain::{Timestamp, UserId};

use crate::Console;
use crate::error::PageError;
use crate::pages::detail;
use crate::pages::policies::NoticeQuery;
use crate::session::{Posted, Session};
use crate::view::Layout;

fn unprocessable(message: impl Into<String>) -> PageError {
    PageError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
}

/// One delegation as the page lists it.
#[derive(Debug)]
pub struct DelegationRow {
    pub id: String,
    pub delegator: String,
    pub roles: String,
    pub delegate: String,
    pub starts_at: String,
    pub ends_at: String,
    /// `active`, `scheduled`, `ended` or `revoked`.
    pub status: &'static str,
    pub may_revoke: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "delegations.html")]
struct DelegationsPage {
    layout: Layout,
    delegations: Vec<DelegationRow>,
}

fn minutes(at: Timestamp) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// `GET /delegations`.
pub async fn delegations_page(
    State(console): State<Console>,
    session: Session,
    Query(query): Query<NoticeQuery>,
) -> Result<Response, PageError> {
    let layout = Layout::new(&console, &session, "delegations")
        .await?
        .with_notice(query.notice());
    let now = Utc::now();
    let actor = &session.actor;
    let delegations = delegations::list(&console.gateway.app, actor)
        .await?
        .into_iter()
        .map(|delegation| {
            let status = if delegation.revoked.is_some() {
                "revoked"
            } else if delegation.ends_at <= now {
                "ended"
            } else if delegation.starts_at > now {
                "scheduled"
            } else {
                "active"
            };
            DelegationRow {
                id: delegation.id.to_string(),
                delegator: delegation.delegator.id.to_string(),
                roles: delegation
                    .delegator
                    .roles
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                delegate: delegation.delegate.to_string(),
                starts_at: minutes(delegation.starts_at),
                ends_at: minutes(delegation.ends_at),
                may_revoke: matches!(status, "active" | "scheduled")
                    && (layout.can_admin || delegation.delegator.id == actor.principal.id),
                status,
            }
        })
        .collect();
    Ok(DelegationsPage {
        layout,
        delegations,
    }
    .into_response())
}

/// A moment from a form: RFC 3339, or the `datetime-local` / date inputs' forms, read as UTC.
fn moment(raw: &str, field: &str) -> Result<Timestamp, PageError> {
    if let Ok(at) = DateTime::parse_from_rfc3339(raw) {
        return Ok(at.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(raw, format) {
            return Ok(at.and_utc());
        }
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .map(|at| at.and_utc())
        .ok_or_else(|| {
            unprocessable(format!(
                "{field}: a date (2026-12-24), a date and time (2026-12-24T09:00) or RFC 3339"
            ))
        })
}

/// `POST /delegations`: the signed-in member lends their eligibility to `delegate` until
/// `ends_at` (from `starts_at`, default now).
pub async fn grant(State(console): State<Console>, posted: Posted) -> Result<Response, PageError> {
    let delegate = posted
        .get("delegate")
        .ok_or_else(|| unprocessable("delegate: the member who votes in your place"))?;
    let delegate = UserId::parse(delegate).map_err(|err| unprocessable(err.to_string()))?;
    let ends_at = moment(
        posted
            .get("ends_at")
            .ok_or_else(|| unprocessable("ends_at: when the window ends"))?,
        "ends_at",
    )?;
    let starts_at = posted
        .get("starts_at")
        .map(|raw| moment(raw, "starts_at"))
        .transpose()?;
    delegations::grant(
        &console.gateway.app,
        &posted.session.actor,
        delegate,
        starts_at,
        ends_at,
    )
    .await?;
    Ok(Redirect::to("/delegations?notice=delegation_granted").into_response())
}

/// `POST /delegations/{id}/revoke`: its delegator, an owner or an admin ends it now.
pub async fn revoke(
    State(console): State<Console>,
    Path(id): Path<String>,
    posted: Posted,
) -> Result<Response, PageError> {
    let id = uuid::Uuid::parse_str(&id).map_err(|_| {
        PageError::from(countersign_app::AppError::not_found(
            "delegation_not_found",
            "delegation",
        ))
    })?;
    delegations::revoke(&console.gateway.app, &posted.session.actor, id).await?;
    Ok(Redirect::to("/delegations?notice=delegation_revoked").into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "backtest.html")]
struct BacktestPage {
    layout: Layout,
    from: String,
    to: String,
    changes: String,
    default_requirements: String,
    report: Option<ReportView>,
}

/// A report as the page shows it.
#[derive(Debug)]
pub struct ReportView {
    pub replayed: u64,
    pub cutoff: Option<String>,
    pub policy_changed: u64,
    pub requirements_changed: u64,
    pub outcome_changed: u64,
    pub transitions: Vec<(String, u64)>,
    /// (outcome, recorded, draft)
    pub outcomes: Vec<(String, u64, u64)>,
    /// (figure, recorded, draft)
    pub times: Vec<(&'static str, String, String)>,
    /// (role or member, recorded, draft)
    pub roles: Vec<(String, u64, u64)>,
    pub members: Vec<(String, u64, u64)>,
    pub actions: Vec<ActionDiffRow>,
}

#[derive(Debug)]
pub struct ActionDiffRow {
    pub id: String,
    pub summary: String,
    pub submitted_at: String,
    pub recorded_policy: String,
    pub draft_policy: String,
    pub recorded_outcome: &'static str,
    pub draft_outcome: &'static str,
    pub outcome_changed: bool,
    pub ignored_votes: u32,
}

/// Recorded and draft figures per name, as table rows.
fn side_by_side(figures: &BTreeMap<String, backtest::Compared>) -> Vec<(String, u64, u64)> {
    figures
        .iter()
        .map(|(name, both)| (name.clone(), both.recorded, both.draft))
        .collect()
}

fn seconds(value: Option<i64>) -> String {
    value.map_or_else(|| "—".to_owned(), |seconds| format!("{seconds} s"))
}

impl From<&BacktestReport> for ReportView {
    fn from(report: &BacktestReport) -> Self {
        let (recorded, draft) = (
            &report.time_to_decision_recorded,
            &report.time_to_decision_draft,
        );
        Self {
            replayed: report.replayed,
            cutoff: report.cutoff.map(|cutoff| match cutoff {
                backtest::Cutoff::MaxActions => {
                    "the range holds more actions than the limit: the newest were replayed"
                        .to_owned()
                }
                backtest::Cutoff::TimeLimit => {
                    "the time limit ran out: the oldest actions were replayed".to_owned()
                }
            }),
            policy_changed: report.policy_changed,
            requirements_changed: report.requirements_changed,
            outcome_changed: report.outcome_changed,
            transitions: report
                .transitions
                .iter()
                .map(|(name, count)| (name.replace('_', " "), *count))
                .collect(),
            outcomes: side_by_side(&report.outcomes),
            times: vec![
                (
                    "decided",
                    recorded.decided.to_string(),
                    draft.decided.to_string(),
                ),
                (
                    "median",
                    seconds(recorded.median_seconds),
                    seconds(draft.median_seconds),
                ),
                (
                    "90th percentile",
                    seconds(recorded.p90_seconds),
                    seconds(draft.p90_seconds),
                ),
                (
                    "longest",
                    seconds(recorded.max_seconds),
                    seconds(draft.max_seconds),
                ),
            ],
            roles: side_by_side(&report.load.roles),
            members: side_by_side(&report.load.members),
            actions: report
                .actions
                .iter()
                .map(|diff| ActionDiffRow {
                    id: diff.action_id.to_string(),
                    summary: diff.summary.clone(),
                    submitted_at: minutes(diff.submitted_at),
                    recorded_policy: format!(
                        "{} v{}",
                        diff.recorded.policy_name, diff.recorded.policy_version
                    ),
                    draft_policy: format!(
                        "{} v{}",
                        diff.draft.policy_name, diff.draft.policy_version
                    ),
                    recorded_outcome: diff.recorded.outcome.as_str(),
                    draft_outcome: diff.draft.outcome.as_str(),
                    outcome_changed: diff.outcome_changed,
                    ignored_votes: diff.ignored_votes,
                })
                .collect(),
        }
    }
}

/// `GET /backtest` (owners, admins, auditors): the form, with the last 30 days as the range.
pub async fn backtest_page(
    State(console): State<Console>,
    session: Session,
) -> Result<Response, PageError> {
    let layout = Layout::new(&console, &session, "backtest").await?;
    if !layout.can_audit {
        return Err(countersign_app::AppError::Forbidden(
            "backtesting policies needs the owner, admin or auditor role".to_owned(),
        )
        .into());
    }
    let now = Utc::now();
    Ok(BacktestPage {
        layout,
        from: (now - chrono::Duration::days(30))
            .format("%Y-%m-%dT%H:%M")
            .to_string(),
        to: (now + chrono::Duration::minutes(1))
            .format("%Y-%m-%dT%H:%M")
            .to_string(),
        changes: "[]".to_owned(),
        default_requirements: String::new(),
        report: None,
    }
    .into_response())
}

/// `POST /backtest`: replays the range under the draft (read-only) and shows the diff beside
/// the form as it was filled in.
pub async fn run_backtest(
    State(console): State<Console>,
    posted: Posted,
) -> Result<Response, PageError> {
    let raw_from = posted.get("from").unwrap_or_default().to_owned();
    let raw_to = posted.get("to").unwrap_or_default().to_owned();
    let raw_changes = posted.get("changes").unwrap_or("[]").to_owned();
    let raw_default = posted
        .get("default_requirements")
        .unwrap_or_default()
        .to_owned();
    let changes: Vec<PolicyChange> = serde_json::from_str(&raw_changes)
        .map_err(|err| unprocessable(format!("changes: {err}")))?;
    let default_requirements: Option<Requirements> = if raw_default.is_empty() {
        None
    } else {
        Some(
            serde_json::from_str(&raw_default)
                .map_err(|err| unprocessable(format!("default_requirements: {err}")))?,
        )
    };
    let request = BacktestRequest {
        from: moment(&raw_from, "from")?,
        to: moment(&raw_to, "to")?,
        changes,
        default_requirements,
        max_actions: None,
        time_limit_seconds: None,
    };
    let report =
        backtest::backtest(&console.gateway.app, &posted.session.actor, &request, None).await?;
    let layout = Layout::new(&console, &posted.session, "backtest").await?;
    Ok(BacktestPage {
        layout,
        from: raw_from,
        to: raw_to,
        changes: raw_changes,
        default_requirements: raw_default,
        report: Some(ReportView::from(&report)),
    }
    .into_response())
}

/// `POST /actions/{id}/break-glass`: approves the action alone, with the mandatory
/// justification (a member holding `break_glass`, never on their own request).
pub async fn break_glass(
    State(console): State<Console>,
    Path(id): Path<String>,
    posted: Posted,
) -> Result<Response, PageError> {
    let id = detail::action_id(&id)?;
    let justification = detail::comment(&posted, "justification")?
        .ok_or_else(|| unprocessable("justification: say why this cannot wait"))?;
    actions::break_glass(
        &console.gateway.app,
        &posted.session.actor,
        id,
        justification,
    )
    .await?;
    Ok(detail::back(&posted, id, "break_glass"))
}

/// `POST /actions/{id}/review`: the review after the fact of a break-glass approval, upheld or
/// disputed, with an optional comment.
pub async fn review(
    State(console): State<Console>,
    Path(id): Path<String>,
    posted: Posted,
) -> Result<Response, PageError> {
    let id = detail::action_id(&id)?;
    let verdict = match posted.get("verdict") {
        Some("upheld") => ReviewVerdict::Upheld,
        Some("disputed") => ReviewVerdict::Disputed,
        _ => return Err(unprocessable("verdict: choose upheld or disputed")),
    };
    let comment = detail::comment(&posted, "comment")?;
    actions::review_break_glass(
        &console.gateway.app,
        &posted.session.actor,
        id,
        verdict,
        comment,
    )
    .await?;
    Ok(detail::back(&posted, id, "review"))
}
