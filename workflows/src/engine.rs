//! The workflow engine's tailer.
//!
//! Two halves share one tailer lock and one checkpoint. The *starter* reads the log as it grows,
//! starts the runs the batch's received events recorded (together: one statement starts their
//! streams, `Ledger::execute_creations`) and works
//! out which runs the batch touches; the *settler* moves those runs on (submits their steps'
//! actions, records what became of them) and only then saves the checkpoint. Starting a run
//! never waits behind moving other runs on, so the time from an event accepted to its run
//! started stays short even while the settler works through a burst; when the settler falls
//! behind, it takes everything queued in one pass, each run once. After a crash the log is read
//! again from the checkpoint: a start already made is refused by its run, a step already taken
//! is refused by its run or its action's idempotency key, so nothing happens twice.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context as _;
use countersign_app::App;
use countersign_app::workflows::{self, RunFold};
use countersign_domain::action::{Action, ActionEvent};
use countersign_domain::workflow::{
    CloudEvent, IntakeEvent, IntakeEventEvent, RunId, RunStart, WorkflowRun,
};
use countersign_domain::{ActionId, TenantId};
use countersign_ledger::{LogCursor, LogWaker, LoggedEvent};
use cqrs_es::Aggregate as _;
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// Action event types after which a run's step may have ended or wait for votes.
/// (The submission itself is the engine's own doing, settled when it submitted.)
const STEP_EVENTS: [&str; 7] = [
    "ActionApproved",
    "ActionRejected",
    "ActionExpired",
    "ActionCancelled",
    "ExecutionSucceeded",
    "ExecutionFailed",
    "ExecutionSkipped",
];

/// Runs moved on at once.
const CONCURRENCY: usize = 16;

/// The most runs the settler takes in one pass when batches have queued up.
const SETTLE_BATCH: usize = 2_000;

/// Batches the starter may read ahead of the settler before it waits.
const AHEAD: usize = 256;

/// The most action ids remembered with the run they belong to, or none (their streams are not
/// read again).
const MAX_REMEMBERED: usize = 100_000;

/// How long an idle engine waits for a notification before it reads the log anyway.
const POLL: Duration = Duration::from_secs(1);

/// Tails the log and moves workflow runs on.
#[derive(Debug, Clone)]
pub struct Engine {
    app: App,
    checkpoint: String,
    batch: u32,
    /// Which run an action belongs to (`None`: none), learnt from submissions in the log or
    /// read from the action's stream.
    owners: HashMap<ActionId, Option<RunId>>,
}

/// What a batch of the log asks of the engine.
#[derive(Debug, Default)]
struct Scan {
    /// Received events and the runs each starts.
    starts: Vec<(TenantId, CloudEvent, Vec<RunStart>)>,
    /// The runs to move on, each once, in the order the batch first touched them.
    runs: Vec<RunId>,
}

/// A batch read, its runs started, handed to the settler.
#[derive(Debug)]
struct Work {
    last: LogCursor,
    runs: Vec<RunId>,
    /// The runs this batch started, as their first event left them (not read again).
    started: HashMap<RunId, RunFold>,
}

impl Engine {
    pub const CHECKPOINT: &'static str = "workflows";

    pub fn new(app: App) -> Self {
        Self {
            app,
            checkpoint: Self::CHECKPOINT.to_owned(),
            batch: 500,
            owners: HashMap::new(),
        }
    }

    fn remember(&mut self, id: ActionId, owner: Option<RunId>) {
        if self.owners.len() >= MAX_REMEMBERED {
            self.owners.clear();
        }
        self.owners.insert(id, owner);
    }

    async fn owner(&mut self, id: ActionId) -> anyhow::Result<Option<RunId>> {
        if let Some(owner) = self.owners.get(&id) {
            return Ok(*owner);
        }
        let owner = workflows::run_of_action(&self.app, id).await?;
        self.remember(id, owner);
        Ok(owner)
    }

    /// What one logged event asks for, added to `scan`.
    async fn scan_one(
        &mut self,
        logged: &LoggedEvent,
        scan: &mut Scan,
        seen: &mut HashSet<RunId>,
    ) -> anyhow::Result<()> {
        match logged.aggregate_type.as_str() {
            IntakeEvent::TYPE => {
                let IntakeEventEvent::EventReceived {
                    tenant,
                    event,
                    starts,
                    ..
                } = logged.decode::<IntakeEvent>()?;
                if !starts.is_empty() {
                    scan.runs.extend(
                        starts
                            .iter()
                            .map(|start| start.run_id)
                            .filter(|run| seen.insert(*run)),
                    );
                    scan.starts.push((tenant, event, starts));
                }
            }
            // A run's events are written by this engine while it settles the run, before its
            // checkpoint passes what caused them: they need nothing more.
            WorkflowRun::TYPE => {}
            // Every action's submission passes here before any of its later events: which run
            // it belongs to is learnt now, so the step events below need no read.
            Action::TYPE if logged.event_type == "ActionSubmitted" => {
                if let ActionEvent::ActionSubmitted(submitted) = logged.decode::<Action>()? {
                    let owner = workflows::run_of_submission(&submitted);
                    self.remember(submitted.context.action_id, owner);
                }
            }
            Action::TYPE if STEP_EVENTS.contains(&logged.event_type.as_str()) => {
                let id = ActionId::parse(&logged.aggregate_id)?;
                if let Some(run) = self.owner(id).await?
                    && seen.insert(run)
                {
                    scan.runs.push(run);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// What a batch of the log asks for.
    async fn scan(&mut self, events: &[LoggedEvent]) -> anyhow::Result<Scan> {
        let mut scan = Scan::default();
        let mut seen = HashSet::new();
        for logged in events {
            self.scan_one(logged, &mut scan, &mut seen)
                .await
                .with_context(|| {
                    format!("workflow engine at position {}", logged.cursor.position)
                })?;
        }
        Ok(scan)
    }

    /// Starts the runs the received events recorded, together (one statement starts their
    /// streams); answers those it started.
    async fn start(
        app: &App,
        starts: Vec<(TenantId, CloudEvent, Vec<RunStart>)>,
    ) -> anyhow::Result<HashMap<RunId, RunFold>> {
        if starts.is_empty() {
            return Ok(HashMap::new());
        }
        let started = workflows::start_runs(app, starts).await?;
        Ok(started
            .into_iter()
            .map(|fold| (fold.0.run_id, fold))
            .collect())
    }

    /// Moves the runs on as far as each goes now, side by side (each run's commands are refused
    /// when another got there first, so the order between runs does not matter), and writes
    /// each one's row in the runs index.
    async fn settle(
        app: &App,
        runs: Vec<RunId>,
        mut started: HashMap<RunId, RunFold>,
    ) -> anyhow::Result<()> {
        futures::stream::iter(runs)
            .map(|run| {
                let fold = started.remove(&run);
                async move {
                    let fold = match fold {
                        Some(fold) => Some(workflows::advance_from(app, run, fold).await?),
                        None => workflows::advance(app, run).await?,
                    };
                    if let Some((state, sequence)) = fold {
                        workflows::index_run(app, &state, sequence).await?;
                    }
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Handles the next batch of the log in one step — starts its runs, moves on every run it
    /// touches, saves the checkpoint — and returns how many events were read. After a failure
    /// the whole batch is handled again, which repeats nothing. ([`Engine::run`] does the same
    /// with starting and moving on overlapped.)
    pub async fn process_next(&mut self) -> anyhow::Result<usize> {
        let ledger = self.app.ledger().clone();
        let after: LogCursor = ledger.load_checkpoint(&self.checkpoint).await?;
        let events = ledger.read_log(after, self.batch).await?;
        let Some(last) = events.last().map(|event| event.cursor) else {
            return Ok(0);
        };
        let scan = self.scan(&events).await?;
        let started = Self::start(&self.app, scan.starts).await?;
        Self::settle(&self.app, scan.runs, started).await?;
        ledger.save_checkpoint(&self.checkpoint, last).await?;
        metrics::counter!("countersign_workflow_engine_events_total")
            .increment(events.len() as u64);
        Ok(events.len())
    }

    /// Reads the log from the checkpoint on, starts runs and hands each batch to the settler,
    /// until `shutdown` turns true (then the settler finishes what it was handed).
    async fn starter(
        &mut self,
        waker: &mut LogWaker,
        work: mpsc::Sender<Work>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let ledger = self.app.ledger().clone();
        let mut after = ledger.load_checkpoint(&self.checkpoint).await?;
        while !*shutdown.borrow() {
            let events = ledger.read_log(after, self.batch).await?;
            let Some(last) = events.last().map(|event| event.cursor) else {
                ledger.health().progressed(&self.checkpoint);
                tokio::select! {
                    Ok(()) = shutdown.changed() => {}
                    () = waker.wait(POLL) => {}
                }
                continue;
            };
            let scan = self.scan(&events).await?;
            let started = Self::start(&self.app, scan.starts).await?;
            metrics::counter!("countersign_workflow_engine_events_total")
                .increment(events.len() as u64);
            let batch = Work {
                last,
                runs: scan.runs,
                started,
            };
            if work.send(batch).await.is_err() {
                break;
            }
            after = last;
        }
        Ok(())
    }

    /// Moves on the runs of the batches handed over, several queued batches in one pass, and
    /// saves the checkpoint after each pass.
    async fn settler(
        app: App,
        checkpoint: String,
        mut work: mpsc::Receiver<Work>,
    ) -> anyhow::Result<()> {
        let ledger = app.ledger().clone();
        while let Some(first) = work.recv().await {
            let mut last = first.last;
            let mut seen: HashSet<RunId> = first.runs.iter().copied().collect();
            let (mut runs, mut started) = (first.runs, first.started);
            while runs.len() < SETTLE_BATCH {
                let Ok(next) = work.try_recv() else { break };
                last = next.last;
                runs.extend(next.runs.into_iter().filter(|run| seen.insert(*run)));
                started.extend(next.started);
            }
            Self::settle(&app, runs, started).await?;
            ledger.save_checkpoint(&checkpoint, last).await?;
            ledger.health().progressed(&checkpoint);
        }
        Ok(())
    }

    /// The starter and the settler side by side until `shutdown` turns true or either fails.
    async fn pipeline(
        &mut self,
        waker: &mut LogWaker,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let (sender, receiver) = mpsc::channel(AHEAD);
        let settler = Self::settler(self.app.clone(), self.checkpoint.clone(), receiver);
        let starter = self.starter(waker, sender, shutdown);
        tokio::try_join!(starter, settler)?;
        Ok(())
    }

    /// Runs until `shutdown` turns true, one instance at a time (tailer lock `workflows`).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let ledger = self.app.ledger().clone();
        let lock = loop {
            if let Some(lock) = ledger.lock_tailer(&self.checkpoint).await? {
                break lock;
            }
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        };
        let mut waker = ledger.log_waker().await?;
        let mut backoff = Duration::from_millis(100);
        info!("workflow engine started");
        while !*shutdown.borrow() {
            let began = std::time::Instant::now();
            match self.pipeline(&mut waker, shutdown.clone()).await {
                Ok(()) => {}
                Err(err) => {
                    if began.elapsed() > Duration::from_secs(60) {
                        // A failure after a long healthy stretch is not a repeat.
                        backoff = Duration::from_millis(100);
                    }
                    warn!(error = format!("{err:#}"), retry_in = ?backoff, "workflow engine: retrying from the checkpoint");
                    let stuck_after = ledger.load_checkpoint(&self.checkpoint).await.ok();
                    ledger.health().failed(&self.checkpoint, stuck_after, &err);
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        lock.release().await;
        Ok(())
    }
}
