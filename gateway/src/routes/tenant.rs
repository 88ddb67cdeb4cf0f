//! Tenant-wide endpoints: settings, API keys, stats, user history. Each handler parses its
//! request, calls one use case of `countersign_app`, and replies.

use std::collections::BTreeSet;

use aide::axum::ApiRouter;
use aide::axum::routing::{delete, get, post};
use axum::extract::{Path, State};
use countersign_app::keys::{self, ApiKeyView, CreatedApiKey};
use countersign_app::{Actor, reads, settings};
use countersign_domain::tenant::Settings;
use countersign_domain::{Role, UserId};
use countersign_projections::{InboxPage, TenantStats, VoteRecord};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Acting, CURSOR_PATTERN, KeyPath, ReadQuery, Reply, StrictJson, StrictQuery};

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/settings", get(read_settings).put(update_settings))
        .api_route("/v1/api-keys", post(create_key).get(list_keys))
        .api_route("/v1/api-keys/{key_id}", delete(revoke_key))
        .api_route("/v1/stats", get(stats))
        .api_route("/v1/users/{id}/actions", get(user_actions))
        .api_route("/v1/users/{id}/votes", get(user_votes))
}

/// The tenant's mode and default policy (owner, admin, auditor). Credentials in the webhook URL
/// are shown redacted.
async fn read_settings(
    State(state): State<AppState>,
    Acting(actor): Acting,
) -> Result<Reply<Settings>, ApiError> {
    Ok(Reply::new(settings::read(&state.app, &actor).await?).no_store())
}

/// Change the mode or the default policy (owner, admin). Pending actions keep the mode and
/// policy they were submitted under. A webhook URL sent back as it was shown (redacted) keeps
/// its credentials; the answer shows them redacted.
async fn update_settings(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictJson(body): StrictJson<Settings>,
) -> Result<Reply<Settings>, ApiError> {
    let written = settings::update(&state.app, &actor, body).await?;
    Ok(Reply::from(written).no_store())
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// What the key is for ("billing service"): 1 to 100 characters once trimmed, readable and
    /// visible.
    #[schemars(schema_with = "countersign_domain::tenant::api_key_name_schema")]
    pub name: String,
    /// Roles the key's caller holds (a role listed twice counts once).
    #[schemars(with = "Vec<Role>")]
    pub roles: BTreeSet<Role>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ApiKeyList {
    pub keys: Vec<ApiKeyView>,
}

/// Create an API key for this tenant (owner, admin; only an owner grants `owner`). The secret is
/// returned once.
async fn create_key(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictJson(body): StrictJson<NewApiKey>,
) -> Result<Reply<CreatedApiKey, 201>, ApiError> {
    let written = keys::create(&state.app, &actor, &body.name, body.roles).await?;
    Ok(Reply::from(written).no_store())
}

/// The tenant's API keys, without secrets (owner, admin).
async fn list_keys(
    State(state): State<AppState>,
    Acting(actor): Acting,
) -> Result<Reply<ApiKeyList>, ApiError> {
    let keys = keys::list(&state.app, &actor).await?;
    Ok(Reply::new(ApiKeyList { keys }).no_store())
}

/// Revoke an API key (owner, admin): it stops working at once.
async fn revoke_key(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(KeyPath { key_id }): Path<KeyPath>,
) -> Result<Reply<ApiKeyView>, ApiError> {
    let written = keys::revoke(&state.app, &actor, &key_id).await?;
    Ok(Reply::from(written).no_store())
}

/// The tenant's approval statistics (owner, admin, auditor, approver).
async fn stats(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictQuery(query): StrictQuery<ReadQuery>,
) -> Result<Reply<TenantStats>, ApiError> {
    let stats = reads::stats(&state.app, &actor, query.cursor()?).await?;
    Ok(Reply::new(stats))
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// The previous page's `next_cursor`.
    #[schemars(extend("pattern" = CURSOR_PATTERN))]
    pub cursor: Option<String>,
    /// 1–200, default 50.
    #[schemars(extend("minimum" = 1, "maximum" = 200))]
    pub limit: Option<u32>,
}

/// Vote history is not paginated: `limit` only.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VoteHistoryQuery {
    /// 1–200, default 50.
    #[schemars(extend("minimum" = 1, "maximum" = 200))]
    pub limit: Option<u32>,
}

/// `{id}` of a user: a user id as credentials name them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct UserPath {
    #[schemars(with = "UserId")]
    pub id: String,
}

/// The user a history is asked for; an id no credential can carry is refused naming it (after
/// the permission check, so the refusal does not tell a stranger which ids are well formed).
fn history_user(actor: &Actor, id: &str) -> Result<UserId, ApiError> {
    actor.may_read_history_of(id)?;
    UserId::parse(id).map_err(|err| {
        ApiError::bad_request("invalid_path", format!("id: {}", err.message)).with_field("id")
    })
}

/// `limit` of a history: 1–200, default 50.
fn history_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(
            ApiError::bad_request("invalid_query", "limit: must be between 1 and 200")
                .with_field("limit"),
        );
    }
    Ok(limit)
}

/// Actions a user requested, newest first (the user, owner, admin, auditor).
async fn user_actions(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(UserPath { id }): Path<UserPath>,
    StrictQuery(query): StrictQuery<HistoryQuery>,
) -> Result<Reply<InboxPage>, ApiError> {
    let user = history_user(&actor, &id)?;
    let limit = history_limit(query.limit)?;
    let page = reads::actions_of(&state.app, &actor, &user, query.cursor, limit).await?;
    Ok(Reply::new(page))
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct VoteHistory {
    pub votes: Vec<VoteRecord>,
}

/// Votes a user cast, newest first (the user, owner, admin, auditor).
async fn user_votes(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(UserPath { id }): Path<UserPath>,
    StrictQuery(query): StrictQuery<VoteHistoryQuery>,
) -> Result<Reply<VoteHistory>, ApiError> {
    let user = history_user(&actor, &id)?;
    let limit = history_limit(query.limit)?;
    let votes = reads::votes_of(&state.app, &actor, &user, limit).await?;
    Ok(Reply::new(VoteHistory { votes }))
}
