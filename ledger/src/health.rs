//! Whether the process's tailers keep up: a tailer that cannot get past an event says so, loudly
//! and once a minute, instead of retrying in silence.
//!
//! Each tailer (a projection runner, the sealer, the relay, the live hub, the embedded executor)
//! reports every failed step and every step that made progress. After [`STALL_AFTER`] failures in
//! a row it counts as stalled: `countersign_tailer_stalled{tailer}` is 1, a warning names it and
//! the cursor it is stuck after (repeated once a minute while it lasts), and `/readyz` answers
//! 503 naming it. One success clears it. Failing tailers back off (see [`Health::backoff`]) so
//! that a stuck one does not spin.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{info, warn};

use crate::store::LedgerStore as _;
use crate::{Ledger, LogCursor, LoggedEvent};

/// Failures in a row after which a tailer counts as stalled.
pub const STALL_AFTER: u32 = 3;

/// How often a stalled tailer's warning repeats.
const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// The longest pause between a failing tailer's attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How many events after a checkpoint [`Ledger::standing`] reads: a tailer reading a batch is
/// stuck on any event in it.
pub const LOOK_AHEAD: u32 = 2000;

/// A tailer that keeps failing at the same place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stall {
    pub tailer: String,
    /// The tailer's cursor: the event it cannot process is the next one after it.
    pub after: Option<LogCursor>,
    pub failures: u32,
    pub since: DateTime<Utc>,
    pub error: String,
}

#[derive(Debug)]
struct Failing {
    stall: Stall,
    last_warned: Option<Instant>,
}

/// The tailers of one process, shared through the [`crate::Ledger`] handle.
#[derive(Debug, Clone, Default)]
pub struct Health {
    failing: Arc<Mutex<BTreeMap<String, Failing>>>,
}

impl Health {
    /// Records a failed step of `tailer`, stuck after `after`; returns how long to wait before
    /// the next attempt (1 s, doubling up to 30 s).
    pub fn failed(
        &self,
        tailer: &str,
        after: Option<LogCursor>,
        error: &anyhow::Error,
    ) -> Duration {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = failing.entry(tailer.to_owned()).or_insert_with(|| Failing {
            stall: Stall {
                tailer: tailer.to_owned(),
                after,
                failures: 0,
                since: Utc::now(),
                error: String::new(),
            },
            last_warned: None,
        });
        if entry.stall.after != after {
            // Stuck somewhere else now: a new stall.
            entry.stall.after = after;
            entry.stall.failures = 0;
            entry.stall.since = Utc::now();
            entry.last_warned = None;
        }
        entry.stall.failures += 1;
        entry.stall.error = format!("{error:#}");
        let failures = entry.stall.failures;
        if failures >= STALL_AFTER {
            metrics::gauge!("countersign_tailer_stalled", "tailer" => tailer.to_owned()).set(1.0);
            let due = entry
                .last_warned
                .is_none_or(|warned| warned.elapsed() >= REPEAT_EVERY);
            if due {
                entry.last_warned = Some(Instant::now());
                warn!(
                    tailer,
                    after = ?after,
                    failures,
                    since = %entry.stall.since,
                    error = %entry.stall.error,
                    "tailer stalled: it cannot get past the next event; see docs/operations.md"
                );
            }
        }
        Self::backoff(failures)
    }

    /// Records a step of `tailer` that made progress (or found nothing to do).
    pub fn progressed(&self, tailer: &str) {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(recovered) = failing.remove(tailer)
            && recovered.stall.failures >= STALL_AFTER
        {
            metrics::gauge!("countersign_tailer_stalled", "tailer" => tailer.to_owned()).set(0.0);
            info!(
                tailer,
                failures = recovered.stall.failures,
                "tailer recovered"
            );
        }
    }

    /// The tailers that count as stalled now.
    pub fn stalled(&self) -> Vec<Stall> {
        self.failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|failing| failing.stall.failures >= STALL_AFTER)
            .map(|failing| failing.stall.clone())
            .collect()
    }

    /// The pause after `failures` failures in a row.
    pub fn backoff(failures: u32) -> Duration {
        Duration::from_secs(1u64 << failures.saturating_sub(1).min(5)).min(MAX_BACKOFF)
    }
}

impl LoggedEvent {
    /// Decodes the event as its aggregate's current type, for the aggregates this crate knows;
    /// an aggregate type it does not know is not its to judge (`Ok`).
    pub fn decode_known(&self) -> anyhow::Result<()> {
        use countersign_domain::action::Action;
        use countersign_domain::tenant::{ApiKeys, PolicySet, TenantSettings};
        use countersign_domain::workflow::{IntakeEvent, WorkflowRun, WorkflowSet};
        use cqrs_es::Aggregate;
        match self.aggregate_type.as_str() {
            Action::TYPE => self.decode::<Action>().map(drop),
            PolicySet::TYPE => self.decode::<PolicySet>().map(drop),
            TenantSettings::TYPE => self.decode::<TenantSettings>().map(drop),
            ApiKeys::TYPE => self.decode::<ApiKeys>().map(drop),
            WorkflowSet::TYPE => self.decode::<WorkflowSet>().map(drop),
            IntakeEvent::TYPE => self.decode::<IntakeEvent>().map(drop),
            WorkflowRun::TYPE => self.decode::<WorkflowRun>().map(drop),
            _ => Ok(()),
        }
    }
}

/// Where a tailer stands, as another process sees it from the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Standing {
    pub tailer: String,
    pub checkpoint: LogCursor,
    /// Events of the log after the checkpoint.
    pub behind: i64,
    /// Why the next event cannot be read or decoded, if it cannot: the tailer is stuck there.
    pub stuck: Option<String>,
}

impl Ledger {
    /// Whether a tailer at `checkpoint` can go on: reads the next [`LOOK_AHEAD`] stored events
    /// (never the cache; more than any tailer reads at once) and decodes them as every reader
    /// would.
    pub async fn standing(&self, tailer: &str, checkpoint: LogCursor) -> anyhow::Result<Standing> {
        let head = self.log_head().await?;
        let stuck = match self.read_stored_log(checkpoint, LOOK_AHEAD).await {
            Err(err) => Some(format!("{err:#}")),
            Ok(next) => next
                .iter()
                .find_map(|event| event.decode_known().err())
                .map(|err| format!("{err:#}")),
        };
        Ok(Standing {
            tailer: tailer.to_owned(),
            checkpoint,
            behind: (head.position - checkpoint.position).max(0),
            stuck,
        })
    }

    /// The checkpoints of the tailers that keep no tables of their own (the relay, the embedded
    /// executor), by name.
    pub async fn tailer_checkpoints(&self) -> anyhow::Result<Vec<(String, LogCursor)>> {
        self.store.tailer_checkpoints().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tailer_counts_as_stalled_after_three_failures_at_one_place_until_it_progresses() {
        let health = Health::default();
        let at = Some(LogCursor {
            txid: 0,
            position: 7,
        });
        let error = anyhow::anyhow!("decoding event 8");
        health.failed("sealer", at, &error);
        health.failed("sealer", at, &error);
        assert!(health.stalled().is_empty());
        health.failed("sealer", at, &error);
        let stalled = health.stalled();
        assert_eq!(stalled.len(), 1);
        assert_eq!(stalled[0].tailer, "sealer");
        assert_eq!(stalled[0].after, at);
        assert!(stalled[0].error.contains("event 8"));
        health.progressed("sealer");
        assert!(health.stalled().is_empty());
    }

    #[test]
    fn failing_somewhere_else_starts_a_new_count_and_backoff_is_bounded() {
        let health = Health::default();
        let error = anyhow::anyhow!("x");
        for position in 0..5 {
            health.failed("relay", Some(LogCursor { txid: 0, position }), &error);
        }
        assert!(health.stalled().is_empty(), "moving on is not a stall");
        assert_eq!(Health::backoff(1), Duration::from_secs(1));
        assert_eq!(Health::backoff(2), Duration::from_secs(2));
        assert_eq!(Health::backoff(100), MAX_BACKOFF);
    }
}
