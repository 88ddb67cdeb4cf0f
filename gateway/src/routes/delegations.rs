//! `/v1/delegations`: delegation windows (see `countersign_app::delegations`). A delegate votes
//! in the delegator's place with `on_behalf_of` in a vote body (`routes::actions`).

use aide::axum::ApiRouter;
use aide::axum::routing::{delete, get};
use axum::extract::{Path, State};
use countersign_app::delegations;
use countersign_domain::delegation::Delegation;
use countersign_domain::{Timestamp, UserId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Acting, Reply, StrictJson};

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/delegations", get(list).post(grant))
        .api_route("/v1/delegations/{id}", delete(revoke))
}

/// Lend your eligibility to another member for a window.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDelegation {
    /// Who may vote in your place.
    pub delegate: UserId,
    /// RFC 3339 (default: now).
    #[serde(default)]
    pub starts_at: Option<Timestamp>,
    /// RFC 3339; after `starts_at`, in the future, at most 90 days after `starts_at`.
    pub ends_at: Timestamp,
}

/// Lend the caller's eligibility — with the roles their credential holds — to `delegate` for the
/// window.
async fn grant(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictJson(body): StrictJson<NewDelegation>,
) -> Result<Reply<Delegation, 201>, ApiError> {
    let written = delegations::grant(
        &state.app,
        &actor,
        body.delegate,
        body.starts_at,
        body.ends_at,
    )
    .await?;
    Ok(Reply::from(written).no_store())
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DelegationList {
    pub delegations: Vec<Delegation>,
}

/// Every delegation (owners, admins), or those the caller gives or receives.
async fn list(
    State(state): State<AppState>,
    Acting(actor): Acting,
) -> Result<Reply<DelegationList>, ApiError> {
    let delegations = delegations::list(&state.app, &actor).await?;
    Ok(Reply::new(DelegationList { delegations }))
}

/// `{id}` of a delegation: a UUID (anything else answers 404, like a missing delegation).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct DelegationPath {
    #[schemars(extend("format" = "uuid"))]
    pub id: String,
}

/// End a delegation now (its delegator, an owner or an admin).
async fn revoke(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(DelegationPath { id }): Path<DelegationPath>,
) -> Result<Reply<Delegation>, ApiError> {
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::not_found("delegation_not_found", "delegation"))?;
    let written = delegations::revoke(&state.app, &actor, id).await?;
    Ok(Reply::from(written).no_store())
}
