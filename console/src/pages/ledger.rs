//! The ledger's evidence (owners, admins, auditors): the latest signed head, whether it is
//! consistent with the first one (a consistency proof checked here), and an evidence bundle to
//! download and verify offline with the `countersign` command line.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use countersign_app::{AppError, evidence};

use crate::Console;
use crate::error::PageError;
use crate::session::Session;
use crate::view::{self, Layout};

#[derive(Template, WebTemplate)]
#[template(path = "ledger.html")]
struct LedgerPage {
    layout: Layout,
    /// None before the sealer signed a first head.
    head: Option<HeadView>,
}

#[derive(Debug)]
struct HeadView {
    tree_size: u64,
    root: String,
    signed_at: String,
    key_id: String,
    signature: String,
    /// What the consistency check found, in words.
    verification: String,
    verified: bool,
}

/// `GET /ledger`.
pub async fn page(State(console): State<Console>, session: Session) -> Result<Response, PageError> {
    let app = &console.gateway.app;
    let layout = Layout::new(&console, &session, "ledger").await?;
    let head = match evidence::head(app, &session.actor).await {
        Ok(head) => Some(head),
        Err(AppError::NotFound { .. }) => None,
        Err(err) => return Err(err.into()),
    };
    let head = match head {
        None => None,
        Some(head) => {
            let first = evidence::heads(app, &session.actor, 0, 1).await?;
            let (verified, verification) = match first.first() {
                Some(first) if first.tree_size < head.tree_size => {
                    match evidence::consistency(
                        app,
                        &session.actor,
                        first.tree_size,
                        head.tree_size,
                    )
                    .await
                    {
                        Ok(proof)
                            if proof.verify().is_ok()
                                && proof.from_root == first.root
                                && proof.to_root == head.root =>
                        {
                            (
                                true,
                                format!(
                                    "verified: the first signed tree ({} events) is a prefix of this one (consistency proof checked)",
                                    first.tree_size
                                ),
                            )
                        }
                        Ok(_) => (
                            false,
                            "FAILED: the consistency proof does not match the signed heads"
                                .to_owned(),
                        ),
                        Err(err) => (false, format!("not checked: {err}")),
                    }
                }
                _ => (
                    true,
                    "this is the first signed head; later heads are checked against it".to_owned(),
                ),
            };
            Some(HeadView {
                tree_size: head.tree_size,
                root: view::pretty(&head.root).trim_matches('"').to_owned(),
                signed_at: head.signed_at,
                key_id: head.key_id,
                signature: head.signature,
                verification,
                verified,
            })
        }
    };
    Ok(LedgerPage { layout, head }.into_response())
}

/// `GET /ledger/export`: the tenant's evidence bundle (JSON lines) as a download.
pub async fn export(
    State(console): State<Console>,
    session: Session,
) -> Result<Response, PageError> {
    let bundle = evidence::export(&console.gateway.app, &session.actor, 0, None).await?;
    let name = format!(
        "attachment; filename=\"countersign-{}-evidence.jsonl\"",
        session.actor.tenant
    );
    let disposition =
        HeaderValue::from_str(&name).unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bundle,
    )
        .into_response())
}
