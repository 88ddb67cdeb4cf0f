//! The global log: every event of every aggregate in one total order, read in batches after a
//! cursor.
//!
//! Reading a PostgreSQL table by an identity column alone skips events: a transaction that took
//! position 7 may commit after one that took position 8, and a reader that already moved past 8
//! never sees 7. countersign orders the log by (writing transaction id, position) and reads only
//! rows whose transaction id is below `pg_snapshot_xmin(pg_current_snapshot())` — every
//! transaction below that horizon has finished — so a row can never appear behind a reader's
//! cursor. No gap detection, no timeouts. SQLite has one writer at a time, so there position
//! order is commit order.
//!
//! Notifications (`LISTEN countersign_events` on PostgreSQL, an in-process signal on SQLite) only
//! wake readers early; readers also poll.
//!
//! The queries themselves live with the stores (`store::postgres`, `store::sqlite`); this module
//! keeps what is the same on both: the cursor, the events, the cache of the newest stretch and
//! reading ahead.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use cqrs_es::persist::SerializedEvent;
use serde_json::Value;
use sqlx::postgres::PgListener;

use crate::store::LedgerStore as _;
use crate::{Ledger, LedgerAggregate};

/// A place in the log. Compare cursors to compare places.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct LogCursor {
    /// The writing transaction (always 0 on SQLite).
    pub txid: i64,
    pub position: i64,
}

/// The beginning of the log.
impl LogCursor {
    pub const START: Self = Self {
        txid: 0,
        position: 0,
    };
}

/// An event as stored, with its place in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    pub cursor: LogCursor,
    pub tenant: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

impl LoggedEvent {
    /// The event as the aggregate's current type, upcast from older versions.
    pub fn decode<A>(&self) -> anyhow::Result<A::Event>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        let upcasters = A::upcasters();
        if !upcasters
            .iter()
            .any(|upcaster| upcaster.can_upcast(&self.event_type, &self.event_version))
        {
            // The current version: read from the payload in place (no copy of its tree).
            return serde::Deserialize::deserialize(&self.payload).with_context(|| self.decoding());
        }
        let mut event = SerializedEvent::new(
            self.aggregate_id.clone(),
            usize::try_from(self.sequence).unwrap_or_default(),
            self.aggregate_type.clone(),
            self.event_type.clone(),
            self.event_version.clone(),
            self.payload.clone(),
            self.metadata.clone(),
        );
        for upcaster in upcasters {
            if upcaster.can_upcast(&event.event_type, &event.event_version) {
                event = upcaster.upcast(event);
            }
        }
        serde_json::from_value(event.payload).with_context(|| self.decoding())
    }

    fn decoding(&self) -> String {
        format!(
            "decoding {} v{} at position {}",
            self.event_type, self.event_version, self.cursor.position
        )
    }
}

/// How many of the newest events read from the store the ledger keeps for the next tailer.
pub const TAIL_CACHE: usize = 4096;

/// The newest stretch of the log that any tailer of this process read from the store.
///
/// Every in-process tailer (the projection runners, the sealer, the relay, the live hub) wakes on
/// the same commit and reads the same new events: one of them reads the store, the others are
/// served from here. The stretch is a complete run of the log after `start` (the readable log is
/// final below its horizon: nothing can later appear between two of its events), so any read
/// after a cursor inside it is answered with exactly the events that follow that cursor — never a
/// guess about what is not yet in it: a read at its end goes to the store.
#[derive(Debug, Default)]
pub(crate) struct TailCache {
    stretch: std::sync::Mutex<Stretch>,
    /// Held while reading the store at or beyond the end of the stretch, so that tailers woken
    /// together make one read, not one each.
    filling: tokio::sync::Mutex<()>,
    from_store: std::sync::atomic::AtomicU64,
    from_cache: std::sync::atomic::AtomicU64,
}

/// How the log reads of one ledger handle (and its clones) were answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogReads {
    pub from_store: u64,
    pub from_cache: u64,
}

#[derive(Debug, Default)]
struct Stretch {
    /// The cursor the stretch follows; `None` while nothing has been read.
    start: Option<LogCursor>,
    events: std::collections::VecDeque<LoggedEvent>,
}

impl Stretch {
    fn end(&self) -> Option<LogCursor> {
        self.events.back().map(|event| event.cursor).or(self.start)
    }

    /// The events after `after`, when the stretch holds any.
    fn after(&self, after: LogCursor, limit: u32) -> Option<Vec<LoggedEvent>> {
        let start = self.start?;
        if after < start {
            return None;
        }
        let from = self.events.partition_point(|event| event.cursor <= after);
        (from < self.events.len()).then(|| {
            self.events
                .range(from..)
                .take(limit as usize)
                .cloned()
                .collect()
        })
    }

    /// Whether a read after `after` would extend or replace the stretch.
    fn at_or_past_end(&self, after: LogCursor) -> bool {
        self.end().is_none_or(|end| after >= end)
    }

    /// Records what a read after `after` returned from the store.
    fn fill(&mut self, after: LogCursor, events: &[LoggedEvent]) {
        if events.is_empty() || !self.at_or_past_end(after) {
            return;
        }
        if self.end() != Some(after) {
            self.start = Some(after);
            self.events.clear();
        }
        self.events.extend(events.iter().cloned());
        while self.events.len() > TAIL_CACHE {
            if let Some(dropped) = self.events.pop_front() {
                self.start = Some(dropped.cursor);
            }
        }
    }
}

impl Ledger {
    /// Up to `limit` events after `after`, in log order (fewer than `limit` does not mean the end
    /// of the log; an empty answer does).
    pub async fn read_log(&self, after: LogCursor, limit: u32) -> anyhow::Result<Vec<LoggedEvent>> {
        let cache = &self.tail;
        let lookup = |after| {
            let stretch = cache.stretch.lock().unwrap_or_else(|e| e.into_inner());
            (stretch.after(after, limit), stretch.at_or_past_end(after))
        };
        let cached = |events| {
            cache.from_cache.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("countersign_log_reads_total", "source" => "cache").increment(1);
            Ok(events)
        };
        let (hit, at_tail) = lookup(after);
        if let Some(events) = hit {
            return cached(events);
        }
        // Behind the stretch (a rebuild, a replay, a catching-up tailer): straight to the store.
        let _filling = if at_tail {
            let guard = cache.filling.lock().await;
            if let (Some(events), _) = lookup(after) {
                return cached(events);
            }
            Some(guard)
        } else {
            None
        };
        let events = self.read_stored_log(after, limit).await?;
        cache
            .stretch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fill(after, &events);
        Ok(events)
    }

    /// How this handle's log reads were answered so far.
    pub fn log_reads(&self) -> LogReads {
        LogReads {
            from_store: self.tail.from_store.load(Ordering::Relaxed),
            from_cache: self.tail.from_cache.load(Ordering::Relaxed),
        }
    }

    /// Up to `limit` events after `after` as the store holds them now, never from the cache of
    /// the newest events: for verification, which must see a stored event changed after this
    /// process read it.
    pub async fn read_stored_log(
        &self,
        after: LogCursor,
        limit: u32,
    ) -> anyhow::Result<Vec<LoggedEvent>> {
        self.tail.from_store.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("countersign_log_reads_total", "source" => "store").increment(1);
        self.store.read_log(after, limit).await
    }

    /// Every stored event of one aggregate's stream, in sequence order, with where it landed in
    /// the log and when it was recorded (folding it: read-your-writes views, history).
    pub async fn stream_of<A>(&self, id: &A::Id) -> anyhow::Result<Vec<LoggedEvent>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        self.events_of(A::TYPE, &id.to_string()).await
    }

    /// The stored events of one aggregate's stream after sequence `after`, in sequence order:
    /// what a reader that keeps a copy of the stream between reads appends to it.
    pub async fn stream_after<A>(&self, id: &A::Id, after: i64) -> anyhow::Result<Vec<LoggedEvent>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
    {
        self.events_after(A::TYPE, &id.to_string(), after).await
    }

    /// Every stored event of one aggregate, in sequence order, with when it was recorded (for
    /// history: the policy in force at a past moment).
    pub async fn events_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> anyhow::Result<Vec<LoggedEvent>> {
        self.events_after(aggregate_type, aggregate_id, -1).await
    }

    /// The stored events of one aggregate after sequence `after`, in sequence order.
    pub async fn events_after(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        mut after: i64,
    ) -> anyhow::Result<Vec<LoggedEvent>> {
        let mut events = Vec::new();
        loop {
            let batch = self
                .store
                .stream_events(aggregate_type, aggregate_id, after)
                .await?;
            let Some(last) = batch.last() else {
                return Ok(events);
            };
            after = last.sequence;
            events.extend(batch);
        }
    }

    /// Every stored event of several aggregates' streams, grouped per stream in the order of
    /// `ids`, each in sequence order (a stream with no events is an empty list). Reads
    /// 500 streams per statement: one round trip for many histories.
    pub async fn streams_of<A, I>(&self, ids: &[I]) -> anyhow::Result<Vec<Vec<LoggedEvent>>>
    where
        A: LedgerAggregate,
        A::Command: Clone,
        I: std::fmt::Display,
    {
        let mut grouped = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(crate::store::MANY_STREAMS) {
            let keys: Vec<String> = chunk.iter().map(ToString::to_string).collect();
            let mut by_id: std::collections::HashMap<String, Vec<LoggedEvent>> =
                std::collections::HashMap::with_capacity(keys.len());
            for event in self.store.streams_events(A::TYPE, &keys).await? {
                by_id
                    .entry(event.aggregate_id.clone())
                    .or_default()
                    .push(event);
            }
            for key in &keys {
                grouped.push(by_id.remove(key).unwrap_or_default());
            }
        }
        Ok(grouped)
    }

    /// The events stored at these global positions (in position order; missing ones are left
    /// out). For readers that already know where events are, such as audit exports.
    pub async fn read_positions(&self, positions: &[i64]) -> anyhow::Result<Vec<LoggedEvent>> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        self.store.read_positions(positions).await
    }

    /// The checkpoint a tailer saved under `name` (the start of the log when none).
    pub async fn load_checkpoint(&self, name: &str) -> anyhow::Result<LogCursor> {
        self.store.load_checkpoint(name).await
    }

    /// Saves a tailer's checkpoint (it only moves forward).
    pub async fn save_checkpoint(&self, name: &str, cursor: LogCursor) -> anyhow::Result<()> {
        self.store.save_checkpoint(name, cursor).await
    }

    /// Waits for appends: returns at the latest after `poll`.
    pub async fn log_waker(&self) -> anyhow::Result<LogWaker> {
        self.store.log_waker().await
    }

    /// How many events are committed, readable or not yet (on PostgreSQL a committed event stays
    /// unreadable while an older transaction anywhere on the server is open). Commands that
    /// promise to process "the log as it is now" wait until they have read this many.
    pub async fn committed_events(&self) -> anyhow::Result<i64> {
        self.store.committed_events().await
    }

    /// The newest cursor any reader can reach right now (the end of the readable log).
    pub async fn log_head(&self) -> anyhow::Result<LogCursor> {
        self.store.log_head().await
    }
}

/// The log read ahead of its consumer: a task reads batch after batch into a buffer of two while
/// the caller works on the previous one, until the end of the readable log.
#[derive(Debug)]
pub struct ReadAhead {
    batches: tokio::sync::mpsc::Receiver<Vec<LoggedEvent>>,
    reader: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ReadAhead {
    /// The next batch (never empty), or `None` at the end of the readable log or after a failed
    /// read ([`finish`](Self::finish) says which).
    pub async fn next(&mut self) -> Option<Vec<LoggedEvent>> {
        self.batches.recv().await
    }

    /// Stops reading; an error when a read failed.
    pub async fn finish(self) -> anyhow::Result<()> {
        drop(self.batches);
        self.reader.await.context("the log reader panicked")?
    }
}

impl Ledger {
    /// Reads the log after `after` in batches of `batch`, one batch ahead of the caller, from the
    /// store (a long read has no use for the cache of the newest events, and verification must
    /// not be served from it).
    pub fn read_ahead(&self, after: LogCursor, batch: u32) -> ReadAhead {
        let (sender, batches) = tokio::sync::mpsc::channel(2);
        let ledger = self.clone();
        let reader = tokio::spawn(async move {
            let mut cursor = after;
            loop {
                let events = ledger.read_stored_log(cursor, batch).await?;
                let Some(last) = events.last() else {
                    return Ok(());
                };
                cursor = last.cursor;
                if sender.send(events).await.is_err() {
                    return Ok(());
                }
            }
        });
        ReadAhead { batches, reader }
    }
}

/// How long a woken tailer lets further commits gather before it reads.
pub const LINGER: Duration = Duration::from_millis(2);

/// Wakes a tailer when events may have been appended.
#[derive(Debug)]
pub enum LogWaker {
    Postgres(Box<PgListener>),
    InProcess(std::sync::Arc<tokio::sync::Notify>),
}

impl LogWaker {
    /// Returns when a notification arrives or `poll` passes, whichever is first. A notification
    /// is only a hint: the caller reads the log either way.
    ///
    /// After a notification it lingers [`LINGER`] and swallows the notifications that arrived
    /// meanwhile, so that under load a tailer reads many commits per batch instead of one batch
    /// (and one transaction of its own) per commit.
    pub async fn wait(&mut self, poll: Duration) {
        match self {
            Self::Postgres(listener) => {
                if let Ok(Ok(_)) = tokio::time::timeout(poll, listener.recv()).await {
                    tokio::time::sleep(LINGER).await;
                    while let Ok(Ok(_)) =
                        tokio::time::timeout(Duration::ZERO, listener.recv()).await
                    {
                    }
                }
            }
            Self::InProcess(notify) => {
                if tokio::time::timeout(poll, notify.notified()).await.is_ok() {
                    tokio::time::sleep(LINGER).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tail_cache {
    use super::{LogCursor, LoggedEvent, Stretch, TAIL_CACHE};

    fn event(position: i64) -> LoggedEvent {
        LoggedEvent {
            cursor: LogCursor { txid: 0, position },
            tenant: "acme".to_owned(),
            aggregate_type: "Action".to_owned(),
            aggregate_id: format!("a{position}"),
            sequence: 1,
            event_type: "Submitted".to_owned(),
            event_version: "1".to_owned(),
            payload: serde_json::json!({}),
            metadata: serde_json::json!({}),
            recorded_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    fn at(position: i64) -> LogCursor {
        LogCursor { txid: 0, position }
    }

    fn positions(events: Option<Vec<LoggedEvent>>) -> Option<Vec<i64>> {
        events.map(|events| events.iter().map(|e| e.cursor.position).collect())
    }

    fn stretch(after: i64, through: i64) -> Stretch {
        let mut stretch = Stretch::default();
        let events: Vec<_> = (after + 1..=through).map(event).collect();
        stretch.fill(at(after), &events);
        stretch
    }

    #[test]
    fn answers_only_reads_it_holds_the_next_events_of() {
        let stretch = stretch(10, 15);
        assert_eq!(
            positions(stretch.after(at(10), 100)),
            Some(vec![11, 12, 13, 14, 15])
        );
        assert_eq!(positions(stretch.after(at(12), 2)), Some(vec![13, 14]));
        // A cursor between two events (any cursor inside the stretch) gets what follows it.
        assert_eq!(positions(stretch.after(at(13), 100)), Some(vec![14, 15]));
        // At its end the next events are unknown; behind its start they are not held.
        assert_eq!(positions(stretch.after(at(15), 100)), None);
        assert_eq!(positions(stretch.after(at(9), 100)), None);
        assert_eq!(
            positions(Stretch::default().after(LogCursor::START, 100)),
            None
        );
    }

    #[test]
    fn grows_at_its_end_jumps_forward_and_ignores_older_reads() {
        let mut stretch = stretch(10, 15);
        stretch.fill(at(15), &[event(16), event(17)]);
        assert_eq!(
            positions(stretch.after(at(10), 100)),
            Some((11..=17).collect())
        );
        // An older read (a rebuild from the start) leaves the newest stretch alone.
        stretch.fill(at(0), &[event(1), event(2)]);
        assert_eq!(positions(stretch.after(at(0), 100)), None);
        assert_eq!(positions(stretch.after(at(16), 100)), Some(vec![17]));
        // A read past the end replaces it: what lies between is unknown.
        stretch.fill(at(30), &[event(31)]);
        assert_eq!(positions(stretch.after(at(17), 100)), None);
        assert_eq!(positions(stretch.after(at(30), 100)), Some(vec![31]));
        // An empty read changes nothing.
        stretch.fill(at(31), &[]);
        assert_eq!(positions(stretch.after(at(30), 100)), Some(vec![31]));
    }

    #[test]
    fn keeps_only_the_newest_events() {
        let total = i64::try_from(TAIL_CACHE).unwrap_or(i64::MAX) + 10;
        let stretch = stretch(0, total);
        assert_eq!(positions(stretch.after(at(10), 1)), Some(vec![11]));
        assert_eq!(
            positions(stretch.after(at(9), 1)),
            None,
            "dropped from the front"
        );
        assert_eq!(
            positions(stretch.after(at(total - 1), 5)),
            Some(vec![total])
        );
    }
}
