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

use std::collections::HashSet;
use std::sync::Arc;

use cqrs_es::persist::SerializedEvent;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::{debug, warn};

/// How many committer tasks may have a group in flight at once.
const COMMITTERS: usize = 4;
/// The most events one statement appends.
const MAX_GROUP_EVENTS: usize = 1024;

/// Where a command's events landed, in order: (position, txid).
pub(crate) type Placed = Vec<(i64, i64)>;

/// What became of one command's events.
pub(crate) enum Outcome {
    Committed(Placed),
    /// Another writer appended to the aggregate first; nothing was recorded.
    Conflict,
}

struct Pending {
    aggregate_type: String,
    aggregate_id: String,
    events: Vec<SerializedEvent>,
    reply: oneshot::Sender<Result<Outcome, String>>,
}

/// The queue in front of the committer tasks (started on first use, stopped when the last
/// ledger handle is dropped).
#[derive(Debug)]
pub(crate) struct GroupCommitter {
    queue: mpsc::UnboundedSender<Pending>,
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
        for _ in 0..COMMITTERS {
            tokio::spawn(run(pool.clone(), Arc::clone(&receiver)));
        }
        Self { queue }
    }

    /// Appends one command's events (all of one aggregate, sequences consecutive).
    pub(crate) async fn append(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: Vec<SerializedEvent>,
    ) -> Result<Outcome, String> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id: aggregate_id.to_owned(),
                events,
                reply,
            })
            .map_err(|_| "the committer has stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the committer stopped before answering".to_owned())?
    }
}

async fn run(pool: PgPool, receiver: Arc<Mutex<mpsc::UnboundedReceiver<Pending>>>) {
    loop {
        let group = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
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
            group
        };
        commit_group(&pool, group).await;
    }
}

/// Commits a group, one command per aggregate per statement: a later command on an aggregate
/// already in the statement goes in the next one (where it will usually lose the race and decide
/// again).
async fn commit_group(pool: &PgPool, mut group: Vec<Pending>) {
    while !group.is_empty() {
        let mut seen = HashSet::new();
        let (now, later): (Vec<_>, Vec<_>) = group.into_iter().partition(|pending| {
            seen.insert((pending.aggregate_type.clone(), pending.aggregate_id.clone()))
        });
        commit_statement(pool, now).await;
        group = later;
    }
}

async fn commit_statement(pool: &PgPool, mut group: Vec<Pending>) {
    group.sort_by(|a, b| {
        (&a.aggregate_type, &a.aggregate_id).cmp(&(&b.aggregate_type, &b.aggregate_id))
    });
    match insert(pool, &group).await {
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
                let outcome = insert(pool, std::slice::from_ref(&pending)).await;
                let _ = pending.reply.send(answer(outcome));
            }
        }
        Err(err) => {
            let conflict = is_conflict(&err);
            let message = err.to_string();
            if !conflict {
                warn!(error = %message, commands = group.len(), "appending events failed");
            }
            for pending in group {
                let _ = pending.reply.send(if conflict {
                    Ok(Outcome::Conflict)
                } else {
                    Err(message.clone())
                });
            }
        }
    }
}

fn answer(outcome: Result<Placed, sqlx::Error>) -> Result<Outcome, String> {
    match outcome {
        Ok(placed) => Ok(Outcome::Committed(placed)),
        Err(err) if is_conflict(&err) => Ok(Outcome::Conflict),
        Err(err) => Err(err.to_string()),
    }
}

/// A unique violation on the event key, or a deadlock / serialization failure: another writer
/// got there first, so deciding again on fresh state is the answer.
fn is_conflict(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| matches!(code.as_ref(), "23505" | "40001" | "40P01"))
}

/// One autocommitted statement appending every event of the group, in the group's order.
async fn insert(pool: &PgPool, group: &[Pending]) -> Result<Placed, sqlx::Error> {
    let count = group.iter().map(|pending| pending.events.len()).sum();
    let mut types = Vec::with_capacity(count);
    let mut ids = Vec::with_capacity(count);
    let mut sequences = Vec::with_capacity(count);
    let mut event_types = Vec::with_capacity(count);
    let mut versions = Vec::with_capacity(count);
    let mut payloads = Vec::with_capacity(count);
    let mut metadata = Vec::with_capacity(count);
    for pending in group {
        for event in &pending.events {
            types.push(pending.aggregate_type.as_str());
            ids.push(pending.aggregate_id.as_str());
            sequences.push(i64::try_from(event.sequence).unwrap_or(i64::MAX));
            event_types.push(event.event_type.as_str());
            versions.push(event.event_version.as_str());
            payloads.push(&event.payload);
            metadata.push(&event.metadata);
        }
    }
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
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
    .bind(&types)
    .bind(&ids)
    .bind(&sequences)
    .bind(&event_types)
    .bind(&versions)
    .bind(&payloads)
    .bind(&metadata)
    .fetch_all(pool)
    .await?;
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
