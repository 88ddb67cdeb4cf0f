//! An action's server-sent event stream: its status now, then every change and progress report,
//! until the action is finished, the client goes away, or the caller's credential stops
//! authenticating (then a last `closed` event carries the refusal as a problem document).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::response::sse::Event;
use countersign_app::actions;
use countersign_app::{Actor, roles};
use countersign_domain::ActionId;
use countersign_domain::action::{Action, ActionState, ActionStatus};
use countersign_domain::tenant::{SettingsEvent, TenantSettings};
use countersign_ledger::{Ledger, LogCursor, LoggedEvent};
use futures::Stream;
use serde::Serialize;
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

/// Action states a tenant stream keeps to describe events without reloading; past this many it
/// starts over (each is reloaded from the ledger on its next event).
const FOLDED_ACTIONS: usize = 4096;

/// How many log events a replay or catch-up reads at once.
const REPLAY_BATCH: u32 = 500;

/// One client's subscription to everything of its tenant it may see: every event of the
/// actions it may read (see [`may_see`]) and the tenant's settings changes, in log order, each
/// with its log cursor as the SSE `id`, resumable from any `id` it sent.
pub struct TenantStream {
    actor: Actor,
    ledger: Ledger,
    events: broadcast::Receiver<Arc<LoggedEvent>>,
    /// The last log event passed (delivered or not the caller's): nothing at or before it is
    /// sent again.
    after: LogCursor,
    /// Events read from the log (a replay or a catch-up after lagging the hub), not yet passed.
    backlog: std::collections::VecDeque<LoggedEvent>,
    /// Whether the log after `after` must be read before the hub is listened to again.
    catching_up: bool,
    /// The actions seen so far, folded up to the stream version beside each.
    actions: std::collections::HashMap<String, (Action, i64)>,
    refused: Refusal,
    first: Option<Event>,
    done: bool,
}

impl std::fmt::Debug for TenantStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantStream")
            .field("tenant", &self.actor.tenant)
            .field("after", &self.after)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// The refusal of a `Last-Event-ID` (or `?after=`) that is not an `id` this stream sent.
pub fn invalid_resume_point() -> ApiError {
    ApiError::bad_request(
        "invalid_last_event_id",
        "Last-Event-ID (or after) must be the id of an event of this stream: <txid>.<position>",
    )
    .with_field("Last-Event-ID")
}

fn resume_point_ahead() -> ApiError {
    ApiError::bad_request(
        "last_event_id_ahead",
        "Last-Event-ID (or after) names a place the log has not reached; send the id of an event of this stream",
    )
    .with_field("Last-Event-ID")
}

/// The cursor an `id` of this stream names: `<txid>.<position>`, digits only.
fn resume_point(id: &str) -> Result<LogCursor, ApiError> {
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    let (txid, position) = id
        .trim()
        .split_once('.')
        .filter(|(txid, position)| digits(txid) && digits(position))
        .ok_or_else(invalid_resume_point)?;
    match (txid.parse(), position.parse()) {
        (Ok(txid), Ok(position)) => Ok(LogCursor { txid, position }),
        // Well formed, but beyond any place in a log.
        _ => Err(resume_point_ahead()),
    }
}

/// Whether `actor` sees the events of an action in its tenant stream: those whose requester's
/// history they may read (their own, or any for owners, admins and auditors, the rule of the
/// user histories), those they may vote on now, and, for everyone holding a role besides
/// `requester` (approvers and the roles policies name), all of them, as the inbox shows them.
pub fn may_see(actor: &Actor, state: &ActionState) -> bool {
    actor
        .may_read_history_of(state.requester.id.as_str())
        .is_ok()
        || actor
            .principal
            .roles
            .iter()
            .any(|role| role.as_str() != roles::REQUESTER)
        || state.can_vote(&actor.principal)
}

/// What a tenant stream's `data:` carries for an action's event: enough to update an inbox row
/// (status, risk, stage progress, whether the caller may vote now) without another request.
#[derive(Debug, Serialize)]
struct ActionChange<'a> {
    action_id: ActionId,
    event_type: &'a str,
    /// The SSE `id`: `<txid>.<position>`, also a consistency token for the reads.
    cursor: String,
    position: i64,
    sequence: i64,
    recorded_at: chrono::DateTime<chrono::Utc>,
    /// Who caused the event (the metadata's actor; the requester on a submission).
    actor: Option<&'a str>,
    status: ActionStatus,
    action_type: String,
    module: &'a str,
    capability: &'a str,
    summary: &'a str,
    risk: RiskBadge,
    requested_by: &'a str,
    submitted_at: &'a countersign_domain::Timestamp,
    expires_at: &'a countersign_domain::Timestamp,
    escalations: u32,
    /// The current stage (0-based) and how many the policy has.
    current_stage: u32,
    stages: usize,
    stage_name: Option<&'a str>,
    /// Counted and needed votes of the current stage.
    progress: Option<countersign_domain::quorum::StageProgress>,
    /// Whether the caller may vote on it now.
    eligible: bool,
}

#[derive(Debug, Serialize)]
struct RiskBadge {
    level: countersign_domain::risk::RiskLevel,
    score: countersign_domain::risk::RiskScore,
}

impl TenantStream {
    /// Subscribes `actor` to its tenant's events: after `last_event_id` (an `id` this stream
    /// sent: the events logged since are replayed first) or from now. A malformed
    /// `last_event_id` answers `invalid_last_event_id`, one beyond the log `last_event_id_ahead`.
    /// `credential` is re-checked for as long as the stream lasts.
    pub async fn open(
        state: &AppState,
        actor: &Actor,
        last_event_id: Option<&str>,
        credential: CredentialWatch,
    ) -> Result<Self, ApiError> {
        let resume = last_event_id.map(resume_point).transpose()?;
        // Subscribe before reading the head, so nothing committed in between is missed.
        let events = state.hub.subscribe();
        let ledger = state.app.ledger().clone();
        let head = ledger.log_head().await?;
        let after = match resume {
            Some(cursor) if cursor > head => return Err(resume_point_ahead()),
            Some(cursor) => cursor,
            None => head,
        };
        let first = Event::default()
            .event("ready")
            .id(crate::extract::consistency_token(after))
            .json_data(serde_json::json!({
                "cursor": crate::extract::consistency_token(after),
                "position": after.position,
                "replaying": resume.is_some(),
            }))
            .unwrap_or_default();
        Ok(Self {
            actor: actor.clone(),
            ledger,
            events,
            after,
            backlog: std::collections::VecDeque::new(),
            catching_up: resume.is_some(),
            actions: std::collections::HashMap::new(),
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

    fn closed(&mut self, refusal: &ApiError) -> Event {
        self.done = true;
        Event::default()
            .event("closed")
            .json_data(refusal.problem())
            .unwrap_or_default()
    }

    async fn next(&mut self) -> Option<Event> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.done {
            return None;
        }
        loop {
            if let Some(logged) = self.backlog.pop_front() {
                if let Some(event) = self.pass(&logged).await {
                    return Some(event);
                }
                continue;
            }
            if self.catching_up {
                match self.ledger.read_log(self.after, REPLAY_BATCH).await {
                    Ok(batch) if batch.is_empty() => self.catching_up = false,
                    Ok(batch) => self.backlog.extend(batch),
                    Err(err) => {
                        tracing::warn!(
                            tenant = %self.actor.tenant,
                            error = format!("{err:#}"),
                            "tenant stream: reading the log failed"
                        );
                        let refusal = ApiError::from(err);
                        return Some(self.closed(&refusal));
                    }
                }
                continue;
            }
            let logged = tokio::select! {
                refusal = &mut self.refused => return Some(self.closed(&refusal)),
                logged = self.events.recv() => logged,
            };
            match logged {
                Ok(logged) => {
                    if let Some(event) = self.pass(&logged).await {
                        return Some(event);
                    }
                }
                // Missed hub messages: read them from the log instead.
                Err(RecvError::Lagged(_)) => self.catching_up = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Moves past `logged`, describing it when it is new and the caller's to see.
    async fn pass(&mut self, logged: &LoggedEvent) -> Option<Event> {
        if logged.cursor <= self.after {
            return None;
        }
        self.after = logged.cursor;
        if logged.tenant != self.actor.tenant.as_str() {
            return None;
        }
        let data = match logged.aggregate_type.as_str() {
            <Action as cqrs_es::Aggregate>::TYPE => self.action_change(logged).await?,
            <TenantSettings as cqrs_es::Aggregate>::TYPE => {
                let SettingsEvent::SettingsUpdated { settings, .. } =
                    logged.decode::<TenantSettings>().ok()?;
                serde_json::json!({
                    "event_type": logged.event_type,
                    "cursor": crate::extract::consistency_token(logged.cursor),
                    "position": logged.cursor.position,
                    "recorded_at": logged.recorded_at,
                    "mode": settings.mode,
                })
            }
            _ => return None,
        };
        Some(
            Event::default()
                .id(crate::extract::consistency_token(logged.cursor))
                .event(logged.event_type.clone())
                .json_data(data)
                .unwrap_or_default(),
        )
    }

    /// Folds an action's event into its state (loading the action up to it when the stream has
    /// not followed it) and describes it, when the caller may see the action.
    async fn action_change(&mut self, logged: &LoggedEvent) -> Option<Value> {
        let event = match logged.decode::<Action>() {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(
                    tenant = %self.actor.tenant,
                    action_id = %logged.aggregate_id,
                    error = format!("{err:#}"),
                    "tenant stream: an undecodable action event is left out"
                );
                return None;
            }
        };
        let followed = self
            .actions
            .remove(&logged.aggregate_id)
            .filter(|(_, sequence)| *sequence + 1 == logged.sequence);
        let action = match followed {
            Some((mut action, _)) => {
                action.apply(event);
                action
            }
            None if logged.sequence == 1 => {
                let mut action = Action::default();
                action.apply(event);
                action
            }
            None => load_until(&self.ledger, &self.actor.tenant, logged).await?,
        };
        if self.actions.len() >= FOLDED_ACTIONS {
            self.actions.clear();
        }
        let data = action
            .state()
            .filter(|state| may_see(&self.actor, state))
            .and_then(|state| {
                serde_json::to_value(describe_change(logged, state, &self.actor)).ok()
            });
        self.actions
            .insert(logged.aggregate_id.clone(), (action, logged.sequence));
        data
    }
}

fn describe_change<'a>(
    logged: &'a LoggedEvent,
    state: &'a ActionState,
    actor: &Actor,
) -> ActionChange<'a> {
    let stage = usize::try_from(state.stage).unwrap_or(usize::MAX);
    ActionChange {
        action_id: state.id,
        event_type: &logged.event_type,
        cursor: crate::extract::consistency_token(logged.cursor),
        position: logged.cursor.position,
        sequence: logged.sequence,
        recorded_at: logged.recorded_at,
        actor: logged.metadata.get("actor").and_then(Value::as_str),
        status: state.status,
        action_type: state.action_type.to_string(),
        module: state.submission.module.as_str(),
        capability: state.submission.capability.as_str(),
        summary: state.submission.summary.as_str(),
        risk: RiskBadge {
            level: state.risk.level,
            score: state.risk.score,
        },
        requested_by: state.requester.id.as_str(),
        submitted_at: &state.submitted_at,
        expires_at: &state.expires_at,
        escalations: state.escalations,
        current_stage: state.stage,
        stages: state.policy.requirements.stages.len(),
        stage_name: state
            .policy
            .requirements
            .stages
            .as_slice()
            .get(stage)
            .and_then(|stage| stage.name.as_deref()),
        progress: state.stage_progress().into_iter().nth(stage),
        eligible: state.can_vote(&actor.principal),
    }
}

/// The action of `logged` as it was right after it.
async fn load_until(
    ledger: &Ledger,
    tenant: &countersign_domain::TenantId,
    logged: &LoggedEvent,
) -> Option<Action> {
    let id = ActionId::parse(&logged.aggregate_id).ok()?;
    let stored = match ledger.stream_of::<Action>(&id).await {
        Ok(stored) => stored,
        Err(err) => {
            tracing::warn!(
                tenant = %tenant,
                action_id = %id,
                error = format!("{err:#}"),
                "tenant stream: loading an action failed; its event is left out"
            );
            return None;
        }
    };
    let mut action = Action::default();
    for earlier in stored
        .iter()
        .filter(|earlier| earlier.sequence <= logged.sequence)
    {
        action.apply(earlier.decode::<Action>().ok()?);
    }
    Some(action)
}
