//! `/ui/stream`: the tenant-wide event stream of the gateway (`TenantStream`, the one behind
//! `GET /v1/stream`), authenticated by the session cookie instead of a bearer header. Pages
//! listen with htmx's SSE extension: rows refresh, the badge updates and a toast says when a
//! new approval is assigned. A reconnecting browser sends `Last-Event-ID` and loses nothing;
//! the stream ends when the session's credential stops authenticating.
//!
//! `/actions/{id}/live`: an open drawer's execution log — execution requested, started, each
//! progress report of the capability (the executor's `ProgressHub`), succeeded or failed — as
//! server-rendered lines appended without reload.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use askama::Template as _;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use countersign_app::AppError;
use countersign_domain::ActionId;
use countersign_domain::action::{Action, ActionEvent, ActionStatus};
use countersign_gateway::auth::CredentialWatch;
use countersign_gateway::stream::TenantStream;
use countersign_ledger::LoggedEvent;
use serde_json::Value;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::Console;
use crate::error::PageError;
use crate::session::Session;

#[derive(askama::Template, askama_web::WebTemplate)]
#[template(path = "banner.html")]
struct Banner {
    safe_mode: bool,
}

/// `GET /ui/banner`: the safe-mode banner as it should read now (pages refresh it when the
/// tenant's settings change).
pub async fn banner(
    State(console): State<Console>,
    session: Session,
) -> Result<Response, PageError> {
    let mode =
        countersign_app::actions::current_mode(console.gateway.app.ledger(), &session.actor.tenant)
            .await?;
    Ok(Banner {
        safe_mode: mode == countersign_domain::TenantMode::Safe,
    }
    .into_response())
}

/// `GET /ui/stream`.
pub async fn stream(
    State(console): State<Console>,
    session: Session,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok());
    let watch = CredentialWatch::for_credential(&console.gateway, &session.credential);
    let subscription = TenantStream::open(&console.gateway, &session.actor, last_event_id, watch)
        .await
        .map_err(PageError::from)?;
    Ok(Sse::new(subscription.into_stream())
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// One line of an action's live execution log, as the drawer appends it.
#[derive(askama::Template)]
#[template(path = "execution_line.html")]
struct ExecutionLine<'a> {
    /// `requested`, `started`, `step`, `succeeded`, `failed`, `skipped`, `resumed`.
    kind: &'a str,
    /// The event type, or `progress` for a capability's report.
    event: &'a str,
    at: String,
    clock: String,
    text: String,
}

/// The longest progress report shown, in characters (a capability's report is free-form).
const MAX_STEP_CHARS: usize = 300;

/// A capability's progress report in words: its `step` (or `message`) first, then the rest as
/// compact JSON, cut at [`MAX_STEP_CHARS`].
fn step_text(report: &Value) -> String {
    let lead = ["step", "message"].into_iter().find_map(|key| {
        report
            .get(key)
            .and_then(Value::as_str)
            .map(|text| (key, text))
    });
    let text = match (lead, report) {
        (Some((key, lead)), Value::Object(fields)) => {
            let mut rest = fields.clone();
            rest.remove(key);
            if rest.is_empty() {
                lead.to_owned()
            } else {
                format!("{lead} · {}", Value::Object(rest))
            }
        }
        _ => report.to_string(),
    };
    let mut shown: String = text.chars().take(MAX_STEP_CHARS).collect();
    if text.chars().count() > MAX_STEP_CHARS {
        shown.push('…');
    }
    format!("Step: {shown}")
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

/// One open drawer's subscription to an action's execution: a line per execution event and per
/// progress report, in order, then `end` once the action is finished.
///
/// Progress reports reach this process directly (the `ProgressHub`), the events through the
/// log's tail a moment later, so a report can arrive before the `ExecutionStarted` of its
/// attempt: reports are held until an attempt is seen running, and those already received are
/// shown before the line that ends the attempt.
struct ExecutionLive {
    id: ActionId,
    key: String,
    ledger: countersign_ledger::Ledger,
    action: Action,
    sequence: u64,
    events: broadcast::Receiver<Arc<LoggedEvent>>,
    progress: broadcast::Receiver<(ActionId, Value)>,
    refused: Pin<Box<dyn Future<Output = countersign_gateway::error::ApiError> + Send>>,
    running: bool,
    held: VecDeque<Value>,
    queue: VecDeque<Event>,
    done: bool,
}

impl ExecutionLive {
    fn line(kind: &str, event: &str, at: chrono::DateTime<chrono::Utc>, text: String) -> Event {
        let html = ExecutionLine {
            kind,
            event,
            at: crate::view::stamp(at),
            clock: at.format("%H:%M:%S").to_string(),
            text,
        }
        .render()
        .unwrap_or_default();
        Event::default().event("execution").data(html)
    }

    fn end(&mut self, status: &str) {
        self.done = true;
        self.queue
            .push_back(Event::default().event("end").data(status));
    }

    /// Shows the held reports (and any already received) of the running attempt.
    fn flush_progress(&mut self) {
        while let Ok((id, report)) = self.progress.try_recv() {
            if id == self.id {
                self.held.push_back(report);
            }
        }
        while let Some(report) = self.held.pop_front() {
            let line = Self::line("step", "progress", chrono::Utc::now(), step_text(&report));
            self.queue.push_back(line);
        }
    }

    /// Folds an event of this action in and queues what it shows.
    fn fold(&mut self, logged: &LoggedEvent) {
        let Ok(event) = logged.decode::<Action>() else {
            return;
        };
        self.sequence = u64::try_from(logged.sequence).unwrap_or(self.sequence);
        let line = match &event {
            ActionEvent::ExecutionRequested(e) => Some((
                "requested",
                e.context.at,
                format!("Execution requested by {}", e.context.actor),
            )),
            ActionEvent::ExecutionResumed(e) => Some((
                "resumed",
                e.context.at,
                format!("Execution resumed by {}", e.context.actor),
            )),
            ActionEvent::ExecutionStarted(e) => Some((
                "started",
                e.context.at,
                format!(
                    "Execution started (attempt {}) by {}",
                    e.attempt, e.context.actor
                ),
            )),
            ActionEvent::ExecutionSucceeded(e) => Some((
                "succeeded",
                e.context.at,
                format!(
                    "Execution succeeded (attempt {}, {} ms)",
                    e.attempt, e.duration_ms
                ),
            )),
            ActionEvent::ExecutionFailed(e) => Some((
                "failed",
                e.context.at,
                format!(
                    "Execution failed (attempt {}): {}{}",
                    e.attempt,
                    e.error,
                    if e.will_retry { " · will retry" } else { "" }
                ),
            )),
            ActionEvent::ExecutionSkipped(e) => Some((
                "skipped",
                e.context.at,
                "Execution skipped: the tenant is in safe mode".to_owned(),
            )),
            _ => None,
        };
        let ends_attempt = matches!(
            event,
            ActionEvent::ExecutionSucceeded(_)
                | ActionEvent::ExecutionFailed(_)
                | ActionEvent::ExecutionSkipped(_)
        );
        let starts_attempt = matches!(event, ActionEvent::ExecutionStarted(_));
        self.action.apply(event);
        if ends_attempt {
            // Everything the capability reported came before its outcome was recorded.
            self.flush_progress();
            self.running = false;
        }
        if let Some((kind, at, text)) = line {
            self.queue
                .push_back(Self::line(kind, &logged.event_type, at, text));
        }
        if starts_attempt {
            self.running = true;
            self.flush_progress();
        }
        if let Some(state) = self.action.state()
            && is_finished(state.status)
        {
            self.end(state.status.as_str());
        }
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            tokio::select! {
                _ = &mut self.refused => {
                    self.end("closed");
                }
                report = self.progress.recv() => match report {
                    Ok((id, report)) if id == self.id => {
                        self.held.push_back(report);
                        if self.running {
                            self.flush_progress();
                        }
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                },
                logged = self.events.recv() => match logged {
                    Ok(logged)
                        if logged.aggregate_id == self.key
                            && u64::try_from(logged.sequence).is_ok_and(|at| at > self.sequence) =>
                    {
                        self.fold(&logged);
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        // Missed hub messages: carry on from the action's state in the ledger.
                        if let Ok((reloaded, sequence)) = self.ledger.load::<Action>(&self.id).await {
                            self.action = reloaded;
                            self.sequence = sequence;
                            if let Some(state) = self.action.state() {
                                self.running = state.status == ActionStatus::Executing;
                                if is_finished(state.status) {
                                    self.end(state.status.as_str());
                                }
                            }
                        }
                    }
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

/// `GET /actions/{id}/live`: the drawer's execution log of one action (any action the person
/// may read; another tenant's answers 404), as server-rendered lines for htmx's SSE extension:
/// `execution` events carry one `<li>` each (requested, started, each progress report, succeeded
/// or failed), `end` says the action is finished and the stream closes. A `ready` event comes
/// first. Progress is a hint, not a record: a reconnecting drawer does not get past reports.
pub async fn execution(
    State(console): State<Console>,
    session: Session,
    Path(raw): Path<String>,
) -> Result<Response, PageError> {
    let id = ActionId::parse(&raw).map_err(|_| PageError::from(AppError::action_not_found()))?;
    // Subscribe before loading, so nothing committed in between is missed.
    let events = console.gateway.hub.subscribe();
    let progress = console.gateway.app.progress().subscribe();
    let (action, sequence) =
        countersign_app::actions::watch(&console.gateway.app, &session.actor, id).await?;
    let watch = CredentialWatch::for_credential(&console.gateway, &session.credential);
    let status = action.state().map(|state| state.status);
    let mut live = ExecutionLive {
        id,
        key: id.to_string(),
        ledger: console.gateway.app.ledger().clone(),
        running: status == Some(ActionStatus::Executing),
        action,
        sequence,
        events,
        progress,
        refused: Box::pin(watch.refused()),
        held: VecDeque::new(),
        queue: VecDeque::new(),
        done: false,
    };
    live.queue.push_back(
        Event::default()
            .event("ready")
            .data(status.map_or("unknown", ActionStatus::as_str)),
    );
    if let Some(status) = status
        && is_finished(status)
    {
        live.end(status.as_str());
    }
    let stream = futures::stream::unfold(live, |mut live| async move {
        let event = live.next().await?;
        Some((Ok::<_, Infallible>(event), live))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
