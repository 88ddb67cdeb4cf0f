//! Notifications: the notifier that turns the log into one row per (event, recipient, channel)
//! ([`Notifier`]), the dispatcher that delivers the rows of outside channels through the
//! [`NotificationSender`]s a deployment configures (email, Slack, webhook) with retries,
//! backoff and a dead letter ([`Dispatcher`]), and the use cases of the in-app feed (a user's
//! own notifications, unread counts, marking read) and of the delivery log (owners and admins).
//!
//! Guarantees: a row is written once per key whatever replays happen (the notifier's checkpoint
//! moves after its rows commit, and rows are keyed); an outside delivery is attempted until it
//! succeeds or is given up, and recorded after each attempt — a crash between sending and
//! recording may send it again (emails carry a stable `Message-ID` so clients can tell).

pub mod links;
mod notifier;
pub mod slack;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use countersign_domain::Timestamp;
use countersign_domain::members::NotificationChannel;
use countersign_projections::QueryError;
use futures::StreamExt as _;
use schemars::JsonSchema;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{Instrument as _, info, warn};

pub use notifier::{NOTIFIER, Notifier, NotifierConfig, Planned, eligible, key, plan, render};
pub use store::NotificationRow;

use crate::{Actor, App, AppError, roles};

fn timestamp(micros: i64) -> Option<Timestamp> {
    chrono::DateTime::from_timestamp_micros(micros)
}

/// One in-app notification.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct NotificationView {
    /// Opaque; names the notification in `/v1/notifications/{id}/read`.
    pub id: String,
    /// `assigned`, `decided`, `outcome`, `escalated` or `reminder`.
    pub kind: String,
    pub title: String,
    pub action_id: Option<String>,
    /// The action's summary, type, status, risk, requester, deadline and a link to it.
    pub details: serde_json::Value,
    pub created_at: Option<Timestamp>,
    pub read_at: Option<Timestamp>,
}

impl From<NotificationRow> for NotificationView {
    fn from(row: NotificationRow) -> Self {
        Self {
            id: row.seq.to_string(),
            kind: row.kind,
            title: row.title,
            action_id: row.action_id,
            details: serde_json::from_str(&row.body).unwrap_or(serde_json::Value::Null),
            created_at: timestamp(row.created_us),
            read_at: row.read_us.and_then(timestamp),
        }
    }
}

/// A page of the caller's feed, newest first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FeedPage {
    pub notifications: Vec<NotificationView>,
    /// All the caller's unread notifications (not only this page's).
    pub unread: i64,
    /// Pass as `cursor` for the next (older) page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Counts of one kind of notification.
#[derive(Debug, Serialize, JsonSchema)]
pub struct KindCount {
    pub total: i64,
    pub unread: i64,
}

/// The caller's notification counts.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FeedStats {
    pub total: i64,
    pub unread: i64,
    pub by_kind: BTreeMap<String, KindCount>,
}

/// One delivery as the delivery log shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DeliveryView {
    pub id: String,
    pub recipient: String,
    /// `in_app`, `email`, `slack` or `webhook`.
    pub channel: String,
    pub kind: String,
    pub title: String,
    pub action_id: Option<String>,
    /// `pending` (waiting for an attempt), `delivered` or `dead` (given up).
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    /// When a pending delivery is tried next.
    pub next_attempt_at: Option<Timestamp>,
}

impl From<NotificationRow> for DeliveryView {
    fn from(row: NotificationRow) -> Self {
        Self {
            id: row.seq.to_string(),
            recipient: row.recipient,
            channel: row.channel,
            kind: row.kind,
            title: row.title,
            action_id: row.action_id,
            next_attempt_at: (row.status == "pending")
                .then(|| timestamp(row.next_attempt_us))
                .flatten(),
            status: row.status,
            attempts: row.attempts,
            last_error: row.last_error,
            created_at: timestamp(row.created_us),
            delivered_at: row.delivered_us.and_then(timestamp),
        }
    }
}

/// A page of the delivery log, newest first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn cursor(raw: Option<&str>) -> Result<Option<i64>, AppError> {
    raw.map(|raw| {
        raw.parse::<i64>()
            .ok()
            .filter(|seq| *seq > 0)
            .ok_or(AppError::Query(QueryError::InvalidCursor))
    })
    .transpose()
}

fn page_size(limit: Option<u32>) -> Result<i64, AppError> {
    match limit.unwrap_or(50) {
        limit @ 1..=200 => Ok(i64::from(limit)),
        _ => Err(AppError::InvalidInput(countersign_domain::ParseError::new(
            "limit",
            "must be 1 to 200",
        ))),
    }
}

fn store_error(error: anyhow::Error) -> AppError {
    AppError::internal("the notification store failed", error)
}

/// The caller's in-app notifications, newest first (anyone signed in: their own only).
pub async fn feed(
    app: &App,
    actor: &Actor,
    cursor_after: Option<&str>,
    limit: Option<u32>,
    unread_only: bool,
) -> Result<FeedPage, AppError> {
    let before = cursor(cursor_after)?;
    let limit = page_size(limit)?;
    let backend = app.ledger.backend();
    let (tenant, me) = (actor.tenant.as_str(), actor.principal.id.as_str());
    let rows = store::feed(backend, tenant, me, before, unread_only, limit + 1)
        .await
        .map_err(store_error)?;
    let counts = store::counts(backend, tenant, me)
        .await
        .map_err(store_error)?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    let notifications: Vec<NotificationView> = rows
        .into_iter()
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(NotificationView::from)
        .collect();
    Ok(FeedPage {
        next_cursor: more
            .then(|| notifications.last().map(|last| last.id.clone()))
            .flatten(),
        notifications,
        unread: counts.unread,
    })
}

/// What a live feed shows next: the caller's notifications after `after` (a notification id;
/// none: only those to come), oldest first, with the caller's unread count.
pub async fn feed_since(
    app: &App,
    actor: &Actor,
    after: Option<i64>,
) -> Result<(Vec<NotificationView>, i64, i64), AppError> {
    let backend = app.ledger.backend();
    let (tenant, me) = (actor.tenant.as_str(), actor.principal.id.as_str());
    let after = match after {
        Some(after) => after,
        None => store::feed(backend, tenant, me, None, false, 1)
            .await
            .map_err(store_error)?
            .first()
            .map_or(0, |newest| newest.seq),
    };
    let rows = store::feed_after(backend, tenant, me, after, 100)
        .await
        .map_err(store_error)?;
    let last = rows.last().map_or(after, |row| row.seq);
    let counts = store::counts(backend, tenant, me)
        .await
        .map_err(store_error)?;
    Ok((
        rows.into_iter().map(NotificationView::from).collect(),
        counts.unread,
        last,
    ))
}

/// The caller's notification counts.
pub async fn stats(app: &App, actor: &Actor) -> Result<FeedStats, AppError> {
    let counts = store::counts(
        app.ledger.backend(),
        actor.tenant.as_str(),
        actor.principal.id.as_str(),
    )
    .await
    .map_err(store_error)?;
    Ok(FeedStats {
        total: counts.total,
        unread: counts.unread,
        by_kind: counts
            .by_kind
            .into_iter()
            .map(|(kind, total, unread)| (kind, KindCount { total, unread }))
            .collect(),
    })
}

/// Marks one of the caller's notifications read (again: no change). Another user's
/// notification answers like a missing one.
pub async fn mark_read(app: &App, actor: &Actor, id: &str) -> Result<(), AppError> {
    let not_found = || AppError::not_found("notification_not_found", "notification");
    let seq = id.parse::<i64>().map_err(|_| not_found())?;
    let found = store::mark_read(
        app.ledger.backend(),
        actor.tenant.as_str(),
        actor.principal.id.as_str(),
        seq,
        chrono::Utc::now().timestamp_micros(),
    )
    .await
    .map_err(store_error)?;
    if found { Ok(()) } else { Err(not_found()) }
}

/// Marks every unread notification of the caller read; answers how many.
pub async fn mark_all_read(app: &App, actor: &Actor) -> Result<u64, AppError> {
    store::mark_all_read(
        app.ledger.backend(),
        actor.tenant.as_str(),
        actor.principal.id.as_str(),
        chrono::Utc::now().timestamp_micros(),
    )
    .await
    .map_err(store_error)
}

/// What was sent to whom and when, on every channel, failures and dead letters included
/// (owner, admin).
pub async fn deliveries(
    app: &App,
    actor: &Actor,
    status: Option<&str>,
    cursor_after: Option<&str>,
    limit: Option<u32>,
) -> Result<DeliveryPage, AppError> {
    actor.require(&[roles::OWNER, roles::ADMIN], "reading the delivery log")?;
    let before = cursor(cursor_after)?;
    let limit = page_size(limit)?;
    let rows = store::deliveries(
        app.ledger.backend(),
        actor.tenant.as_str(),
        status,
        before,
        limit + 1,
    )
    .await
    .map_err(store_error)?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    let deliveries: Vec<DeliveryView> = rows
        .into_iter()
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(DeliveryView::from)
        .collect();
    Ok(DeliveryPage {
        next_cursor: more
            .then(|| deliveries.last().map(|last| last.id.clone()))
            .flatten(),
        deliveries,
    })
}

// ------------------------------------------------------------------------------- delivering

/// The kind (and source) of a daily digest's row.
pub const DIGEST: &str = "digest";

/// Records an attempt at `row`; a digest's end is also given to the rows it gathers (their
/// `seq`s are listed in its body's `notifications`).
async fn record(
    backend: &countersign_ledger::Backend,
    row: &NotificationRow,
    status: &str,
    error: Option<&str>,
    next_attempt_us: i64,
    now_us: i64,
) -> anyhow::Result<()> {
    if row.kind != DIGEST {
        return store::record_attempt(backend, row.seq, status, error, next_attempt_us, now_us)
            .await;
    }
    let items: Vec<i64> = serde_json::from_str::<serde_json::Value>(&row.body)
        .ok()
        .and_then(|body| {
            body["notifications"]
                .as_array()
                .map(|seqs| seqs.iter().filter_map(serde_json::Value::as_i64).collect())
        })
        .unwrap_or_default();
    store::record_digest_attempt(
        backend,
        row.seq,
        &items,
        status,
        error,
        next_attempt_us,
        now_us,
    )
    .await
}

/// Why a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub message: String,
    /// False when trying again cannot help (the address is refused): the delivery is given up.
    pub retryable: bool,
}

/// A channel's way out (SMTP, Slack's incoming webhook, the tenant's webhook).
#[async_trait::async_trait]
pub trait NotificationSender: Send + Sync + std::fmt::Debug {
    fn channel(&self) -> NotificationChannel;
    async fn send(&self, delivery: &NotificationRow) -> Result<(), SendError>;
}

/// Delivers pending rows of the channels it has senders for: each due row is sent, then its
/// attempt recorded — delivered; or failed and retried after a backoff (1 s doubling, at most
/// 10 min); or `dead` after `max_attempts` or a failure that cannot be retried. Runs as a
/// singleton behind the `notify-dispatch` tailer lock.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    app: App,
    senders: Vec<Arc<dyn NotificationSender>>,
    pub max_attempts: i32,
    pub poll: Duration,
    /// Deliveries in flight at once (an SMTP relay or a webhook answers one message in tens of
    /// milliseconds; one after another caps email at a few dozen a second).
    pub concurrency: usize,
}

/// The lock and health name of the dispatcher.
pub const DISPATCHER: &str = "notify-dispatch";

impl Dispatcher {
    /// Deliveries in flight at once, unless set otherwise.
    pub const CONCURRENCY: usize = 16;

    pub fn new(app: App, senders: Vec<Arc<dyn NotificationSender>>) -> Self {
        Self {
            app,
            senders,
            max_attempts: 8,
            poll: Duration::from_millis(500),
            concurrency: Self::CONCURRENCY,
        }
    }

    /// The wait before attempt `attempts + 1`.
    pub fn backoff(attempts: i32) -> Duration {
        let exponent = u32::try_from(attempts.clamp(0, 10)).unwrap_or(0);
        Duration::from_secs(1u64 << exponent).min(Duration::from_secs(600))
    }

    /// Attempts every due delivery once; answers how many were attempted.
    pub async fn deliver_due(&self) -> anyhow::Result<usize> {
        let channels: Vec<&str> = self
            .senders
            .iter()
            .map(|sender| sender.channel().as_str())
            .collect();
        if channels.is_empty() {
            return Ok(0);
        }
        let backend = self.app.ledger.backend();
        let now = chrono::Utc::now().timestamp_micros();
        let due = store::due_deliveries(backend, &channels, now, 200).await?;
        // Each row is sent once per pass and its attempt recorded as soon as it is known; rows
        // are independent deliveries, so up to `concurrency` are in flight at once.
        let attempted = due.len();
        futures::stream::iter(due)
            .map(|row| async move { self.attempt(&row).await })
            .buffer_unordered(self.concurrency.max(1))
            .collect::<Vec<anyhow::Result<()>>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<()>>()?;
        Ok(attempted)
    }

    /// Sends one due row through its channel's sender and records the attempt.
    async fn attempt(&self, row: &NotificationRow) -> anyhow::Result<()> {
        let Some(sender) = self
            .senders
            .iter()
            .find(|sender| sender.channel().as_str() == row.channel)
        else {
            return Ok(());
        };
        let backend = self.app.ledger.backend();
        let span = tracing::info_span!(
            "delivery",
            tenant = %row.tenant,
            action_id = row.action_id.as_deref().unwrap_or_default(),
            channel = %row.channel,
            recipient = %row.recipient,
        );
        async {
            let outcome = sender.send(row).await;
            let now = chrono::Utc::now().timestamp_micros();
            match outcome {
                Ok(()) => {
                    metrics::counter!("countersign_notifications_delivered_total", "channel" => row.channel.clone()).increment(1);
                    record(backend, row, "delivered", None, now, now).await
                }
                Err(error) => {
                    let attempts = row.attempts + 1;
                    let dead = !error.retryable || attempts >= self.max_attempts;
                    let next = now
                        + i64::try_from(Self::backoff(row.attempts).as_micros())
                            .unwrap_or(i64::MAX / 2);
                    if dead {
                        metrics::counter!("countersign_notifications_dead_total", "channel" => row.channel.clone()).increment(1);
                        warn!(attempts, error = %error, "a notification was given up (dead letter)");
                    } else {
                        info!(attempts, error = %error, "a notification delivery failed; will retry");
                    }
                    record(
                        backend,
                        row,
                        if dead { "dead" } else { "pending" },
                        Some(&error.message),
                        next,
                        now,
                    )
                    .await
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Queues each recipient one email gathering the notifications kept for their daily digest,
    /// once the UTC day they were written in is over; answers how many digests were queued. A
    /// digest is a pending email row of kind `digest` (its rows move to `digested` in the same
    /// transaction), so [`Dispatcher::deliver_due`] sends it with the retries, backoff and dead
    /// letter of every delivery, and its end (`delivered` or `dead`) is given to its rows.
    pub async fn deliver_digests(&self) -> anyhow::Result<usize> {
        if !self
            .senders
            .iter()
            .any(|sender| sender.channel() == NotificationChannel::Email)
        {
            return Ok(0);
        }
        let backend = self.app.ledger.backend();
        let now = chrono::Utc::now();
        let today = now
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .map_or(0, |midnight| midnight.and_utc().timestamp_micros());
        let rows = store::due_digests(backend, today, 1000).await?;
        let mut groups: BTreeMap<(String, String), Vec<NotificationRow>> = BTreeMap::new();
        for row in rows {
            groups
                .entry((row.tenant.clone(), row.recipient.clone()))
                .or_default()
                .push(row);
        }
        let mut queued = 0;
        for ((tenant, recipient), rows) in groups {
            let Some(first) = rows.first() else { continue };
            let keys: Vec<&str> = rows.iter().map(|row| row.key.as_str()).collect();
            let seqs: Vec<i64> = rows.iter().map(|row| row.seq).collect();
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|row| {
                    serde_json::json!({
                        "kind": row.kind,
                        "title": row.title,
                        "details": serde_json::from_str::<serde_json::Value>(&row.body)
                            .unwrap_or(serde_json::Value::Null),
                    })
                })
                .collect();
            let digest = store::NewNotification {
                key: blake3::hash(keys.join("\n").as_bytes())
                    .to_hex()
                    .to_string(),
                tenant: tenant.clone(),
                recipient: recipient.clone(),
                channel: NotificationChannel::Email.as_str().to_owned(),
                kind: DIGEST.into(),
                source: DIGEST.into(),
                action_id: None,
                title: format!("Your countersign digest: {} notifications", rows.len()),
                body: serde_json::json!({ "items": items, "notifications": seqs }).to_string(),
                address: first.address.clone(),
                position: rows
                    .iter()
                    .map(|row| row.position)
                    .max()
                    .unwrap_or_default(),
                created_us: now.timestamp_micros(),
                status: "pending",
            };
            if store::queue_digest(backend, &digest, &seqs).await? {
                info!(%tenant, %recipient, notifications = seqs.len(), "a daily digest was queued");
                queued += 1;
            }
        }
        Ok(queued)
    }

    /// Delivers until `shutdown`, behind its tailer lock, reporting to the ledger's health.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let ledger = self.app.ledger.clone();
        let lock = loop {
            if let Some(lock) = ledger.lock_tailer(DISPATCHER).await? {
                break lock;
            }
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        };
        info!(
            channels = self.senders.len(),
            "notification dispatcher running"
        );
        let mut next_digests = tokio::time::Instant::now();
        while !*shutdown.borrow() {
            if tokio::time::Instant::now() >= next_digests {
                next_digests = tokio::time::Instant::now() + Duration::from_secs(60);
                if let Err(err) = self.deliver_digests().await {
                    warn!(error = format!("{err:#}"), "daily digests failed");
                }
            }
            match self.deliver_due().await {
                Ok(attempted) => {
                    ledger.health().progressed(DISPATCHER);
                    if attempted == 0 {
                        tokio::select! {
                            _ = shutdown.changed() => {}
                            () = tokio::time::sleep(self.poll) => {}
                        }
                    }
                }
                Err(err) => {
                    warn!(error = format!("{err:#}"), "notification dispatcher failed");
                    let pause = ledger.health().failed(DISPATCHER, None, &err);
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        lock.release().await;
        Ok(())
    }
}
