//! Scale-out through the binary: two `serve --role api` and two `serve --role worker` processes
//! on one PostgreSQL database and one JetStream stream. Writes through either api process are
//! visible through both; when the active worker is killed, the standby takes every tailer lock
//! and the log ends up projected, sealed, relayed and executed exactly once.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use countersign_ledger::Backend;
use countersign_ledger::testing::{
    ChildGuard, Deadline, TestStore, TestStream, eventually, eventually_blocking, within,
};
use serde_json::{Value, json};

const SECRET: &str = "roles-test-secret-0123456789abcdef";
/// How long anything the test waits for may take (the readable log waits for the oldest
/// transaction open anywhere on the server, other tests' included).
const PATIENCE: Duration = Duration::from_secs(90);

fn patience() -> Deadline {
    within(PATIENCE)
}

/// A `countersign serve` child process, killed when dropped (a failing test leaves none
/// behind). Its JSON log is collected as it comes.
struct Process {
    name: String,
    child: ChildGuard,
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn start(name: &str, command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        // Detached: it ends when the process's stderr closes.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log").push(line);
            }
        });
        Self {
            name: name.to_owned(),
            child: child.into(),
            log,
        }
    }

    /// The log lines so far, parsed.
    fn messages(&self) -> Vec<Value> {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// How many log lines say `message`.
    fn said(&self, message: &str) -> usize {
        self.messages()
            .iter()
            .filter(|line| line["fields"]["message"] == message)
            .count()
    }

    fn tail(&self) -> String {
        let log = self.log.lock().expect("log");
        log[log.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until `found` answers something from the log; fails if the process exits first.
    fn wait_for<T>(&mut self, what: &str, found: impl Fn(&[Value]) -> Option<T>) -> T {
        eventually_blocking(patience().every(Duration::from_millis(50)), || {
            if let Some(value) = found(&self.messages()) {
                return Ok(value);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before {what}:\n{}",
                    self.name,
                    self.tail()
                );
            }
            Err(format!(
                "{} never logged {what}:\n{}",
                self.name,
                self.tail()
            ))
        })
    }

    /// Waits until the log says each of `messages` (a message listed twice, twice).
    fn wait_for_messages(&mut self, messages: &[&str]) {
        let mut wanted: BTreeMap<&str, usize> = BTreeMap::new();
        for message in messages {
            *wanted.entry(message).or_default() += 1;
        }
        self.wait_for(&format!("{wanted:?}"), |lines| {
            wanted
                .iter()
                .all(|(message, times)| {
                    lines
                        .iter()
                        .filter(|line| line["fields"]["message"] == *message)
                        .count()
                        >= *times
                })
                .then_some(())
        });
    }

    /// SIGKILL: no graceful anything.
    fn kill(&mut self) {
        self.child.kill_and_wait();
    }
}

/// The settings every process of the deployment shares.
struct Deployment {
    database_url: String,
    /// Deleted however the test ends.
    stream: TestStream,
    data_dir: tempfile::TempDir,
}

impl Deployment {
    fn serve(&self, name: &str, role: &str) -> Process {
        let mut command = Command::new(env!("CARGO_BIN_EXE_countersign"));
        command
            .args([
                "serve",
                "--role",
                role,
                "--dev-keys",
                "false",
                "--nats-stream",
                &self.stream.name,
                "--nats-prefix",
                &self.stream.prefix,
            ])
            .env_remove("RUST_LOG")
            .env("COUNTERSIGN_LOG_FORMAT", "json")
            .env("DATABASE_URL", &self.database_url)
            .env("NATS_URL", self.stream.url())
            .env("COUNTERSIGN_DATA_DIR", self.data_dir.path())
            .env("COUNTERSIGN_JWT_HS256_SECRET", SECRET)
            .env("COUNTERSIGN_SWEEP_SECONDS", "1");
        if role == "api" {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        Process::start(name, &mut command)
    }
}

/// An api process and where it listens.
struct Api {
    process: Process,
    address: String,
}

impl Api {
    fn start(deployment: &Deployment, name: &str) -> Self {
        let mut process = deployment.serve(name, "api");
        let address = process.wait_for("where it listens", |lines| {
            lines.iter().find_map(|line| {
                (line["fields"]["message"] == "countersign listening"
                    && line["fields"]["role"] == "api")
                    .then(|| line["fields"]["address"].as_str().map(str::to_owned))?
            })
        });
        Self { process, address }
    }
}

/// One HTTP/1.1 answer.
struct Answer {
    status: u16,
    consistency_token: Option<String>,
    body: Value,
}

fn http(address: &str, method: &str, path: &str, bearer: &str, body: Option<&Value>) -> Answer {
    let answer = support::request(address, method, path, Some(bearer), &[], body);
    Answer {
        status: answer.status,
        consistency_token: answer.header("x-consistency-token"),
        body: answer.json(),
    }
}

fn token(user: &str, roles: &[&str]) -> String {
    countersign_gateway::mint_hs256(
        SECRET.as_bytes(),
        &countersign_gateway::Claims {
            sub: user.into(),
            tenant: "acme".into(),
            roles: roles.iter().map(|role| (*role).to_owned()).collect(),
            exp: chrono::Utc::now().timestamp() + 3600,
            iat: None,
            iss: None,
            aud: None,
        },
    )
    .expect("token")
}

/// The action's status as its detail answers it (built from the ledger: no waiting).
fn status_of(api: &Api, id: &str, bearer: &str) -> String {
    let answer = http(
        &api.address,
        "GET",
        &format!("/v1/actions/{id}"),
        bearer,
        None,
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["status"].as_str().expect("a status").to_owned()
}

/// The action's status in `api`'s inbox once the read model has reached the write behind
/// `consistency_token`. While no worker projects (the active one was just killed), the inbox
/// answers 503 `not_caught_up` after 5 s: asked again until the standby has taken over.
fn inbox_status(api: &Api, id: &str, bearer: &str, consistency_token: &str) -> String {
    eventually_blocking(patience(), || {
        let answer = http(
            &api.address,
            "GET",
            &format!("/v1/actions?status=all&limit=200&consistent_with={consistency_token}"),
            bearer,
            None,
        );
        match answer.status {
            200 => Ok(answer.body["items"]
                .as_array()
                .expect("items")
                .iter()
                .find(|item| item["id"] == id)
                .and_then(|item| item["status"].as_str())
                .unwrap_or_else(|| panic!("{id} is not in the inbox: {}", answer.body))
                .to_owned()),
            503 if answer.body["code"] == "not_caught_up" => {
                Err(format!("inbox answered 503: {}", answer.body))
            }
            status => panic!("inbox answered {status}: {}", answer.body),
        }
    })
}

/// Submits an action through one api process and approves it and asks for its execution
/// through the other, checking after each write that both answer the new status, from the
/// ledger (detail) and from the read model (inbox, `consistent_with` the write). Returns its id.
fn submit_approve_execute(writer: &Api, other: &Api, n: usize) -> String {
    let (requester, owner) = (token("rita", &["requester"]), token("olga", &["owner"]));
    let submitted = http(
        &writer.address,
        "POST",
        "/v1/actions",
        &requester,
        Some(&json!({
            "module": "noop", "capability": "echo", "summary": format!("Echo number {n}"),
            "payload": { "n": n }
        })),
    );
    assert_eq!(submitted.status, 201, "{}", submitted.body);
    let id = submitted.body["id"].as_str().expect("id").to_owned();
    let written = submitted.consistency_token.expect("a consistency token");
    for api in [writer, other] {
        assert_eq!(status_of(api, &id, &owner), "pending");
        assert_eq!(inbox_status(api, &id, &owner, &written), "pending");
    }

    let approved = http(
        &other.address,
        "POST",
        &format!("/v1/actions/{id}/approve"),
        &owner,
        Some(&json!({ "comment": format!("approved through {}", other.process.name) })),
    );
    assert_eq!(approved.status, 200, "{}", approved.body);
    let written = approved.consistency_token.expect("a consistency token");
    for api in [writer, other] {
        assert_eq!(status_of(api, &id, &owner), "approved");
        assert_eq!(inbox_status(api, &id, &owner, &written), "approved");
    }

    let execute = http(
        &writer.address,
        "POST",
        &format!("/v1/actions/{id}/execute"),
        &owner,
        Some(&json!({})),
    );
    assert_eq!(execute.status, 202, "{}", execute.body);
    id
}

/// An action's live stream (`GET /v1/actions/{id}/stream`) on one api process, read on a
/// thread of its own until the stream ends (the action is finished) or the deadline passes.
struct Watch {
    reader: std::thread::JoinHandle<String>,
}

impl Watch {
    fn open(api: &Api, id: &str, bearer: &str) -> Self {
        let mut stream = TcpStream::connect(&api.address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        write!(
            stream,
            "GET /v1/actions/{id}/stream HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {bearer}\r\n\
             Accept: text/event-stream\r\n\r\n",
            api.address
        )
        .expect("request");
        // The stream is open once its first event (the status now) has arrived.
        let mut seen = String::new();
        let mut buffer = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(30);
        while !seen.contains("event: status") {
            assert!(Instant::now() < deadline, "the stream never opened: {seen}");
            if let Ok(read) = stream.read(&mut buffer) {
                seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
            }
        }
        let reader = std::thread::spawn(move || {
            let deadline = Instant::now() + PATIENCE;
            while Instant::now() < deadline && !seen.ends_with("0\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(read) => seen.push_str(&String::from_utf8_lossy(&buffer[..read])),
                    Err(_) => {}
                }
            }
            seen
        });
        Self { reader }
    }

    /// Everything the stream said, once it has ended.
    fn said(self) -> String {
        self.reader.join().expect("the stream reader")
    }
}

/// Waits until both api processes answer every action of `ids` executed.
fn wait_until_executed(apis: &[&Api], ids: &[String]) {
    let owner = token("olga", &["owner"]);
    let deadline = patience().every(Duration::from_millis(100));
    for api in apis {
        for id in ids {
            eventually_blocking(deadline, || {
                let status = status_of(api, id, &owner);
                if status == "executed" {
                    return Ok(());
                }
                Err(format!(
                    "{id} is still {status} through {}",
                    api.process.name
                ))
            });
        }
    }
}

/// The advisory locks held in the test's database (the tailer locks: nothing else takes one
/// for long).
async fn advisory_locks(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_locks
          WHERE locktype = 'advisory' AND granted
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .expect("pg_locks")
}

/// One event of the log, as stored.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Stored {
    position: i64,
    tenant: String,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    actor: String,
}

async fn stored_events(pool: &sqlx::PgPool) -> Vec<Stored> {
    let rows: Vec<(i64, String, String, String, i64, String, String)> = sqlx::query_as(
        "SELECT position, tenant, aggregate_type, aggregate_id, sequence, event_type,
                metadata ->> 'actor'
           FROM events ORDER BY position",
    )
    .fetch_all(pool)
    .await
    .expect("events");
    rows.into_iter()
        .map(
            |(position, tenant, aggregate_type, aggregate_id, sequence, event_type, actor)| {
                Stored {
                    position,
                    tenant,
                    aggregate_type,
                    aggregate_id,
                    sequence,
                    event_type,
                    actor,
                }
            },
        )
        .collect()
}

/// What disagrees between the log and what the workers made of it: the live read models, the
/// seals, the JetStream stream and the executions. Empty when everything happened exactly once.
async fn disagreements(
    pool: &sqlx::PgPool,
    jetstream: &async_nats::jetstream::Context,
    stream: &str,
    ids: &[String],
) -> Vec<String> {
    let events = stored_events(pool).await;
    let total = i64::try_from(events.len()).expect("a count");
    let mut wrong = Vec::new();

    // Projections: each live generation applied every event once (its counter moves in the
    // transaction that writes its rows); the audit trail has one row per action event, the
    // inbox one row per action, all executed.
    let live: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT name, generation, events FROM projections WHERE state = 'live'")
            .fetch_all(pool)
            .await
            .expect("projections");
    for (name, generation, applied) in &live {
        if *applied != total {
            wrong.push(format!(
                "projection {name} g{generation} applied {applied} of {total} events"
            ));
        }
    }
    let generation_of = |name: &str| {
        live.iter()
            .find(|(live_name, _, _)| live_name == name)
            .map(|(_, generation, _)| *generation)
    };
    match generation_of("audit") {
        Some(generation) => {
            let rows: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
                "SELECT action_id, sequence, position FROM p_audit_g{generation} ORDER BY position"
            ))
            .fetch_all(pool)
            .await
            .expect("audit rows");
            let expected: Vec<(String, i64, i64)> = events
                .iter()
                .filter(|event| event.aggregate_type == "action")
                .map(|event| (event.aggregate_id.clone(), event.sequence, event.position))
                .collect();
            if rows != expected {
                wrong.push(format!(
                    "the audit trail has {} rows for {} action events",
                    rows.len(),
                    expected.len()
                ));
            }
        }
        None => wrong.push("no live audit projection".into()),
    }
    match generation_of("actions") {
        Some(generation) => {
            let rows: Vec<(String, String)> = sqlx::query_as(&format!(
                "SELECT action_id, status FROM p_actions_g{generation} ORDER BY action_id"
            ))
            .fetch_all(pool)
            .await
            .expect("inbox rows");
            let mut expected: Vec<(String, String)> = ids
                .iter()
                .map(|id| (id.clone(), "executed".to_owned()))
                .collect();
            expected.sort();
            if rows != expected {
                wrong.push(format!("the inbox rows are {rows:?}"));
            }
        }
        None => wrong.push("no live actions projection".into()),
    }

    // Seals: one leaf per event, in its tenant's tree; the sealer's counter agrees.
    let leaves: Vec<(String, i64)> =
        sqlx::query_as("SELECT tenant, position FROM ledger_leaves ORDER BY position")
            .fetch_all(pool)
            .await
            .expect("leaves");
    let expected: Vec<(String, i64)> = events
        .iter()
        .map(|event| (event.tenant.clone(), event.position))
        .collect();
    if leaves != expected {
        wrong.push(format!("{} leaves for {total} events", leaves.len()));
    }
    let trees: Vec<(String, i64)> =
        sqlx::query_as("SELECT tenant, size FROM ledger_trees ORDER BY tenant")
            .fetch_all(pool)
            .await
            .expect("trees");
    let mut per_tenant: BTreeMap<String, i64> = BTreeMap::new();
    for event in &events {
        *per_tenant.entry(event.tenant.clone()).or_default() += 1;
    }
    if trees != per_tenant.clone().into_iter().collect::<Vec<_>>() {
        wrong.push(format!(
            "tree sizes {trees:?}, events per tenant {per_tenant:?}"
        ));
    }
    let sealed: i64 = sqlx::query_scalar("SELECT events FROM ledger_seal")
        .fetch_one(pool)
        .await
        .expect("seal checkpoint");
    if sealed != total {
        wrong.push(format!("the sealer counted {sealed} of {total} events"));
    }

    // The stream: one message per event (the relay's Nats-Msg-Id dedups a re-publish).
    match jetstream.get_stream(stream).await {
        Ok(mut handle) => match handle.info().await {
            Ok(info) => {
                if info.state.messages != u64::try_from(total).expect("a count") {
                    wrong.push(format!(
                        "the stream holds {} messages for {total} events",
                        info.state.messages
                    ));
                }
            }
            Err(err) => wrong.push(format!("stream info: {err}")),
        },
        Err(err) => wrong.push(format!("stream: {err}")),
    }

    // Executions: each action started and succeeded exactly once.
    for id in ids {
        let count = |event_type: &str| {
            events
                .iter()
                .filter(|event| event.aggregate_id == *id && event.event_type == event_type)
                .count()
        };
        let (started, succeeded) = (count("ExecutionStarted"), count("ExecutionSucceeded"));
        if (started, succeeded) != (1, 1) {
            wrong.push(format!(
                "{id}: {started} ExecutionStarted, {succeeded} ExecutionSucceeded"
            ));
        }
    }
    wrong
}

/// The executor identity a worker logged.
fn executor_identity(worker: &mut Process) -> String {
    worker.wait_for("its executor identity", |lines| {
        lines.iter().find_map(|line| {
            (line["fields"]["message"] == "executor running")
                .then(|| line["fields"]["executor"].as_str().map(str::to_owned))?
        })
    })
}

/// What an active worker logs once it holds every tailer lock (one message per lock).
const ACTIVE: [&str; 7] = [
    "projection runner started",
    "projection runner started",
    "sealer started",
    "relay started",
    "notifier tailing the log",
    "notification dispatcher running",
    "workflow engine started",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[expect(
    clippy::print_stderr,
    reason = "the takeover time, shown with --nocapture"
)]
async fn api_and_worker_roles_scale_out_and_a_standby_worker_takes_over() {
    let began = Instant::now();
    let store = TestStore::postgres().await.expect("database");
    let Backend::Postgres(pool) = store.ledger.backend() else {
        unreachable!("a PostgreSQL test store")
    };
    let deployment = Deployment {
        database_url: store.location(),
        stream: TestStream::new("roles"),
        data_dir: tempfile::tempdir().expect("temp dir"),
    };
    let client = async_nats::connect(deployment.stream.url()).await;
    let jetstream = async_nats::jetstream::new(client.expect("NATS answers"));

    // Worker 1 first, until it holds every tailer lock; then worker 2, which consumes from
    // the shared durable consumer but waits for the locks.
    let mut worker1 = deployment.serve("worker 1", "worker");
    worker1.wait_for_messages(&[&ACTIVE[..], &["executor consuming"]].concat());
    let mut worker2 = deployment.serve("worker 2", "worker");
    worker2.wait_for_messages(&["countersign running (no listener)", "executor consuming"]);
    let standby_identity = executor_identity(&mut worker2);
    let api1 = Api::start(&deployment, "api 1");
    let api2 = Api::start(&deployment, "api 2");
    assert_eq!(
        advisory_locks(pool).await,
        i64::try_from(ACTIVE.len()).expect("a few locks"),
        "two projection runners, the sealer, the relay, the notifier, the dispatcher and the workflow engine, each held once"
    );
    for message in ACTIVE {
        assert_eq!(worker2.said(message), 0, "the standby waits: {message}");
    }
    for api in [&api1, &api2] {
        for message in [
            "projection runner started",
            "sealer started",
            "relay started",
        ] {
            assert_eq!(
                api.process.said(message),
                0,
                "an api process runs no tailer"
            );
        }
    }

    // A live stream on one api process hears what the other api process and the worker
    // recorded: the approval written through api 1, the execution written by worker 1, and the
    // progress the capability reported in worker 1.
    let (requester, owner) = (token("rita", &["requester"]), token("olga", &["owner"]));
    let submitted = http(
        &api1.address,
        "POST",
        "/v1/actions",
        &requester,
        Some(
            &json!({ "module": "noop", "capability": "echo", "summary": "Echo, watched",
                      "payload": { "watched": true } }),
        ),
    );
    assert_eq!(submitted.status, 201, "{}", submitted.body);
    let watched = submitted.body["id"].as_str().expect("id").to_owned();
    let watch = Watch::open(&api2, &watched, &owner);
    for step in ["approve", "execute"] {
        let answer = http(
            &api1.address,
            "POST",
            &format!("/v1/actions/{watched}/{step}"),
            &owner,
            Some(&json!({})),
        );
        assert!(answer.status < 300, "{step}: {}", answer.body);
    }
    let said = watch.said();
    // The capability's progress report (noop.echo says it is echoing) crosses from the worker
    // over NATS too.
    for event in [
        "event: ActionApproved",
        "event: progress",
        "event: ExecutionSucceeded",
    ] {
        assert!(
            said.contains(event),
            "api 2's stream lacks {event}:\n{said}"
        );
    }

    // Writes through both api processes, alternately, seen by both.
    let mut ids = vec![watched];
    for n in 0..4 {
        let (writer, other) = if n % 2 == 0 {
            (&api1, &api2)
        } else {
            (&api2, &api1)
        };
        ids.push(submit_approve_execute(writer, other, n));
    }
    wait_until_executed(&[&api1, &api2], &ids);

    // The active worker dies; the standby takes over every tailer.
    worker1.kill();
    let killed = chrono::Utc::now();
    let mut after = Vec::new();
    for n in 4..8 {
        let (writer, other) = if n % 2 == 0 {
            (&api1, &api2)
        } else {
            (&api2, &api1)
        };
        after.push(submit_approve_execute(writer, other, n));
    }
    worker2.wait_for_messages(&ACTIVE);
    let took_over = worker2
        .messages()
        .iter()
        .filter(|line| {
            ACTIVE
                .iter()
                .any(|message| line["fields"]["message"] == *message)
        })
        .filter_map(|line| line["timestamp"].as_str())
        .filter_map(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
        .max()
        .expect("when the standby took its last lock")
        .with_timezone(&chrono::Utc)
        - killed;
    ids.extend(after.iter().cloned());
    wait_until_executed(&[&api1, &api2], &ids);
    assert_eq!(
        advisory_locks(pool).await,
        i64::try_from(ACTIVE.len()).expect("a few locks"),
        "the standby holds each lock once"
    );

    // Everything in the log happened exactly once: projected, sealed, relayed, executed.
    eventually(patience().every(Duration::from_millis(200)), async || {
        let wrong = disagreements(pool, &jetstream, &deployment.stream.name, &ids).await;
        if wrong.is_empty() {
            return Ok(());
        }
        Err(format!(
            "after the takeover: {wrong:#?}\nworker 2:\n{}",
            worker2.tail()
        ))
    })
    .await;
    // The standby ran what was approved after the kill.
    let events = stored_events(pool).await;
    let runners: BTreeSet<&str> = events
        .iter()
        .filter(|event| {
            after.contains(&event.aggregate_id) && event.event_type == "ExecutionStarted"
        })
        .map(|event| event.actor.as_str())
        .collect();
    assert_eq!(
        runners,
        BTreeSet::from([standby_identity.as_str()]),
        "worker 2's executor ran the actions approved after worker 1 died"
    );
    eprintln!(
        "roles: standby took every lock {:.1} s after the kill; whole test {:.1} s",
        took_over.as_seconds_f64(),
        began.elapsed().as_secs_f64()
    );
}
