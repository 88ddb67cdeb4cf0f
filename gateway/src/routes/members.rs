//! `/v1/members`: the tenant's member directory, and each user's own notification preferences.
//! Each handler parses its request, calls one use case of `countersign_app::members`, and
//! replies.

use aide::axum::ApiRouter;
use aide::axum::routing::get;
use axum::extract::{Path, State};
use countersign_app::members::{self, MemberList, PreferencesView};
use std::collections::BTreeSet;

use countersign_domain::members::{Email, Member, MemberDraft, Preferences, SlackUserId};
use countersign_domain::{Role, UserId};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Acting, Reply, StrictJson};

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/members", get(list).post(create))
        .api_route(
            "/v1/members/me/preferences",
            get(my_preferences).put(set_my_preferences),
        )
        .api_route("/v1/members/{id}", get(read).put(update).delete(remove))
        .api_route(
            "/v1/notifications/preferences/defaults",
            get(defaults).put(set_defaults),
        )
}

/// `{id}` of a member: a user id (anything else answers 404, like a missing member).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct MemberPath {
    #[schemars(with = "UserId")]
    pub id: String,
}

fn user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|_| ApiError::not_found("member_not_found", "member"))
}

/// A new member: their user id (the `sub` of their tokens) and their fields.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    pub user_id: UserId,
    /// 1 to 200 characters once trimmed, readable and visible.
    #[serde(default)]
    #[schemars(schema_with = "countersign_domain::members::display_name_schema")]
    pub display_name: Option<String>,
    pub email: Option<Email>,
    pub slack_user_id: Option<SlackUserId>,
    /// The roles the member holds here: who is asked to vote. Each at most once.
    #[serde(
        default,
        deserialize_with = "countersign_domain::members::distinct_roles"
    )]
    pub roles: BTreeSet<Role>,
    /// The member's own preferences; none: the tenant's defaults.
    pub preferences: Option<Preferences>,
}

impl NewMember {
    fn into_parts(self) -> (UserId, MemberDraft) {
        (
            self.user_id,
            MemberDraft {
                display_name: self.display_name,
                email: self.email,
                slack_user_id: self.slack_user_id,
                roles: self.roles,
                preferences: self.preferences,
            },
        )
    }
}

/// The directory (owner, admin, auditor).
async fn list(
    State(state): State<AppState>,
    Acting(actor): Acting,
) -> Result<Reply<MemberList>, ApiError> {
    Ok(Reply::new(members::list(&state.app, &actor).await?))
}

/// Add a member (owner, admin; only an owner grants `owner`). An email address that is not one
/// answers 422 `invalid_input` naming `email`; an existing member 409 `member_exists`.
async fn create(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictJson(body): StrictJson<NewMember>,
) -> Result<Reply<Member, 201>, ApiError> {
    let (user, draft) = body.into_parts();
    let written = members::create(&state.app, &actor, user, draft).await?;
    Ok(Reply::from(written))
}

/// One member (owner, admin, auditor; anyone for themselves). 404 `member_not_found`.
async fn read(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(MemberPath { id }): Path<MemberPath>,
) -> Result<Reply<Member>, ApiError> {
    let user = user_id(&id)?;
    Ok(Reply::new(members::get(&state.app, &actor, &user).await?))
}

/// Replace a member's fields (owner, admin; only an owner grants or takes `owner`).
async fn update(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(MemberPath { id }): Path<MemberPath>,
    StrictJson(body): StrictJson<MemberDraft>,
) -> Result<Reply<Member>, ApiError> {
    let user = user_id(&id)?;
    let written = members::update(&state.app, &actor, user, body).await?;
    Ok(Reply::from(written))
}

/// Remove a member (owner, admin; only an owner removes an owner). Answers the removed entry.
async fn remove(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(MemberPath { id }): Path<MemberPath>,
) -> Result<Reply<Member>, ApiError> {
    let user = user_id(&id)?;
    let written = members::remove(&state.app, &actor, user).await?;
    Ok(Reply::from(written))
}

/// The caller's notification preferences as they apply (their own, or the tenant's defaults).
async fn my_preferences(
    State(state): State<AppState>,
    Acting(actor): Acting,
) -> Result<Reply<PreferencesView>, ApiError> {
    Ok(Reply::new(
        members::my_preferences(&state.app, &actor).await?,
    ))
}

/// The caller's own preferences: `preferences` null returns to the tenant's defaults.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreferencesBody {
    pub preferences: Option<Preferences>,
}

/// Set the caller's notification preferences (anyone signed in; a user not in the directory
/// is added with the roles of their credential).
async fn set_my_preferences(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictJson(body): StrictJson<PreferencesBody>,
) -> Result<Reply<PreferencesView>, ApiError> {
    let written = members::set_my_preferences(&state.app, &actor, body.preferences).await?;
    Ok(Reply::from(written))
}

/// The tenant's default notification preferences (anyone signed in).
async fn defaults(
    State(state): State<AppState>,
    Acting(actor): Acting,
) -> Result<Reply<Preferences>, ApiError> {
    Ok(Reply::new(members::defaults(&state.app, &actor).await?))
}

/// Set the tenant's default notification preferences (owner, admin).
async fn set_defaults(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictJson(body): StrictJson<Preferences>,
) -> Result<Reply<Preferences>, ApiError> {
    let written = members::set_defaults(&state.app, &actor, body).await?;
    Ok(Reply::from(written))
}
