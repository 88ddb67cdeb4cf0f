//! The executor against real stores and a real NATS JetStream server (each NATS test starts its
//! own `nats-server` on a free port, so that one can be stopped and started again).
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use countersign_domain::action::{
    Action, ActionCommand, ActionEvent, ActionStatus, CommandContext,
};
use countersign_domain::quorum::Vote;
use countersign_domain::{ActionId, Principal, TenantMode};
use countersign_executor::{
    Capability, Completed, Executor, ExecutorConfig, Failure, Invocation, JetStreamSource,
    LogSource, Processed, Progress, ProgressHub, Registry, Relay, StreamConfig, Sweeper,
};
use countersign_ledger::testing::actions::{self, principal, tenant};
use countersign_ledger::testing::{ChildGuard, TestStore, eventually, eventually_blocking, within};
use countersign_projections::{ProjectionStore, Supervisor};
use serde_json::{Value, json};
use tokio::sync::watch;

/// A capability that counts its calls and the execution keys it saw.
#[derive(Debug, Default)]
struct Counter {
    calls: AtomicUsize,
    keys: std::sync::Mutex<Vec<String>>,
    /// Fail (retryably) this many times first.
    fail_first: AtomicUsize,
    /// Block this long inside the call (to be killed mid-call).
    hold: std::sync::Mutex<Option<Duration>>,
    /// Calls in progress now.
    in_flight: AtomicUsize,
    /// The most calls ever in progress at once.
    peak: watch::Sender<usize>,
    /// While set, a call waits (up to a minute) until two calls have been in progress at once:
    /// two runners are then known to have run at the same time.
    rendezvous: AtomicBool,
}

/// Counts a call in progress until it ends, however it ends (an aborted call included).
struct InFlight<'a>(&'a Counter);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a Counter) -> Self {
        let now = counter.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counter.peak.send_if_modified(|peak| {
            let higher = now > *peak;
            *peak = (*peak).max(now);
            higher
        });
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, Default)]
struct Counting(Arc<Counter>);

#[async_trait]
impl Capability for Counting {
    async fn execute(
        &self,
        invocation: &Invocation,
        progress: &Progress,
    ) -> Result<Completed, Failure> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        self.0
            .keys
            .lock()
            .expect("lock")
            .push(invocation.execution_key.to_string());
        progress.report(json!({ "step": "counting" }));
        let _in_flight = InFlight::enter(&self.0);
        if self.0.rendezvous.load(Ordering::SeqCst) {
            // Gives up after a minute; the test then fails on what it checks.
            let mut peak = self.0.peak.subscribe();
            let _ = tokio::time::timeout(Duration::from_secs(60), peak.wait_for(|peak| *peak >= 2))
                .await;
        }
        let hold = *self.0.hold.lock().expect("lock");
        if let Some(hold) = hold {
            tokio::time::sleep(hold).await;
        }
        if self.0.fail_first.load(Ordering::SeqCst) > 0 {
            self.0.fail_first.fetch_sub(1, Ordering::SeqCst);
            return Err(Failure::retryable("not yet"));
        }
        Ok(Completed {
            result: json!({ "counted": invocation.payload }),
            undo_payload: Some(json!({ "uncount": true })),
        })
    }

    async fn preview(&self, _invocation: &Invocation) -> Result<Value, Failure> {
        Ok(json!({ "would_count": true }))
    }
}

impl Counting {
    fn calls(&self) -> usize {
        self.0.calls.load(Ordering::SeqCst)
    }
}

/// A `nats-server` of the test's own, with its own JetStream store.
struct NatsServer {
    child: Option<ChildGuard>,
    port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let mut server = Self {
            child: None,
            port,
            dir: tempfile::tempdir().expect("dir"),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("/usr/sbin/nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts (Debian package nats-server)");
        self.child = Some(child.into());
        eventually_blocking(
            within(Duration::from_secs(30)),
            || match std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                Ok(_) => Ok(()),
                Err(_) => Err("nats-server never listened"),
            },
        );
    }

    /// Kills the server (its store stays, for [`NatsServer::spawn`] to start it again).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill_and_wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

struct World {
    store: TestStore,
    projections: ProjectionStore,
    counting: Counting,
    stop: watch::Sender<bool>,
    stopped: watch::Receiver<bool>,
}

fn config() -> ExecutorConfig {
    ExecutorConfig {
        lease: Duration::from_secs(2),
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_millis(400),
    }
}

impl World {
    async fn new(kind: &str) -> Self {
        let store = TestStore::of_kind(kind).await.expect("store");
        let projections = ProjectionStore::open(&store.config)
            .await
            .expect("projections");
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(
            Supervisor::new(store.ledger.clone(), projections.clone()).run(stopped.clone()),
        );
        Self {
            store,
            projections,
            counting: Counting::default(),
            stop,
            stopped,
        }
    }

    fn executor(&self) -> Executor {
        self.executor_with(config())
    }

    fn executor_with(&self, config: ExecutorConfig) -> Executor {
        let registry = Registry::default()
            .with("test.count", self.counting.clone())
            .with("noop.echo", countersign_executor::builtin::Echo);
        Executor::new(
            self.store.ledger.clone(),
            registry,
            ProgressHub::default(),
            config,
        )
    }

    fn sweeper(&self, executor: Executor, every: Duration) -> Sweeper {
        Sweeper {
            executor,
            projections: self.projections.clone(),
            interval: every,
        }
    }

    async fn run(&self, id: ActionId, command: ActionCommand) -> Vec<ActionEvent> {
        actions::execute(&self.store.ledger, id, command)
            .await
            .unwrap_or_else(|err| panic!("{err}"))
            .events
            .into_iter()
            .map(|event| event.event)
            .collect()
    }

    async fn submit(&self, action_type: &str, requirements: Value, mode: TenantMode) -> ActionId {
        let (module, capability) = action_type.split_once('.').expect("module.capability");
        let submission = actions::submission(
            module,
            capability,
            "count",
            json!({ "payload": { "n": uuid::Uuid::new_v4().to_string() } }),
        );
        let id = actions::new_id();
        let requester = principal("rita", &["requester"]);
        self.run(
            id,
            actions::submit(now(&requester), id, submission, &requirements, mode),
        )
        .await;
        id
    }

    async fn approve(&self, id: ActionId) {
        let owner = principal("olga", &["owner"]);
        let events = self
            .run(id, actions::vote(now(&owner), Vote::Approve, None))
            .await;
        assert!(
            events
                .iter()
                .any(|event| matches!(event, ActionEvent::ActionApproved(_)))
        );
    }

    async fn status(&self, id: ActionId) -> ActionStatus {
        let (action, _) = self.store.ledger.load::<Action>(&id).await.expect("load");
        action.state().expect("submitted").status
    }

    /// The action's events as stored, decoded.
    async fn events(&self, id: ActionId) -> Vec<ActionEvent> {
        self.store
            .ledger
            .stream_of::<Action>(&id)
            .await
            .expect("events")
            .iter()
            .map(|logged| logged.decode::<Action>().expect("decode"))
            .collect()
    }

    async fn wait_for(&self, id: ActionId, wanted: ActionStatus) {
        eventually(within(Duration::from_secs(60)), async || {
            let status = self.status(id).await;
            if status == wanted {
                return Ok(());
            }
            Err(format!("{id} stayed {status}, wanted {wanted}"))
        })
        .await;
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// In tenant acme, by `by`, now.
fn now(by: &Principal) -> CommandContext {
    actions::context(&tenant("acme"), by, chrono::Utc::now())
}

fn auto() -> Value {
    json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }], "auto_execute": true, "max_attempts": 3 })
}

fn successes(events: &[ActionEvent]) -> usize {
    events
        .iter()
        .filter(|event| matches!(event, ActionEvent::ExecutionSucceeded(_)))
        .count()
}

fn stream_config() -> StreamConfig {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    StreamConfig {
        stream: format!("TEST_{}", &unique[..12]),
        prefix: format!("cs{}", &unique[..12]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approved_actions_run_once_through_nats_jetstream() {
    let world = World::new("postgres").await;
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let stream = stream_config();
    tokio::spawn(
        Relay::new(world.store.ledger.clone(), client.clone(), stream.clone())
            .run(world.stopped.clone()),
    );
    let source = JetStreamSource {
        executor: world.executor(),
        client: client.clone(),
        stream: stream.clone(),
        consumer: "executor".into(),
        max_deliver: 5,
        concurrency: 4,
    };
    tokio::spawn(source.run(world.stopped.clone()));

    let ids = [
        world
            .submit("test.count", auto(), TenantMode::RequireApproval)
            .await,
        world
            .submit("test.count", auto(), TenantMode::RequireApproval)
            .await,
    ];
    for id in ids {
        world.approve(id).await;
    }
    for id in ids {
        world.wait_for(id, ActionStatus::Executed).await;
        let events = world.events(id).await;
        assert_eq!(successes(&events), 1);
        assert!(events.iter().any(|e| matches!(e, ActionEvent::ExecutionSucceeded(s) if s.result["counted"]["n"].is_string())));
    }
    assert_eq!(world.counting.calls(), 2, "each action ran once");

    // Replaying the whole stream from the start through a fresh consumer runs nothing again.
    let replay = JetStreamSource {
        executor: world.executor(),
        client: client.clone(),
        stream: stream.clone(),
        consumer: "replay".into(),
        max_deliver: 5,
        concurrency: 4,
    };
    let (stop_replay, replay_stopped) = watch::channel(false);
    let replaying = tokio::spawn(replay.run(replay_stopped));
    let jetstream = async_nats::jetstream::new(client.clone());
    let deadline = within(Duration::from_secs(30)).every(Duration::from_millis(50));
    eventually(deadline, async || {
        let consumer: Result<async_nats::jetstream::consumer::PullConsumer, _> = jetstream
            .get_stream(&stream.stream)
            .await
            .expect("stream")
            .get_consumer("replay")
            .await;
        let Ok(mut consumer) = consumer else {
            return Err("the replaying executor never created its consumer".to_owned());
        };
        let info = consumer.info().await.expect("info");
        if info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence > 0
        {
            return Ok(());
        }
        Err(format!("the replay never drained: {info:?}"))
    })
    .await;
    let _ = stop_replay.send(true);
    let _ = replaying.await;
    assert_eq!(world.counting.calls(), 2, "the replay called no capability");
    for id in ids {
        assert_eq!(successes(&world.events(id).await), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_embedded_executor_tails_the_store_the_same_way() {
    let world = World::new("sqlite").await;
    tokio::spawn(
        LogSource {
            executor: world.executor(),
        }
        .run(world.stopped.clone()),
    );
    let id = world
        .submit("test.count", auto(), TenantMode::RequireApproval)
        .await;
    world.approve(id).await;
    world.wait_for(id, ActionStatus::Executed).await;
    assert_eq!(world.counting.calls(), 1);
    // A manual action waits for its request.
    let manual = world
        .submit(
            "test.count",
            json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }] }),
            TenantMode::RequireApproval,
        )
        .await;
    world.approve(manual).await;
    // The executor saves its checkpoint after processing what it read: once it is past the
    // approval, the executor has seen the approved manual action and left it alone.
    let approved = world
        .store
        .ledger
        .stream_of::<Action>(&manual)
        .await
        .expect("events")
        .last()
        .expect("approved")
        .cursor;
    let tailer = LogSource {
        executor: world.executor(),
    };
    eventually(within(Duration::from_secs(60)), async || {
        if tailer.checkpoint().await.expect("checkpoint") < approved {
            return Err("the executor never read the approval");
        }
        Ok(())
    })
    .await;
    assert_eq!(world.status(manual).await, ActionStatus::Approved);
    let requester = principal("rita", &["requester"]);
    world
        .run(manual, actions::request_execution(now(&requester)))
        .await;
    world.wait_for(manual, ActionStatus::Executed).await;
    assert_eq!(world.counting.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_executor_killed_mid_call_is_retried_with_the_same_key_and_succeeds_once() {
    let world = World::new("postgres").await;
    *world.counting.0.hold.lock().expect("lock") = Some(Duration::from_secs(30));
    let id = world
        .submit("test.count", auto(), TenantMode::RequireApproval)
        .await;
    world.approve(id).await;
    // The first executor claims the attempt and hangs inside the capability; then it dies. Its
    // lease is long enough for the checks below to run inside it however busy the machine is.
    let first = world.executor_with(ExecutorConfig {
        lease: Duration::from_secs(10),
        ..config()
    });
    let running = tokio::spawn(async move { first.process(&id).await });
    let deadline = within(Duration::from_secs(30)).every(Duration::from_millis(10));
    eventually(deadline, async || {
        if world.counting.calls() == 0 {
            return Err("never called");
        }
        Ok(())
    })
    .await;
    running.abort();
    let _ = running.await;
    assert_eq!(world.status(id).await, ActionStatus::Executing);
    *world.counting.0.hold.lock().expect("lock") = None;

    // Before the lease runs out nobody may take over; after it, the next processing retries.
    let second = world.executor();
    assert_eq!(
        second.process(&id).await.expect("process"),
        Processed::Nothing
    );
    let deadline = within(Duration::from_secs(60)).every(Duration::from_millis(100));
    let retried = eventually(deadline, async || {
        match second.process(&id).await.expect("process") {
            Processed::Nothing => Err("never taken over"),
            outcome => Ok(outcome),
        }
    })
    .await;
    assert_eq!(
        retried,
        Processed::Ran {
            attempt: 2,
            succeeded: true
        }
    );
    let events = world.events(id).await;
    assert_eq!(successes(&events), 1);
    let keys = world.counting.0.keys.lock().expect("lock").clone();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "the retry used the same execution key");
    assert!(events.iter().any(|e| matches!(e, ActionEvent::ExecutionFailed(f) if f.attempt == 1 && f.error.contains("lease"))));
    // Nothing more happens however often it is processed.
    assert_eq!(
        second.process(&id).await.expect("process"),
        Processed::Nothing
    );
    assert_eq!(world.counting.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_claimant_never_called_the_capability_and_the_next_one_does_once() {
    let world = World::new("sqlite").await;
    let id = world
        .submit("test.count", auto(), TenantMode::RequireApproval)
        .await;
    world.approve(id).await;
    // A claim by an executor that died before calling anything.
    let dead = principal("executor:dead", &[]);
    world.run(id, actions::start_execution(now(&dead), 1)).await;
    let sweeper = world.sweeper(world.executor(), Duration::from_millis(100));
    tokio::spawn(sweeper.run(world.stopped.clone()));
    world.wait_for(id, ActionStatus::Executed).await;
    assert_eq!(world.counting.calls(), 1);
    assert_eq!(successes(&world.events(id).await), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retryable_failures_back_off_and_retry_up_to_max_attempts() {
    let world = World::new("sqlite").await;
    world.counting.0.fail_first.store(2, Ordering::SeqCst);
    tokio::spawn(
        LogSource {
            executor: world.executor(),
        }
        .run(world.stopped.clone()),
    );
    tokio::spawn(
        world
            .sweeper(world.executor(), Duration::from_millis(100))
            .run(world.stopped.clone()),
    );
    let id = world
        .submit("test.count", auto(), TenantMode::RequireApproval)
        .await;
    world.approve(id).await;
    world.wait_for(id, ActionStatus::Executed).await;
    let events = world.events(id).await;
    let failures: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ActionEvent::ExecutionFailed(f) => Some(f.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 2);
    assert!(failures.iter().all(|f| f.will_retry));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ActionEvent::ExecutionSucceeded(s) if s.attempt == 3))
    );
    assert_eq!(world.counting.calls(), 3);

    // Unknown capabilities fail the action at once, with a clear error.
    let unknown = world
        .submit("ghost.haunt", auto(), TenantMode::RequireApproval)
        .await;
    world.approve(unknown).await;
    world.wait_for(unknown, ActionStatus::Failed).await;
    let (action, _) = world
        .store
        .ledger
        .load::<Action>(&unknown)
        .await
        .expect("load");
    assert!(
        action
            .state()
            .and_then(|s| s.execution.last_error.clone())
            .is_some_and(|e| e.contains("unknown capability ghost.haunt"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn safe_mode_records_a_skip_and_calls_nothing() {
    let world = World::new("sqlite").await;
    tokio::spawn(
        LogSource {
            executor: world.executor(),
        }
        .run(world.stopped.clone()),
    );
    let id = world.submit("test.count", auto(), TenantMode::Safe).await;
    world.approve(id).await;
    world.wait_for(id, ActionStatus::Skipped).await;
    assert_eq!(world.counting.calls(), 0);
    assert!(
        world
            .events(id)
            .await
            .iter()
            .any(|e| matches!(e, ActionEvent::ExecutionSkipped(_)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadlines_escalate_then_expire_once_each_with_two_executors() {
    let world = World::new("postgres").await;
    let sweepers: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(
                world
                    .sweeper(world.executor(), Duration::from_millis(50))
                    .run(world.stopped.clone()),
            )
        })
        .collect();
    let id = world
        .submit(
            "test.count",
            json!({ "stages": [{ "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 1 }] }], "timeout_seconds": 1, "escalation_role": "cfo", "max_escalations": 1 }),
            TenantMode::RequireApproval,
        )
        .await;
    world.wait_for(id, ActionStatus::Expired).await;
    // Stopped, the sweepers have finished whatever they had started; sweeping again by hand
    // does nothing to the expired action.
    world.stop.send(true).expect("stop");
    for sweeper in sweepers {
        tokio::time::timeout(Duration::from_secs(60), sweeper)
            .await
            .expect("the sweeper stops")
            .expect("task")
            .expect("sweeper");
    }
    for _ in 0..2 {
        let done = world
            .sweeper(world.executor(), Duration::from_millis(50))
            .sweep()
            .await
            .expect("sweep");
        assert!(done.iter().all(|(swept, _)| *swept != id), "{done:?}");
    }
    let events = world.events(id).await;
    let count = |name: &str| events.iter().filter(|e| e.event_type() == name).count();
    assert_eq!(count("ActionEscalated"), 1, "{events:?}");
    assert_eq!(count("ActionExpired"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_stopped_during_a_write_load_loses_no_event() {
    let world = World::new("postgres").await;
    let mut nats = NatsServer::start();
    let stream = stream_config();
    // The relay and executor reconnect on their own; the client keeps retrying.
    let options = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None);
    let client = options.connect(nats.url()).await.expect("nats");
    tokio::spawn(
        Relay::new(world.store.ledger.clone(), client.clone(), stream.clone())
            .run(world.stopped.clone()),
    );
    tokio::spawn(
        JetStreamSource {
            executor: world.executor(),
            client: client.clone(),
            stream: stream.clone(),
            consumer: "executor".into(),
            max_deliver: 20,
            concurrency: 8,
        }
        .run(world.stopped.clone()),
    );
    let auto_approved = json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }], "auto_execute": true, "auto_approve": true });
    let mut ids = Vec::new();
    for n in 0..60 {
        ids.push(
            world
                .submit("test.count", auto_approved.clone(), TenantMode::Auto)
                .await,
        );
        if n == 20 {
            nats.stop();
        }
        if n == 40 {
            nats.spawn();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in &ids {
        world.wait_for(*id, ActionStatus::Executed).await;
    }
    assert_eq!(
        world.counting.calls(),
        ids.len(),
        "every action ran exactly once"
    );
    // The relay publishes asynchronously and saves its checkpoint after publishing: it reaches
    // the head of the log shortly after the last action ran.
    let head = world.store.ledger.log_head().await.expect("head");
    let deadline = within(Duration::from_secs(60)).every(Duration::from_millis(50));
    eventually(deadline, async || {
        let relayed = world
            .store
            .ledger
            .load_checkpoint(&format!("relay:{}", stream.stream))
            .await
            .expect("checkpoint");
        if relayed >= head {
            return Ok(());
        }
        Err(format!(
            "the relay stopped at {relayed:?} before the head {head:?}"
        ))
    })
    .await;
    let jetstream = async_nats::jetstream::new(client);
    let expected = u64::try_from(ids.len() * 4).unwrap_or(0);
    let deadline = within(Duration::from_secs(30)).every(Duration::from_millis(100));
    eventually(deadline, async || {
        let info = jetstream
            .get_stream(&stream.stream)
            .await
            .expect("stream")
            .info()
            .await
            .expect("info")
            .state
            .clone();
        if info.messages >= expected {
            return Ok(());
        }
        Err(format!(
            "every event reached the stream: {info:?} (head {head:?})"
        ))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_executors_on_one_consumer_share_the_work_and_never_run_an_action_twice() {
    let world = World::new("postgres").await;
    // The first call waits until a second one runs beside it: with one call at a time per
    // executor, that one is the other executor's.
    world.counting.0.rendezvous.store(true, Ordering::SeqCst);
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let stream = stream_config();
    tokio::spawn(
        Relay::new(world.store.ledger.clone(), client.clone(), stream.clone())
            .run(world.stopped.clone()),
    );
    // A lease (and so a call budget) far longer than the first call may wait for the second.
    let leased = ExecutorConfig {
        lease: Duration::from_secs(120),
        ..config()
    };
    let executors = [world.executor_with(leased), world.executor_with(leased)];
    for executor in &executors {
        let source = JetStreamSource {
            executor: executor.clone(),
            client: client.clone(),
            stream: stream.clone(),
            consumer: "shared".into(),
            max_deliver: 5,
            concurrency: 1,
        };
        tokio::spawn(source.run(world.stopped.clone()));
    }
    let auto_approved = json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }], "auto_execute": true, "auto_approve": true });
    let mut ids = Vec::new();
    for _ in 0..16 {
        ids.push(
            world
                .submit("test.count", auto_approved.clone(), TenantMode::Auto)
                .await,
        );
    }
    let mut runners = std::collections::BTreeSet::new();
    for id in &ids {
        world.wait_for(*id, ActionStatus::Executed).await;
        let events = world.events(*id).await;
        assert_eq!(successes(&events), 1);
        for event in events {
            if let ActionEvent::ExecutionStarted(started) = event {
                runners.insert(started.context.actor.to_string());
            }
        }
    }
    assert_eq!(world.counting.calls(), ids.len(), "no action ran twice");
    let identities: std::collections::BTreeSet<String> =
        executors.iter().map(|e| e.identity().to_string()).collect();
    assert!(runners.is_subset(&identities));
    assert!(
        *world.counting.0.peak.borrow() >= 2,
        "two calls ran at the same time"
    );
    assert_eq!(runners.len(), 2, "both executors took work: {runners:?}");
}
