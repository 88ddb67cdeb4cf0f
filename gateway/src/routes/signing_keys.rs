//! `/v1/members/me/signing-key` and `/v1/members/{id}/signing-keys`: the Ed25519 keys members
//! register to sign their votes (docs/governance.md, "Signed votes"). Each handler parses its
//! request, calls one use case of `countersign_app::members`, and replies.

use aide::axum::ApiRouter;
use aide::axum::routing::{delete, get};
use axum::extract::{Path, State};
use countersign_app::members::{self, SigningKeyList};
use countersign_app::signed_votes::{self, SignedBy};
use countersign_domain::signing::{VotePublicKey, VoteSignatureBytes};
use countersign_domain::{ParseError, Timestamp, UserId};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Acting, Reply, StrictJson};
use crate::routes::members::MemberPath;

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route(
            "/v1/members/me/signing-key",
            get(my_signing_keys)
                .put(set_my_signing_key)
                .delete(remove_my_signing_key),
        )
        .api_route("/v1/members/{id}/signing-keys", get(signing_keys))
        .api_route("/v1/members/{id}/signing-key", delete(remove_signing_key))
}

fn user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|_| ApiError::not_found("member_not_found", "member"))
}

/// The caller's signing keys: the active one and every retired one.
async fn my_signing_keys(
    State(state): State<AppState>,
    Acting(actor): Acting,
) -> Result<Reply<SigningKeyList>, ApiError> {
    let me = actor.principal.id.clone();
    Ok(Reply::new(
        members::signing_keys(&state.app, &actor, &me).await?,
    ))
}

/// A public key for signing votes: 64 hex digits (Ed25519).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyBody {
    pub public_key: VotePublicKey,
}

/// Register the caller's Ed25519 public key for signing votes (anyone signed in). The previous
/// key is retired and stays listed, so the votes it signed can still be checked. A key already
/// registered (by anyone, ever) answers 409 `signing_key_in_use`; a value that is not a key 422
/// `invalid_input` naming `public_key`.
async fn set_my_signing_key(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictJson(body): StrictJson<SigningKeyBody>,
) -> Result<Reply<SigningKeyList>, ApiError> {
    let written = members::set_my_signing_key(&state.app, &actor, body.public_key).await?;
    Ok(Reply::from(written))
}

/// Retire the caller's active signing key. 404 `signing_key_not_found` when there is none.
async fn remove_my_signing_key(
    State(state): State<AppState>,
    Acting(actor): Acting,
) -> Result<Reply<SigningKeyList>, ApiError> {
    let me = actor.principal.id.clone();
    let written = members::remove_signing_key(&state.app, &actor, me).await?;
    Ok(Reply::from(written))
}

/// A member's signing keys (owner, admin, auditor; anyone for themselves).
async fn signing_keys(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(MemberPath { id }): Path<MemberPath>,
) -> Result<Reply<SigningKeyList>, ApiError> {
    let user = user_id(&id)?;
    Ok(Reply::new(
        members::signing_keys(&state.app, &actor, &user).await?,
    ))
}

/// Retire a member's active signing key (owner, admin; the member themselves: 403 `forbidden`
/// for anyone else). Votes it signed stay checkable.
async fn remove_signing_key(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(MemberPath { id }): Path<MemberPath>,
) -> Result<Reply<SigningKeyList>, ApiError> {
    let user = user_id(&id)?;
    let written = members::remove_signing_key(&state.app, &actor, user).await?;
    Ok(Reply::from(written))
}

/// The signature fields of a vote body, checked together: a signature needs `signed_at`;
/// `signed_at` or `key_id` without a signature are refused, naming `signature`.
pub fn signed_by(
    signature: Option<VoteSignatureBytes>,
    signed_at: Option<Timestamp>,
    key_id: Option<String>,
) -> Result<Option<SignedBy>, ApiError> {
    match (signature, signed_at) {
        (None, None) if key_id.is_none() => Ok(None),
        (None, _) => Err(ApiError::invalid_input(ParseError::new(
            "signature",
            "`signed_at` and `key_id` come with a signature",
        ))),
        (Some(_), None) => Err(ApiError::invalid_input(ParseError::new(
            "signed_at",
            "a signature needs the time it was made (RFC 3339, whole seconds)",
        ))),
        (Some(signature), Some(signed_at)) => Ok(Some(SignedBy {
            signature,
            signed_at,
            key_id: key_id
                .map(|id| signed_votes::parse_key_id(&id))
                .transpose()
                .map_err(ApiError::invalid_input)?,
        })),
    }
}

/// A signature on a vote cast in another member's place: not supported (the signed message
/// names no delegator).
pub fn delegated_signature() -> ApiError {
    ApiError::invalid_input(ParseError::new(
        "signature",
        "a vote cast in another member's place (`on_behalf_of`) cannot be signed",
    ))
}
