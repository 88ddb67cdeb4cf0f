//! "Run approved" (reference 004's "apply all approved" and "preview all"): a form selecting
//! approved actions by module, capability, risk and limit (or naming them by id), then either a
//! preview (every request decided, nothing recorded) or a run (one execution request recorded per
//! action the session's member may direct), with one result per action. Both call the batch use
//! case (`countersign_app::batch`) as the session's actor; it decides who reaches what (owners and
//! admins: every approved action; anyone else: through the filter, only what they requested).

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use countersign_app::batch::{self, BatchExecution, BatchSelection};
use countersign_app::{Actor, App, AppError, actions};
use countersign_domain::risk::RiskLevel;
use countersign_domain::{ActionId, CapabilityName, ModuleSlug, ParseError};

use crate::Console;
use crate::error::PageError;
use crate::session::{Posted, Session};
use crate::view::Layout;

/// The form as it was filled in (shown again above the results).
#[derive(Debug, Default)]
pub struct BatchForm {
    pub module: String,
    pub capability: String,
    pub risk: Vec<String>,
    pub limit: String,
    pub ids: String,
}

impl BatchForm {
    pub fn risk_checked(&self, level: &str) -> bool {
        self.risk.iter().any(|checked| checked == level)
    }
}

/// One action of the answer as the page lists it.
#[derive(Debug)]
pub struct BatchRow {
    pub id: String,
    /// What the action does, when it can be read (its summary, module/capability, requester,
    /// risk level).
    pub about: Option<About>,
    /// The use case's stable result code (`requested`, `would_request`, `not_permitted`, …).
    pub result: String,
    /// The result in words.
    pub outcome: &'static str,
    pub status: String,
    pub detail: String,
    /// Asked to run (or would be, in a preview).
    pub runs: bool,
}

/// What a row's action does, read from its detail.
#[derive(Debug)]
pub struct About {
    pub summary: String,
    pub what: String,
    pub requester: String,
    pub risk: &'static str,
}

/// The answer as the page shows it.
#[derive(Debug)]
pub struct BatchView {
    pub dry_run: bool,
    pub matched: usize,
    pub requested: usize,
    pub more: bool,
    pub rows: Vec<BatchRow>,
}

fn outcome(result: &str) -> &'static str {
    match result {
        "requested" => "Asked to run",
        "would_request" => "Would be asked to run",
        "already_requested" => "Already asked to run (nothing new recorded)",
        "not_permitted" => "Refused: you may not direct this action",
        "not_approved" => "Refused: not approved",
        "already_executing" => "Refused: already running",
        "already_executed" => "Refused: already run",
        "safe_mode_on" => "Refused: the tenant is in safe mode",
        "action_not_found" => "Refused: no such action",
        _ => "Refused",
    }
}

impl BatchView {
    /// The answer, each action described from its detail (an action that cannot be read, such
    /// as one not found, keeps only its id).
    async fn describe(app: &App, actor: &Actor, done: BatchExecution) -> Self {
        let mut rows = Vec::with_capacity(done.results.len());
        for item in done.results {
            let about = match item.status {
                Some(_) => actions::detail(app, actor, item.id)
                    .await
                    .ok()
                    .map(|detail| About {
                        summary: detail.request.summary.to_string(),
                        what: format!("{}/{}", detail.request.module, detail.request.capability),
                        requester: detail.requested_by.id.to_string(),
                        risk: detail.risk.level.as_str(),
                    }),
                None => None,
            };
            rows.push(BatchRow {
                id: item.id.to_string(),
                about,
                outcome: outcome(&item.result),
                runs: item.result == "requested" || item.result == "would_request",
                result: item.result,
                status: item
                    .status
                    .map_or_else(|| "—".to_owned(), |status| status.to_string()),
                detail: item.detail.unwrap_or_default(),
            });
        }
        Self {
            dry_run: done.dry_run,
            matched: done.matched,
            requested: done.requested,
            more: done.more,
            rows,
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "execute.html")]
struct ExecutePage {
    layout: Layout,
    form: BatchForm,
    max_batch: u32,
    default_batch: u32,
    outcome: Option<BatchView>,
}

/// `GET /execute`: the form, empty (every approved action the member may direct, newest first).
pub async fn page(State(console): State<Console>, session: Session) -> Result<Response, PageError> {
    let layout = Layout::new(&console, &session, "execute").await?;
    Ok(ExecutePage {
        layout,
        form: BatchForm::default(),
        max_batch: batch::MAX_BATCH,
        default_batch: batch::DEFAULT_BATCH,
        outcome: None,
    }
    .into_response())
}

fn invalid(field: &str, message: impl Into<String>) -> PageError {
    AppError::from(ParseError::new(field, message)).into()
}

/// The selection the form names; refuses a bad value (naming the field) before anything runs.
fn selection(form: &BatchForm) -> Result<BatchSelection, PageError> {
    let ids = form
        .ids
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|id| !id.is_empty())
        .map(|id| {
            ActionId::parse(id)
                .map_err(|_| invalid("ids", format!("`{id}` is not an action id (a UUID)")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let risk_levels = form
        .risk
        .iter()
        .map(|level| {
            RiskLevel::parse(level).ok_or_else(|| {
                invalid(
                    "risk",
                    format!("unknown level `{level}` (expected low, medium or high)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let module = (!form.module.is_empty())
        .then(|| ModuleSlug::parse(form.module.as_str()))
        .transpose()
        .map_err(|error| invalid("module", error.message))?;
    let capability = (!form.capability.is_empty())
        .then(|| CapabilityName::parse(form.capability.as_str()))
        .transpose()
        .map_err(|error| invalid("capability", error.message))?;
    let limit = (!form.limit.is_empty())
        .then(|| form.limit.parse::<u32>())
        .transpose()
        .map_err(|_| {
            invalid(
                "limit",
                format!("must be a whole number between 1 and {}", batch::MAX_BATCH),
            )
        })?;
    let selection = BatchSelection {
        ids,
        module,
        capability,
        risk_levels,
        limit,
    };
    selection.check().map_err(AppError::from)?;
    Ok(selection)
}

/// `POST /execute`: `mode=preview` decides every request and records nothing; `mode=run` records
/// one execution request per action the member may direct. Renders the form again with one row
/// per action reached.
pub async fn submit(State(console): State<Console>, posted: Posted) -> Result<Response, PageError> {
    let dry_run = match posted.get("mode") {
        Some("preview") => true,
        Some("run") => false,
        _ => return Err(invalid("mode", "choose Preview or Run all")),
    };
    let form = BatchForm {
        module: posted.get("module").unwrap_or_default().to_owned(),
        capability: posted.get("capability").unwrap_or_default().to_owned(),
        risk: posted
            .all("risk")
            .map(str::trim)
            .filter(|level| !level.is_empty())
            .map(str::to_owned)
            .collect(),
        limit: posted.get("limit").unwrap_or_default().to_owned(),
        ids: posted.get("ids").unwrap_or_default().to_owned(),
    };
    let selection = selection(&form)?;
    let (done, _) = batch::execute_batch(
        &console.gateway.app,
        &posted.session.actor,
        &selection,
        dry_run,
        None,
    )
    .await?;
    let outcome = BatchView::describe(&console.gateway.app, &posted.session.actor, done).await;
    let layout = Layout::new(&console, &posted.session, "execute").await?;
    Ok(ExecutePage {
        layout,
        form,
        max_batch: batch::MAX_BATCH,
        default_batch: batch::DEFAULT_BATCH,
        outcome: Some(outcome),
    }
    .into_response())
}
