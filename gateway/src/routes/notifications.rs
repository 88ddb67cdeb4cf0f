//! `/v1/notifications`: the caller's in-app feed (newest first, cursor pagination, unread
//! count), marking read, counts, and the tenant's delivery log for owners and admins. Each
//! handler parses its request, calls one use case of `countersign_app::notify`, and replies.

use aide::axum::ApiRouter;
use aide::axum::routing::{get, post};
use axum::extract::{Path, State};
use countersign_app::notify::{self, DeliveryPage, FeedPage, FeedStats};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Acting, CURSOR_PATTERN, Reply, StrictQuery};

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/notifications", get(feed))
        .api_route("/v1/notifications/stats", get(stats))
        .api_route("/v1/notifications/stream", get(live))
        .api_route("/v1/notifications/read-all", post(read_all))
        .api_route("/v1/notifications/{id}/read", post(read_one))
        .api_route("/v1/notifications/deliveries", get(deliveries))
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// The previous page's `next_cursor`.
    #[schemars(extend("pattern" = CURSOR_PATTERN))]
    pub cursor: Option<String>,
    /// 1–200, default 50.
    #[schemars(extend("minimum" = 1, "maximum" = 200))]
    pub limit: Option<u32>,
    /// Only notifications not read yet.
    #[serde(default)]
    pub unread: bool,
}

/// The caller's notifications, newest first, with the number still unread.
async fn feed(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictQuery(query): StrictQuery<FeedQuery>,
) -> Result<Reply<FeedPage>, ApiError> {
    let page = notify::feed(
        &state.app,
        &actor,
        query.cursor.as_deref(),
        query.limit,
        query.unread,
    )
    .await?;
    Ok(Reply::new(page))
}

/// The caller's notification counts: all, unread, and per kind.
async fn stats(
    State(state): State<AppState>,
    Acting(actor): Acting,
) -> Result<Reply<FeedStats>, ApiError> {
    Ok(Reply::new(notify::stats(&state.app, &actor).await?))
}

/// `{id}` of a notification, as the feed shows it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct NotificationPath {
    pub id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Marked {
    /// How many notifications this request marked read.
    pub marked: u64,
}

/// Mark one of the caller's notifications read (a second time changes nothing). Another user's
/// notification answers 404 `notification_not_found`, like a missing one.
async fn read_one(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(NotificationPath { id }): Path<NotificationPath>,
) -> Result<Reply<Marked>, ApiError> {
    notify::mark_read(&state.app, &actor, &id).await?;
    Ok(Reply::new(Marked { marked: 1 }))
}

/// Mark every notification of the caller read.
async fn read_all(
    State(state): State<AppState>,
    Acting(actor): Acting,
) -> Result<Reply<Marked>, ApiError> {
    let marked = notify::mark_all_read(&state.app, &actor).await?;
    Ok(Reply::new(Marked { marked }))
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// `pending`, `delivered` or `dead`.
    pub status: Option<DeliveryStatus>,
    /// The previous page's `next_cursor`.
    #[schemars(extend("pattern" = CURSOR_PATTERN))]
    pub cursor: Option<String>,
    /// 1–200, default 50.
    #[schemars(extend("minimum" = 1, "maximum" = 200))]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }
}

/// What was sent to whom and when, on every channel, with failures and dead letters (owner,
/// admin).
async fn deliveries(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictQuery(query): StrictQuery<DeliveriesQuery>,
) -> Result<Reply<DeliveryPage>, ApiError> {
    let page = notify::deliveries(
        &state.app,
        &actor,
        query.status.map(DeliveryStatus::as_str),
        query.cursor.as_deref(),
        query.limit,
    )
    .await?;
    Ok(Reply::new(page))
}

// ------------------------------------------------------------------------ one-click approvals

/// `/approve/{token}`: the page a one-click approval link opens. `GET` shows what the link
/// would do and changes nothing (mail scanners fetch links); `POST` (the page's button) casts
/// the vote through the vote use case. A self-contained page: escaped text, no script.
pub fn links() -> axum::Router<AppState> {
    axum::Router::new().route(
        "/approve/{token}",
        axum::routing::get(open_link).post(confirm_link),
    )
}

/// No script, no framing, forms only to this origin; styles inline.
const LINK_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(status: axum::http::StatusCode, title: &str, body: &str) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\"><title>{title}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;color:#1b1b1b}}\
         dt{{font-weight:600}}button{{font-size:1rem;padding:.6rem 1.2rem}}</style></head>\
         <body><h1>{title}</h1>{body}</body></html>",
        title = escape(title),
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        axum::http::header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static(LINK_CSP),
    );
    headers.insert(
        axum::http::header::REFERRER_POLICY,
        axum::http::HeaderValue::from_static("no-referrer"),
    );
    response
}

fn refusal_page(refusal: &notify::links::LinkRefusal) -> axum::response::Response {
    use axum::http::StatusCode;
    use notify::links::LinkRefusal;
    let status = match refusal {
        LinkRefusal::Forged => StatusCode::BAD_REQUEST,
        LinkRefusal::Disabled => StatusCode::SERVICE_UNAVAILABLE,
        LinkRefusal::Expired | LinkRefusal::Used => StatusCode::GONE,
        LinkRefusal::Decided(_) | LinkRefusal::Changed => StatusCode::CONFLICT,
        LinkRefusal::NotEligible(_) => StatusCode::FORBIDDEN,
        LinkRefusal::NotFound => StatusCode::NOT_FOUND,
    };
    page(
        status,
        "Nothing was changed",
        &format!(
            "<p>{}</p><p><small>code: {}</small></p>",
            escape(&refusal.to_string()),
            refusal.code()
        ),
    )
}

fn vote_word(vote: countersign_domain::quorum::Vote) -> &'static str {
    match vote {
        countersign_domain::quorum::Vote::Approve => "approve",
        countersign_domain::quorum::Vote::Reject => "reject",
        countersign_domain::quorum::Vote::Abstain => "abstain",
    }
}

async fn open_link(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> axum::response::Response {
    match notify::links::inspect(&state.app, &token).await {
        Ok(preview) => page(
            axum::http::StatusCode::OK,
            &format!("Confirm: {} this action?", vote_word(preview.claims.vote)),
            &format!(
                "<dl><dt>Action</dt><dd>{summary}</dd><dt>Type</dt><dd>{kind}</dd>\
                 <dt>Risk</dt><dd>{level} ({score}/100)</dd><dt>Your vote</dt><dd>{vote}</dd>\
                 <dt>Voting as</dt><dd>{voter}</dd></dl>\
                 <p>Opening this page changed nothing. Press the button to record your vote.</p>\
                 <form method=\"post\"><button type=\"submit\">Confirm: {vote}</button></form>",
                summary = escape(&preview.summary),
                kind = escape(&preview.action_type),
                level = escape(&preview.risk_level),
                score = preview.risk_score,
                vote = vote_word(preview.claims.vote),
                voter = escape(&preview.claims.voter),
            ),
        ),
        Err(refusal) => refusal_page(&refusal),
    }
}

async fn confirm_link(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> axum::response::Response {
    match notify::links::confirm(&state.app, &token).await {
        Ok(claims) => page(
            axum::http::StatusCode::OK,
            "Your vote was recorded",
            &format!(
                "<p>You voted <strong>{}</strong> on action <code>{}</code>. This link cannot be used again.</p>",
                vote_word(claims.vote),
                escape(&claims.action)
            ),
        ),
        Err(refusal) => refusal_page(&refusal),
    }
}

// ------------------------------------------------------------------------------ live feed

/// How often a live feed looks for new notifications.
const LIVE_POLL: std::time::Duration = std::time::Duration::from_millis(500);

struct Live {
    state: AppState,
    actor: countersign_app::Actor,
    after: i64,
    unread: i64,
    queued: std::collections::VecDeque<axum::response::sse::Event>,
    refused: std::pin::Pin<Box<dyn Future<Output = ApiError> + Send>>,
    done: bool,
}

impl Live {
    fn event(name: &str, data: &impl Serialize) -> axum::response::sse::Event {
        axum::response::sse::Event::default()
            .event(name)
            .json_data(data)
            .unwrap_or_default()
    }

    async fn next(&mut self) -> Option<axum::response::sse::Event> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            tokio::select! {
                refusal = &mut self.refused => {
                    self.done = true;
                    return Some(Self::event("closed", &refusal.problem()));
                }
                () = tokio::time::sleep(LIVE_POLL) => {}
            }
            match notify::feed_since(&self.state.app, &self.actor, Some(self.after)).await {
                Ok((notifications, unread, last)) => {
                    self.after = last;
                    for notification in &notifications {
                        self.queued
                            .push_back(Self::event("notification", notification));
                    }
                    if unread != self.unread {
                        self.unread = unread;
                        self.queued.push_back(Self::event(
                            "unread",
                            &serde_json::json!({ "unread": unread }),
                        ));
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error, "a live notification feed failed to read");
                }
            }
        }
    }
}

/// Server-sent events of the caller's notifications: `unread` first (`{"unread": n}`), then a
/// `notification` event for each new one (as the feed shows it) and `unread` when the count
/// changes; ends with `closed` (a problem document) once the credential is revoked or expires.
async fn live(
    State(state): State<AppState>,
    Acting(actor): Acting,
    headers: axum::http::HeaderMap,
) -> Result<
    crate::extract::EventStream<
        impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>
        + Send
        + 'static,
    >,
    ApiError,
> {
    let credential = crate::auth::CredentialWatch::new(&state, &headers);
    let (_, unread, after) = notify::feed_since(&state.app, &actor, None).await?;
    let live = Live {
        state,
        actor,
        after,
        unread,
        queued: [Live::event(
            "unread",
            &serde_json::json!({ "unread": unread }),
        )]
        .into(),
        refused: Box::pin(credential.refused()),
        done: false,
    };
    let stream = futures::stream::unfold(live, |mut live| async move {
        let event = live.next().await?;
        Some((Ok(event), live))
    });
    Ok(crate::extract::EventStream(
        axum::response::sse::Sse::new(stream).keep_alive(
            axum::response::sse::KeepAlive::new().interval(std::time::Duration::from_secs(15)),
        ),
    ))
}
