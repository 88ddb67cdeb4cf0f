//! Workflows (owners, admins): the list, one workflow's definition with enable / disable, the
//! runs with filters, and one run's timeline with approve / deny for a run waiting for approval.
//! Another tenant's workflow or run answers like a missing one (404).

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use countersign_app::{AppError, workflows};
use countersign_domain::workflow::{RunEvent, RunId, RunStatus, WorkflowId};
use serde::Deserialize;

use crate::Console;
use crate::error::PageError;
use crate::session::{Posted, Session};
use crate::view::{self, Layout};

fn invalid(error: countersign_domain::ParseError) -> PageError {
    PageError::from(AppError::InvalidInput(error))
}

/// A path's workflow id; one that cannot exist answers like a missing one.
fn workflow_id(raw: &str) -> Result<WorkflowId, PageError> {
    WorkflowId::parse(raw).map_err(|_| AppError::not_found("workflow_not_found", "workflow").into())
}

/// A path's run id; one that cannot exist answers like a missing one.
fn run_id(raw: &str) -> Result<RunId, PageError> {
    RunId::parse(raw).map_err(|_| AppError::not_found("run_not_found", "run").into())
}

#[derive(Debug)]
pub struct WorkflowRow {
    pub id: String,
    pub name: String,
    pub triggers: String,
    pub enabled: bool,
    pub version: u32,
}

#[derive(Template, WebTemplate)]
#[template(path = "workflows.html")]
struct ListPage {
    layout: Layout,
    workflows: Vec<WorkflowRow>,
}

#[derive(Debug, Default, Deserialize)]
pub struct NoticeOnly {
    notice: Option<String>,
}

/// `GET /workflows`.
pub async fn list(
    State(console): State<Console>,
    session: Session,
    Query(query): Query<NoticeOnly>,
) -> Result<Response, PageError> {
    let layout = Layout::new(&console, &session, "workflows")
        .await?
        .with_notice(query.notice.as_deref());
    let workflows = workflows::list(&console.gateway.app, &session.actor)
        .await?
        .into_iter()
        .map(|workflow| WorkflowRow {
            id: workflow.id.to_string(),
            name: workflow.name,
            triggers: workflow
                .triggers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            enabled: workflow.enabled,
            version: workflow.version,
        })
        .collect();
    Ok(ListPage { layout, workflows }.into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "workflow.html")]
struct WorkflowPage {
    layout: Layout,
    workflow: WorkflowRow,
    definition: String,
}

/// `GET /workflows/{id}`.
pub async fn page(
    State(console): State<Console>,
    session: Session,
    Path(id): Path<String>,
    Query(query): Query<NoticeOnly>,
) -> Result<Response, PageError> {
    let id = workflow_id(&id)?;
    let layout = Layout::new(&console, &session, "workflows")
        .await?
        .with_notice(query.notice.as_deref());
    let workflow = workflows::read(&console.gateway.app, &session.actor, &id).await?;
    Ok(WorkflowPage {
        layout,
        definition: view::pretty(&workflow),
        workflow: WorkflowRow {
            id: workflow.id.to_string(),
            triggers: workflow
                .triggers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            name: workflow.name,
            enabled: workflow.enabled,
            version: workflow.version,
        },
    }
    .into_response())
}

/// `POST /workflows/{id}/enabled`: `enabled=true|false`.
pub async fn set_enabled(
    State(console): State<Console>,
    Path(id): Path<String>,
    posted: Posted,
) -> Result<Response, PageError> {
    let id = workflow_id(&id)?;
    let enabled = match posted.get("enabled") {
        Some("true") => true,
        Some("false") => false,
        _ => {
            return Err(invalid(countersign_domain::ParseError::new(
                "enabled",
                "true or false",
            )));
        }
    };
    workflows::set_enabled(
        &console.gateway.app,
        &posted.session.actor,
        id.clone(),
        enabled,
    )
    .await?;
    let notice = if enabled {
        "workflow_enabled"
    } else {
        "workflow_disabled"
    };
    Ok(Redirect::to(&format!("/workflows/{id}?notice={notice}")).into_response())
}

#[derive(Debug)]
pub struct RunRow {
    pub id: String,
    pub workflow: String,
    pub event_type: String,
    pub status: String,
    pub action_id: Option<String>,
    pub started: String,
    pub started_stamp: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "workflow_runs.html")]
struct RunsPage {
    layout: Layout,
    runs: Vec<RunRow>,
    workflow: String,
    status: String,
    statuses: Vec<&'static str>,
    next: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RunsQuery {
    workflow: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
}

/// `GET /workflow-runs?workflow=&status=&cursor=`.
pub async fn runs(
    State(console): State<Console>,
    session: Session,
    Query(query): Query<RunsQuery>,
) -> Result<Response, PageError> {
    let layout = Layout::new(&console, &session, "workflow-runs").await?;
    let workflow = query
        .workflow
        .as_deref()
        .map(str::trim)
        .filter(|raw| !raw.is_empty());
    let status = query.status.as_deref().filter(|raw| !raw.is_empty());
    let filter = workflows::RunFilter {
        workflow: workflow
            .map(WorkflowId::parse)
            .transpose()
            .map_err(invalid)?,
        status: status
            .map(|raw| {
                RunStatus::parse(raw).ok_or_else(|| {
                    invalid(countersign_domain::ParseError::new(
                        "status",
                        "running, pending_approval, completed, failed or denied",
                    ))
                })
            })
            .transpose()?,
        limit: Some(50),
        cursor: query.cursor.clone().filter(|cursor| !cursor.is_empty()),
        ..workflows::RunFilter::default()
    };
    let page = workflows::list_runs(&console.gateway.app, &session.actor, &filter).await?;
    let next = page.next_cursor.map(|cursor| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("workflow", workflow.unwrap_or_default())
            .append_pair("status", status.unwrap_or_default())
            .append_pair("cursor", &cursor)
            .finish()
    });
    Ok(RunsPage {
        layout,
        runs: page
            .runs
            .into_iter()
            .map(|run| RunRow {
                started: view::relative(run.started_at),
                started_stamp: view::stamp(run.started_at),
                id: run.run_id,
                workflow: run.workflow_id,
                event_type: run.event_type,
                status: run.status,
                action_id: run.action_id,
            })
            .collect(),
        workflow: workflow.unwrap_or_default().to_owned(),
        status: status.unwrap_or_default().to_owned(),
        statuses: RunStatus::ALL
            .iter()
            .map(|status| status.as_str())
            .collect(),
        next,
    }
    .into_response())
}

/// One line of a run's timeline.
#[derive(Debug)]
pub struct Entry {
    pub position: i64,
    pub stamp: String,
    pub kind: String,
    pub step: Option<usize>,
    pub action_id: Option<String>,
    pub note: String,
}

#[derive(Debug)]
pub struct StepAction {
    pub step: usize,
    pub id: String,
    pub status: String,
    pub summary: String,
    pub votes: Vec<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "workflow_run.html")]
struct RunPage {
    layout: Layout,
    id: String,
    workflow: String,
    workflow_version: u32,
    status: &'static str,
    correlation_id: String,
    event_type: String,
    pending: bool,
    timeline: Vec<Entry>,
    actions: Vec<StepAction>,
}

fn entry(position: i64, recorded_at: chrono::DateTime<chrono::Utc>, event: &RunEvent) -> Entry {
    let (kind, step, action_id, note) = match event {
        RunEvent::RunTriggered { event, .. } => (
            "run triggered",
            None,
            None,
            format!("by event {} ({})", event.id, event.event_type),
        ),
        RunEvent::StepSubmitted {
            step, action_id, ..
        } => (
            "step submitted",
            Some(*step),
            Some(*action_id),
            String::new(),
        ),
        RunEvent::StepPendingApproval {
            step, action_id, ..
        } => (
            "step waits for approval",
            Some(*step),
            Some(*action_id),
            String::new(),
        ),
        RunEvent::StepExecuted {
            step, action_id, ..
        } => ("step executed", Some(*step), *action_id, String::new()),
        RunEvent::StepFailed {
            step,
            action_id,
            reason,
            ..
        } => ("step failed", Some(*step), *action_id, reason.clone()),
        RunEvent::StepDenied {
            step,
            action_id,
            reason,
            ..
        } => ("step denied", Some(*step), *action_id, reason.clone()),
        RunEvent::RunCompleted { .. } => ("run completed", None, None, String::new()),
        RunEvent::RunFailed { step, .. } => ("run failed", Some(*step), None, String::new()),
        RunEvent::RunDenied { step, .. } => ("run denied", Some(*step), None, String::new()),
    };
    Entry {
        position,
        stamp: view::stamp(recorded_at),
        kind: kind.to_owned(),
        step,
        action_id: action_id.map(|id| id.to_string()),
        note,
    }
}

/// `GET /workflow-runs/{id}`.
pub async fn run(
    State(console): State<Console>,
    session: Session,
    Path(id): Path<String>,
    Query(query): Query<NoticeOnly>,
) -> Result<Response, PageError> {
    let id = run_id(&id)?;
    let layout = Layout::new(&console, &session, "workflow-runs")
        .await?
        .with_notice(query.notice.as_deref());
    let detail = workflows::read_run(&console.gateway.app, &session.actor, id).await?;
    let state = &detail.run;
    let step_of = |action: &countersign_domain::ActionId| {
        state
            .actions
            .iter()
            .find(|(_, id)| *id == action)
            .map_or(0, |(step, _)| *step)
    };
    let actions = detail
        .actions
        .iter()
        .map(|action| StepAction {
            step: step_of(&action.id),
            id: action.id.to_string(),
            status: action.status.as_str().to_owned(),
            summary: action.request.summary.to_string(),
            votes: action
                .stages
                .iter()
                .flat_map(|stage| &stage.votes)
                .map(|vote| {
                    format!(
                        "{}: {}",
                        vote.voter,
                        view::pretty(&vote.ballot.vote).trim_matches('"')
                    )
                })
                .collect(),
        })
        .collect();
    Ok(RunPage {
        layout,
        id: state.run_id.to_string(),
        workflow: state.workflow.id.to_string(),
        workflow_version: state.workflow.version,
        status: state.status.as_str(),
        correlation_id: detail.correlation_id.clone(),
        event_type: state.event.event_type.to_string(),
        pending: state.status == RunStatus::PendingApproval,
        timeline: detail
            .timeline
            .iter()
            .map(|line| entry(line.position, line.recorded_at, &line.event))
            .collect(),
        actions,
    }
    .into_response())
}

/// `POST /workflow-runs/{id}/decide`: `decision=approve|deny`, with an optional comment; the
/// vote goes through the same use case as any vote on the pending step's action.
pub async fn decide(
    State(console): State<Console>,
    Path(id): Path<String>,
    posted: Posted,
) -> Result<Response, PageError> {
    let id = run_id(&id)?;
    let approve = match posted.get("decision") {
        Some("approve") => true,
        Some("deny") => false,
        _ => {
            return Err(invalid(countersign_domain::ParseError::new(
                "decision",
                "approve or deny",
            )));
        }
    };
    let comment = posted
        .get("comment")
        .map(countersign_domain::Comment::parse)
        .transpose()
        .map_err(invalid)?;
    workflows::decide_run(
        &console.gateway.app,
        &posted.session.actor,
        id,
        approve,
        comment,
    )
    .await?;
    let notice = if approve { "approve" } else { "reject" };
    Ok(Redirect::to(&format!("/workflow-runs/{id}?notice={notice}")).into_response())
}
