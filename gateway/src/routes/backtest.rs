//! `POST /v1/policies/backtest`: what a draft policy set would have done to the actions submitted
//! in a time range (see `countersign_app::backtest`). Read-only.
//!
//! With `Accept: text/event-stream` the same request is answered as server-sent events: `progress`
//! while the replay goes (at most [`PROGRESS_PER_SECOND`] a second), then one `report` (the JSON
//! the plain call answers) or one `error` (a problem document). Refusals of the request itself
//! (its body, its range, the caller's role, the draft) come before the stream, as an ordinary
//! problem response. Dropping the connection drops the replay.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use aide::axum::ApiRouter;
use aide::axum::routing::post_with;
use aide::generate::GenContext;
use aide::openapi::{
    MediaType, Operation, Response as OpenApiResponse, StatusCode as OpenApiStatus,
};
use aide::{OperationInput, OperationOutput};
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use countersign_app::backtest::{self, BacktestReport, BacktestRequest, Ceiling, Progress};
use countersign_app::{Actor, AppError};
use countersign_ledger::LogCursor;
use futures::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Acting, ReadQuery, Reply, StrictJson, StrictQuery};

/// The most `progress` events a streamed backtest sends a second.
pub const PROGRESS_PER_SECOND: u32 = 4;
/// Past its time limit, a streamed backtest that has not reported yet (a store slow to answer
/// one read) is given this long before it ends with `time_limit_exceeded`.
pub const GRACE: Duration = Duration::from_secs(5);

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new().api_route(
        "/v1/policies/backtest",
        post_with(run, |op| {
            op.summary("Backtest a draft policy set").description(
                "Replays the actions submitted in `[from, to)` under the current policies with \
                 `changes` applied (owner, admin, auditor) and answers what would differ: other \
                 policies or requirements, decisions and when, the approval load per role and \
                 member, the time to decision. Records nothing; bounded by `max_actions` and \
                 `time_limit_seconds` (at most 25). With `Accept: text/event-stream` the answer \
                 is server-sent events instead and `time_limit_seconds` may be up to 600: \
                 `progress` (`{\"replayed\", \"of\", \"elapsed_ms\"}`, at most 4 a second, the \
                 first once the actions are selected), then one `report` whose data is the \
                 report the plain call answers, or one `error` whose data is a problem document \
                 (`time_limit_exceeded` when no report came within the time limit and 5 s). \
                 Refusals of the request itself (body, range, role, draft) are ordinary problem \
                 responses, never a stream. Closing the connection stops the replay. See \
                 docs/governance.md.",
            )
        }),
    )
}

/// Whether the client asked for server-sent events (`Accept: text/event-stream`).
#[derive(Debug, Clone, Copy)]
pub struct WantsEvents(bool);

impl<S: Send + Sync> FromRequestParts<S> for WantsEvents {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let events = parts
            .headers
            .get_all(axum::http::header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next().unwrap_or_default();
                let refused = parts.any(|parameter| {
                    parameter
                        .strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("text/event-stream") && !refused
            });
        Ok(Self(events))
    }
}

impl OperationInput for WantsEvents {}

/// The report, or the stream that ends with it.
pub enum Backtested<S> {
    Report(Box<Reply<BacktestReport>>),
    Events(Sse<S>),
}

impl<S> std::fmt::Debug for Backtested<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Report(_) => f.write_str("Backtested::Report"),
            Self::Events(_) => f.write_str("Backtested::Events"),
        }
    }
}

impl<S> IntoResponse for Backtested<S>
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    fn into_response(self) -> Response {
        match self {
            Self::Report(reply) => reply.into_response(),
            Self::Events(events) => events.into_response(),
        }
    }
}

impl<S> OperationOutput for Backtested<S> {
    type Inner = BacktestReport;

    fn operation_response(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Option<OpenApiResponse> {
        let mut response = Reply::<BacktestReport>::operation_response(ctx, operation)?;
        response.description = "What the draft would have done (application/json); with \
                                 `Accept: text/event-stream`, text/event-stream: `progress` \
                                 events, then one `report` (this JSON) or one `error` (a \
                                 problem document)."
            .into();
        response
            .content
            .insert("text/event-stream".into(), MediaType::default());
        Some(response)
    }

    fn inferred_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<OpenApiStatus>, OpenApiResponse)> {
        Self::operation_response(ctx, operation)
            .map(|response| vec![(Some(OpenApiStatus::Code(200)), response)])
            .unwrap_or_default()
    }
}

/// Replay the actions submitted in `[from, to)` under the current policies with `changes`
/// applied (owner, admin, auditor): which would get another policy or other requirements, which
/// decisions would come out differently and when, the approval load per role and member, and
/// the time to decision. Changes nothing; bounded by `time_limit_seconds` and `max_actions`.
async fn run(
    State(state): State<AppState>,
    Acting(actor): Acting,
    WantsEvents(events): WantsEvents,
    StrictQuery(query): StrictQuery<ReadQuery>,
    StrictJson(request): StrictJson<BacktestRequest>,
) -> Result<Backtested<impl Stream<Item = Result<Event, Infallible>> + Send + 'static>, ApiError> {
    let cursor = query.cursor()?;
    if !events {
        let report = backtest::backtest(&state.app, &actor, &request, cursor).await?;
        return Ok(Backtested::Report(Box::new(Reply::new(report).no_store())));
    }
    let replay = Replay::start(&state, actor, request, cursor).await?;
    Ok(Backtested::Events(
        Sse::new(replay.into_stream())
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    ))
}

type Running = Pin<Box<dyn Future<Output = Result<BacktestReport, AppError>> + Send>>;

/// A streamed backtest: the replay's future is owned by the response's stream, so a client that
/// goes away drops it.
struct Replay {
    running: Running,
    progress: mpsc::Receiver<Progress>,
    /// The progress to send first (the actions selected).
    first: Option<Progress>,
    /// The newest progress not sent yet (held back to keep to the rate).
    held: Option<Progress>,
    sent_at: Instant,
    /// The replay's answer, once it has one.
    outcome: Option<Result<BacktestReport, AppError>>,
    deadline: Instant,
    time_limit_seconds: u32,
    /// Whose backtest it is (for the log line when the client goes away).
    tenant: String,
    done: bool,
}

impl Replay {
    /// Starts the replay and waits until it has selected the actions to replay: a refusal before
    /// that (body, range, role, draft, read model) is answered as a problem, not as a stream.
    async fn start(
        state: &AppState,
        actor: Actor,
        request: BacktestRequest,
        cursor: Option<LogCursor>,
    ) -> Result<Self, ApiError> {
        let time_limit_seconds = request
            .time_limit_seconds
            .unwrap_or(backtest::DEFAULT_TIME_LIMIT_SECONDS);
        let deadline = Instant::now() + Duration::from_secs(u64::from(time_limit_seconds)) + GRACE;
        let (watcher, mut progress) = mpsc::channel(64);
        let tenant = actor.tenant.to_string();
        let app = state.app.clone();
        let mut running: Running = Box::pin(async move {
            backtest::backtest_watched(
                &app,
                &actor,
                &request,
                cursor,
                Ceiling::STREAMED,
                Some(watcher),
            )
            .await
        });
        let mut outcome = None;
        let first = tokio::select! {
            biased;
            first = progress.recv() => first,
            finished = &mut running => {
                let report = finished?;
                outcome = Some(Ok(report));
                progress.try_recv().ok()
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err(time_limit_exceeded(time_limit_seconds));
            }
        };
        Ok(Self {
            running,
            progress,
            first,
            held: None,
            sent_at: Instant::now(),
            outcome,
            deadline,
            time_limit_seconds,
            tenant,
            done: false,
        })
    }

    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
        futures::stream::unfold(self, |mut replay| async move {
            let event = replay.next().await?;
            Some((Ok(event), replay))
        })
    }

    fn progress_event(&mut self, progress: Progress) -> Event {
        self.sent_at = Instant::now();
        self.held = None;
        Event::default()
            .event("progress")
            .json_data(progress)
            .unwrap_or_default()
    }

    fn last(&mut self, event: Event) -> Option<Event> {
        self.done = true;
        Some(event)
    }

    async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(self.progress_event(first));
        }
        let interval = Duration::from_secs(1) / PROGRESS_PER_SECOND;
        loop {
            match self.outcome.take() {
                Some(Ok(report)) => {
                    return self.last(
                        Event::default()
                            .event("report")
                            .json_data(&report)
                            .unwrap_or_default(),
                    );
                }
                Some(Err(error)) => return self.last(error_event(&ApiError::from(error))),
                None => {}
            }
            let next_at = self.sent_at + interval;
            tokio::select! {
                biased;
                finished = &mut self.running => self.outcome = Some(finished),
                () = tokio::time::sleep_until(self.deadline) => {
                    return self.last(error_event(&time_limit_exceeded(self.time_limit_seconds)));
                }
                Some(progress) = self.progress.recv() => {
                    if Instant::now() >= next_at {
                        return Some(self.progress_event(progress));
                    }
                    self.held = Some(progress);
                }
                () = tokio::time::sleep_until(next_at), if self.held.is_some() => {
                    if let Some(progress) = self.held.take() {
                        return Some(self.progress_event(progress));
                    }
                }
            }
        }
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        if !self.done {
            tracing::info!(
                tenant = %self.tenant,
                "backtest: the client went away, the replay is stopped"
            );
        }
    }
}

fn time_limit_exceeded(seconds: u32) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "time_limit_exceeded",
        format!(
            "the backtest did not report within its time limit ({seconds} s, and {} s more); \
             nothing was recorded",
            GRACE.as_secs()
        ),
    )
}

fn error_event(error: &ApiError) -> Event {
    metrics::counter!("countersign_http_errors_total", "code" => error.code).increment(1);
    Event::default()
        .event("error")
        .json_data(error.problem())
        .unwrap_or_default()
}
