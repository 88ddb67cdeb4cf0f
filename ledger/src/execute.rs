//! Running a command: load, decide, append atomically, retry on conflict.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::SerializedEvent;
use cqrs_es::{AggregateError, EventEnvelope};
use futures::StreamExt as _;
use tracing::{Instrument, debug, info_span, warn};

use crate::store::{LedgerStore as _, Outcome, unboxed};
use crate::{Ledger, LedgerAggregate, Metadata};

/// How optimistic-concurrency conflicts are retried: up to `attempts` tries in all, sleeping a
/// random time between `base` and `base × 2^try` (capped at `max`) between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 40,
            base: Duration::from_millis(1),
            max: Duration::from_millis(50),
        }
    }
}

impl RetryPolicy {
    fn pause(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max)
            .max(self.base);
        let span = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(fastrand::u64(span / 2..=span))
    }
}

/// One committed event with its place in the aggregate and in the global log.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent<E> {
    pub sequence: u64,
    pub position: i64,
    /// The writing transaction (0 on SQLite): with `position`, the event's place in log order.
    pub txid: i64,
    pub event: E,
}

/// What a command changed.
#[derive(Debug, Clone)]
pub struct Committed<A: LedgerAggregate>
where
    A::Command: Clone,
{
    /// The aggregate after the command.
    pub aggregate: A,
    /// The events appended, in order (empty when the command changed nothing).
    pub events: Vec<RecordedEvent<A::Event>>,
    /// How many times the command was decided (1 without conflicts).
    pub attempts: u32,
}

impl<A: LedgerAggregate> Committed<A>
where
    A::Command: Clone,
{
    /// The global position of the last event appended.
    pub fn last_position(&self) -> Option<i64> {
        self.events.last().map(|event| event.position)
    }

    /// Where the last event appended sits in the log: a reader whose cursor has reached this has
    /// seen every event of the command.
    pub fn last_cursor(&self) -> Option<crate::LogCursor> {
        self.events
            .iter()
            .map(|event| crate::LogCursor {
                txid: event.txid,
                position: event.position,
            })
            .max()
    }
}

/// Why a command did not commit.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError<E: std::error::Error> {
    /// The domain refused the command; nothing was recorded.
    #[error(transparent)]
    Rejected(E),
    /// Concurrent writers kept changing the aggregate; nothing was recorded.
    #[error("the aggregate kept changing under {attempts} attempts; nothing was recorded")]
    Conflict { attempts: u32 },
    /// The store failed; nothing was recorded (the transaction did not commit). The source says
    /// how (the driver's error, the stored event that would not decode, …).
    #[error("the event store failed")]
    Store(#[source] anyhow::Error),
    /// An event would not read back with the log's decoder (too deep, `\u0000` that PostgreSQL
    /// refuses, a shape its own type cannot decode); nothing was recorded. Commands check their
    /// documents before deciding, so this is the last line, not the usual refusal.
    #[error("the event would not read back ({0}); nothing was recorded")]
    Unreadable(String),
}

impl<E: std::error::Error> LedgerError<E> {
    /// cqrs-es boxes the store's errors without reporting the box as their source: unboxed here,
    /// so that the chain reaches the driver's error.
    fn from_aggregate(err: AggregateError<E>) -> Self {
        match err {
            AggregateError::UserError(err) => Self::Rejected(err),
            AggregateError::AggregateConflict => Self::Conflict { attempts: 1 },
            AggregateError::DatabaseConnectionError(err) | AggregateError::UnexpectedError(err) => {
                Self::Store(crate::reach::from_box(err))
            }
            AggregateError::DeserializationError(err) => {
                Self::Store(crate::reach::from_box(err).context("encoding or decoding an event"))
            }
        }
    }
}

enum Attempt<A: LedgerAggregate>
where
    A::Command: Clone,
{
    Done(A, Vec<RecordedEvent<A::Event>>),
    Conflict,
}

/// Refuses events whose stored form the log's readers could not decode: each is encoded as the
/// store keeps it, scanned as a front door scans a request (`\u0000`, which PostgreSQL's `jsonb`
/// refuses, is refused on every store so that a log can move between stores), and decoded with
/// the readers' decoder (serde_json, its recursion limit included).
fn ensure_readable<A>(events: &[A::Event]) -> Result<(), LedgerError<A::Error>>
where
    A: LedgerAggregate,
    A::Command: Clone,
{
    for event in events {
        let text = serde_json::to_string(event)
            .map_err(|err| LedgerError::Unreadable(format!("encoding: {err}")))?;
        countersign_domain::document::scan(text.as_bytes())
            .map_err(|err| LedgerError::Unreadable(err.to_string()))?;
        serde_json::from_str::<A::Event>(&text)
            .map_err(|err| LedgerError::Unreadable(format!("decoding: {err}")))?;
    }
    Ok(())
}

/// A stream's last sequence as the store keeps it (a bigint) as the ledger counts it.
fn sequence_of<E: std::error::Error>(version: i64) -> Result<u64, LedgerError<E>> {
    u64::try_from(version)
        .context("a negative stream version")
        .map_err(LedgerError::Store)
}

/// What a command came to: its committed events, or why it did not commit.
pub type Answer<A> = Result<Committed<A>, LedgerError<<A as cqrs_es::Aggregate>::Error>>;

/// Decides `command` on the empty aggregate `id`: the aggregate after it, its one event and that
/// event as stored, or `None` when the empty aggregate refuses it or it decides more or fewer
/// than one event (then it is run alone).
async fn decide_fresh<A>(
    id: &str,
    command: A::Command,
    metadata: &Metadata,
) -> Result<Option<(A, A::Event, SerializedEvent)>, LedgerError<A::Error>>
where
    A: LedgerAggregate,
    A::Command: Clone,
{
    let mut after = A::default();
    let sink = EventSink::default();
    if after.handle(command, &(), &sink).await.is_err() {
        return Ok(None);
    }
    let mut events = sink.collect().await;
    if events.len() != 1 {
        return Ok(None);
    }
    ensure_readable::<A>(&events)?;
    let event = events.remove(0);
    let serialized = SerializedEvent::try_from(&EventEnvelope::<A> {
        aggregate_id: id.to_owned(),
        sequence: 1,
        payload: event.clone(),
        metadata: metadata.to_map(),
    })
    .map_err(|err| LedgerError::Store(unboxed(err).context("encoding an event")))?;
    Ok(Some((after, event, serialized)))
}

impl Ledger {
    /// Runs `command` against the aggregate `id`, appending its events in one transaction.
    pub async fn execute<A>(
        &self,
        id: &A::Id,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Committed<A>, LedgerError<A::Error>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        self.execute_str::<A>(&id.to_string(), command, metadata, true)
            .await
    }

    /// [`Ledger::execute`] on the stored form of the id; `fresh_first: false` reads the stream
    /// even before a creation's first try (its stream is known to exist).
    async fn execute_str<A>(
        &self,
        id: &str,
        command: A::Command,
        metadata: &Metadata,
        fresh_first: bool,
    ) -> Result<Committed<A>, LedgerError<A::Error>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        let span = info_span!(
            "ledger.execute",
            aggregate = A::TYPE,
            aggregate_id = id,
            tenant = %metadata.tenant,
            actor = %metadata.actor,
            correlation_id = metadata.correlation_id.as_ref().map(|c| c.as_str()).unwrap_or(""),
        );
        async {
            let retry = A::retry_on_conflict(&command);
            let mut attempt = 0;
            loop {
                attempt += 1;
                let fresh = attempt == 1
                    && fresh_first
                    && retry
                    && A::creates(&command)
                    && self.store.decides_creations_unread();
                let outcome = self
                    .attempt::<A>(fresh, id, command.clone(), metadata)
                    .await?;
                match outcome {
                    Attempt::Done(aggregate, events) => {
                        return Ok(Committed {
                            aggregate,
                            events,
                            attempts: attempt,
                        });
                    }
                    Attempt::Conflict if retry && attempt < self.retry.attempts => {
                        debug!(attempt, "conflict; deciding again");
                        tokio::time::sleep(self.retry.pause(attempt)).await;
                    }
                    Attempt::Conflict => {
                        warn!(attempts = attempt, "conflict outlived the retries");
                        return Err(LedgerError::Conflict { attempts: attempt });
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// One try: load and decide here, append through the store (the group committer on
    /// PostgreSQL, sqlite-es on SQLite). `fresh` decides on the empty aggregate without reading
    /// its stream: if the stream exists after all, the append conflicts and the next try reads it.
    async fn attempt<A>(
        &self,
        fresh: bool,
        id: &str,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Attempt<A>, LedgerError<A::Error>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        let (mut after, last_sequence) = if fresh {
            (A::default(), 0)
        } else {
            self.store
                .load::<A>(id)
                .await
                .map_err(LedgerError::from_aggregate)?
        };
        let sink = EventSink::default();
        // The sink applies each event: `after` becomes the aggregate after the command.
        after
            .handle(command, &(), &sink)
            .await
            .map_err(LedgerError::Rejected)?;
        let events = sink.collect().await;
        if events.is_empty() {
            return Ok(Attempt::Done(after, Vec::new()));
        }
        ensure_readable::<A>(&events)?;
        let map = metadata.to_map();
        let serialized = events
            .iter()
            .zip(last_sequence + 1..)
            .map(|(event, sequence)| {
                SerializedEvent::try_from(&EventEnvelope::<A> {
                    aggregate_id: id.to_owned(),
                    sequence,
                    payload: event.clone(),
                    metadata: map.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| LedgerError::Store(unboxed(err).context("encoding an event")))?;
        match self
            .store
            .append::<A>(id, serialized)
            .await
            .map_err(LedgerError::Store)?
        {
            Outcome::Conflict => Ok(Attempt::Conflict),
            Outcome::Committed(placed) => {
                let recorded = events
                    .into_iter()
                    .zip(last_sequence as u64 + 1..)
                    .zip(placed)
                    .map(|((event, sequence), (position, txid))| RecordedEvent {
                        sequence,
                        position,
                        txid,
                        event,
                    })
                    .collect();
                Ok(Attempt::Done(after, recorded))
            }
        }
    }

    /// Runs commands that each normally start a new stream ([`LedgerAggregate::creates`]) —
    /// received events, runs — with their first events appended together by one statement
    /// (`create_streams`) instead of one append each. Each command is decided on the empty
    /// aggregate; one whose stream exists after all, that the empty aggregate refuses, that
    /// decides more or fewer than one event, that repeats an id earlier in `commands`, or that
    /// is no creation is run alone through [`Ledger::execute`] (which reads its stream and
    /// decides again), as is every command when the statement fails. Answers each command's
    /// outcome in the order given: what [`Ledger::execute`] would have answered for it.
    pub async fn execute_creations<A>(
        &self,
        commands: Vec<(&A::Id, A::Command, Metadata)>,
    ) -> Vec<Answer<A>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        let span = info_span!(
            "ledger.execute_creations",
            aggregate = A::TYPE,
            commands = commands.len()
        );
        async {
            let count = commands.len();
            let mut answers: Vec<Option<Answer<A>>> = (0..count).map(|_| None).collect();
            let mut alone = Vec::new();
            let mut together = Vec::new();
            let mut rows = Vec::new();
            let mut ids = std::collections::HashSet::new();
            for (index, (id, command, metadata)) in commands.into_iter().enumerate() {
                // The stored form of the id: the store's key from here on.
                let key = id.to_string();
                let creation = A::creates(&command) && A::retry_on_conflict(&command);
                if !creation || !ids.insert(key.clone()) {
                    alone.push((index, key, command, metadata, true));
                    continue;
                }
                match decide_fresh::<A>(&key, command.clone(), &metadata).await {
                    Ok(Some((aggregate, event, serialized))) => {
                        rows.push((key.clone(), serialized));
                        together.push((index, key, command, metadata, aggregate, event));
                    }
                    Ok(None) => alone.push((index, key, command, metadata, true)),
                    Err(err) => answers[index] = Some(Err(err)),
                }
            }
            if together.len() < 2 {
                // One creation alone joins the group committer with other writers' commands.
                rows.clear();
                alone.extend(
                    together
                        .drain(..)
                        .map(|(index, key, command, metadata, ..)| {
                            (index, key, command, metadata, true)
                        }),
                );
            }
            let created = if together.is_empty() {
                Ok(Vec::new())
            } else {
                self.store.create_streams::<A>(rows).await
            };
            match created {
                Ok(placed) => {
                    for (entry, placed) in together.into_iter().zip(placed) {
                        let (index, key, command, metadata, aggregate, event) = entry;
                        match placed {
                            Some((position, txid)) => {
                                answers[index] = Some(Ok(Committed {
                                    aggregate,
                                    events: vec![RecordedEvent {
                                        sequence: 1,
                                        position,
                                        txid,
                                        event,
                                    }],
                                    attempts: 1,
                                }));
                            }
                            // The stream exists: read it first.
                            None => alone.push((index, key, command, metadata, false)),
                        }
                    }
                }
                Err(err) => {
                    warn!(
                        error = format!("{err:#}"),
                        "starting streams together failed; running each command alone"
                    );
                    alone.extend(together.into_iter().map(
                        |(index, key, command, metadata, ..)| (index, key, command, metadata, true),
                    ));
                }
            }
            let mut done = futures::stream::iter(alone)
                .map(|(index, key, command, metadata, fresh_first)| async move {
                    let answer = self
                        .execute_str::<A>(&key, command, &metadata, fresh_first)
                        .await;
                    (index, answer)
                })
                .buffer_unordered(16);
            while let Some((index, answer)) = done.next().await {
                answers[index] = Some(answer);
            }
            answers
                .into_iter()
                .map(|answer| {
                    answer.unwrap_or_else(|| {
                        Err(LedgerError::Store(anyhow::anyhow!(
                            "a command of the batch was not run"
                        )))
                    })
                })
                .collect()
        }
        .instrument(span)
        .await
    }

    /// Loads an aggregate by folding its events (upcast to their current versions), or from memory
    /// when it is [`LedgerAggregate::CACHED`] and its stream has not grown since.
    pub async fn load<A>(&self, id: &A::Id) -> Result<(A, u64), LedgerError<A::Error>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        let (state, sequence) = self.load_shared::<A>(id).await?;
        Ok((Arc::unwrap_or_clone(state), sequence))
    }

    /// [`Ledger::load`] without a copy: a cached aggregate is shared with the cache rather than
    /// cloned (a tenant's policies and settings are read on every submission).
    pub async fn load_shared<A>(&self, id: &A::Id) -> Result<(Arc<A>, u64), LedgerError<A::Error>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        // The stored form of the id: the store's key from here on.
        let id = id.to_string();
        let id = id.as_str();
        if !A::CACHED {
            let (state, sequence) = self.fold::<A>(id).await?;
            return Ok((Arc::new(state), sequence));
        }
        let version = self.stream_version(A::TYPE, id).await?;
        self.cached_or_folded::<A>(id, version).await
    }

    /// Two cached aggregates (a tenant's settings and policies, say) as [`Ledger::load_shared`]
    /// loads each, their streams' versions read with one statement instead of two.
    pub async fn load_pair<A, B>(
        &self,
        a: &A::Id,
        b: &B::Id,
    ) -> Result<((Arc<A>, u64), (Arc<B>, u64)), LedgerError<A::Error>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
        B: LedgerAggregate<Error = A::Error>,
        B::Command: Clone,
    {
        if !(A::CACHED && B::CACHED) {
            return Ok(tokio::try_join!(
                self.load_shared::<A>(a),
                self.load_shared::<B>(b)
            )?);
        }
        let (a, b) = (a.to_string(), b.to_string());
        let (version_a, version_b) = self
            .store
            .stream_versions((A::TYPE, &a), (B::TYPE, &b))
            .await
            .map_err(LedgerError::Store)?;
        let (version_a, version_b) = (sequence_of(version_a)?, sequence_of(version_b)?);
        Ok(tokio::try_join!(
            self.cached_or_folded::<A>(&a, version_a),
            self.cached_or_folded::<B>(&b, version_b)
        )?)
    }

    /// The cached state of stream `id` when the cache holds it at `version`, else the stream
    /// folded (and cached).
    async fn cached_or_folded<A>(
        &self,
        id: &str,
        version: u64,
    ) -> Result<(Arc<A>, u64), LedgerError<A::Error>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        let hit = self
            .cache
            .lock()
            .ok()
            .and_then(|cache| cache.get(&(A::TYPE, id.to_owned())).cloned())
            .filter(|(sequence, _)| *sequence == version)
            .and_then(|(sequence, state)| {
                Arc::downcast::<A>(state)
                    .ok()
                    .map(|state| (state, sequence))
            });
        if let Some(hit) = hit {
            return Ok(hit);
        }
        let (state, sequence) = self.fold::<A>(id).await?;
        let state = Arc::new(state);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert((A::TYPE, id.to_owned()), (sequence, state.clone()));
        }
        Ok((state, sequence))
    }

    /// The last sequence of a stream (0 when it has none).
    async fn stream_version<E: std::error::Error>(
        &self,
        aggregate_type: &str,
        id: &str,
    ) -> Result<u64, LedgerError<E>> {
        let version = self
            .store
            .stream_version(aggregate_type, id)
            .await
            .map_err(LedgerError::Store)?;
        sequence_of(version)
    }

    async fn fold<A>(&self, id: &str) -> Result<(A, u64), LedgerError<A::Error>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        let (aggregate, sequence) = self
            .store
            .load::<A>(id)
            .await
            .map_err(LedgerError::from_aggregate)?;
        Ok((aggregate, sequence as u64))
    }
}
