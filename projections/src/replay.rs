//! Replay to a moment: the views as they were at a past log position or time, folded in memory
//! from the log with the same row functions the projections use. Live tables are never touched.

use std::collections::BTreeMap;

use countersign_domain::action::{Action, ActionEvent, ActionState};
use countersign_domain::{TenantId, Timestamp};
use countersign_ledger::{Ledger, LogCursor, LoggedEvent};
use cqrs_es::Aggregate;

use crate::query::{ActionDetail, AuditEntry, InboxItem};

/// How far to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Every event at or before this global position.
    Position(i64),
    /// Every event recorded at or before this time.
    Time(Timestamp),
}

impl Until {
    fn includes(self, event: &LoggedEvent) -> bool {
        match self {
            Self::Position(position) => event.cursor.position <= position,
            Self::Time(time) => event.recorded_at <= time,
        }
    }
}

/// A tenant's views as of a moment.
#[derive(Debug, Clone, Default)]
pub struct ReplayView {
    /// Events folded in.
    pub events: u64,
    /// The newest position folded in.
    pub last_position: Option<i64>,
    actions: BTreeMap<String, (Action, i64)>,
    audit: BTreeMap<String, Vec<AuditEntry>>,
}

impl ReplayView {
    /// Open actions (pending or escalated), newest first: the inbox at that moment.
    pub fn inbox(&self) -> Vec<InboxItem> {
        let mut items: Vec<InboxItem> = self
            .actions
            .values()
            .filter_map(|(action, _)| action.state())
            .filter(|state| state.status.is_open())
            .map(InboxItem::from_state)
            .collect();
        items.sort_by(|a, b| b.submitted_at.cmp(&a.submitted_at).then(b.id.cmp(&a.id)));
        items
    }

    pub fn state(&self, id: &str) -> Option<&ActionState> {
        self.actions.get(id).and_then(|(action, _)| action.state())
    }

    pub fn detail(&self, id: &str) -> Option<ActionDetail> {
        let (action, position) = self.actions.get(id)?;
        action
            .state()
            .map(|state| ActionDetail::from_state(state, *position))
    }

    pub fn audit(&self, id: &str) -> &[AuditEntry] {
        self.audit.get(id).map_or(&[], Vec::as_slice)
    }

    fn fold(&mut self, logged: &LoggedEvent, event: ActionEvent) -> anyhow::Result<()> {
        self.audit
            .entry(logged.aggregate_id.clone())
            .or_default()
            .push(AuditEntry::from_logged(logged, &event)?);
        let (action, position) = self.actions.entry(logged.aggregate_id.clone()).or_default();
        action.apply(event);
        *position = logged.cursor.position;
        self.events += 1;
        self.last_position = self.last_position.max(Some(logged.cursor.position));
        Ok(())
    }
}

/// Folds `tenant`'s action events up to `until`; `progress` hears the events scanned so far.
pub async fn replay(
    ledger: &Ledger,
    tenant: &TenantId,
    until: Until,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<ReplayView> {
    let mut view = ReplayView::default();
    let mut cursor = LogCursor::START;
    let mut scanned = 0;
    loop {
        let batch = ledger.read_log(cursor, 5000).await?;
        let Some(last) = batch.last() else { break };
        cursor = last.cursor;
        scanned += batch.len() as u64;
        for logged in &batch {
            if logged.aggregate_type == Action::TYPE
                && logged.tenant == tenant.as_str()
                && until.includes(logged)
            {
                view.fold(logged, logged.decode::<Action>()?)?;
            }
        }
        progress(scanned);
    }
    // Within an aggregate, sequence order is log order, so each action folded in order.
    Ok(view)
}
