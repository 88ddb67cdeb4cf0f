//! The ledger on PostgreSQL (server mode): aggregates loaded through postgres-es, appends through
//! the group committer (`commit`), the log read below the oldest running transaction (see
//! [`crate::log`]), tailer locks as session advisory locks, wake-ups through
//! `LISTEN countersign_events`.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use cqrs_es::persist::{PersistedEventStore, SerializedEvent};
use cqrs_es::{AggregateError, EventStore};
use postgres_es::PostgresEventRepository;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::{Connection, FromRow, PgPool, Row};

use super::commit::GroupCommitter;
use super::{LedgerStore, LogRow, Outcome, checkpoint, logged, pending, sql};
use crate::lock::{TailerLock, advisory_key};
use crate::{LedgerAggregate, LogCursor, LogWaker, LoggedEvent};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

// ORDER BY names the table's columns: the output alias `txid` is a bigint, and ordering by it
// would defeat the (txid, position) index and sort every remaining row on each batch.
const READ: &str = "
SELECT position, txid::text::bigint AS txid, tenant, aggregate_type, aggregate_id, sequence,
       event_type, event_version, payload, metadata, recorded_at
  FROM events
 WHERE (txid, position) > ($1::bigint::text::xid8, $2)
   AND txid < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY events.txid, events.position
 LIMIT $3";

// Same caution as READ: ordering by the alias made this a sort of the whole log per call.
const HEAD: &str = "
SELECT txid::text::bigint AS txid, position
  FROM events
 WHERE txid < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY events.txid DESC, events.position DESC
 LIMIT 1";

const STREAM: &str = "
SELECT position, txid::text::bigint AS txid, tenant, aggregate_type, aggregate_id, sequence,
       event_type, event_version, payload, metadata, recorded_at
  FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence LIMIT 1000";

// STREAMS and POSITIONS go unprepared (`persistent(false)`): PostgreSQL would keep the generic
// plan it made while the log was small, and for STREAMS that plan walks every event of the
// aggregate type and filters `aggregate_id = ANY($2)` row by row (seen with auto_explain: the
// notifier's batch read cost grew with the whole log). Planned per call with the actual arrays,
// both are index look-ups.
const STREAMS: &str = "
SELECT position, txid::text::bigint AS txid, tenant, aggregate_type, aggregate_id, sequence,
       event_type, event_version, payload, metadata, recorded_at
  FROM events WHERE aggregate_type = $1 AND aggregate_id = ANY($2)
 ORDER BY aggregate_id, sequence";

const POSITIONS: &str = "
SELECT position, txid::text::bigint AS txid, tenant, aggregate_type, aggregate_id,
       sequence, event_type, event_version, payload, metadata, recorded_at
  FROM events WHERE position = ANY($1) ORDER BY position";

/// The events table on PostgreSQL.
#[derive(Debug, Clone)]
pub(crate) struct PostgresStore {
    pool: PgPool,
    /// Appends concurrent commands' events together (started on first use).
    committer: Arc<OnceLock<GroupCommitter>>,
}

impl PostgresStore {
    pub(crate) async fn open(url: &str) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(&crate::loopback_plain(url))
            .context("DATABASE_URL is not a valid PostgreSQL URL")?;
        let pool = PgPoolOptions::new()
            .max_connections(32)
            .acquire_timeout(Duration::from_secs(10))
            // sqlx pings every connection it hands out by default: a round trip per query. A
            // connection that died fails its query instead (the caller sees a store error, and
            // the pool replaces the connection).
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .context("connecting to PostgreSQL")?;
        Ok(Self {
            pool,
            committer: Arc::new(OnceLock::new()),
        })
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn committer(&self) -> &GroupCommitter {
        self.committer
            .get_or_init(|| GroupCommitter::start(self.pool.clone()))
    }

    #[cfg(feature = "testing")]
    pub(crate) fn commit_probe(&self) -> super::CommitProbe {
        self.committer().probe()
    }
}

impl LedgerStore for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
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

    fn decides_creations_unread(&self) -> bool {
        true
    }

    async fn load<A>(&self, id: &str) -> Result<(A, usize), AggregateError<A::Error>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        // Pure event sourcing only: see the crate documentation.
        let context = PersistedEventStore::<_, A>::new_event_store(PostgresEventRepository::new(
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

    async fn append<A>(&self, id: &str, events: Vec<SerializedEvent>) -> anyhow::Result<Outcome>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        self.committer().append(A::TYPE, id, events).await
    }

    async fn create_streams<A>(
        &self,
        streams: Vec<(String, SerializedEvent)>,
    ) -> anyhow::Result<Vec<Option<(i64, i64)>>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        super::commit::create_streams(&self.pool, A::TYPE, &streams)
            .await
            .context("starting streams")
    }

    async fn read_log(&self, after: LogCursor, limit: u32) -> anyhow::Result<Vec<LoggedEvent>> {
        let rows = sqlx::query(READ)
            .bind(after.txid)
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

    async fn streams_events(
        &self,
        aggregate_type: &str,
        ids: &[String],
    ) -> anyhow::Result<Vec<LoggedEvent>> {
        let rows = sqlx::query(STREAMS)
            .persistent(false)
            .bind(aggregate_type)
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .context("reading several aggregates' events")?;
        rows.iter().map(decode).collect()
    }

    async fn read_positions(&self, positions: &[i64]) -> anyhow::Result<Vec<LoggedEvent>> {
        let rows = sqlx::query(POSITIONS)
            .persistent(false)
            .bind(positions)
            .fetch_all(&self.pool)
            .await
            .context("reading events by position")?;
        rows.iter().map(decode).collect()
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
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .context("LISTEN connection")?;
        listener
            .listen("countersign_events")
            .await
            .context("LISTEN countersign_events")?;
        Ok(LogWaker::Postgres(Box::new(listener)))
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

    /// A session-level `pg_try_advisory_lock` on a connection of its own, detached from the
    /// pool: released when the lock is, or when the process or its connection dies.
    async fn lock_tailer(&self, name: &str) -> anyhow::Result<Option<TailerLock>> {
        let mut connection = self
            .pool
            .acquire()
            .await
            .context("connection for a tailer lock")?
            .detach();
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(advisory_key(name))
            .fetch_one(&mut connection)
            .await
            .context("pg_try_advisory_lock")?;
        if !locked {
            let _ = connection.close().await;
            return Ok(None);
        }
        Ok(Some(TailerLock::session(name, connection)))
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

/// A stored row as a [`LoggedEvent`]; an error names the row's position, so that a reader
/// stuck on it says where (see `health`).
fn decode(row: &PgRow) -> anyhow::Result<LoggedEvent> {
    let base = LogRow::from_row(row).context("decoding a log row")?;
    let position = base.position;
    let decoded = (|| -> Result<_, sqlx::Error> {
        Ok((
            row.try_get("payload")?,
            row.try_get("metadata")?,
            row.try_get("recorded_at")?,
        ))
    })()
    .with_context(|| format!("decoding the event at position {position}"))?;
    let (payload, metadata, recorded_at) = decoded;
    Ok(logged(base, payload, metadata, recorded_at))
}

#[cfg(test)]
mod tests {
    use super::{HEAD, READ};
    use crate::Backend;
    use crate::testing::TestStore;

    /// Both log queries can walk the (txid, position) index in order: a query that must sort
    /// reads the whole log on every call (ordering by the bigint alias instead of the column did
    /// exactly that). Sorting is priced out so that the plan shows whether it can be avoided at
    /// all, whatever the table's size.
    #[tokio::test]
    async fn the_log_queries_read_the_index_in_order_without_sorting() -> anyhow::Result<()> {
        let store = TestStore::postgres().await?;
        let Backend::Postgres(pool) = store.ledger.backend() else {
            anyhow::bail!("a PostgreSQL store");
        };
        for (name, sql) in [
            (
                "read",
                READ.replace("$1", "0")
                    .replace("$2", "0")
                    .replace("$3", "1000"),
            ),
            ("head", HEAD.to_owned()),
        ] {
            let mut tx = pool.begin().await?;
            sqlx::query("SET LOCAL enable_sort = off")
                .execute(&mut *tx)
                .await?;
            sqlx::query("SET LOCAL enable_bitmapscan = off")
                .execute(&mut *tx)
                .await?;
            sqlx::query("SET LOCAL enable_seqscan = off")
                .execute(&mut *tx)
                .await?;
            let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
                .fetch_all(&mut *tx)
                .await?;
            let plan = plan.join("\n");
            assert!(plan.contains("events_log_order"), "{name}: {plan}");
            assert!(!plan.contains("Sort"), "{name} sorts: {plan}");
        }
        Ok(())
    }
}
