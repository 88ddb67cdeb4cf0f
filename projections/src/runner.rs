//! Tailing the log into one generation, and supervising each projection's generations.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use countersign_ledger::{Ledger, LogCursor};
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::apply::apply_batch;
use crate::store::{BatchTransaction, Generation, GenerationState, ProjectionStore};
use crate::{Projection, micros};

/// What one step of a runner did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied this many log events and moved the checkpoint to `cursor`.
    Applied { events: usize, cursor: LogCursor },
    /// Nothing new in the log.
    Idle,
    /// The generation was retired (another generation replaced it): stop.
    Retired,
}

/// Moves a generation's checkpoint from `from` to `to` in the batch's transaction, unless it was
/// retired or another runner moved it: the rows affected (1, or 0 to roll back).
struct CheckpointMove {
    projection: Projection,
    generation: i64,
    from: LogCursor,
    to: LogCursor,
    events: i64,
}

impl CheckpointMove {
    const SQL: &'static str = "UPDATE projections
        SET checkpoint_txid = $1, checkpoint_position = $2, events = events + $3, updated_at = $4
      WHERE name = $5 AND generation = $6 AND state <> 'retired'
        AND checkpoint_txid = $7 AND checkpoint_position = $8";

    async fn run(self, tx: &mut BatchTransaction) -> Result<u64, sqlx::Error> {
        let now = micros(chrono::Utc::now());
        Ok(match tx {
            BatchTransaction::Postgres(tx) => sqlx::query(Self::SQL)
                .bind(self.to.txid)
                .bind(self.to.position)
                .bind(self.events)
                .bind(now)
                .bind(self.projection.name())
                .bind(self.generation)
                .bind(self.from.txid)
                .bind(self.from.position)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
            BatchTransaction::Portable(tx) => sqlx::query(Self::SQL)
                .bind(self.to.txid)
                .bind(self.to.position)
                .bind(self.events)
                .bind(now)
                .bind(self.projection.name())
                .bind(self.generation)
                .bind(self.from.txid)
                .bind(self.from.position)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }
}

/// Tails the log into one generation of one projection.
#[derive(Debug)]
pub struct Runner {
    ledger: Ledger,
    store: ProjectionStore,
    projection: Projection,
    generation: i64,
    batch: u32,
    checkpoint: Option<LogCursor>,
}

impl Runner {
    pub fn new(
        ledger: Ledger,
        store: ProjectionStore,
        projection: Projection,
        generation: i64,
    ) -> Self {
        Self {
            ledger,
            store,
            projection,
            generation,
            batch: 1000,
            checkpoint: None,
        }
    }

    /// Events read and applied per transaction.
    #[must_use]
    pub fn with_batch(mut self, batch: u32) -> Self {
        self.batch = batch.max(1);
        self
    }

    pub fn generation(&self) -> i64 {
        self.generation
    }

    /// Reads the next batch after the checkpoint and applies it with the new checkpoint in one
    /// transaction. A crash anywhere before the commit leaves rows and checkpoint untouched.
    pub async fn process_next(&mut self) -> anyhow::Result<Outcome> {
        let Some(checkpoint) = self.current_checkpoint().await? else {
            return Ok(Outcome::Retired);
        };
        let events = self.ledger.read_log(checkpoint, self.batch).await?;
        self.apply(checkpoint, events).await
    }

    /// The checkpoint to read after, or `None` when the generation has been retired.
    async fn current_checkpoint(&mut self) -> anyhow::Result<Option<LogCursor>> {
        if let Some(checkpoint) = self.checkpoint {
            return Ok(Some(checkpoint));
        }
        Ok(
            match self
                .store
                .generation(self.projection, self.generation)
                .await?
            {
                Some(generation) if generation.state != GenerationState::Retired => {
                    Some(generation.checkpoint)
                }
                _ => None,
            },
        )
    }

    /// Applies `events` (the log right after `checkpoint`) with the new checkpoint in one
    /// transaction.
    async fn apply(
        &mut self,
        checkpoint: LogCursor,
        events: Vec<countersign_ledger::LoggedEvent>,
    ) -> anyhow::Result<Outcome> {
        let Some(last) = events.last() else {
            // Idle is when a replaced generation notices it has been retired.
            if self.checkpoint.is_some()
                && self
                    .store
                    .generation(self.projection, self.generation)
                    .await?
                    .is_none_or(|generation| generation.state == GenerationState::Retired)
            {
                return Ok(Outcome::Retired);
            }
            self.checkpoint = Some(checkpoint);
            self.report_lag(checkpoint, None).await;
            return Ok(Outcome::Idle);
        };
        let cursor = last.cursor;
        let newest = last.recorded_at;
        let count = events.len();
        let (store, projection, generation) =
            (self.store.clone(), self.projection, self.generation);
        // The batch's transaction runs as a task of its own: a runner cancelled mid-batch (its
        // task aborted) must never leave the transaction half-sent or waiting for its rollback
        // on a pooled connection, where the next batch's `begin` would nest inside it.
        let moved = tokio::spawn(async move {
            let mut tx = store.batch_transaction().await?;
            apply_batch(&mut tx, projection, generation, &events)
                .await
                .with_context(|| {
                    format!(
                        "applying {} events to {projection} generation {generation}",
                        events.len(),
                    )
                })?;
            let moved = CheckpointMove {
                projection,
                generation,
                from: checkpoint,
                to: cursor,
                events: i64::try_from(events.len()).unwrap_or(i64::MAX),
            }
            .run(&mut tx)
            .await?;
            if moved == 1 {
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            anyhow::Ok(moved)
        })
        .await
        .context("the projection batch's write task")?;
        let moved = match moved {
            Ok(moved) => moved,
            // Another runner (one stopped an instant before, whose commit was already on its
            // way) applied these events first: the rows collide before the checkpoint's
            // conditional move can say so. Not a failure: start again from where it left.
            Err(err) => {
                self.checkpoint = None;
                match self.current_checkpoint().await {
                    Ok(Some(now)) if now != checkpoint => 0,
                    _ => return Err(err),
                }
            }
        };
        if moved != 1 {
            // Retired, or another runner moved the checkpoint: nothing was applied.
            self.checkpoint = None;
            return Ok(
                match self
                    .store
                    .generation(self.projection, self.generation)
                    .await?
                {
                    Some(generation) if generation.state != GenerationState::Retired => {
                        Outcome::Idle
                    }
                    _ => Outcome::Retired,
                },
            );
        }
        self.checkpoint = Some(cursor);
        self.report_lag(cursor, Some(newest)).await;
        Ok(Outcome::Applied {
            events: count,
            cursor,
        })
    }

    async fn report_lag(
        &self,
        cursor: LogCursor,
        newest_applied: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        let Ok(head) = self.ledger.log_head().await else {
            return;
        };
        let behind = (head.position - cursor.position).max(0);
        let seconds = match (behind, newest_applied) {
            (0, _) => 0.0,
            (_, Some(at)) => (chrono::Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0,
            (_, None) => 0.0,
        };
        let labels = [("projection", self.projection.name().to_owned())];
        metrics::gauge!("countersign_projection_lag_events", &labels).set(behind as f64);
        metrics::gauge!("countersign_projection_lag_seconds", &labels).set(seconds);
    }

    /// Applies batches until the log has nothing more; returns the events applied.
    pub async fn run_until_idle(&mut self) -> anyhow::Result<u64> {
        let mut applied = 0;
        loop {
            match self.process_next().await? {
                Outcome::Applied { events, .. } => applied += events as u64,
                Outcome::Idle | Outcome::Retired => return Ok(applied),
            }
        }
    }

    /// Runs until `shutdown` resolves or the generation is retired, holding the generation's
    /// tailer lock so that one instance applies it.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<Outcome> {
        let name = format!("projection:{}:g{}", self.projection, self.generation);
        let span = info_span!(
            "projection",
            projection = self.projection.name(),
            generation = self.generation
        );
        async move {
            tokio::pin!(shutdown);
            let lock = loop {
                if let Some(lock) = self.ledger.lock_tailer(&name).await? {
                    break lock;
                }
                tokio::select! {
                    () = &mut shutdown => return Ok(Outcome::Idle),
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            };
            let mut waker = self.ledger.log_waker().await?;
            info!("projection runner started");
            let outcome = loop {
                let step = tokio::select! {
                    () = &mut shutdown => break Outcome::Idle,
                    step = self.process_next() => step,
                };
                if step.is_ok() {
                    self.ledger.health().progressed(&name);
                }
                match step {
                    Ok(Outcome::Applied { .. }) => {}
                    Ok(Outcome::Idle) => {
                        tokio::select! {
                            () = &mut shutdown => break Outcome::Idle,
                            () = waker.wait(Duration::from_secs(1)) => {}
                        }
                    }
                    Ok(Outcome::Retired) => break Outcome::Retired,
                    Err(err) => {
                        warn!(
                            error = format!("{err:#}"),
                            "projection batch failed; retrying"
                        );
                        let stuck_after = match self.checkpoint.take() {
                            Some(checkpoint) => Some(checkpoint),
                            None => self.current_checkpoint().await.ok().flatten(),
                        };
                        self.checkpoint = None;
                        let pause = self.ledger.health().failed(&name, stuck_after, &err);
                        tokio::select! {
                            () = &mut shutdown => break Outcome::Idle,
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            };
            lock.release().await;
            info!(?outcome, "projection runner stopped");
            Ok(outcome)
        }
        .instrument(span)
        .await
    }
}

/// Events per batch while rebuilding (larger than live batches: fewer transactions).
const REBUILD_BATCH: u32 = 2000;

/// Builds a new generation of `projection` from the start of the log beside the live one,
/// then makes it live once it has caught up. `progress` hears (events applied, cursor).
pub async fn rebuild(
    ledger: &Ledger,
    store: &ProjectionStore,
    projection: Projection,
    mut progress: impl FnMut(u64, LogCursor),
) -> anyhow::Result<Generation> {
    let lock_name = format!("projection-build:{projection}");
    let Some(lock) = ledger.lock_tailer(&lock_name).await? else {
        anyhow::bail!("another instance is building {projection}");
    };
    let resumable = store
        .generations(projection)
        .await?
        .into_iter()
        .find(|generation| {
            generation.state == GenerationState::Building
                && generation.version == projection.version()
        });
    let generation = match resumable {
        Some(generation) => generation,
        None => {
            store
                .create_generation(projection, GenerationState::Building)
                .await?
        }
    };
    let mut runner = Runner::new(
        ledger.clone(),
        store.clone(),
        projection,
        generation.generation,
    );
    // Reading runs one batch ahead of applying, so the two overlap.
    let Some(mut checkpoint) = runner.current_checkpoint().await? else {
        anyhow::bail!(
            "{projection} generation {} was retired while building",
            generation.generation
        );
    };
    let mut ahead = ledger.read_ahead(checkpoint, REBUILD_BATCH);
    let mut applied = 0;
    while let Some(events) = ahead.next().await {
        match runner.apply(checkpoint, events).await? {
            Outcome::Applied { events, cursor } => {
                applied += events as u64;
                checkpoint = cursor;
                progress(applied, cursor);
            }
            Outcome::Idle | Outcome::Retired => anyhow::bail!(
                "{projection} generation {} was retired or moved by another builder",
                generation.generation
            ),
        }
    }
    ahead.finish().await?;
    // Indexed once over the rows written so far, then maintained for the few that follow.
    store
        .create_indexes(projection, generation.generation)
        .await?;
    // Whatever was appended since the reader's last read.
    loop {
        match runner.process_next().await? {
            Outcome::Applied { events, cursor } => {
                applied += events as u64;
                progress(applied, cursor);
            }
            Outcome::Idle => break,
            Outcome::Retired => anyhow::bail!(
                "{projection} generation {} was retired while building",
                generation.generation
            ),
        }
    }
    store.analyze(projection, generation.generation).await?;
    store.promote(projection, generation.generation).await?;
    lock.release().await;
    store
        .generation(projection, generation.generation)
        .await?
        .context("the promoted generation disappeared")
}

/// Keeps every projection's live generation up to date, and builds a new generation when the
/// code's version of a projection differs from the live one.
#[derive(Debug, Clone)]
pub struct Supervisor {
    ledger: Ledger,
    store: ProjectionStore,
}

impl Supervisor {
    pub fn new(ledger: Ledger, store: ProjectionStore) -> Self {
        Self { ledger, store }
    }

    /// Runs every projection until `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let tasks: Vec<_> = Projection::ALL
            .into_iter()
            .map(|projection| {
                let supervisor = self.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move { supervisor.supervise(projection, shutdown).await })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        Ok(())
    }

    async fn supervise(
        &self,
        projection: Projection,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let stopped = |shutdown: &watch::Receiver<bool>| *shutdown.borrow();
        while !stopped(&shutdown) {
            let live = match self.store.live(projection).await? {
                Some(live) => live,
                None => match self
                    .store
                    .create_generation(projection, GenerationState::Live)
                    .await
                {
                    Ok(live) => live,
                    // Another instance created it first.
                    Err(_) => continue,
                },
            };
            let _ = self.store.drop_retired(projection).await;
            let older = live.version != projection.version();
            if older {
                // The code reads and writes the current columns: the old generation gets them
                // first, so that it keeps serving (and keeps up) while the new one builds.
                self.store.add_missing_columns(&live).await?;
            }
            let runner = Runner::new(
                self.ledger.clone(),
                self.store.clone(),
                projection,
                live.generation,
            );
            let mut wait = shutdown.clone();
            let live_run = runner.run(async move {
                let _ = wait.wait_for(|stop| *stop).await;
            });
            if older {
                info!(
                    projection = projection.name(),
                    live = live.version,
                    code = projection.version(),
                    "projection version changed; rebuilding beside the live generation"
                );
                // The live runner returns once the new generation has replaced it (or at the
                // stop); a build that fails is tried again meanwhile.
                let mut stop = shutdown.clone();
                let build = async move {
                    loop {
                        match rebuild(&self.ledger, &self.store, projection, |_, _| {}).await {
                            Ok(_) => return,
                            Err(err) => warn!(
                                projection = projection.name(),
                                error = format!("{err:#}"),
                                "rebuild failed; retrying in 5 s"
                            ),
                        }
                        tokio::select! {
                            _ = stop.wait_for(|stop| *stop) => return,
                            () = tokio::time::sleep(Duration::from_secs(5)) => {}
                        }
                        // Someone else (`countersign projections rebuild`) replaced it meanwhile.
                        if let Ok(Some(now)) = self.store.live(projection).await
                            && now.generation != live.generation
                        {
                            return;
                        }
                    }
                };
                let ((), old) = tokio::join!(build, live_run);
                old?;
            } else {
                live_run.await?;
            }
            if !stopped(&shutdown) {
                // Retired: give readers of the old generation a moment before its tables go.
                tokio::select! {
                    _ = shutdown.changed() => {}
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                let _ = self.store.drop_retired(projection).await;
            }
        }
        Ok(())
    }
}
