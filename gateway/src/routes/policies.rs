//! `/v1/policies`: approval policies, their history and simulation.

use aide::axum::ApiRouter;
use aide::axum::routing::{get, post};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use countersign_domain::policy::{Policy, PolicySnapshot, resolve};
use countersign_domain::risk::{RiskAssessment, assess};
use countersign_domain::submission::Submission;
use countersign_domain::tenant::{
    PolicyCommand, PolicyDraft, PolicyEvent, PolicySet, TenantCommandContext, TenantSettings,
};
use countersign_domain::{ActionType, PolicyId};
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::{Caller, roles};
use crate::error::ApiError;
use crate::extract::{Reply, StrictJson, StrictQuery, correlation_id};
use crate::service;

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/policies", get(list).post(create))
        .api_route("/v1/policies/simulate", post(simulate))
        .api_route("/v1/policies/{id}", get(read).put(update).delete(remove))
}

fn context(caller: &Caller, headers: &HeaderMap) -> Result<TenantCommandContext, ApiError> {
    Ok(TenantCommandContext {
        tenant: caller.tenant.clone(),
        by: caller.principal.clone(),
        at: chrono::Utc::now(),
        correlation_id: correlation_id(headers)?,
    })
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

fn admin(caller: &Caller) -> Result<(), ApiError> {
    caller.require(&[roles::OWNER, roles::ADMIN], "managing policies")
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
    caller: Caller,
    StrictQuery(query): StrictQuery<PoliciesQuery>,
) -> Result<Reply<PolicyList>, ApiError> {
    let policies = match query.at {
        None => {
            state
                .ledger
                .load::<PolicySet>(caller.tenant.as_str())
                .await?
                .0
        }
        Some(at) => {
            let mut set = PolicySet::default();
            for logged in state
                .ledger
                .events_of(PolicySet::TYPE, caller.tenant.as_str())
                .await?
            {
                if logged.recorded_at > at {
                    break;
                }
                set.apply(logged.decode::<PolicySet>()?);
            }
            set
        }
    };
    Ok(Reply::new(PolicyList {
        policies: policies.list(),
    }))
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
    caller: Caller,
    headers: HeaderMap,
    StrictJson(body): StrictJson<NewPolicy>,
) -> Result<Reply<Policy, 201>, ApiError> {
    admin(&caller)?;
    let id = body.id;
    let draft = PolicyDraft {
        name: body.name,
        priority: body.priority,
        criteria: body.criteria,
        requirements: body.requirements,
    };
    let command = PolicyCommand::CreatePolicy {
        context: context(&caller, &headers)?,
        id: id.clone(),
        draft,
    };
    let committed = service::execute_tenant::<PolicySet>(
        &state,
        &caller,
        "CreatePolicy",
        command,
        correlation_id(&headers)?,
    )
    .await?;
    let policy = committed
        .aggregate
        .policies
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::internal("created policy missing"))?;
    Ok(Reply::new(policy).at(committed.last_cursor()).no_store())
}

/// One policy.
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(PolicyPath { id }): Path<PolicyPath>,
) -> Result<Reply<Policy>, ApiError> {
    let id = policy_id(&id)?;
    let (set, _) = state
        .ledger
        .load::<PolicySet>(caller.tenant.as_str())
        .await?;
    set.policies
        .get(&id)
        .cloned()
        .map(Reply::new)
        .ok_or_else(|| ApiError::not_found("policy_not_found", "policy"))
}

/// Replace a policy's fields (owner, admin); the version increments. `If-Match: <version>`
/// refuses the update when someone else changed the policy first.
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(PolicyPath { id }): Path<PolicyPath>,
    StrictJson(draft): StrictJson<PolicyDraft>,
) -> Result<Reply<Policy>, ApiError> {
    admin(&caller)?;
    let id = policy_id(&id)?;
    let expected_version = match headers
        .get("if-match")
        .map(|value| value.to_str().map(|v| v.trim_matches('"').parse::<u32>()))
    {
        None => None,
        Some(Ok(Ok(version))) => Some(version),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_header",
                "If-Match must be a policy version number",
            )
            .with_field("If-Match"));
        }
    };
    let command = PolicyCommand::UpdatePolicy {
        context: context(&caller, &headers)?,
        id: id.clone(),
        draft,
        expected_version,
    };
    let committed = service::execute_tenant::<PolicySet>(
        &state,
        &caller,
        "UpdatePolicy",
        command,
        correlation_id(&headers)?,
    )
    .await?;
    let policy = committed
        .aggregate
        .policies
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::internal("updated policy missing"))?;
    Ok(Reply::new(policy).at(committed.last_cursor()).no_store())
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Deleted {
    pub id: String,
    pub deleted: bool,
}

/// Delete a policy (owner, admin). Pending actions keep the policy they were submitted under.
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(PolicyPath { id }): Path<PolicyPath>,
) -> Result<Reply<Deleted>, ApiError> {
    admin(&caller)?;
    let id = policy_id(&id)?;
    let command = PolicyCommand::DeletePolicy {
        context: context(&caller, &headers)?,
        id: id.clone(),
    };
    let committed = service::execute_tenant::<PolicySet>(
        &state,
        &caller,
        "DeletePolicy",
        command,
        correlation_id(&headers)?,
    )
    .await?;
    debug_assert!(
        committed
            .events
            .iter()
            .any(|event| matches!(event.event, PolicyEvent::PolicyDeleted { .. }))
    );
    Ok(Reply::new(Deleted {
        id: id.to_string(),
        deleted: true,
    })
    .at(committed.last_cursor())
    .no_store())
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Simulation {
    pub action_type: ActionType,
    pub risk: RiskAssessment,
    pub policy: PolicySnapshot,
}

/// Which policy, requirements and risk a submission by the caller would get. Changes nothing.
async fn simulate(
    State(state): State<AppState>,
    caller: Caller,
    StrictJson(submission): StrictJson<Submission>,
) -> Result<Reply<Simulation>, ApiError> {
    // What a submission would be refused for, a simulation is refused for.
    submission.check().map_err(ApiError::invalid_input)?;
    let (settings, _) = state
        .ledger
        .load::<TenantSettings>(caller.tenant.as_str())
        .await?;
    let (policies, _) = state
        .ledger
        .load::<PolicySet>(caller.tenant.as_str())
        .await?;
    let risk = assess(&submission);
    let policy = resolve(
        &policies.list(),
        &submission.facts(&caller.principal.id, &risk),
        &settings.settings.default_requirements,
    );
    Ok(Reply::new(Simulation {
        action_type: submission.action_type(),
        risk,
        policy,
    }))
}
