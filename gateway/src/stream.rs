//! An action's server-sent event stream: its status now, then every change and progress report,
//! until the action is finished, the client goes away, or the caller's credential stops
//! authenticating (then a last `closed` event carries the refusal as a problem document).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::response::sse::Event;
use countersign_app::Actor;
use countersign_app::actions;
use countersign_domain::ActionId;
use countersign_domain::action::{Action, ActionStatus};
use countersign_ledger::{Ledger, LoggedEvent};
use futures::Stream;
use serde_json::Value;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::AppState;
use crate::auth::CredentialWatch;
use crate::error::ApiError;

type Refusal = Pin<Box<dyn Future<Output = ApiError> + Send>>;

/// One client's subscription to one action.
pub struct ActionStream {
    id: ActionId,
    /// `id` as the log stores it, to match logged events against.
    key: String,
    ledger: Ledger,
    action: Action,
    sequence: u64,
    events: broadcast::Receiver<Arc<LoggedEvent>>,
    progress: broadcast::Receiver<(ActionId, Value)>,
    /// Polled across events, so a busy log never starves the credential re-check.
    refused: Refusal,
    first: Option<Event>,
    done: bool,
}

impl std::fmt::Debug for ActionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionStream")
            .field("action", &self.id)
            .field("sequence", &self.sequence)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

fn is_finished(status: ActionStatus) -> bool {
    matches!(
        status,
        ActionStatus::Executed
            | ActionStatus::Failed
            | ActionStatus::Rejected
            | ActionStatus::Expired
            | ActionStatus::Cancelled
            | ActionStatus::Skipped
    )
}

impl ActionStream {
    /// Subscribes `actor` to action `id` of their tenant (another tenant's action answers like
    /// a missing one); `credential` is re-checked for as long as the stream lasts.
    pub async fn open(
        state: &AppState,
        actor: &Actor,
        id: ActionId,
        credential: CredentialWatch,
    ) -> Result<Self, ApiError> {
        // Subscribe before loading, so nothing committed in between is missed.
        let events = state.hub.subscribe();
        let progress = state.app.progress().subscribe();
        let (action, sequence) = actions::watch(&state.app, actor, id).await?;
        let status = action.state().map(|current| current.status);
        let first = Event::default()
            .event("status")
            .json_data(serde_json::json!({ "status": status, "sequence": sequence }))
            .unwrap_or_default();
        Ok(Self {
            id,
            key: id.to_string(),
            ledger: state.app.ledger().clone(),
            action,
            sequence,
            events,
            progress,
            refused: Box::pin(credential.refused()),
            first: Some(first),
            done: false,
        })
    }

    pub fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
        futures::stream::unfold(self, |mut subscription| async move {
            let event = subscription.next().await?;
            Some((Ok(event), subscription))
        })
    }

    async fn next(&mut self) -> Option<Event> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.done {
            return None;
        }
        loop {
            let logged = tokio::select! {
                refusal = &mut self.refused => {
                    self.done = true;
                    return Some(
                        Event::default()
                            .event("closed")
                            .json_data(refusal.problem())
                            .unwrap_or_default(),
                    );
                }
                update = self.progress.recv() => {
                    if let Ok((action_id, update)) = update
                        && action_id == self.id
                    {
                        return Some(Event::default().event("progress").json_data(update).unwrap_or_default());
                    }
                    continue;
                }
                logged = self.events.recv() => logged,
            };
            match logged {
                Ok(logged)
                    if logged.aggregate_id == self.key
                        && u64::try_from(logged.sequence).is_ok_and(|at| at > self.sequence) =>
                {
                    if let Some(event) = self.change(&logged) {
                        return Some(event);
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    // Missed hub messages: reload the action and carry on from its state.
                    if let Ok((reloaded, sequence)) = self.ledger.load::<Action>(&self.id).await {
                        self.action = reloaded;
                        self.sequence = sequence;
                    }
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Folds a logged event of this action in and describes it.
    fn change(&mut self, logged: &LoggedEvent) -> Option<Event> {
        let event = logged.decode::<Action>().ok()?;
        self.action.apply(event);
        self.sequence = u64::try_from(logged.sequence).unwrap_or(self.sequence);
        let status = self.action.state().map(|state| state.status);
        self.done = status.is_some_and(is_finished);
        let data = serde_json::json!({
            "status": status, "sequence": self.sequence, "position": logged.cursor.position,
            "content": logged.payload.get(&logged.event_type).cloned().unwrap_or(Value::Null),
        });
        Some(
            Event::default()
                .event(logged.event_type.clone())
                .json_data(data)
                .unwrap_or_default(),
        )
    }
}
