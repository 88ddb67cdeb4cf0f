//! The SQL the ledger runs, behind one interface: [`LedgerStore`], implemented by
//! [`PostgresStore`] (server mode) and [`SqliteStore`] (the embedded default).
//!
//! The interface covers everything the ledger does to its tables: loading an aggregate (through
//! the cqrs-es repositories, postgres-es and sqlite-es) and appending its new events (PostgreSQL's
//! group committer, `commit`; sqlite-es's transaction per command on SQLite), the gap-safe global
//! log, a stream's events, events by position, the head, tailer checkpoints and locks, tenant
//! secrets, migrations and pings.
//!
//! [`Store`] is the one place that chooses between the two: an enum whose [`LedgerStore`]
//! methods dispatch to the implementation it holds. Dispatch is a `match` per call, statically
//! typed and never boxed, so the hot paths (the group committer, [`Ledger::read_log`],
//! [`Ledger::load`]) cost what they cost when the ledger matched on its pool itself. The rest of
//! the ledger calls the interface and never names a backend.
//!
//! [`Ledger::read_log`]: crate::Ledger::read_log
//! [`Ledger::load`]: crate::Ledger::load

mod commit;
mod postgres;
mod sqlite;

use chrono::{DateTime, Utc};
use cqrs_es::AggregateError;
use cqrs_es::persist::{PersistenceError, SerializedEvent};
use serde_json::Value;

#[cfg(feature = "testing")]
pub use commit::CommitProbe;
pub(crate) use postgres::PostgresStore;
pub(crate) use sqlite::SqliteStore;

/// The most streams one `streams_events` statement reads (SQLite binds one parameter per id).
pub(crate) const MANY_STREAMS: usize = 500;

use crate::{Backend, LedgerAggregate, LogCursor, LogWaker, LoggedEvent, StoreConfig, TailerLock};

/// Where a command's events landed, in order: (position, txid).
pub(crate) type Placed = Vec<(i64, i64)>;

/// What became of one command's events.
pub(crate) enum Outcome {
    Committed(Placed),
    /// Another writer appended to the aggregate first; nothing was recorded.
    Conflict,
}

/// What the ledger asks of the database that holds its `events` table.
///
/// `async fn` in a crate-private trait: callers hold a concrete [`Store`], so each future's type
/// (and whether it is `Send`) is known where it is awaited, and nothing is boxed.
pub(crate) trait LedgerStore {
    /// `postgres` or `sqlite`.
    fn kind(&self) -> &'static str;

    /// Applies every pending migration.
    async fn migrate(&self) -> anyhow::Result<()>;

    /// How many of the code's migrations the database has not applied.
    async fn pending_migrations(&self) -> anyhow::Result<usize>;

    /// Whether the database answers.
    async fn ping(&self) -> anyhow::Result<()>;

    /// Closes the pool, waiting for connections to be returned.
    async fn close(&self);

    /// Whether a command that normally starts a new stream
    /// ([`LedgerAggregate::creates`]) is first decided on the empty aggregate without reading the
    /// stream: where a stream that exists after all costs only a conflicting append and another
    /// try (PostgreSQL's group commit).
    fn decides_creations_unread(&self) -> bool;

    /// An aggregate folded from its stored events (upcast to their current versions), and the
    /// sequence of the last one (0 when it has none).
    async fn load<A>(&self, id: &str) -> Result<(A, usize), AggregateError<A::Error>>
    where
        A: LedgerAggregate,
        A::Command: Clone;

    /// The last sequence of a stream (0 when it has none): one index probe.
    async fn stream_version(&self, aggregate_type: &str, id: &str) -> anyhow::Result<i64>;

    /// The last sequences of two streams, `(aggregate_type, id)` each, with one statement.
    async fn stream_versions(&self, a: (&str, &str), b: (&str, &str))
    -> anyhow::Result<(i64, i64)>;

    /// Appends one command's events (all of aggregate `id` of type `A`, sequences consecutive,
    /// serialized as cqrs-es serializes them) atomically, with optimistic concurrency: a taken
    /// sequence is an [`Outcome::Conflict`] and records nothing.
    async fn append<A>(&self, id: &str, events: Vec<SerializedEvent>) -> anyhow::Result<Outcome>
    where
        A: LedgerAggregate,
        A::Command: Clone;

    /// Starts new streams of type `A`, one event each (`streams`: distinct ids, each with its
    /// stream's first event), together: on PostgreSQL one statement, on SQLite one transaction
    /// per stream. A stream that already exists is left as it is and answers `None`; the others
    /// answer where their event landed, in the order given.
    async fn create_streams<A>(
        &self,
        streams: Vec<(String, SerializedEvent)>,
    ) -> anyhow::Result<Vec<Option<(i64, i64)>>>
    where
        A: LedgerAggregate,
        A::Command: Clone;

    /// Up to `limit` events after `after` in log order (see [`crate::log`]).
    async fn read_log(&self, after: LogCursor, limit: u32) -> anyhow::Result<Vec<LoggedEvent>>;

    /// Up to 1,000 events of one stream after `after_sequence`, in sequence order.
    async fn stream_events(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
    ) -> anyhow::Result<Vec<LoggedEvent>>;

    /// Every event of the streams `ids` (at most [`MANY_STREAMS`] of them) of one aggregate type,
    /// ordered by stream id, then sequence.
    async fn streams_events(
        &self,
        aggregate_type: &str,
        ids: &[String],
    ) -> anyhow::Result<Vec<LoggedEvent>>;

    /// The events stored at these (non-empty) positions, in position order.
    async fn read_positions(&self, positions: &[i64]) -> anyhow::Result<Vec<LoggedEvent>>;

    /// The newest cursor any reader can reach right now.
    async fn log_head(&self) -> anyhow::Result<LogCursor>;

    /// How many events are committed, readable or not yet.
    async fn committed_events(&self) -> anyhow::Result<i64>;

    /// Something that wakes a tailer when events may have been appended.
    async fn log_waker(&self) -> anyhow::Result<LogWaker>;

    /// The checkpoint a tailer saved under `name` (the start of the log when none).
    async fn load_checkpoint(&self, name: &str) -> anyhow::Result<LogCursor>;

    /// Saves a tailer's checkpoint (it only moves forward).
    async fn save_checkpoint(&self, name: &str, cursor: LogCursor) -> anyhow::Result<()>;

    /// Every saved tailer checkpoint, by name.
    async fn tailer_checkpoints(&self) -> anyhow::Result<Vec<(String, LogCursor)>>;

    /// The lock of tailer `name`, or `None` when another instance holds it.
    async fn lock_tailer(&self, name: &str) -> anyhow::Result<Option<TailerLock>>;

    /// Stores (or replaces) a tenant's secret.
    async fn put_secret(&self, tenant: &str, name: &str, value: &str) -> anyhow::Result<()>;

    /// A tenant's secret, if it was stored.
    async fn secret(&self, tenant: &str, name: &str) -> anyhow::Result<Option<String>>;
}

/// The store of one ledger handle (and its clones).
#[derive(Debug, Clone)]
pub(crate) enum Store {
    Postgres(PostgresStore),
    Sqlite(SqliteStore),
}

/// Runs `$call` on the implementation `$store` that `$self` holds.
macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Store::Postgres($store) => $call,
            Store::Sqlite($store) => $call,
        }
    };
}

impl Store {
    /// Opens the store (creating the SQLite file and its directory when needed). Does not migrate.
    pub(crate) async fn open(config: &StoreConfig) -> anyhow::Result<Self> {
        Ok(match config {
            StoreConfig::Postgres { url } => Self::Postgres(PostgresStore::open(url).await?),
            StoreConfig::Sqlite { path } => Self::Sqlite(SqliteStore::open(path).await?),
        })
    }

    /// The raw pool, for [`crate::Ledger::backend`].
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Self::Postgres(store) => Backend::Postgres(store.pool().clone()),
            Self::Sqlite(store) => Backend::Sqlite(store.pool().clone()),
        }
    }

    /// The group committer's test handle; `None` on SQLite, which has no committer.
    #[cfg(feature = "testing")]
    pub(crate) fn commit_probe(&self) -> Option<CommitProbe> {
        match self {
            Self::Postgres(store) => Some(store.commit_probe()),
            Self::Sqlite(_) => None,
        }
    }
}

impl LedgerStore for Store {
    fn kind(&self) -> &'static str {
        dispatch!(self, store => store.kind())
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        dispatch!(self, store => store.migrate().await)
    }

    async fn pending_migrations(&self) -> anyhow::Result<usize> {
        dispatch!(self, store => store.pending_migrations().await)
    }

    async fn ping(&self) -> anyhow::Result<()> {
        dispatch!(self, store => store.ping().await)
    }

    async fn close(&self) {
        dispatch!(self, store => store.close().await);
    }

    fn decides_creations_unread(&self) -> bool {
        dispatch!(self, store => store.decides_creations_unread())
    }

    async fn load<A>(&self, id: &str) -> Result<(A, usize), AggregateError<A::Error>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        dispatch!(self, store => store.load::<A>(id).await)
    }

    async fn stream_version(&self, aggregate_type: &str, id: &str) -> anyhow::Result<i64> {
        dispatch!(self, store => store.stream_version(aggregate_type, id).await)
    }

    async fn stream_versions(
        &self,
        a: (&str, &str),
        b: (&str, &str),
    ) -> anyhow::Result<(i64, i64)> {
        dispatch!(self, store => store.stream_versions(a, b).await)
    }

    async fn append<A>(&self, id: &str, events: Vec<SerializedEvent>) -> anyhow::Result<Outcome>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        dispatch!(self, store => store.append::<A>(id, events).await)
    }

    async fn create_streams<A>(
        &self,
        streams: Vec<(String, SerializedEvent)>,
    ) -> anyhow::Result<Vec<Option<(i64, i64)>>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        dispatch!(self, store => store.create_streams::<A>(streams).await)
    }

    async fn read_log(&self, after: LogCursor, limit: u32) -> anyhow::Result<Vec<LoggedEvent>> {
        dispatch!(self, store => store.read_log(after, limit).await)
    }

    async fn stream_events(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
    ) -> anyhow::Result<Vec<LoggedEvent>> {
        dispatch!(self, store => {
            store
                .stream_events(aggregate_type, aggregate_id, after_sequence)
                .await
        })
    }

    async fn streams_events(
        &self,
        aggregate_type: &str,
        ids: &[String],
    ) -> anyhow::Result<Vec<LoggedEvent>> {
        dispatch!(self, store => store.streams_events(aggregate_type, ids).await)
    }

    async fn read_positions(&self, positions: &[i64]) -> anyhow::Result<Vec<LoggedEvent>> {
        dispatch!(self, store => store.read_positions(positions).await)
    }

    async fn log_head(&self) -> anyhow::Result<LogCursor> {
        dispatch!(self, store => store.log_head().await)
    }

    async fn committed_events(&self) -> anyhow::Result<i64> {
        dispatch!(self, store => store.committed_events().await)
    }

    async fn log_waker(&self) -> anyhow::Result<LogWaker> {
        dispatch!(self, store => store.log_waker().await)
    }

    async fn load_checkpoint(&self, name: &str) -> anyhow::Result<LogCursor> {
        dispatch!(self, store => store.load_checkpoint(name).await)
    }

    async fn save_checkpoint(&self, name: &str, cursor: LogCursor) -> anyhow::Result<()> {
        dispatch!(self, store => store.save_checkpoint(name, cursor).await)
    }

    async fn tailer_checkpoints(&self) -> anyhow::Result<Vec<(String, LogCursor)>> {
        dispatch!(self, store => store.tailer_checkpoints().await)
    }

    async fn lock_tailer(&self, name: &str) -> anyhow::Result<Option<TailerLock>> {
        dispatch!(self, store => store.lock_tailer(name).await)
    }

    async fn put_secret(&self, tenant: &str, name: &str, value: &str) -> anyhow::Result<()> {
        dispatch!(self, store => store.put_secret(tenant, name, value).await)
    }

    async fn secret(&self, tenant: &str, name: &str) -> anyhow::Result<Option<String>> {
        dispatch!(self, store => store.secret(tenant, name).await)
    }
}

/// SQL both implementations run as it is (their drivers bind `$n` alike).
mod sql {
    pub(super) const APPLIED_MIGRATIONS: &str =
        "SELECT version FROM _sqlx_migrations WHERE success";

    pub(super) const STREAM_VERSION: &str = "SELECT COALESCE(MAX(sequence), 0) FROM events
                      WHERE aggregate_type = $1 AND aggregate_id = $2";

    pub(super) const STREAM_VERSIONS: &str = "SELECT
        (SELECT COALESCE(MAX(sequence), 0) FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2),
        (SELECT COALESCE(MAX(sequence), 0) FROM events
          WHERE aggregate_type = $3 AND aggregate_id = $4)";

    pub(super) const COMMITTED_EVENTS: &str = "SELECT COUNT(*) FROM events";

    pub(super) const LOAD_CHECKPOINT: &str =
        "SELECT txid, position FROM tailer_checkpoints WHERE name = $1";

    pub(super) const SAVE_CHECKPOINT: &str = "INSERT INTO tailer_checkpoints (name, txid, position) VALUES ($1, $2, $3)
                   ON CONFLICT (name) DO UPDATE SET txid = excluded.txid, position = excluded.position
                   WHERE (tailer_checkpoints.txid, tailer_checkpoints.position) < (excluded.txid, excluded.position)";

    pub(super) const TAILER_CHECKPOINTS: &str =
        "SELECT name, txid, position FROM tailer_checkpoints ORDER BY name";

    pub(super) const PUT_SECRET: &str =
        "INSERT INTO tenant_secrets (tenant, name, value) VALUES ($1, $2, $3)
                   ON CONFLICT (tenant, name) DO UPDATE SET value = excluded.value";

    pub(super) const SECRET: &str =
        "SELECT value FROM tenant_secrets WHERE tenant = $1 AND name = $2";
}

/// How many of `migrator`'s migrations are not among `applied`.
fn pending(migrator: &sqlx::migrate::Migrator, applied: &[i64]) -> usize {
    migrator
        .iter()
        .filter(|migration| !applied.contains(&migration.version))
        .count()
}

/// A checkpoint row as a cursor (the start of the log when there is none).
fn checkpoint(row: Option<(i64, i64)>) -> LogCursor {
    row.map_or(LogCursor::START, |(txid, position)| LogCursor {
        txid,
        position,
    })
}

/// The error inside cqrs-es's box (which it does not report as the source).
pub(crate) fn unboxed(err: PersistenceError) -> anyhow::Error {
    match err {
        PersistenceError::ConnectionError(err)
        | PersistenceError::DeserializationError(err)
        | PersistenceError::UnknownError(err) => crate::reach::from_box(err),
        other @ PersistenceError::OptimisticLockError => anyhow::Error::new(other),
    }
}

/// The columns of a log row both stores decode alike.
#[derive(sqlx::FromRow)]
struct LogRow {
    position: i64,
    txid: i64,
    tenant: String,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
}

fn logged(
    base: LogRow,
    payload: Value,
    metadata: Value,
    recorded_at: DateTime<Utc>,
) -> LoggedEvent {
    LoggedEvent {
        cursor: LogCursor {
            txid: base.txid,
            position: base.position,
        },
        tenant: base.tenant,
        aggregate_type: base.aggregate_type,
        aggregate_id: base.aggregate_id,
        sequence: base.sequence,
        event_type: base.event_type,
        event_version: base.event_version,
        payload,
        metadata,
        recorded_at,
    }
}
