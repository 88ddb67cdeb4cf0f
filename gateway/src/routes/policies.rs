//! `/v1/policies`: approval policies, their history and simulation. Each handler parses its
//! request, calls one use case of `countersign_app::policies`, and replies.

use aide::axum::ApiRouter;
use aide::axum::routing::{get, post};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use countersign_app::policies::{self, Simulation};
use countersign_domain::PolicyId;
use countersign_domain::policy::Policy;
use countersign_domain::submission::Submission;
use countersign_domain::tenant::PolicyDraft;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Acting, Reply, StrictJson, StrictQuery};

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/policies", get(list).post(create))
        .api_route("/v1/policies/simulate", post(simulate))
        .api_route("/v1/policies/{id}", get(read).put(update).delete(remove))
}

/// `{id}` of a policy: a policy id (anything else answers 404, like a missing policy).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct PolicyPath {
    #[schemars(with = "PolicyId")]
    pub id: String,
}

fn policy_id(raw: &str) -> Result<PolicyId, ApiError> {
    PolicyId::parse(raw).map_err(|_| ApiError::not_found("policy_not_found", "policy"))
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoliciesQuery {
    /// RFC 3339: the policies in force at that moment (from their change events).
    pub at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PolicyList {
    pub policies: Vec<Policy>,
}

/// The tenant's policies — now, or as they were at a past moment.
async fn list(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictQuery(query): StrictQuery<PoliciesQuery>,
) -> Result<Reply<PolicyList>, ApiError> {
    let policies = policies::list(&state.app, &actor, query.at).await?;
    Ok(Reply::new(PolicyList { policies }))
}

/// A new policy: its id and its editable fields.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPolicy {
    pub id: PolicyId,
    /// 1 to 200 characters once trimmed, readable and visible.
    #[schemars(schema_with = "countersign_domain::tenant::policy_name_schema")]
    pub name: String,
    #[serde(default)]
    #[schemars(extend("minimum" = i32::MIN, "maximum" = i32::MAX))]
    pub priority: i32,
    /// Which submissions the policy governs (default: all).
    #[serde(default = "countersign_domain::criteria::Criteria::always")]
    pub criteria: countersign_domain::criteria::Criteria,
    pub requirements: countersign_domain::policy::Requirements,
}

/// Create a policy (owner, admin).
async fn create(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictJson(body): StrictJson<NewPolicy>,
) -> Result<Reply<Policy, 201>, ApiError> {
    let draft = PolicyDraft {
        name: body.name,
        priority: body.priority,
        criteria: body.criteria,
        requirements: body.requirements,
    };
    let written = policies::create(&state.app, &actor, body.id, draft).await?;
    Ok(Reply::from(written).no_store())
}

/// One policy.
async fn read(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(PolicyPath { id }): Path<PolicyPath>,
) -> Result<Reply<Policy>, ApiError> {
    let policy = policies::read(&state.app, &actor, &policy_id(&id)?).await?;
    Ok(Reply::new(policy))
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
            "If-Match must be a policy version number",
        )
        .with_field("If-Match")),
    }
}

/// Replace a policy's fields (owner, admin); the version increments. `If-Match: <version>`
/// refuses the update when someone else changed the policy first.
async fn update(
    State(state): State<AppState>,
    Acting(actor): Acting,
    headers: HeaderMap,
    Path(PolicyPath { id }): Path<PolicyPath>,
    StrictJson(draft): StrictJson<PolicyDraft>,
) -> Result<Reply<Policy>, ApiError> {
    let (id, version) = (policy_id(&id)?, expected_version(&headers)?);
    let written = policies::update(&state.app, &actor, id, draft, version).await?;
    Ok(Reply::from(written).no_store())
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Deleted {
    pub id: String,
    pub deleted: bool,
}

/// Delete a policy (owner, admin). Pending actions keep the policy they were submitted under.
async fn remove(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(PolicyPath { id }): Path<PolicyPath>,
) -> Result<Reply<Deleted>, ApiError> {
    let id = policy_id(&id)?;
    let written = policies::delete(&state.app, &actor, id.clone()).await?;
    let deleted = Deleted {
        id: id.to_string(),
        deleted: true,
    };
    Ok(Reply::new(deleted).at(written.cursor).no_store())
}

/// Which policy, requirements and risk a submission by the caller would get. Changes nothing.
async fn simulate(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictJson(submission): StrictJson<Submission>,
) -> Result<Reply<Simulation>, ApiError> {
    Ok(Reply::new(
        policies::simulate(&state.app, &actor, &submission).await?,
    ))
}
