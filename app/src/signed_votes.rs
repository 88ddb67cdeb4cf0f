//! Ed25519-signed votes (docs/governance.md, "Signed votes"): a member who registered a key
//! (`crate::members::set_my_signing_key`) signs (tenant, action, execution key, vote,
//! signed_at) and sends the signature with the vote. The application finds the voter's active
//! key in the directory and hands it to the domain with the vote; the domain checks the
//! signature and its time before anything is recorded, and records it in the `VoteCast` event.

use countersign_domain::action::{ActionCommand, CastBoundVote, CastVote};
use countersign_domain::canonical::ExecutionKey;
use countersign_domain::quorum::Vote;
use countersign_domain::signing::{VoteSignature, VoteSignatureBytes};
use countersign_domain::{ActionId, Comment, ParseError, Timestamp};
use countersign_projections::ActionDetail;

use crate::actions::{Written, run, written};
use crate::{Actor, App, AppError};

/// What a voter sends to sign their vote.
#[derive(Debug, Clone)]
pub struct SignedBy {
    /// The Ed25519 signature of the vote's message, 128 hex digits.
    pub signature: VoteSignatureBytes,
    /// When the voter signed: a whole second, within five minutes of now.
    pub signed_at: Timestamp,
    /// The id of the key the voter signed with, when they name it: refused unless it is their
    /// active key.
    pub key_id: Option<String>,
}

/// A key id is 16 lowercase hex digits.
pub fn parse_key_id(text: &str) -> Result<String, ParseError> {
    if text.len() == 16 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(text.to_owned())
    } else {
        Err(ParseError::new(
            "key_id",
            "must be a key id: 16 lowercase hexadecimal digits",
        ))
    }
}

/// Casts the actor's own vote, signed with their registered key, on exactly the payload of
/// `execution_key`. Refusals record nothing: no execution key → 422 `invalid_input`
/// (`execution_key`); no registered key → `no_signing_key`; a `key_id` that is not the active
/// key → `unknown_signing_key`; then the domain's `payload_changed`, `bad_signature`,
/// `signed_at_out_of_window` and every refusal of an unsigned vote.
pub async fn vote_signed(
    app: &App,
    actor: &Actor,
    id: ActionId,
    vote: Vote,
    comment: Option<Comment>,
    execution_key: Option<ExecutionKey>,
    signed: SignedBy,
) -> Result<Written<ActionDetail>, AppError> {
    let Some(execution_key) = execution_key else {
        return Err(AppError::InvalidInput(ParseError::new(
            "execution_key",
            "a signed vote names the execution key it signed",
        )));
    };
    countersign_domain::signing::check_signed_at(signed.signed_at)?;
    let voter = &actor.principal.id;
    let Some(key) = crate::members::active_signing_key(app, actor, voter).await? else {
        return Err(AppError::CannotDo {
            code: "no_signing_key",
            message: format!(
                "{voter} has no registered signing key: register one (PUT /v1/members/me/signing-key) before signing votes"
            ),
        });
    };
    if let Some(named) = signed.key_id.filter(|named| *named != key.key_id) {
        return Err(AppError::CannotDo {
            code: "unknown_signing_key",
            message: format!(
                "key {named} is not {voter}'s registered signing key (the active key is {})",
                key.key_id
            ),
        });
    }
    let command = ActionCommand::CastBoundVote(CastBoundVote {
        vote: CastVote {
            context: actor.context(),
            vote,
            comment,
        },
        execution_key,
        signature: Some(VoteSignature {
            key_id: key.key_id,
            public_key: key.public_key,
            signed_at: signed.signed_at,
            signature: signed.signature,
        }),
    });
    written(&run(app, actor, id, command).await?)
}
