//! One-click approval links: a signed, single-use, short-lived token bound to (tenant, action,
//! voter, vote, stage, the action's execution key). Opening a link ([`inspect`]) changes nothing
//! (mail scanners fetch links); confirming it ([`confirm`]) casts the vote through
//! [`crate::actions::vote`] as the voter, with their directory roles, so every eligibility rule
//! applies. A link is refused, with a reason a person can read, when forged, expired, for a
//! decided action, for a stage the voter already voted in (a link is used once), or when the
//! action's execution key no longer matches (a changed payload). Every refusal is logged as an
//! audit-worthy warning.
//!
//! The signing key is derived from the API key secret (`COUNTERSIGN_API_KEY_SECRET`): without
//! it, no link is issued or accepted.

use countersign_domain::action::{Action, ActionState};
use countersign_domain::members::MemberDirectory;
use countersign_domain::quorum::Vote;
use countersign_domain::{ActionId, Principal, TenantId, UserId};
use serde::{Deserialize, Serialize};

use crate::{Actor, App, AppError, Channel};

/// How long a link lives at most (never past the action's deadline).
pub const LINK_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// What a link says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    pub tenant: String,
    pub action: String,
    pub voter: String,
    pub vote: Vote,
    pub stage: u32,
    pub execution_key: String,
    /// Unix seconds.
    pub expires: i64,
}

/// Why a link does nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkRefusal {
    #[error("this link is not valid: it was not issued by this service or was altered")]
    Forged,
    #[error("approval links are not enabled on this service")]
    Disabled,
    #[error("this link has expired; open the action in the console instead")]
    Expired,
    #[error("this action has already been decided ({0}); nothing was changed")]
    Decided(String),
    #[error("this link was already used: you have voted on this step of the approval")]
    Used,
    #[error(
        "the action changed since this link was sent (its payload or stage); nothing was changed"
    )]
    Changed,
    #[error("you may not vote on this action: {0}")]
    NotEligible(String),
    #[error("the action was not found")]
    NotFound,
}

impl LinkRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Forged => "link_invalid",
            Self::Disabled => "links_disabled",
            Self::Expired => "link_expired",
            Self::Decided(_) => "action_decided",
            Self::Used => "link_used",
            Self::Changed => "action_changed",
            Self::NotEligible(_) => "not_eligible",
            Self::NotFound => "action_not_found",
        }
    }
}

/// What the confirmation page shows before anything happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPreview {
    pub claims: LinkClaims,
    pub summary: String,
    pub action_type: String,
    pub risk_level: String,
    pub risk_score: u8,
}

fn key(app: &App) -> Option<[u8; 32]> {
    app.api_key_secret
        .map(|secret| blake3::derive_key("countersign approval links v1", &secret))
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 4096 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

/// A signed token for `claims`, or none when links are not enabled.
pub fn sign(app: &App, claims: &LinkClaims) -> Option<String> {
    let key = key(app)?;
    let payload = serde_json::to_vec(claims).ok()?;
    let mac = blake3::keyed_hash(&key, &payload);
    Some(format!("{}.{}", to_hex(&payload), mac.to_hex()))
}

/// The claims of a token this service signed, whatever they say.
fn verify(app: &App, token: &str) -> Result<LinkClaims, LinkRefusal> {
    let key = key(app).ok_or(LinkRefusal::Disabled)?;
    let (payload, mac) = token.split_once('.').ok_or(LinkRefusal::Forged)?;
    let payload = from_hex(payload).ok_or(LinkRefusal::Forged)?;
    let mac = from_hex(mac)
        .and_then(|mac| <[u8; 32]>::try_from(mac).ok())
        .ok_or(LinkRefusal::Forged)?;
    // Constant-time comparison (blake3's `Hash` equality).
    if blake3::keyed_hash(&key, &payload) != blake3::Hash::from_bytes(mac) {
        return Err(LinkRefusal::Forged);
    }
    serde_json::from_slice(&payload).map_err(|_| LinkRefusal::Forged)
}

/// The claims for a link that casts `vote` for `voter` on the action as it stands.
pub fn claims_for(
    state: &ActionState,
    voter: &UserId,
    vote: Vote,
    now: chrono::DateTime<chrono::Utc>,
) -> LinkClaims {
    LinkClaims {
        tenant: state.tenant.to_string(),
        action: state.id.to_string(),
        voter: voter.to_string(),
        vote,
        stage: state.stage,
        execution_key: state.execution_key.to_string(),
        expires: (now + LINK_LIFETIME).min(state.expires_at).timestamp(),
    }
}

/// The action as it stands now, folded from its stream, if it is the tenant's.
async fn state_of(
    app: &App,
    tenant: &TenantId,
    id: ActionId,
) -> anyhow::Result<Option<ActionState>> {
    let mut action = Action::default();
    for logged in &app.ledger.stream_of::<Action>(&id).await? {
        action.apply(logged.decode::<Action>()?);
    }
    Ok(action.into_state().filter(|state| state.tenant == *tenant))
}

/// The claims a token says it carries, unverified: only for choosing whose secret verifies a
/// request that carries it (see `slack`).
pub fn peek(token: &str) -> Option<LinkClaims> {
    let (payload, _) = token.split_once('.')?;
    serde_json::from_slice(&from_hex(payload)?).ok()
}

/// The word for a vote, as pages and messages show it.
pub fn vote_word(vote: Vote) -> &'static str {
    match vote {
        Vote::Approve => "approve",
        Vote::Reject => "reject",
        Vote::Abstain => "abstain",
    }
}

/// Checks a link against the action as it stands now; answers the voter as an actor. A token
/// for any member (`*`, Slack buttons) votes as `voter`, which the front door mapped; a token
/// for one voter votes only as them.
async fn check(
    app: &App,
    token: &str,
    voter: Option<UserId>,
    channel: Channel,
) -> Result<(LinkClaims, ActionState, Actor), LinkRefusal> {
    let mut claims = verify(app, token)?;
    if claims.voter == super::slack::ANY_MEMBER {
        claims.voter = voter.ok_or(LinkRefusal::Forged)?.to_string();
    }
    if claims.expires < chrono::Utc::now().timestamp() {
        return Err(LinkRefusal::Expired);
    }
    let tenant = TenantId::parse(claims.tenant.as_str()).map_err(|_| LinkRefusal::Forged)?;
    let voter = UserId::parse(claims.voter.as_str()).map_err(|_| LinkRefusal::Forged)?;
    let id = ActionId::parse(&claims.action).map_err(|_| LinkRefusal::Forged)?;
    let state = state_of(app, &tenant, id)
        .await
        .map_err(|_| LinkRefusal::NotFound)?
        .ok_or(LinkRefusal::NotFound)?;
    if !state.status.is_open() {
        return Err(LinkRefusal::Decided(state.status.as_str().to_owned()));
    }
    if state.execution_key.to_string() != claims.execution_key {
        return Err(LinkRefusal::Changed);
    }
    if state.stage != claims.stage {
        return Err(LinkRefusal::Changed);
    }
    if state.current_voters().any(|voted| *voted == voter) {
        return Err(LinkRefusal::Used);
    }
    let (directory, _) = app
        .ledger
        .load::<MemberDirectory>(&tenant)
        .await
        .map_err(|_| LinkRefusal::NotFound)?;
    let roles = directory
        .members
        .get(&voter)
        .map(|member| member.roles.clone())
        .ok_or_else(|| LinkRefusal::NotEligible("you are not in this tenant's directory".into()))?;
    let actor = Actor::new(tenant, Principal { id: voter, roles }, channel);
    Ok((claims, state, actor))
}

fn refused(token_claims: Option<&LinkClaims>, refusal: &LinkRefusal, step: &'static str) {
    tracing::warn!(
        audit = true,
        step,
        code = refusal.code(),
        tenant = token_claims.map(|c| c.tenant.as_str()),
        action_id = token_claims.map(|c| c.action.as_str()),
        voter = token_claims.map(|c| c.voter.as_str()),
        reason = %refusal,
        "an approval link was refused"
    );
    metrics::counter!("countersign_approval_links_refused_total", "code" => refusal.code())
        .increment(1);
}

/// What opening a link shows; changes nothing.
pub async fn inspect(app: &App, token: &str) -> Result<LinkPreview, LinkRefusal> {
    match check(app, token, None, Channel::Email).await {
        Ok((claims, state, _)) => Ok(LinkPreview {
            claims,
            summary: state.submission.summary.to_string(),
            action_type: state.action_type.to_string(),
            risk_level: state.risk.level.as_str().to_owned(),
            risk_score: state.risk.score.value(),
        }),
        Err(refusal) => {
            refused(verify(app, token).ok().as_ref(), &refusal, "open");
            Err(refusal)
        }
    }
}

/// Casts the link's vote as its voter (every eligibility check of the vote use case applies).
pub async fn confirm(app: &App, token: &str) -> Result<LinkClaims, LinkRefusal> {
    confirm_as(app, token, None, Channel::Email).await
}

/// [`confirm`] through another front door: a token for any member votes as `voter`.
pub async fn confirm_as(
    app: &App,
    token: &str,
    voter: Option<UserId>,
    channel: Channel,
) -> Result<LinkClaims, LinkRefusal> {
    let outcome = async {
        let (claims, state, actor) = check(app, token, voter, channel).await?;
        crate::actions::vote(app, &actor, state.id, claims.vote, None)
            .await
            .map_err(|error| match error {
                AppError::Action(error) => LinkRefusal::NotEligible(error.to_string()),
                other => LinkRefusal::NotEligible(other.to_string()),
            })?;
        Ok(claims)
    }
    .await;
    if let Err(refusal) = &outcome {
        refused(verify(app, token).ok().as_ref(), refusal, "confirm");
    }
    outcome
}
