//! The ledger's evidence for the actor's tenant (owner, admin, auditor): signed heads, inclusion
//! and consistency proofs, and evidence bundles to verify offline.

use countersign_verification::{ConsistencyProof, InclusionProof, SignedHead};

use crate::{Actor, App, AppError, roles};

fn auditor(actor: &Actor) -> Result<(), AppError> {
    actor.require(
        &[roles::OWNER, roles::ADMIN, roles::AUDITOR],
        "reading the ledger's evidence",
    )
}

fn no_head() -> AppError {
    AppError::not_found("no_head", "signed ledger head")
}

fn cannot_prove(err: anyhow::Error) -> AppError {
    AppError::CannotDo {
        code: "invalid_proof_request",
        message: format!("{err:#}"),
    }
}

/// The tenant's newest signed head.
pub async fn head(app: &App, actor: &Actor) -> Result<SignedHead, AppError> {
    auditor(actor)?;
    app.seals
        .latest_head(actor.tenant.as_str())
        .await?
        .ok_or_else(no_head)
}

/// The tenant's signed heads of trees larger than `after`, oldest first, at most `limit`.
pub async fn heads(
    app: &App,
    actor: &Actor,
    after: u64,
    limit: u32,
) -> Result<Vec<SignedHead>, AppError> {
    auditor(actor)?;
    Ok(app.seals.heads(actor.tenant.as_str(), after, limit).await?)
}

/// Proof that the event at log `position` is in the tenant's tree of `size` leaves (default:
/// the newest signed head's). Another tenant's event answers like one not sealed.
pub async fn inclusion(
    app: &App,
    actor: &Actor,
    position: i64,
    size: Option<u64>,
) -> Result<InclusionProof, AppError> {
    auditor(actor)?;
    let tenant = actor.tenant.as_str();
    let leaf = app
        .seals
        .leaf_at_position(position)
        .await?
        .filter(|leaf| leaf.tenant == tenant)
        .ok_or_else(|| AppError::not_found("event_not_sealed", "sealed event"))?;
    let size = match size {
        Some(size) => size,
        None => head(app, actor).await?.tree_size,
    };
    app.seals
        .inclusion_proof(tenant, leaf.ledger_sequence, size)
        .await
        .map_err(cannot_prove)
}

/// Proof that the tenant's tree of `from` leaves is a prefix of its tree of `to` leaves.
pub async fn consistency(
    app: &App,
    actor: &Actor,
    from: u64,
    to: u64,
) -> Result<ConsistencyProof, AppError> {
    auditor(actor)?;
    app.seals
        .consistency_proof(actor.tenant.as_str(), from, to)
        .await
        .map_err(cannot_prove)
}

/// An evidence bundle (JSON lines): the signed head, then each event from ledger sequence `from`
/// to `to` (default: the head's tree size) with its leaf hash and inclusion proof.
pub async fn export(
    app: &App,
    actor: &Actor,
    from: u64,
    to: Option<u64>,
) -> Result<Vec<u8>, AppError> {
    auditor(actor)?;
    let tenant = actor.tenant.as_str();
    // Nothing is exportable before the first seal: a state of the tenant, not a fault of the
    // request (the same request succeeds once the sealer has signed a head).
    if app.seals.latest_head(tenant).await?.is_none() {
        return Err(AppError::NotYet {
            code: "cannot_export",
            message: format!(
                "tenant {tenant} has no signed head yet: nothing can be exported with proofs"
            ),
        });
    }
    let mut bundle = Vec::new();
    countersign_verification::export::export(
        &app.ledger,
        &app.seals,
        tenant,
        from,
        to,
        &mut bundle,
    )
    .await
    .map_err(|err| AppError::CannotDo {
        code: "cannot_export",
        message: format!("{err:#}"),
    })?;
    Ok(bundle)
}
