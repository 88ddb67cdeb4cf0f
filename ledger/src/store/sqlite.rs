//! The ledger on SQLite (the embedded default): aggregates loaded and appended through sqlite-es
//! (one transaction per command), the log read in position order (one writer at a time, so
//! position order is commit order), tailer locks as `flock`s on files beside the database,
//! wake-ups through an in-process signal.

use std::fs::{OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use cqrs_es::persist::{
    PersistedEventRepository, PersistedEventStore, PersistenceError, SerializedEvent,
};
use cqrs_es::{AggregateError, EventStore};
use sqlite_es::SqliteEventRepository;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{FromRow, Row, SqlitePool};
use tokio::sync::Notify;

use super::{LedgerStore, LogRow, Outcome, checkpoint, logged, pending, sql, unboxed};
use crate::lock::{TailerLock, advisory_key};
use crate::{LedgerAggregate, LogCursor, LogWaker, LoggedEvent};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

const READ: &str = "
SELECT position, 0 AS txid, tenant, aggregate_type, aggregate_id, sequence,
       event_type, event_version, payload, metadata, recorded_at
  FROM events
 WHERE position > $1
 ORDER BY position
 LIMIT $2";

const STREAM: &str = "
SELECT position, 0 AS txid, tenant, aggregate_type, aggregate_id, sequence,
       event_type, event_version, payload, metadata, recorded_at
  FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence LIMIT 1000";

const HEAD: &str = "SELECT 0, position FROM events ORDER BY position DESC LIMIT 1";

const LOCATE: &str = "
SELECT position, 0 FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence >= $3
 ORDER BY sequence";

/// The events table in one SQLite file.
#[derive(Debug, Clone)]
pub(crate) struct SqliteStore {
    pool: SqlitePool,
    /// The database file: tailer locks live beside it (`<file>.locks/`).
    path: PathBuf,
    /// Wakes in-process tailers after an append (SQLite has no LISTEN/NOTIFY).
    appended: Arc<Notify>,
}

impl SqliteStore {
    pub(crate) async fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            pool,
            path: path.to_owned(),
            appended: Arc::new(Notify::new()),
        })
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The global positions of the events of `id` from sequence `first` on, just committed.
    async fn locate(
        &self,
        aggregate_type: &str,
        id: &str,
        first: usize,
    ) -> anyhow::Result<Vec<(i64, i64)>> {
        let first = i64::try_from(first).context("an event sequence beyond the store's range")?;
        sqlx::query_as(LOCATE)
            .bind(aggregate_type)
            .bind(id)
            .bind(first)
            .fetch_all(&self.pool)
            .await
            .context("locating the appended events")
    }
}

impl LedgerStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATIONS
            .run(&self.pool)
            .await
            .context("applying migrations")
    }

    async fn pending_migrations(&self) -> anyhow::Result<usize> {
        let applied: Vec<i64> = sqlx::query_scalar(sql::APPLIED_MIGRATIONS)
            .fetch_all(&self.pool)
            .await
            .unwrap_or_default();
        Ok(pending(&MIGRATIONS, &applied))
    }

    async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .context("the database does not answer")
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    /// One writer at a time: every command reads its stream first.
    fn decides_creations_unread(&self) -> bool {
        false
    }

    async fn load<A>(&self, id: &str) -> Result<(A, usize), AggregateError<A::Error>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        // Pure event sourcing only: see the crate documentation.
        let context = PersistedEventStore::<_, A>::new_event_store(SqliteEventRepository::new(
            self.pool.clone(),
        ))
        .with_upcasters(A::upcasters())
        .load_aggregate(id)
        .await?;
        Ok((context.aggregate, context.current_sequence))
    }

    async fn stream_version(&self, aggregate_type: &str, id: &str) -> anyhow::Result<i64> {
        sqlx::query_scalar(sql::STREAM_VERSION)
            .bind(aggregate_type)
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .context("reading the stream's version")
    }

    async fn stream_versions(
        &self,
        a: (&str, &str),
        b: (&str, &str),
    ) -> anyhow::Result<(i64, i64)> {
        sqlx::query_as(sql::STREAM_VERSIONS)
            .bind(a.0)
            .bind(a.1)
            .bind(b.0)
            .bind(b.1)
            .fetch_one(&self.pool)
            .await
            .context("reading two streams' versions")
    }

    /// sqlite-es's append as cqrs-es's event store makes it (`persist` without a snapshot: one
    /// transaction, an INSERT per event; a taken sequence is its optimistic-lock error), then the
    /// events' positions read back.
    async fn append<A>(&self, id: &str, events: Vec<SerializedEvent>) -> anyhow::Result<Outcome>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        let Some(first) = events.first().map(|event| event.sequence) else {
            return Ok(Outcome::Committed(Vec::new()));
        };
        match SqliteEventRepository::new(self.pool.clone())
            .persist::<A>(&events, None)
            .await
        {
            Ok(()) => {}
            Err(PersistenceError::OptimisticLockError) => return Ok(Outcome::Conflict),
            Err(err) => return Err(unboxed(err)),
        }
        let placed = self.locate(A::TYPE, id, first).await?;
        self.appended.notify_waiters();
        Ok(Outcome::Committed(placed))
    }

    async fn create_streams<A>(
        &self,
        streams: Vec<(String, SerializedEvent)>,
    ) -> anyhow::Result<Vec<Option<(i64, i64)>>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        // One writer at a time: a statement for all would not commit sooner than these.
        let mut placed = Vec::with_capacity(streams.len());
        for (id, event) in streams {
            placed.push(match self.append::<A>(&id, vec![event]).await? {
                Outcome::Committed(mut at) => at.pop(),
                Outcome::Conflict => None,
            });
        }
        Ok(placed)
    }

    async fn read_log(&self, after: LogCursor, limit: u32) -> anyhow::Result<Vec<LoggedEvent>> {
        let rows = sqlx::query(READ)
            .bind(after.position)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .context("reading the log")?;
        rows.iter().map(decode).collect()
    }

    async fn stream_events(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
    ) -> anyhow::Result<Vec<LoggedEvent>> {
        let rows = sqlx::query(STREAM)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(after_sequence)
            .fetch_all(&self.pool)
            .await
            .context("reading an aggregate's events")?;
        rows.iter().map(decode).collect()
    }

    /// In chunks of 500 positions (SQLite binds no arrays).
    async fn streams_events(
        &self,
        aggregate_type: &str,
        ids: &[String],
    ) -> anyhow::Result<Vec<LoggedEvent>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; ids.len()].join(", ");
        let sql = format!(
            "SELECT position, 0 AS txid, tenant, aggregate_type, aggregate_id, sequence,
                    event_type, event_version, payload, metadata, recorded_at
               FROM events WHERE aggregate_type = ? AND aggregate_id IN ({marks})
              ORDER BY aggregate_id, sequence"
        );
        let mut query = sqlx::query(&sql).bind(aggregate_type);
        for id in ids {
            query = query.bind(id);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .context("reading several aggregates' events")?;
        rows.iter().map(decode).collect()
    }

    async fn read_positions(&self, positions: &[i64]) -> anyhow::Result<Vec<LoggedEvent>> {
        let mut events = Vec::with_capacity(positions.len());
        for chunk in positions.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT position, 0 AS txid, tenant, aggregate_type, aggregate_id, sequence,
                        event_type, event_version, payload, metadata, recorded_at
                   FROM events WHERE position IN ({marks}) ORDER BY position"
            );
            let mut query = sqlx::query(&sql);
            for position in chunk {
                query = query.bind(position);
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .context("reading events by position")?;
            for row in &rows {
                events.push(decode(row)?);
            }
        }
        events.sort_by_key(|event| event.cursor.position);
        Ok(events)
    }

    async fn log_head(&self) -> anyhow::Result<LogCursor> {
        let row: Option<(i64, i64)> = sqlx::query_as(HEAD)
            .fetch_optional(&self.pool)
            .await
            .context("reading the head of the log")?;
        Ok(checkpoint(row))
    }

    async fn committed_events(&self) -> anyhow::Result<i64> {
        sqlx::query_scalar(sql::COMMITTED_EVENTS)
            .fetch_one(&self.pool)
            .await
            .context("counting the committed events")
    }

    async fn log_waker(&self) -> anyhow::Result<LogWaker> {
        Ok(LogWaker::InProcess(Arc::clone(&self.appended)))
    }

    async fn load_checkpoint(&self, name: &str) -> anyhow::Result<LogCursor> {
        let row: Option<(i64, i64)> = sqlx::query_as(sql::LOAD_CHECKPOINT)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .context("reading a tailer checkpoint")?;
        Ok(checkpoint(row))
    }

    async fn save_checkpoint(&self, name: &str, cursor: LogCursor) -> anyhow::Result<()> {
        sqlx::query(sql::SAVE_CHECKPOINT)
            .bind(name)
            .bind(cursor.txid)
            .bind(cursor.position)
            .execute(&self.pool)
            .await
            .context("saving a tailer checkpoint")?;
        Ok(())
    }

    async fn tailer_checkpoints(&self) -> anyhow::Result<Vec<(String, LogCursor)>> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(sql::TAILER_CHECKPOINTS)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(name, txid, position)| (name, LogCursor { txid, position }))
            .collect())
    }

    /// An exclusive `flock` on `<db>.locks/<key>`, so that a CLI command and a running `serve`
    /// on the same file exclude each other too; the kernel releases it when the holder closes
    /// the file or dies.
    async fn lock_tailer(&self, name: &str) -> anyhow::Result<Option<TailerLock>> {
        let dir = PathBuf::from(format!("{}.locks", self.path.display()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{:016x}", advisory_key(name)));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(TailerLock::file(name, file))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(err)) => {
                Err(err).with_context(|| format!("locking {}", path.display()))
            }
        }
    }

    async fn put_secret(&self, tenant: &str, name: &str, value: &str) -> anyhow::Result<()> {
        sqlx::query(sql::PUT_SECRET)
            .bind(tenant)
            .bind(name)
            .bind(value)
            .execute(&self.pool)
            .await
            .context("storing a tenant secret")?;
        Ok(())
    }

    async fn secret(&self, tenant: &str, name: &str) -> anyhow::Result<Option<String>> {
        sqlx::query_scalar(sql::SECRET)
            .bind(tenant)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .context("reading a tenant secret")
    }
}

/// A stored row as a [`LoggedEvent`] (payload, metadata and time are stored as text); an error
/// names the row's position, so that a reader stuck on it says where (see `health`).
fn decode(row: &SqliteRow) -> anyhow::Result<LoggedEvent> {
    let base = LogRow::from_row(row).context("decoding a log row")?;
    let position = base.position;
    let text = |column: &str| -> anyhow::Result<String> { Ok(row.try_get(column)?) };
    let decoded = (|| -> anyhow::Result<_> {
        let recorded_at = DateTime::parse_from_rfc3339(&text("recorded_at")?)
            .context("recorded_at")?
            .with_timezone(&Utc);
        Ok((
            serde_json::from_str(&text("payload")?).context("payload")?,
            serde_json::from_str(&text("metadata")?).context("metadata")?,
            recorded_at,
        ))
    })()
    .with_context(|| format!("decoding the event at position {position}"))?;
    let (payload, metadata, recorded_at) = decoded;
    Ok(logged(base, payload, metadata, recorded_at))
}
