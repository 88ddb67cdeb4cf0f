//! Tenant-wide endpoints: settings, API keys, stats, user history.

use std::collections::BTreeSet;

use aide::axum::ApiRouter;
use aide::axum::routing::{delete, get, post};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use countersign_domain::tenant::{
    ApiKeyCommand, ApiKeys, Settings, SettingsCommand, TenantCommandContext, TenantSettings,
};
use countersign_domain::{Role, Timestamp, UserId};
use countersign_projections::{InboxFilter, InboxPage, Projection, TenantStats, VoteRecord};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::{Caller, digest, roles};
use crate::error::ApiError;
use crate::extract::{
    CURSOR_PATTERN, KeyPath, ReadQuery, Reply, StrictJson, StrictQuery, correlation_id, wait_for,
};
use crate::service;

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/settings", get(read_settings).put(update_settings))
        .api_route("/v1/api-keys", post(create_key).get(list_keys))
        .api_route("/v1/api-keys/{key_id}", delete(revoke_key))
        .api_route("/v1/stats", get(stats))
        .api_route("/v1/users/{id}/actions", get(user_actions))
        .api_route("/v1/users/{id}/votes", get(user_votes))
}

fn context(caller: &Caller, headers: &HeaderMap) -> Result<TenantCommandContext, ApiError> {
    Ok(TenantCommandContext {
        tenant: caller.tenant.clone(),
        by: caller.principal.clone(),
        at: chrono::Utc::now(),
        correlation_id: correlation_id(headers)?,
    })
}

/// The tenant's mode and default policy (owner, admin, auditor). Credentials in the webhook URL
/// are shown redacted.
async fn read_settings(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Reply<Settings>, ApiError> {
    caller.require(
        &[roles::OWNER, roles::ADMIN, roles::AUDITOR],
        "reading settings",
    )?;
    let (settings, _) = state
        .ledger
        .load::<TenantSettings>(caller.tenant.as_str())
        .await?;
    Ok(Reply::new(settings.settings.redacted()).no_store())
}

/// Change the mode or the default policy (owner, admin). Pending actions keep the mode and
/// policy they were submitted under. A webhook URL sent back as it was shown (redacted) keeps
/// its credentials; the answer shows them redacted.
async fn update_settings(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    StrictJson(settings): StrictJson<Settings>,
) -> Result<Reply<Settings>, ApiError> {
    caller.require(&[roles::OWNER, roles::ADMIN], "changing settings")?;
    let settings = service::store_credentials_apart(&state, &caller, settings).await?;
    let command = SettingsCommand::UpdateSettings {
        context: context(&caller, &headers)?,
        settings,
    };
    let committed = service::execute_tenant::<TenantSettings>(
        &state,
        &caller,
        "UpdateSettings",
        command,
        correlation_id(&headers)?,
    )
    .await?;
    Ok(Reply::new(committed.aggregate.settings.redacted())
        .at(committed.last_cursor())
        .no_store())
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

/// An API key without its secret.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ApiKeyView {
    pub key_id: String,
    pub name: String,
    pub roles: BTreeSet<Role>,
    pub created_by: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// A new key: `api_key` is shown this once and never again.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKeyView,
    /// Send as `Authorization: Bearer <api_key>`.
    pub api_key: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ApiKeyList {
    pub keys: Vec<ApiKeyView>,
}

fn view(record: &countersign_domain::tenant::ApiKeyRecord) -> ApiKeyView {
    ApiKeyView {
        key_id: record.key_id.clone(),
        name: record.name.clone(),
        roles: record.roles.clone(),
        created_by: record.created_by.to_string(),
        created_at: record.created_at,
        revoked_at: record.revoked_at,
    }
}

/// A random key id and secret (the only randomness of key creation; the domain records digests).
pub fn new_key_material() -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    (id, secret)
}

/// Create an API key for this tenant (owner, admin). The secret is returned once.
async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    StrictJson(body): StrictJson<NewApiKey>,
) -> Result<Reply<CreatedApiKey, 201>, ApiError> {
    caller.require(&[roles::OWNER, roles::ADMIN], "managing API keys")?;
    let secret_key = state.auth.config().api_key_secret.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_keys_disabled",
            "API keys need COUNTERSIGN_API_KEY_SECRET to be configured",
        )
    })?;
    let name = body.name.trim().to_owned();
    if body.roles.iter().any(|role| role.as_str() == roles::OWNER)
        && !caller.has_any(&[roles::OWNER])
    {
        return Err(ApiError::forbidden(
            "only an owner may create a key with the owner role",
        ));
    }
    let (key_id, secret) = new_key_material();
    let command = ApiKeyCommand::CreateApiKey {
        context: context(&caller, &headers)?,
        key_id: key_id.clone(),
        name,
        roles: body.roles,
        digest: digest(&secret_key, &secret).to_hex().to_string(),
    };
    let committed = service::execute_tenant::<ApiKeys>(
        &state,
        &caller,
        "CreateApiKey",
        command,
        correlation_id(&headers)?,
    )
    .await?;
    let record = committed
        .aggregate
        .keys
        .get(&key_id)
        .ok_or_else(|| ApiError::internal("created key missing"))?;
    Ok(Reply::new(CreatedApiKey {
        key: view(record),
        api_key: format!("csk.{}.{key_id}.{secret}", caller.tenant),
    })
    .at(committed.last_cursor())
    .no_store())
}

/// The tenant's API keys, without secrets (owner, admin).
async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Reply<ApiKeyList>, ApiError> {
    caller.require(&[roles::OWNER, roles::ADMIN], "managing API keys")?;
    let (keys, _) = state.ledger.load::<ApiKeys>(caller.tenant.as_str()).await?;
    Ok(Reply::new(ApiKeyList {
        keys: keys.keys.values().map(view).collect(),
    })
    .no_store())
}

/// Revoke an API key (owner, admin): it stops working at once.
async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(KeyPath { key_id }): Path<KeyPath>,
) -> Result<Reply<ApiKeyView>, ApiError> {
    caller.require(&[roles::OWNER, roles::ADMIN], "managing API keys")?;
    let command = ApiKeyCommand::RevokeApiKey {
        context: context(&caller, &headers)?,
        key_id: key_id.clone(),
    };
    let committed = service::execute_tenant::<ApiKeys>(
        &state,
        &caller,
        "RevokeApiKey",
        command,
        correlation_id(&headers)?,
    )
    .await?;
    let record = committed
        .aggregate
        .keys
        .get(&key_id)
        .ok_or_else(|| ApiError::not_found("api_key_not_found", "API key"))?;
    Ok(Reply::new(view(record))
        .at(committed.last_cursor())
        .no_store())
}

/// The tenant's approval statistics (owner, admin, auditor, approver).
async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(query): StrictQuery<ReadQuery>,
) -> Result<Reply<TenantStats>, ApiError> {
    caller.require(
        &[roles::OWNER, roles::ADMIN, roles::AUDITOR, roles::APPROVER],
        "reading stats",
    )?;
    wait_for(
        &state,
        Projection::Actions,
        query.consistent_with.as_deref(),
    )
    .await?;
    Ok(Reply::new(state.projections.stats(&caller.tenant).await?))
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

/// The user a history is asked for; an id no credential can carry is refused naming it.
fn history_user(caller: &Caller, id: &str) -> Result<UserId, ApiError> {
    caller.may_read_history_of(id)?;
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
    caller: Caller,
    Path(UserPath { id }): Path<UserPath>,
    StrictQuery(query): StrictQuery<HistoryQuery>,
) -> Result<Reply<InboxPage>, ApiError> {
    let user = history_user(&caller, &id)?;
    let filter = InboxFilter {
        requested_by: Some(user.to_string()),
        cursor: query.cursor,
        limit: history_limit(query.limit)?,
        ..InboxFilter::default()
    };
    Ok(Reply::new(
        state.projections.inbox(&caller.tenant, &filter).await?,
    ))
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct VoteHistory {
    pub votes: Vec<VoteRecord>,
}

/// Votes a user cast, newest first (the user, owner, admin, auditor).
async fn user_votes(
    State(state): State<AppState>,
    caller: Caller,
    Path(UserPath { id }): Path<UserPath>,
    StrictQuery(query): StrictQuery<VoteHistoryQuery>,
) -> Result<Reply<VoteHistory>, ApiError> {
    let user = history_user(&caller, &id)?;
    let limit = history_limit(query.limit)?;
    Ok(Reply::new(VoteHistory {
        votes: state
            .projections
            .votes_by(&caller.tenant, user.as_str(), limit)
            .await?,
    }))
}
