//! Batch execution (reference 004, "apply all approved"): ask every approved action matching a
//! filter to run, or preview them all first (`dry_run`), with one result per action.
//!
//! Each action is decided by the domain exactly as a single execution request is (its requester,
//! an admin or an owner may direct it: `ActionState::may_be_directed_by`); a refusal of one
//! action never stops the others, and a dry run decides the same command without recording it.

use countersign_domain::action::{
    Action, ActionCommand, ActionError, ActionStatus, RequestExecution,
};
use countersign_domain::risk::RiskLevel;
use countersign_domain::{ActionId, CapabilityName, ModuleSlug, ParseError, TenantMode};
use countersign_ledger::{LedgerError, LogCursor};
use countersign_projections::{InboxFilter, InboxSort, Projection};
use schemars::JsonSchema;
use serde::Serialize;

use crate::actions::current_mode;
use crate::{Actor, App, AppError};

/// The most actions one batch reaches (named by id, or matched by a filter).
pub const MAX_BATCH: u32 = 100;
/// How many matching actions a filter reaches when the request names no `limit`.
pub const DEFAULT_BATCH: u32 = 50;

/// Which actions a batch reaches: exactly the named `ids`, or the approved actions matching the
/// filter (newest first, at most `limit`). Callers who are neither admin nor owner reach only
/// the actions they requested through a filter (they could direct no other).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchSelection {
    pub ids: Vec<ActionId>,
    pub module: Option<ModuleSlug>,
    pub capability: Option<CapabilityName>,
    pub risk_levels: Vec<RiskLevel>,
    pub limit: Option<u32>,
}

impl BatchSelection {
    /// Refuses a selection that names ids and a filter at once, too many ids, or a limit out of
    /// range; names the field.
    pub fn check(&self) -> Result<(), ParseError> {
        let filtered =
            self.module.is_some() || self.capability.is_some() || !self.risk_levels.is_empty();
        if !self.ids.is_empty() && (filtered || self.limit.is_some()) {
            return Err(ParseError::new(
                "ids",
                "name actions by id or select them by module, capability, risk and limit, not both",
            ));
        }
        if self.ids.len() > MAX_BATCH as usize {
            return Err(ParseError::new(
                "ids",
                format!("at most {MAX_BATCH} actions per batch"),
            ));
        }
        if let Some(limit) = self.limit
            && !(1..=MAX_BATCH).contains(&limit)
        {
            return Err(ParseError::new(
                "limit",
                format!("must be between 1 and {MAX_BATCH}"),
            ));
        }
        Ok(())
    }
}

/// What happened, or would happen, to one action of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct BatchItem {
    pub id: ActionId,
    /// `requested` (asked to run now), `would_request` (dry run), `already_requested` (asked
    /// before, nothing recorded), or why it was refused: `not_permitted` (neither its requester,
    /// an admin nor an owner), `not_approved`, `already_executing`, `already_executed`,
    /// `safe_mode_on`, `action_not_found`.
    pub result: String,
    /// Its status when it was decided (absent for an action not found).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ActionStatus>,
    /// Why it was refused, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A batch's answer: one result per action reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct BatchExecution {
    pub dry_run: bool,
    /// Actions reached.
    pub matched: usize,
    /// Actions asked to run now (`would_request` in a dry run).
    pub requested: usize,
    /// Whether the filter matched more approved actions than `limit` (ask again for the rest).
    pub more: bool,
    pub results: Vec<BatchItem>,
}

impl BatchItem {
    fn refused(id: ActionId, status: Option<ActionStatus>, error: &ActionError) -> Self {
        let result = match error {
            ActionError::InvalidState { .. } | ActionError::ExecutionNotRequested => "not_approved",
            other => other.code(),
        };
        Self {
            id,
            result: result.to_owned(),
            status,
            detail: Some(error.to_string()),
        }
    }

    fn done(id: ActionId, result: &str, status: ActionStatus) -> Self {
        Self {
            id,
            result: result.to_owned(),
            status: Some(status),
            detail: None,
        }
    }
}

/// Requests execution of every action `selection` reaches, or (`dry_run`) decides each request
/// without recording it. Answers one result per action; writes nothing in a dry run.
pub async fn execute_batch(
    app: &App,
    actor: &Actor,
    selection: &BatchSelection,
    dry_run: bool,
    consistent_with: Option<LogCursor>,
) -> Result<(BatchExecution, Option<LogCursor>), AppError> {
    selection.check()?;
    let (ids, more) = if selection.ids.is_empty() {
        app.wait_for(Projection::Actions, consistent_with).await?;
        let filter = InboxFilter {
            statuses: vec![ActionStatus::Approved],
            risk_levels: selection.risk_levels.clone(),
            module: selection.module.as_ref().map(ToString::to_string),
            capability: selection.capability.as_ref().map(ToString::to_string),
            requested_by: (!actor.principal.is_admin()).then(|| actor.principal.id.to_string()),
            sort: InboxSort::Created,
            limit: selection.limit.unwrap_or(DEFAULT_BATCH),
            ..InboxFilter::default()
        };
        let page = app.projections.inbox(&actor.tenant, &filter).await?;
        let ids = page
            .items
            .iter()
            .map(|item| ActionId::parse(&item.id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| AppError::internal("an action id in the inbox", error))?;
        (ids, page.next_cursor.is_some())
    } else {
        let mut unique = Vec::with_capacity(selection.ids.len());
        for id in &selection.ids {
            if !unique.contains(id) {
                unique.push(*id);
            }
        }
        (unique, false)
    };
    let mode = current_mode(&app.ledger, &actor.tenant).await?;
    let mut results = Vec::with_capacity(ids.len());
    let mut cursor = None;
    for id in ids {
        let (item, written) = one(app, actor, id, mode, dry_run).await?;
        cursor = written.or(cursor);
        results.push(item);
    }
    let requested = results
        .iter()
        .filter(|item| item.result == "requested" || item.result == "would_request")
        .count();
    Ok((
        BatchExecution {
            dry_run,
            matched: results.len(),
            requested,
            more,
            results,
        },
        cursor,
    ))
}

/// One action of a batch: decided on its state now; recorded unless `dry_run`.
async fn one(
    app: &App,
    actor: &Actor,
    id: ActionId,
    mode: TenantMode,
    dry_run: bool,
) -> Result<(BatchItem, Option<LogCursor>), AppError> {
    let (action, _) = app.ledger.load::<Action>(&id).await?;
    let Some(state) = action.state().filter(|state| state.tenant == actor.tenant) else {
        return Ok((BatchItem::refused(id, None, &ActionError::NotFound), None));
    };
    let status = state.status;
    let command = ActionCommand::RequestExecution(RequestExecution {
        context: actor.context(),
        mode,
    });
    if dry_run {
        let item = match action.decide(command) {
            Ok(events) if events.is_empty() => BatchItem::done(id, "already_requested", status),
            Ok(_) => BatchItem::done(id, "would_request", status),
            Err(error) => BatchItem::refused(id, Some(status), &error),
        };
        return Ok((item, None));
    }
    let metadata = actor.metadata(actor.correlation_id.clone());
    let result = app.ledger.execute::<Action>(&id, command, &metadata).await;
    crate::tenant::count("RequestExecution", &result, ActionError::code);
    match result {
        Ok(committed) => {
            let after = committed
                .aggregate
                .state()
                .map_or(status, |state| state.status);
            let result = if committed.events.is_empty() {
                "already_requested"
            } else {
                "requested"
            };
            Ok((BatchItem::done(id, result, after), committed.last_cursor()))
        }
        Err(LedgerError::Rejected(error)) => {
            Ok((BatchItem::refused(id, Some(status), &error), None))
        }
        Err(error) => Err(error.into()),
    }
}
