//! `/v1/workflows` and `/v1/workflow-runs`: a tenant's workflow definitions (owners, admins), a
//! dry run against a sample event, and the runs with their timelines, approved or denied here
//! through the same vote as any action. Each handler parses its request, calls one use case of
//! `countersign_app::workflows`, and replies (`Cache-Control: no-store`).

use aide::axum::ApiRouter;
use aide::axum::routing::{get, post};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use countersign_app::workflows::{self, DryRun, RunDetail, RunFilter, RunPage};
use countersign_domain::workflow::{RunId, Workflow, WorkflowDraft, WorkflowId};
use countersign_projections::ActionDetail;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Acting, OptionalJson, Reply, StrictJson, StrictQuery};
use crate::routes::actions::CommentBody;

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/workflows", get(list).post(create))
        .api_route("/v1/workflows/{id}", get(read).put(update).delete(remove))
        .api_route("/v1/workflows/{id}/enable", post(enable))
        .api_route("/v1/workflows/{id}/disable", post(disable))
        .api_route("/v1/workflows/{id}/test", post(test))
        .api_route("/v1/workflow-runs", get(runs))
        .api_route("/v1/workflow-runs/{id}", get(run))
        .api_route("/v1/workflow-runs/{id}/approve", post(approve))
        .api_route("/v1/workflow-runs/{id}/deny", post(deny))
}

/// `{id}` of a workflow (anything that is not a workflow id answers 404, like a missing one).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct WorkflowPath {
    #[schemars(with = "WorkflowId")]
    pub id: String,
}

impl WorkflowPath {
    fn id(&self) -> Result<WorkflowId, ApiError> {
        WorkflowId::parse(&self.id)
            .map_err(|_| ApiError::not_found("workflow_not_found", "workflow"))
    }
}

/// `{id}` of a run (a UUID; anything else answers 404).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct RunPath {
    #[schemars(with = "uuid::Uuid")]
    pub id: String,
}

impl RunPath {
    fn id(&self) -> Result<RunId, ApiError> {
        RunId::parse(&self.id).map_err(|_| ApiError::not_found("run_not_found", "workflow run"))
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkflowList {
    pub workflows: Vec<Workflow>,
}

/// The tenant's workflows (owner, admin).
async fn list(
    State(state): State<AppState>,
    Acting(actor): Acting,
) -> Result<Reply<WorkflowList>, ApiError> {
    let workflows = workflows::list(&state.app, &actor).await?;
    Ok(Reply::new(WorkflowList { workflows }).no_store())
}

/// A new workflow: its id and its fields (those of `WorkflowDraft`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkflow {
    pub id: WorkflowId,
    /// 1 to 200 characters once trimmed, readable and visible.
    pub name: String,
    /// The event types that start it (1 to 20).
    pub triggers: Vec<countersign_domain::workflow::EventType>,
    /// Which events of those types start it (default: all).
    #[serde(default = "countersign_domain::workflow::Condition::always")]
    pub condition: countersign_domain::workflow::Condition,
    /// Values templates see as `constants` (an object).
    #[serde(default = "empty_object")]
    #[schemars(with = "countersign_domain::document::Document")]
    pub constants: serde_json::Value,
    /// What a run does, in order (1 to 20).
    pub steps: Vec<countersign_domain::workflow::Step>,
    /// Whether events start runs (default: true).
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn yes() -> bool {
    true
}

/// Create a workflow (owner, admin). A template that does not compile answers 422 naming its
/// step (`steps[0].payload.url`).
async fn create(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictJson(body): StrictJson<NewWorkflow>,
) -> Result<Reply<Workflow, 201>, ApiError> {
    let draft = WorkflowDraft {
        name: body.name,
        triggers: body.triggers,
        condition: body.condition,
        constants: body.constants,
        steps: body.steps,
        enabled: body.enabled,
    };
    let written = workflows::create(&state.app, &actor, body.id, draft).await?;
    Ok(Reply::from(written).no_store())
}

/// One workflow (owner, admin).
async fn read(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(path): Path<WorkflowPath>,
) -> Result<Reply<Workflow>, ApiError> {
    let workflow = workflows::read(&state.app, &actor, &path.id()?).await?;
    Ok(Reply::new(workflow).no_store())
}

/// `If-Match: <version>`, when sent.
fn expected_version(headers: &HeaderMap) -> Result<Option<u32>, ApiError> {
    match headers
        .get("if-match")
        .map(|value| value.to_str().map(|v| v.trim_matches('"').parse::<u32>()))
    {
        None => Ok(None),
        Some(Ok(Ok(version))) => Ok(Some(version)),
        _ => Err(ApiError::bad_request(
            "invalid_header",
            "If-Match must be a workflow version number",
        )
        .with_field("If-Match")),
    }
}

/// Replace a workflow's fields (owner, admin); the version increments. `If-Match: <version>`
/// refuses the update (409 `stale_version`) when someone else changed it first.
async fn update(
    State(state): State<AppState>,
    Acting(actor): Acting,
    headers: HeaderMap,
    Path(path): Path<WorkflowPath>,
    StrictJson(draft): StrictJson<WorkflowDraft>,
) -> Result<Reply<Workflow>, ApiError> {
    let (id, version) = (path.id()?, expected_version(&headers)?);
    let written = workflows::update(&state.app, &actor, id, draft, version).await?;
    Ok(Reply::from(written).no_store())
}

/// Enable a workflow (owner, admin).
async fn enable(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(path): Path<WorkflowPath>,
) -> Result<Reply<Workflow>, ApiError> {
    let written = workflows::set_enabled(&state.app, &actor, path.id()?, true).await?;
    Ok(Reply::from(written).no_store())
}

/// Disable a workflow (owner, admin): its events are still recorded, and start no run.
async fn disable(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(path): Path<WorkflowPath>,
) -> Result<Reply<Workflow>, ApiError> {
    let written = workflows::set_enabled(&state.app, &actor, path.id()?, false).await?;
    Ok(Reply::from(written).no_store())
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Deleted {
    pub id: String,
    pub deleted: bool,
}

/// Delete a workflow (owner, admin); runs already started go on.
async fn remove(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(path): Path<WorkflowPath>,
) -> Result<Reply<Deleted>, ApiError> {
    let id = path.id()?;
    let written = workflows::delete(&state.app, &actor, id.clone()).await?;
    let deleted = Deleted {
        id: id.to_string(),
        deleted: true,
    };
    Ok(Reply::new(deleted).at(written.cursor).no_store())
}

/// A sample event for a dry run.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestBody {
    /// A CloudEvents 1.0 event.
    #[schemars(with = "countersign_domain::workflow::CloudEvent")]
    pub event: serde_json::Value,
}

/// Dry run (owner, admin): whether the sample event would start a run, and for each step the
/// rendered action, its risk and the policy it would get. Changes nothing.
async fn test(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(path): Path<WorkflowPath>,
    StrictJson(body): StrictJson<TestBody>,
) -> Result<Reply<DryRun>, ApiError> {
    let dry = workflows::dry_run(&state.app, &actor, &path.id()?, &body.event).await?;
    Ok(Reply::new(dry).no_store())
}

/// The tenant's runs, newest first (owner, admin): filters `workflow`, `status`, `event_type`,
/// `from`, `to`; cursor pagination (`limit`, `cursor`).
async fn runs(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictQuery(filter): StrictQuery<RunFilter>,
) -> Result<Reply<RunPage>, ApiError> {
    let page = workflows::list_runs(&state.app, &actor, &filter).await?;
    Ok(Reply::new(page).no_store())
}

/// One run (owner, admin): its timeline, and the actions its steps submitted with their votes.
async fn run(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(path): Path<RunPath>,
) -> Result<Reply<RunDetail>, ApiError> {
    let detail = workflows::read_run(&state.app, &actor, path.id()?).await?;
    Ok(Reply::new(detail).no_store())
}

/// Approve a run waiting for approval: the caller's approving vote on the pending step's action
/// (owner, admin; the action's policy decides whether it counts). 409 `run_not_pending` when the
/// run waits for nothing.
async fn approve(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(path): Path<RunPath>,
    OptionalJson(body): OptionalJson<CommentBody>,
) -> Result<Reply<ActionDetail>, ApiError> {
    let written = workflows::decide_run(&state.app, &actor, path.id()?, true, body.comment).await?;
    Ok(Reply::from(written).no_store())
}

/// Deny a run waiting for approval: the caller's rejecting vote on the pending step's action.
async fn deny(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(path): Path<RunPath>,
    OptionalJson(body): OptionalJson<CommentBody>,
) -> Result<Reply<ActionDetail>, ApiError> {
    let written =
        workflows::decide_run(&state.app, &actor, path.id()?, false, body.comment).await?;
    Ok(Reply::from(written).no_store())
}
