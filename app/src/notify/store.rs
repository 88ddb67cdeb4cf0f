//! The notification tables (`migrations/*/0006_notifications.sql`) on the ledger's own pool:
//! `notifications` (one row per event, recipient and channel, unique by `key`) and
//! `notification_reminders` (open approvals and when to remind about them).

use anyhow::Context;
use countersign_ledger::Backend;
use sqlx::FromRow;

/// A notification as stored.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct NotificationRow {
    pub seq: i64,
    pub key: String,
    pub tenant: String,
    pub recipient: String,
    pub channel: String,
    pub kind: String,
    pub source: String,
    pub action_id: Option<String>,
    pub title: String,
    pub body: String,
    pub address: Option<String>,
    pub position: i64,
    pub created_us: i64,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_us: i64,
    pub last_error: Option<String>,
    pub delivered_us: Option<i64>,
    pub read_us: Option<i64>,
}

/// A notification to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    pub key: String,
    pub tenant: String,
    pub recipient: String,
    pub channel: String,
    pub kind: String,
    pub source: String,
    pub action_id: Option<String>,
    pub title: String,
    pub body: String,
    pub address: Option<String>,
    pub position: i64,
    pub created_us: i64,
    /// `delivered` for in-app rows (the row is the delivery), `digest` for email kept for the
    /// recipient's daily digest (`digested` once gathered into one, then the digest's end:
    /// `delivered` or `dead`), `pending` otherwise.
    pub status: &'static str,
}

/// One change the notifier makes for an event; a batch's changes commit together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Notify(NewNotification),
    /// Remind about `action_id` at `remind_us` (replaces an earlier reminder of the action).
    Remind {
        tenant: String,
        action_id: String,
        round: String,
        remind_us: i64,
        position: i64,
    },
    /// No reminder for `action_id` any more.
    Forget {
        action_id: String,
    },
}

/// A reminder that is due.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct DueReminder {
    pub tenant: String,
    pub action_id: String,
    pub round: String,
    pub remind_us: i64,
    pub position: i64,
}

/// Counts of a recipient's in-app notifications.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedCounts {
    pub total: i64,
    pub unread: i64,
    pub by_kind: Vec<(String, i64, i64)>,
}

/// The same statement on whichever pool the backend holds: the two arms differ only in the
/// pool's type, which sqlx needs at compile time.
macro_rules! on_pool {
    ($backend:expr, $pool:ident => $body:expr) => {
        match $backend {
            Backend::Postgres($pool) => $body,
            Backend::Sqlite($pool) => $body,
        }
    };
}

fn sql(backend: &Backend, statement: &str) -> String {
    match backend {
        Backend::Postgres(_) => statement.to_owned(),
        Backend::Sqlite(_) => statement.replace('$', "?"),
    }
}

const COLUMNS: &str = "seq, key, tenant, recipient, channel, kind, source, action_id, title, body, \
     address, position, created_us, status, attempts, next_attempt_us, last_error, delivered_us, \
     read_us";

/// Writes a batch's changes in one transaction; a notification whose key exists is skipped.
/// Answers how many notifications were new.
///
/// On PostgreSQL the batch's notifications go in one statement (`UNNEST` of one array per
/// column, in the batch's order, so `seq` follows the log) and its reminders in two (an action's
/// last change in the batch is the one that stands: reminders replace each other, forgetting
/// removes).
///
/// The write runs as a task of its own, so that cancelling the caller (a notifier task aborted
/// mid-batch) never cuts a statement off half-sent: a connection left that way keeps its
/// transaction open, and an open transaction holds back every gap-safe reader of the log.
pub async fn apply(backend: &Backend, changes: Vec<Change>) -> anyhow::Result<u64> {
    if changes.is_empty() {
        return Ok(0);
    }
    let backend = backend.clone();
    tokio::spawn(async move {
        match &backend {
            Backend::Postgres(pool) => apply_postgres(pool, &changes).await,
            Backend::Sqlite(pool) => apply_sqlite(pool, &changes).await,
        }
    })
    .await
    .context("the notification batch's write task")?
}

async fn apply_postgres(pool: &sqlx::PgPool, changes: &[Change]) -> anyhow::Result<u64> {
    let rows: Vec<&NewNotification> = changes
        .iter()
        .filter_map(|change| match change {
            Change::Notify(row) => Some(row),
            _ => None,
        })
        .collect();
    // An action's last reminder change in the batch, in the batch's order.
    let mut last: std::collections::HashMap<&str, &Change> = std::collections::HashMap::new();
    for change in changes {
        match change {
            Change::Remind { action_id, .. } | Change::Forget { action_id } => {
                last.insert(action_id.as_str(), change);
            }
            Change::Notify(_) => {}
        }
    }
    let mut forget = Vec::new();
    let mut remind = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for change in last.values() {
        match change {
            Change::Forget { action_id } => forget.push(action_id.as_str()),
            Change::Remind {
                tenant,
                action_id,
                round,
                remind_us,
                position,
            } => {
                remind.0.push(tenant.as_str());
                remind.1.push(action_id.as_str());
                remind.2.push(round.as_str());
                remind.3.push(*remind_us);
                remind.4.push(*position);
            }
            Change::Notify(_) => {}
        }
    }
    let mut tx = pool
        .begin()
        .await
        .context("starting a notification batch")?;
    let mut new = 0;
    if !rows.is_empty() {
        let text = |field: fn(&NewNotification) -> &str| -> Vec<&str> {
            rows.iter().map(|row| field(row)).collect()
        };
        new = sqlx::query(
            "INSERT INTO notifications (key, tenant, recipient, channel, kind, source, action_id, \
             title, body, address, position, created_us, status, attempts, next_attempt_us, \
             delivered_us) \
             SELECT key, tenant, recipient, channel, kind, source, action_id, title, body, \
                    address, position, created_us, status, 0, created_us, \
                    CASE WHEN status = 'delivered' THEN created_us END \
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                           $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], \
                           $11::int8[], $12::int8[], $13::text[]) WITH ORDINALITY \
                    AS batch(key, tenant, recipient, channel, kind, source, action_id, title, \
                             body, address, position, created_us, status, n) \
              ORDER BY n \
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(text(|row| &row.key))
        .bind(text(|row| &row.tenant))
        .bind(text(|row| &row.recipient))
        .bind(text(|row| &row.channel))
        .bind(text(|row| &row.kind))
        .bind(text(|row| &row.source))
        .bind(
            rows.iter()
                .map(|row| row.action_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(text(|row| &row.title))
        .bind(text(|row| &row.body))
        .bind(
            rows.iter()
                .map(|row| row.address.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|row| row.position).collect::<Vec<_>>())
        .bind(rows.iter().map(|row| row.created_us).collect::<Vec<_>>())
        .bind(text(|row| row.status))
        .execute(&mut *tx)
        .await
        .context("writing notifications")?
        .rows_affected();
    }
    if !remind.0.is_empty() {
        sqlx::query(
            "INSERT INTO notification_reminders (tenant, action_id, round, remind_us, position) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[]) \
             ON CONFLICT (action_id) DO UPDATE SET round = excluded.round, \
             remind_us = excluded.remind_us, position = excluded.position \
             WHERE notification_reminders.position <= excluded.position",
        )
        .bind(&remind.0)
        .bind(&remind.1)
        .bind(&remind.2)
        .bind(&remind.3)
        .bind(&remind.4)
        .execute(&mut *tx)
        .await
        .context("writing reminders")?;
    }
    if !forget.is_empty() {
        sqlx::query("DELETE FROM notification_reminders WHERE action_id = ANY($1)")
            // Planned against the table as it is now, not as it was when first prepared (see
            // the projections' `write_actions`).
            .persistent(false)
            .bind(&forget)
            .execute(&mut *tx)
            .await
            .context("removing reminders")?;
    }
    tx.commit()
        .await
        .context("committing a notification batch")?;
    Ok(new)
}

/// SQLite is in the process: one statement per change costs no round trip.
async fn apply_sqlite(pool: &sqlx::SqlitePool, changes: &[Change]) -> anyhow::Result<u64> {
    let mut tx = pool
        .begin()
        .await
        .context("starting a notification batch")?;
    let mut new = 0;
    for change in changes {
        match change {
            Change::Notify(row) => {
                let delivered = (row.status == "delivered").then_some(row.created_us);
                new += sqlx::query(
                    "INSERT INTO notifications (key, tenant, recipient, channel, kind, source, \
                     action_id, title, body, address, position, created_us, status, attempts, \
                     next_attempt_us, delivered_us) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?) \
                     ON CONFLICT (key) DO NOTHING",
                )
                .bind(&row.key)
                .bind(&row.tenant)
                .bind(&row.recipient)
                .bind(&row.channel)
                .bind(&row.kind)
                .bind(&row.source)
                .bind(&row.action_id)
                .bind(&row.title)
                .bind(&row.body)
                .bind(&row.address)
                .bind(row.position)
                .bind(row.created_us)
                .bind(row.status)
                .bind(row.created_us)
                .bind(delivered)
                .execute(&mut *tx)
                .await
                .context("writing a notification")?
                .rows_affected();
            }
            Change::Remind {
                tenant,
                action_id,
                round,
                remind_us,
                position,
            } => {
                sqlx::query(
                    "INSERT INTO notification_reminders (tenant, action_id, round, remind_us, \
                     position) VALUES (?, ?, ?, ?, ?) ON CONFLICT (action_id) DO UPDATE SET \
                     round = excluded.round, remind_us = excluded.remind_us, \
                     position = excluded.position \
                     WHERE notification_reminders.position <= excluded.position",
                )
                .bind(tenant)
                .bind(action_id)
                .bind(round)
                .bind(remind_us)
                .bind(position)
                .execute(&mut *tx)
                .await
                .context("writing a reminder")?;
            }
            Change::Forget { action_id } => {
                sqlx::query("DELETE FROM notification_reminders WHERE action_id = ?")
                    .bind(action_id)
                    .execute(&mut *tx)
                    .await
                    .context("removing a reminder")?;
            }
        }
    }
    tx.commit()
        .await
        .context("committing a notification batch")?;
    Ok(new)
}

/// Reminders due at `now_us`, oldest first.
pub async fn due_reminders(
    backend: &Backend,
    now_us: i64,
    limit: i64,
) -> anyhow::Result<Vec<DueReminder>> {
    let statement = sql(
        backend,
        "SELECT tenant, action_id, round, remind_us, position FROM notification_reminders \
         WHERE remind_us <= $1 ORDER BY remind_us LIMIT $2",
    );
    on_pool!(backend, pool => {
        sqlx::query_as(&statement)
            .bind(now_us)
            .bind(limit)
            .fetch_all(pool)
            .await
    })
    .context("reading due reminders")
}

/// Removes a reminder once handled, unless it was replaced meanwhile (another round).
pub async fn finish_reminder(
    backend: &Backend,
    action_id: &str,
    round: &str,
) -> anyhow::Result<()> {
    let statement = sql(
        backend,
        "DELETE FROM notification_reminders WHERE action_id = $1 AND round = $2",
    );
    on_pool!(backend, pool => sqlx::query(&statement)
            .bind(action_id)
            .bind(round)
            .execute(pool)
            .await
            .map(drop))
    .context("removing a handled reminder")?;
    Ok(())
}

/// A recipient's in-app notifications, newest first, below `before` (a `seq`).
pub async fn feed(
    backend: &Backend,
    tenant: &str,
    recipient: &str,
    before: Option<i64>,
    unread_only: bool,
    limit: i64,
) -> anyhow::Result<Vec<NotificationRow>> {
    let statement = sql(
        backend,
        &format!(
            "SELECT {COLUMNS} FROM notifications WHERE tenant = $1 AND recipient = $2 \
             AND channel = 'in_app' AND seq < $3 AND ($4 = 0 OR read_us IS NULL) \
             ORDER BY seq DESC LIMIT $5"
        ),
    );
    let before = before.unwrap_or(i64::MAX);
    let unread = i64::from(unread_only);
    on_pool!(backend, pool => {
        sqlx::query_as(&statement)
            .bind(tenant)
            .bind(recipient)
            .bind(before)
            .bind(unread)
            .bind(limit)
            .fetch_all(pool)
            .await
    })
    .context("reading a notification feed")
}

/// Counts of a recipient's in-app notifications: all, unread, and both per kind.
pub async fn counts(
    backend: &Backend,
    tenant: &str,
    recipient: &str,
) -> anyhow::Result<FeedCounts> {
    let statement = sql(
        backend,
        "SELECT kind, COUNT(*), SUM(CASE WHEN read_us IS NULL THEN 1 ELSE 0 END) \
         FROM notifications WHERE tenant = $1 AND recipient = $2 AND channel = 'in_app' \
         GROUP BY kind ORDER BY kind",
    );
    let rows: Vec<(String, i64, i64)> = match backend {
        Backend::Postgres(pool) => {
            sqlx::query_as(&statement)
                .bind(tenant)
                .bind(recipient)
                .fetch_all(pool)
                .await
        }
        Backend::Sqlite(pool) => {
            sqlx::query_as(&statement)
                .bind(tenant)
                .bind(recipient)
                .fetch_all(pool)
                .await
        }
    }
    .context("counting notifications")?;
    Ok(FeedCounts {
        total: rows.iter().map(|row| row.1).sum(),
        unread: rows.iter().map(|row| row.2).sum(),
        by_kind: rows,
    })
}

/// Marks one in-app notification read (a second time changes nothing); false when the
/// recipient has no such notification.
pub async fn mark_read(
    backend: &Backend,
    tenant: &str,
    recipient: &str,
    seq: i64,
    now_us: i64,
) -> anyhow::Result<bool> {
    let statement = sql(
        backend,
        "UPDATE notifications SET read_us = COALESCE(read_us, $4) \
         WHERE tenant = $1 AND recipient = $2 AND seq = $3 AND channel = 'in_app'",
    );
    let affected = match backend {
        Backend::Postgres(pool) => sqlx::query(&statement)
            .bind(tenant)
            .bind(recipient)
            .bind(seq)
            .bind(now_us)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()),
        Backend::Sqlite(pool) => sqlx::query(&statement)
            .bind(tenant)
            .bind(recipient)
            .bind(seq)
            .bind(now_us)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()),
    }
    .context("marking a notification read")?;
    Ok(affected > 0)
}

/// Marks every unread in-app notification of the recipient read; answers how many.
pub async fn mark_all_read(
    backend: &Backend,
    tenant: &str,
    recipient: &str,
    now_us: i64,
) -> anyhow::Result<u64> {
    let statement = sql(
        backend,
        "UPDATE notifications SET read_us = $3 WHERE tenant = $1 AND recipient = $2 \
         AND channel = 'in_app' AND read_us IS NULL",
    );
    on_pool!(backend, pool => sqlx::query(&statement)
            .bind(tenant)
            .bind(recipient)
            .bind(now_us)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))
    .context("marking notifications read")
}

/// Deliveries of a tenant on every channel, newest first, below `before`, optionally of one
/// status (`pending`, `delivered`, `dead`).
pub async fn deliveries(
    backend: &Backend,
    tenant: &str,
    status: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> anyhow::Result<Vec<NotificationRow>> {
    let statement = sql(
        backend,
        &format!(
            "SELECT {COLUMNS} FROM notifications WHERE tenant = $1 AND seq < $2 \
             AND ($3 = '' OR status = $3) ORDER BY seq DESC LIMIT $4"
        ),
    );
    let before = before.unwrap_or(i64::MAX);
    let status = status.unwrap_or_default();
    on_pool!(backend, pool => {
        sqlx::query_as(&statement)
            .bind(tenant)
            .bind(before)
            .bind(status)
            .bind(limit)
            .fetch_all(pool)
            .await
    })
    .context("reading deliveries")
}

/// Pending deliveries on `channels` due at `now_us`, oldest first.
pub async fn due_deliveries(
    backend: &Backend,
    channels: &[&str],
    now_us: i64,
    limit: i64,
) -> anyhow::Result<Vec<NotificationRow>> {
    let mut due = Vec::new();
    for channel in channels {
        let statement = sql(
            backend,
            &format!(
                "SELECT {COLUMNS} FROM notifications WHERE status = 'pending' AND channel = $1 \
                 AND next_attempt_us <= $2 ORDER BY next_attempt_us, seq LIMIT $3"
            ),
        );
        let rows: Vec<NotificationRow> = match backend {
            Backend::Postgres(pool) => {
                sqlx::query_as(&statement)
                    .bind(channel)
                    .bind(now_us)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
            }
            Backend::Sqlite(pool) => {
                sqlx::query_as(&statement)
                    .bind(channel)
                    .bind(now_us)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
            }
        }
        .context("reading due deliveries")?;
        due.extend(rows);
    }
    due.sort_by_key(|row| (row.next_attempt_us, row.seq));
    due.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(due)
}

/// Records one delivery attempt: `delivered`, or failed and retried at `next_attempt_us`, or
/// failed for good (`dead`).
pub async fn record_attempt(
    backend: &Backend,
    seq: i64,
    status: &str,
    error: Option<&str>,
    next_attempt_us: i64,
    now_us: i64,
) -> anyhow::Result<()> {
    let statement = sql(
        backend,
        "UPDATE notifications SET status = $2, attempts = attempts + 1, last_error = $3, \
         next_attempt_us = $4, delivered_us = CASE WHEN $2 = 'delivered' THEN $5 ELSE delivered_us END \
         WHERE seq = $1 AND status = 'pending'",
    );
    on_pool!(backend, pool => sqlx::query(&statement)
            .bind(seq)
            .bind(status)
            .bind(error)
            .bind(next_attempt_us)
            .bind(now_us)
            .execute(pool)
            .await
            .map(drop))
    .context("recording a delivery attempt")
}

/// A recipient's in-app notifications after `after` (a `seq`), oldest first.
pub async fn feed_after(
    backend: &Backend,
    tenant: &str,
    recipient: &str,
    after: i64,
    limit: i64,
) -> anyhow::Result<Vec<NotificationRow>> {
    let statement = sql(
        backend,
        &format!(
            "SELECT {COLUMNS} FROM notifications WHERE tenant = $1 AND recipient = $2 \
             AND channel = 'in_app' AND seq > $3 ORDER BY seq LIMIT $4"
        ),
    );
    on_pool!(backend, pool => {
        sqlx::query_as(&statement)
            .bind(tenant)
            .bind(recipient)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await
    })
    .context("reading new notifications")
}

/// Email rows kept for daily digests, written before `before_us`, by tenant and recipient.
pub async fn due_digests(
    backend: &Backend,
    before_us: i64,
    limit: i64,
) -> anyhow::Result<Vec<NotificationRow>> {
    let statement = sql(
        backend,
        &format!(
            "SELECT {COLUMNS} FROM notifications WHERE status = 'digest' AND channel = 'email' \
             AND created_us < $1 ORDER BY tenant, recipient, seq LIMIT $2"
        ),
    );
    on_pool!(backend, pool => {
        sqlx::query_as(&statement)
            .bind(before_us)
            .bind(limit)
            .fetch_all(pool)
            .await
    })
    .context("reading due digests")
}

/// Queues one daily digest: writes `digest` (a pending email row of kind `digest`) and moves
/// the rows it gathers (`items`, kept as `digest`) to `digested`, in one transaction, so a row
/// goes into one digest only and the digest is then delivered, retried and dead-lettered like
/// any email. Answers false when the digest was already queued (its key exists).
pub async fn queue_digest(
    backend: &Backend,
    digest: &NewNotification,
    items: &[i64],
) -> anyhow::Result<bool> {
    let insert = sql(
        backend,
        "INSERT INTO notifications (key, tenant, recipient, channel, kind, source, action_id, \
         title, body, address, position, created_us, status, attempts, next_attempt_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 0, $14) \
         ON CONFLICT (key) DO NOTHING",
    );
    let gather = sql(
        backend,
        "UPDATE notifications SET status = 'digested' WHERE seq = $1 AND status = 'digest'",
    );
    macro_rules! queue {
        ($pool:expr) => {{
            let mut tx = $pool.begin().await.context("starting to queue a digest")?;
            let new = sqlx::query(&insert)
                .bind(&digest.key)
                .bind(&digest.tenant)
                .bind(&digest.recipient)
                .bind(&digest.channel)
                .bind(&digest.kind)
                .bind(&digest.source)
                .bind(&digest.action_id)
                .bind(&digest.title)
                .bind(&digest.body)
                .bind(&digest.address)
                .bind(digest.position)
                .bind(digest.created_us)
                .bind(digest.status)
                .bind(digest.created_us)
                .execute(&mut *tx)
                .await
                .context("writing a digest")?
                .rows_affected()
                > 0;
            for item in items {
                sqlx::query(&gather)
                    .bind(item)
                    .execute(&mut *tx)
                    .await
                    .context("gathering a row into a digest")?;
            }
            tx.commit().await.context("committing a digest")?;
            Ok(new)
        }};
    }
    on_pool!(backend, pool => queue!(pool))
}

/// Records one attempt at a digest ([`record_attempt`]) and, once it is `delivered` or `dead`,
/// gives the rows it gathers (`items`, `digested`) the same end, attempts, error and delivery
/// time, in one transaction.
pub async fn record_digest_attempt(
    backend: &Backend,
    seq: i64,
    items: &[i64],
    status: &str,
    error: Option<&str>,
    next_attempt_us: i64,
    now_us: i64,
) -> anyhow::Result<()> {
    let digest = sql(
        backend,
        "UPDATE notifications SET status = $2, attempts = attempts + 1, last_error = $3, \
         next_attempt_us = $4, delivered_us = CASE WHEN $2 = 'delivered' THEN $5 ELSE delivered_us END \
         WHERE seq = $1 AND status = 'pending'",
    );
    let item = sql(
        backend,
        "UPDATE notifications SET status = $2, last_error = $3, delivered_us = $4, \
         attempts = (SELECT attempts FROM notifications WHERE seq = $5) \
         WHERE seq = $1 AND status = 'digested'",
    );
    let settled = status != "pending";
    let delivered = (status == "delivered").then_some(now_us);
    macro_rules! record {
        ($pool:expr) => {{
            let mut tx = $pool
                .begin()
                .await
                .context("starting to record a digest attempt")?;
            let recorded = sqlx::query(&digest)
                .bind(seq)
                .bind(status)
                .bind(error)
                .bind(next_attempt_us)
                .bind(now_us)
                .execute(&mut *tx)
                .await
                .context("recording a digest attempt")?
                .rows_affected();
            if settled && recorded > 0 {
                for gathered in items {
                    sqlx::query(&item)
                        .bind(gathered)
                        .bind(status)
                        .bind(error)
                        .bind(delivered)
                        .bind(seq)
                        .execute(&mut *tx)
                        .await
                        .context("recording the end of a digest's rows")?;
                }
            }
            tx.commit().await.context("committing a digest attempt")
        }};
    }
    on_pool!(backend, pool => record!(pool))
}
