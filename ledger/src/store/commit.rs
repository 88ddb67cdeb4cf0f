//! Group commit for PostgreSQL: the events of concurrent commands are appended by one statement.
//!
//! Each command's events go to a queue; a few committer tasks each take everything waiting (one
//! command per aggregate) and append it with a single autocommitted
//! `INSERT … SELECT FROM UNNEST(…) RETURNING position, txid`: one round trip and one WAL flush for
//! the whole group instead of BEGIN, an INSERT per event, COMMIT and a read-back per command.
//!
//! A statement is atomic, so a group commits whole or not at all. When any command in it lost an
//! optimistic-concurrency race (the primary key `(aggregate_type, aggregate_id, sequence)` is
//! already taken), the group is retried one command per statement so that only the losers are
//! told to decide again. Rows go in sorted by aggregate, so concurrent groups take their key locks
//! in one order and cannot deadlock each other.
//!
//! With the `testing` feature, [`CommitProbe`] lets a test hold the committer, see how many
//! commands wait for it, release it and read how many commands each statement carried, so that
//! grouping is tested without depending on timing. Without the feature its hooks are empty.

use std::collections::HashSet;
use std::sync::Arc;

use cqrs_es::persist::SerializedEvent;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::{debug, warn};

use super::{Outcome, Placed};

/// How many committer tasks may have a group in flight at once.
const COMMITTERS: usize = 4;
/// The most events one statement appends.
const MAX_GROUP_EVENTS: usize = 1024;

struct Pending {
    aggregate_type: String,
    aggregate_id: String,
    events: Vec<SerializedEvent>,
    reply: oneshot::Sender<anyhow::Result<Outcome>>,
}

/// The queue in front of the committer tasks (started on first use, stopped when the last
/// ledger handle is dropped).
#[derive(Debug)]
pub(crate) struct GroupCommitter {
    queue: mpsc::UnboundedSender<Pending>,
    probe: Arc<Probe>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("aggregate_type", &self.aggregate_type)
            .field("aggregate_id", &self.aggregate_id)
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl GroupCommitter {
    pub(crate) fn start(pool: PgPool) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let probe = Arc::new(Probe::new());
        for _ in 0..COMMITTERS {
            tokio::spawn(run(pool.clone(), Arc::clone(&receiver), Arc::clone(&probe)));
        }
        Self { queue, probe }
    }

    /// Appends one command's events (all of one aggregate, sequences consecutive).
    pub(crate) async fn append(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: Vec<SerializedEvent>,
    ) -> anyhow::Result<Outcome> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id: aggregate_id.to_owned(),
                events,
                reply,
            })
            .map_err(|_| anyhow::anyhow!("the committer has stopped"))?;
        // Counted once sent: a test that sees N waiting knows all N can be taken.
        self.probe.queued(1);
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the committer stopped before answering"))?
    }
}

async fn run(
    pool: PgPool,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<Pending>>>,
    probe: Arc<Probe>,
) {
    loop {
        let group = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            probe.released().await;
            let mut events = first.events.len();
            let mut group = vec![first];
            while events < MAX_GROUP_EVENTS {
                match receiver.try_recv() {
                    Ok(next) => {
                        events += next.events.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            probe.taken(group.len());
            group
        };
        commit_group(&pool, group, &probe).await;
    }
}

/// Commits a group, one command per aggregate per statement: a later command on an aggregate
/// already in the statement goes in the next one (where it will usually lose the race and decide
/// again).
async fn commit_group(pool: &PgPool, mut group: Vec<Pending>, probe: &Probe) {
    while !group.is_empty() {
        let mut seen = HashSet::new();
        let (now, later): (Vec<_>, Vec<_>) = group.into_iter().partition(|pending| {
            seen.insert((pending.aggregate_type.clone(), pending.aggregate_id.clone()))
        });
        commit_statement(pool, now, probe).await;
        group = later;
    }
}

async fn commit_statement(pool: &PgPool, mut group: Vec<Pending>, probe: &Probe) {
    group.sort_by(|a, b| {
        (&a.aggregate_type, &a.aggregate_id).cmp(&(&b.aggregate_type, &b.aggregate_id))
    });
    match insert(pool, &group, probe).await {
        Ok(placed) => {
            let mut placed = placed.into_iter();
            for pending in group {
                let mine: Placed = placed.by_ref().take(pending.events.len()).collect();
                let _ = pending.reply.send(Ok(Outcome::Committed(mine)));
            }
        }
        Err(err) if is_conflict(&err) && group.len() > 1 => {
            debug!(
                commands = group.len(),
                "a command in the group lost a race; committing one by one"
            );
            for pending in group {
                let outcome = insert(pool, std::slice::from_ref(&pending), probe).await;
                let _ = pending.reply.send(answer(outcome));
            }
        }
        Err(err) => {
            let conflict = is_conflict(&err);
            if !conflict {
                warn!(error = %err, commands = group.len(), "appending events failed");
            }
            // Every command of the group failed for the same reason: each gets the error.
            let err = Arc::new(err);
            for pending in group {
                let _ = pending.reply.send(if conflict {
                    Ok(Outcome::Conflict)
                } else {
                    Err(anyhow::Error::new(Arc::clone(&err)).context("appending events"))
                });
            }
        }
    }
}

fn answer(outcome: Result<Placed, sqlx::Error>) -> anyhow::Result<Outcome> {
    match outcome {
        Ok(placed) => Ok(Outcome::Committed(placed)),
        Err(err) if is_conflict(&err) => Ok(Outcome::Conflict),
        Err(err) => Err(anyhow::Error::new(err).context("appending events")),
    }
}

/// A unique violation on the event key, or a deadlock / serialization failure: another writer
/// got there first, so deciding again on fresh state is the answer.
fn is_conflict(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| matches!(code.as_ref(), "23505" | "40001" | "40P01"))
}

/// Events to append as `UNNEST` takes them: one array per column.
struct Columns<'a> {
    ids: Vec<&'a str>,
    sequences: Vec<i64>,
    event_types: Vec<&'a str>,
    versions: Vec<&'a str>,
    payloads: Vec<&'a serde_json::Value>,
    metadata: Vec<&'a serde_json::Value>,
}

impl<'a> Columns<'a> {
    fn with_capacity(count: usize) -> Self {
        Self {
            ids: Vec::with_capacity(count),
            sequences: Vec::with_capacity(count),
            event_types: Vec::with_capacity(count),
            versions: Vec::with_capacity(count),
            payloads: Vec::with_capacity(count),
            metadata: Vec::with_capacity(count),
        }
    }

    /// Binds the columns, in this order, after the parameters `query` has.
    fn bind_to<'q, O>(
        &'q self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        query
            .bind(&self.ids)
            .bind(&self.sequences)
            .bind(&self.event_types)
            .bind(&self.versions)
            .bind(&self.payloads)
            .bind(&self.metadata)
    }

    fn push(&mut self, aggregate_id: &'a str, event: &'a SerializedEvent) {
        self.ids.push(aggregate_id);
        self.sequences
            .push(i64::try_from(event.sequence).unwrap_or(i64::MAX));
        self.event_types.push(event.event_type.as_str());
        self.versions.push(event.event_version.as_str());
        self.payloads.push(&event.payload);
        self.metadata.push(&event.metadata);
    }
}

/// One autocommitted statement appending every event of the group, in the group's order.
async fn insert(pool: &PgPool, group: &[Pending], probe: &Probe) -> Result<Placed, sqlx::Error> {
    probe.statement(group.len());
    let count = group.iter().map(|pending| pending.events.len()).sum();
    let mut types = Vec::with_capacity(count);
    let mut columns = Columns::with_capacity(count);
    for pending in group {
        for event in &pending.events {
            types.push(pending.aggregate_type.as_str());
            columns.push(&pending.aggregate_id, event);
        }
    }
    let query = sqlx::query_as(
        "WITH appended AS (
           INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                               payload, metadata)
           SELECT t, i, s, e, v, p, m
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                         $6::jsonb[], $7::jsonb[]) WITH ORDINALITY AS u(t, i, s, e, v, p, m, n)
            ORDER BY n
           RETURNING aggregate_type, aggregate_id, sequence, position, txid::text::bigint
         )
         SELECT a.position, a.txid, u.n
           FROM appended a
           JOIN UNNEST($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY AS u(t, i, s, n)
             ON (a.aggregate_type, a.aggregate_id, a.sequence) = (u.t, u.i, u.s)
          ORDER BY u.n",
    )
    .bind(&types);
    let rows: Vec<(i64, i64, i64)> = columns.bind_to(query).fetch_all(pool).await?;
    if rows.len() != count {
        return Err(sqlx::Error::Protocol(format!(
            "appended {count} events but {} came back",
            rows.len()
        )));
    }
    Ok(rows
        .into_iter()
        .map(|(position, txid, _)| (position, txid))
        .collect())
}

/// Starts new streams of one aggregate type, one event each, with one autocommitted statement:
/// a stream that exists already (its first sequence is taken, by an earlier writer or one
/// committing now) is skipped, not an error, so one repeat does not send the rest round again.
/// Rows go in sorted by aggregate id (as in [`insert`]), so concurrent statements take their key
/// locks in one order. Answers, in the order of `streams`, where each event landed or `None`.
pub(crate) async fn create_streams(
    pool: &PgPool,
    aggregate_type: &str,
    streams: &[(String, SerializedEvent)],
) -> Result<Vec<Option<(i64, i64)>>, sqlx::Error> {
    let mut order: Vec<usize> = (0..streams.len()).collect();
    order.sort_by(|a, b| streams[*a].0.cmp(&streams[*b].0));
    let mut columns = Columns::with_capacity(streams.len());
    for index in &order {
        let (id, event) = &streams[*index];
        columns.push(id, event);
    }
    let query = sqlx::query_as(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         SELECT $1, i, s, e, v, p, m
           FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[],
                       $7::jsonb[]) WITH ORDINALITY AS u(i, s, e, v, p, m, n)
          ORDER BY n
         ON CONFLICT DO NOTHING
         RETURNING aggregate_id, position, txid::text::bigint",
    )
    .bind(aggregate_type);
    let rows: Vec<(String, i64, i64)> = columns.bind_to(query).fetch_all(pool).await?;
    let mut placed: std::collections::HashMap<String, (i64, i64)> = rows
        .into_iter()
        .map(|(id, position, txid)| (id, (position, txid)))
        .collect();
    Ok(streams.iter().map(|(id, _)| placed.remove(id)).collect())
}

/// The committer's test hooks: empty (and compiled away) without the `testing` feature.
#[cfg(not(feature = "testing"))]
#[derive(Debug)]
struct Probe;

#[cfg(not(feature = "testing"))]
impl Probe {
    fn new() -> Self {
        Self
    }
    fn queued(&self, _commands: usize) {}
    fn taken(&self, _commands: usize) {}
    async fn released(&self) {}
    fn statement(&self, _commands: usize) {}
}

/// The committer's test hooks: a hold that stops committer tasks between taking a command and
/// forming its group, a count of queued commands not yet in a group, and the commands each
/// statement carried.
#[cfg(feature = "testing")]
#[derive(Debug)]
struct Probe {
    held: tokio::sync::watch::Sender<bool>,
    /// Sent minus taken: briefly negative when a committer takes a command before its sender
    /// has counted it (never while held, since nothing is taken then).
    waiting: tokio::sync::watch::Sender<i64>,
    statements: std::sync::Mutex<Vec<usize>>,
}

#[cfg(feature = "testing")]
impl Probe {
    fn new() -> Self {
        Self {
            held: tokio::sync::watch::Sender::new(false),
            waiting: tokio::sync::watch::Sender::new(0),
            statements: std::sync::Mutex::default(),
        }
    }

    fn queued(&self, commands: usize) {
        let commands = i64::try_from(commands).unwrap_or(i64::MAX);
        self.waiting.send_modify(|waiting| *waiting += commands);
    }

    fn taken(&self, commands: usize) {
        let commands = i64::try_from(commands).unwrap_or(i64::MAX);
        self.waiting.send_modify(|waiting| *waiting -= commands);
    }

    /// Returns once the committer is not held.
    async fn released(&self) {
        let mut held = self.held.subscribe();
        // An error means the sender is gone, which cannot happen while `self` exists.
        let _ = held.wait_for(|held| !held).await;
    }

    fn statement(&self, commands: usize) {
        self.statements
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(commands);
    }
}

/// A test's handle on a PostgreSQL ledger's group committer (feature `testing`), from
/// [`Ledger::commit_probe`](crate::Ledger::commit_probe): hold it, wait until a known number of
/// commands are queued, release it, and read how many commands each statement carried.
#[cfg(feature = "testing")]
#[derive(Debug, Clone)]
pub struct CommitProbe(Arc<Probe>);

#[cfg(feature = "testing")]
impl CommitProbe {
    /// Stops the committer from forming groups: appends queue up until [`release`](Self::release).
    pub fn hold(&self) {
        self.0.held.send_replace(true);
    }

    /// Lets the committer go on: everything queued meanwhile is taken as one group (up to the
    /// largest group's size).
    pub fn release(&self) {
        self.0.held.send_replace(false);
    }

    /// How many commands are queued and not yet in a group (exact while the committer is held).
    pub fn waiting(&self) -> usize {
        usize::try_from(*self.0.waiting.borrow()).unwrap_or(0)
    }

    /// Waits until at least `commands` commands are queued; fails after `within`.
    pub async fn until_waiting(
        &self,
        commands: usize,
        within: std::time::Duration,
    ) -> anyhow::Result<()> {
        let wanted = i64::try_from(commands).unwrap_or(i64::MAX);
        let mut waiting = self.0.waiting.subscribe();
        match tokio::time::timeout(within, waiting.wait_for(|waiting| *waiting >= wanted)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => anyhow::bail!("the committer stopped"),
            Err(_) => anyhow::bail!(
                "{} of {commands} commands queued after {within:?}",
                self.waiting()
            ),
        }
    }

    /// How many commands each statement carried so far, in the order they were sent (a group
    /// retried one command per statement adds a statement per command).
    pub fn statements(&self) -> Vec<usize> {
        self.0
            .statements
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[cfg(feature = "testing")]
impl GroupCommitter {
    /// This committer's test handle.
    pub(crate) fn probe(&self) -> CommitProbe {
        CommitProbe(Arc::clone(&self.probe))
    }
}

#[cfg(feature = "testing")]
impl crate::Ledger {
    /// The group committer's test handle (starting the committer if needed); `None` on SQLite,
    /// which appends through sqlite-es without a committer.
    pub fn commit_probe(&self) -> Option<CommitProbe> {
        self.store.commit_probe()
    }
}
