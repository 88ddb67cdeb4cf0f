//! The ledger owns the system of record: the `events` table in PostgreSQL (server mode) or SQLite
//! (the embedded default), and reads it back as one gap-safe global log. Commands are decided by
//! cqrs-es aggregates; SQLite appends through sqlite-es, PostgreSQL through the group committer
//! (`commit`), with events serialized the same way.
//!
//! - [`Ledger::execute`] runs a command against an aggregate: load its events, decide, append in
//!   one transaction with optimistic concurrency, and return the committed events with their
//!   global positions. Conflicts are retried (bounded, with jitter) and reported when they
//!   outlive the retries.
//! - [`Ledger::read_log`] reads every event after a cursor in one total order that is the same
//!   for every reader and never skips an event committed late (see [`log`]).
//! - [`Ledger::lock_tailer`] makes sure one instance runs each named tailer.
//!
//! Every statement the ledger runs goes through one interface, `store::LedgerStore`, with a
//! PostgreSQL and a SQLite implementation (`store/postgres.rs`, `store/sqlite.rs`); the ledger
//! itself never matches on the backend. [`Ledger::backend`] hands tests and tools the raw pool.
//!
//! cqrs-es is used in pure event-sourcing mode only (`PersistedEventStore::new_event_store`): in
//! cqrs-es 0.5.0 its snapshot and aggregate-store modes apply each new event twice. Its `Query`
//! dispatch is not used: it runs in-process after the commit and is lost on a crash, so everything
//! durable tails the log instead.

mod execute;
pub mod health;
mod lock;
pub mod log;
mod reach;
mod secrets;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod transport;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use countersign_domain::action::Action;
use countersign_domain::{CorrelationId, TenantId, UserId};
use cqrs_es::Aggregate;
use cqrs_es::persist::EventUpcaster;
use sqlx::{PgPool, SqlitePool};

pub use execute::{Answer, Committed, LedgerError, RecordedEvent, RetryPolicy};
pub use lock::TailerLock;
pub use log::{LogCursor, LogReads, LogWaker, LoggedEvent};
pub use reach::store_unreachable;
#[cfg(feature = "testing")]
pub use store::CommitProbe;
use store::{LedgerStore as _, Store};
pub use transport::loopback_plain;

/// An aggregate the ledger stores. Its events are upcast on read by `upcasters()`.
pub trait LedgerAggregate: Aggregate<Services = ()> + Clone + 'static
where
    Self::Command: Clone,
{
    /// Whether [`Ledger::load`] keeps the folded state in memory, re-reading the stream only when
    /// it has grown (one indexed look-up instead of reading and folding every event). For small,
    /// hot, rarely-changing streams: a tenant's policies, settings and keys.
    const CACHED: bool = false;

    /// The id of one instance. [`Ledger::execute`] and [`Ledger::load`] take it typed; the ledger
    /// stores its `Display` form as the events' `aggregate_id`, so that form is a stored contract.
    type Id: std::fmt::Display + Send + Sync + ?Sized + 'static;

    /// Upcasters from older stored event versions to the current ones, oldest first.
    fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
        Vec::new()
    }

    /// Whether a command may be decided again after an optimistic-concurrency conflict.
    fn retry_on_conflict(_command: &Self::Command) -> bool {
        true
    }

    /// Whether `command` normally starts a new stream. On PostgreSQL its first try then decides
    /// on the empty aggregate without reading the stream (one round trip fewer); a stream that
    /// exists after all makes the append conflict, and the next try reads it and decides again.
    /// Only for commands that [`retry_on_conflict`](Self::retry_on_conflict).
    fn creates(_command: &Self::Command) -> bool {
        false
    }
}

/// Every action command is decided from the aggregate's state alone, so deciding it again on
/// fresh state after a conflict is always safe: a vote is recounted, a deadline re-checked, an
/// execution claim refused if another executor won, a repeated submission answered
/// `already_submitted`.
impl LedgerAggregate for Action {
    type Id = countersign_domain::ActionId;

    /// A submission's id is random or derived from its idempotency key: a repeat is the rare case,
    /// answered on the second try from the stored stream.
    fn creates(command: &Self::Command) -> bool {
        matches!(
            command,
            countersign_domain::action::ActionCommand::SubmitAction(_)
        )
    }
}

/// A tenant's policies, settings and API keys: every command is decided on the stream's current
/// state, so a retry after a conflict decides again on fresh state.
impl LedgerAggregate for countersign_domain::tenant::PolicySet {
    type Id = TenantId;
    const CACHED: bool = true;
}
impl LedgerAggregate for countersign_domain::tenant::TenantSettings {
    type Id = TenantId;
    const CACHED: bool = true;
}
impl LedgerAggregate for countersign_domain::tenant::ApiKeys {
    type Id = TenantId;
    const CACHED: bool = true;
}
impl LedgerAggregate for countersign_domain::delegation::DelegationSet {
    type Id = TenantId;
    const CACHED: bool = true;
}
/// Workflows (issue 17): a tenant's definitions, like its policies; one stream per received event
/// (its first append is the dedup: a repeat conflicts, is decided again and refused); one stream
/// per run.
impl LedgerAggregate for countersign_domain::workflow::WorkflowSet {
    type Id = TenantId;
    const CACHED: bool = true;
}
impl LedgerAggregate for countersign_domain::workflow::IntakeEvent {
    type Id = countersign_domain::workflow::IntakeKey;

    fn creates(_command: &Self::Command) -> bool {
        true
    }
}
impl LedgerAggregate for countersign_domain::workflow::WorkflowRun {
    type Id = countersign_domain::workflow::RunId;

    /// A run's id is derived from its event and workflow: a second start is the rare case
    /// (a replay), refused on the second try from the stored stream.
    fn creates(command: &Self::Command) -> bool {
        matches!(
            command,
            countersign_domain::workflow::RunCommand::StartRun { .. }
        )
    }
}
impl LedgerAggregate for countersign_domain::members::MemberDirectory {
    type Id = TenantId;
    const CACHED: bool = true;
}

/// Where the events live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// Server mode.
    Postgres { url: String },
    /// The embedded default: one SQLite file.
    Sqlite { path: PathBuf },
}

impl StoreConfig {
    /// `DATABASE_URL` when given, else `<data_dir>/countersign.db`.
    pub fn from_settings(database_url: Option<&str>, data_dir: &Path) -> Self {
        match database_url {
            Some(url) if url.starts_with("sqlite:") => Self::Sqlite {
                path: PathBuf::from(
                    url.trim_start_matches("sqlite://")
                        .trim_start_matches("sqlite:"),
                ),
            },
            Some(url) => Self::Postgres {
                url: url.to_owned(),
            },
            None => Self::Sqlite {
                path: data_dir.join("countersign.db"),
            },
        }
    }

    /// Whether this is server mode.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres { .. })
    }

    /// A pool of driver-neutral connections to this store (for the tables beside the ledger:
    /// projections, seals; a process opens one and shares it between them), at most
    /// `max_connections` of them.
    ///
    /// Connections are not pinged when handed out (a round trip per query; a dead connection
    /// fails its query instead), and one that comes back still inside a transaction is closed
    /// rather than pooled: sqlx 0.8.6 leaks the transaction of a SQLite `begin_with` cancelled
    /// between its `BEGIN` and the check that follows it, and the next `begin_with` on that
    /// connection would fail (a cancelled runner or sealer task is enough to trigger it).
    pub async fn any_pool(&self, max_connections: u32) -> anyhow::Result<sqlx::AnyPool> {
        use sqlx::Connection as _;
        use sqlx::Executor as _;
        sqlx::any::install_default_drivers();
        let (url, postgres) = match self {
            Self::Postgres { url } => (loopback_plain(url).into_owned(), true),
            Self::Sqlite { path } => (format!("sqlite://{}", path.display()), false),
        };
        sqlx::any::AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(false)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if !postgres {
                        connection.execute("PRAGMA busy_timeout = 10000").await?;
                    }
                    Ok(())
                })
            })
            .after_release(|connection, _| {
                Box::pin(async move { Ok(!connection.is_in_transaction()) })
            })
            .connect(&url)
            .await
            .context("opening a pool on the store")
    }
}

/// Whether a pool from [`StoreConfig::any_pool`] reaches PostgreSQL (else SQLite): the stores
/// that share one such pool read it from the pool rather than being told.
pub fn is_postgres_pool(pool: &sqlx::AnyPool) -> bool {
    matches!(
        pool.connect_options().database_url.scheme(),
        "postgres" | "postgresql"
    )
}

/// The raw pool of one of the two stores: the escape hatch for tests and tools that need SQL the
/// ledger does not offer ([`Ledger::backend`]). The ledger itself goes through its store
/// interface (`store`), never through this.
#[derive(Debug, Clone)]
pub enum Backend {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Who and what caused a command: stored as every event's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub tenant: TenantId,
    pub actor: UserId,
    /// The work this command belongs to, carried on to the commands it causes.
    pub correlation_id: Option<CorrelationId>,
    /// The HTTP request that sent the command (`X-Request-Id`); `None` for commands no request
    /// sent (the executor, the CLI).
    pub request_id: Option<String>,
    /// The front door the command came through (`api`, `cli`, `console`, `system`), when a use
    /// case of the application layer sent it.
    pub channel: Option<&'static str>,
}

impl Metadata {
    pub fn new(tenant: TenantId, actor: UserId) -> Self {
        Self {
            tenant,
            actor,
            correlation_id: None,
            request_id: None,
            channel: None,
        }
    }

    fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            ("tenant".to_owned(), self.tenant.to_string()),
            ("actor".to_owned(), self.actor.to_string()),
        ]);
        if let Some(correlation_id) = &self.correlation_id {
            map.insert("correlation_id".to_owned(), correlation_id.to_string());
        }
        if let Some(request_id) = &self.request_id {
            map.insert("request_id".to_owned(), request_id.clone());
        }
        if let Some(channel) = self.channel {
            map.insert("channel".to_owned(), channel.to_owned());
        }
        map
    }
}

/// A folded aggregate and the sequence it was folded up to.
type Cached = (u64, Arc<dyn std::any::Any + Send + Sync>);

/// The shared handle on the store, used by the gateway, the executor and every tailer.
#[derive(Debug, Clone)]
pub struct Ledger {
    /// The events table's SQL, on PostgreSQL or SQLite (see `store`).
    store: Store,
    /// The store's pool, for [`Ledger::backend`] only.
    backend: Backend,
    retry: RetryPolicy,
    /// The state of [`LedgerAggregate::CACHED`] streams, by (aggregate type, id): at most one entry
    /// per tenant aggregate.
    cache: Arc<std::sync::Mutex<HashMap<(&'static str, String), Cached>>>,
    /// The newest events read, shared by the process's tailers.
    tail: Arc<log::TailCache>,
    /// Which of the process's tailers are stuck (see [`health`]).
    health: health::Health,
}

impl Ledger {
    /// Opens the store (creating the SQLite file and its directory when needed). Does not migrate.
    pub async fn open(config: &StoreConfig) -> anyhow::Result<Self> {
        let store = Store::open(config).await?;
        Ok(Self {
            backend: store.backend(),
            store,
            retry: RetryPolicy::default(),
            cache: Arc::default(),
            tail: Arc::default(),
            health: health::Health::default(),
        })
    }

    /// Replaces the conflict retry policy.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The store's raw pool: the escape hatch for tests and tools that need SQL of their own
    /// (inspecting plans, tampering with rows, counting). Everything the ledger does goes through
    /// its methods instead.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Which of this process's tailers are stuck.
    pub fn health(&self) -> &health::Health {
        &self.health
    }

    /// `postgres` or `sqlite`.
    pub fn kind(&self) -> &'static str {
        self.store.kind()
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        self.store.migrate().await
    }

    /// How many of the code's migrations the database has not applied.
    pub async fn pending_migrations(&self) -> anyhow::Result<usize> {
        self.store.pending_migrations().await
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.store.ping().await
    }

    /// PostgreSQL's `autovacuum` setting (`None` on SQLite). Off, the dead row versions of the
    /// tables rewritten per event (the `actions` projection, the notifier's reminders) are never
    /// pruned and no statistics are gathered: in the bench's sustained run on such a server every
    /// tailer's lag p99 was 1.3–2.3× higher after five minutes than before.
    pub async fn autovacuum(&self) -> anyhow::Result<Option<bool>> {
        match &self.backend {
            Backend::Postgres(pool) => {
                let setting: String = sqlx::query_scalar("SHOW autovacuum")
                    .fetch_one(pool)
                    .await
                    .context("reading PostgreSQL's autovacuum setting")?;
                Ok(Some(setting == "on"))
            }
            Backend::Sqlite(_) => Ok(None),
        }
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.store.close().await;
    }
}
