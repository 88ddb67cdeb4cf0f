//! `migrate`, `demo` and `serve` against real stores, driven through the binary.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use countersign_domain::action::{Action, ActionEvent, ActionStatus, Rejection};
use countersign_ledger::testing::{
    ChildGuard, TestStore, TestStream, eventually, eventually_blocking, settled_log, within,
};
use countersign_ledger::{Ledger, StoreConfig};
use support::countersign;

async fn actions(ledger: &Ledger) -> (usize, BTreeMap<String, Action>) {
    let log = settled_log(ledger).await;
    let mut events: BTreeMap<String, Vec<ActionEvent>> = BTreeMap::new();
    for event in log.iter().filter(|event| event.aggregate_type == "action") {
        events
            .entry(event.aggregate_id.clone())
            .or_default()
            .push(event.decode::<Action>().expect("decodes"));
    }
    (
        log.len(),
        events
            .into_iter()
            .map(|(id, events)| (id, Action::from_events(&events)))
            .collect(),
    )
}

/// Every action event of the log, in order.
async fn all_action_events(ledger: &Ledger) -> Vec<ActionEvent> {
    settled_log(ledger)
        .await
        .iter()
        .filter(|event| event.aggregate_type == "action")
        .map(|event| event.decode::<Action>().expect("decodes"))
        .collect()
}

fn statuses(actions: &BTreeMap<String, Action>) -> Vec<ActionStatus> {
    let mut statuses: Vec<_> = actions
        .values()
        .map(|a| a.state().expect("submitted").status)
        .collect();
    statuses.sort();
    statuses
}

async fn check_demo_loads_once(args: &[&str], envs: &[(&str, &str)], config: StoreConfig) {
    let first = countersign(args, envs);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("Loaded 7 demo actions"));
    let second = countersign(args, envs);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(String::from_utf8_lossy(&second.stdout).contains("nothing added"));

    let ledger = Ledger::open(&config).await.expect("open");
    let (events, actions) = actions(&ledger).await;
    assert_eq!(
        statuses(&actions),
        [
            ActionStatus::Pending,
            ActionStatus::Pending,
            ActionStatus::Escalated,
            ActionStatus::Approved,
            ActionStatus::Executed,
            ActionStatus::Rejected,
            ActionStatus::Expired
        ]
    );
    // The demo's policies are installed, as an owner would install them, and its actions name
    // them.
    let (policies, _) = ledger
        .load::<countersign_domain::tenant::PolicySet>(
            &countersign_domain::TenantId::parse("demo").expect("a tenant"),
        )
        .await
        .expect("policies");
    let installed: Vec<String> = policies
        .list()
        .iter()
        .map(|policy| policy.id.to_string())
        .collect();
    // The 3 example policies, and the 3 that govern the example workflows' actions.
    assert_eq!(installed.len(), 6, "{installed:?}");
    let escalated = actions
        .values()
        .find_map(|a| a.state().filter(|s| s.status == ActionStatus::Escalated))
        .expect("escalated");
    assert_eq!(escalated.policy.id.as_str(), "high-value-payout");
    // Every step is a real one: no made-up actor; the deadline path and the executor acted.
    let all_events = all_action_events(&ledger).await;
    assert!(
        all_events
            .iter()
            .all(|event| event.context().actor.as_str() != "executor:demo"),
        "no made-up executor"
    );
    let executor_acts: Vec<&str> = all_events
        .iter()
        .filter(|event| event.context().actor.as_str().starts_with("executor:"))
        .map(ActionEvent::event_type)
        .collect();
    for expected in [
        "ActionEscalated",
        "ActionExpired",
        "ExecutionStarted",
        "ExecutionSucceeded",
    ] {
        assert!(
            executor_acts.contains(&expected),
            "{expected} by the executor: {executor_acts:?}"
        );
    }
    let executed = actions
        .values()
        .find_map(|a| a.state().filter(|s| s.status == ActionStatus::Executed))
        .expect("executed");
    assert_eq!(executed.action_type.as_str(), "email.send");
    let levels: Vec<_> = actions
        .values()
        .filter(|a| a.state().expect("state").status == ActionStatus::Pending)
        .map(|a| a.state().expect("state").risk.level.as_str())
        .collect();
    assert_eq!(levels.len(), 2);
    assert!(
        levels.contains(&"high") && levels.contains(&"medium"),
        "{levels:?}"
    );
    let rejected = actions
        .values()
        .find(|a| a.state().expect("state").status == ActionStatus::Rejected)
        .expect("rejected");
    let ballot = rejected.state().expect("state").ballots[0]
        .values()
        .next()
        .expect("a vote");
    assert!(ballot.comment.is_some(), "the rejection has a comment");
    assert_eq!(
        rejected
            .state()
            .expect("state")
            .decision
            .as_ref()
            .and_then(|d| d.rejection.clone()),
        Some(Rejection::Ratio)
    );
    assert!(events > 6);

    // Approving a built-in demo action runs it: its payload is one the capability accepts.
    let mut previewed = 0;
    for action in actions.values() {
        let state = action.state().expect("state");
        if state.action_type.as_str() != "email.send" {
            continue;
        }
        let invocation = countersign_executor::Invocation {
            tenant: state.tenant.clone(),
            action_id: state.id,
            action_type: state.action_type.clone(),
            payload: state.submission.payload.clone(),
            execution_key: state.execution_key.clone(),
            attempt: 1,
            settings: countersign_domain::tenant::Settings::default(),
        };
        countersign_executor::Capability::preview(
            &countersign_executor::builtin::LoggedEmail,
            &invocation,
        )
        .await
        .unwrap_or_else(|failure| panic!("{}: {failure}", state.action_type.as_str()));
        previewed += 1;
    }
    assert_eq!(previewed, 3, "the demo's emails");
    ledger.close().await;
}

#[tokio::test]
async fn demo_loads_the_embedded_store_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("utf-8");
    check_demo_loads_once(
        &["demo", "--data-dir", data],
        &[],
        StoreConfig::Sqlite {
            path: dir.path().join("countersign.db"),
        },
    )
    .await;
}

#[tokio::test]
async fn demo_loads_postgres_once() {
    let store = TestStore::postgres().await.expect("database");
    let url = store.location();
    check_demo_loads_once(&["demo"], &[("DATABASE_URL", &url)], store.config.clone()).await;
}

#[tokio::test]
async fn migrate_applies_the_migrations_and_is_idempotent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("utf-8");
    for _ in 0..2 {
        let output = countersign(&["migrate", "--data-dir", data], &[]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let ledger = Ledger::open(&StoreConfig::Sqlite {
        path: dir.path().join("countersign.db"),
    })
    .await
    .expect("open");
    assert_eq!(ledger.pending_migrations().await.expect("migrations"), 0);
}

#[test]
fn bad_settings_are_refused_naming_the_problem() {
    let bad_listen = countersign(&["serve", "--listen", "localhost"], &[]);
    assert!(!bad_listen.status.success());
    assert!(
        String::from_utf8_lossy(&bad_listen.stderr).contains("--listen"),
        "{}",
        String::from_utf8_lossy(&bad_listen.stderr)
    );

    let bad_url = countersign(
        &["migrate"],
        &[("DATABASE_URL", "postgres://nobody@127.0.0.1:notaport/none")],
    );
    assert!(!bad_url.status.success());
    assert!(
        String::from_utf8_lossy(&bad_url.stderr)
            .contains("DATABASE_URL is not a valid PostgreSQL URL"),
        "{}",
        String::from_utf8_lossy(&bad_url.stderr)
    );
}

fn http_get(address: &str, path: &str) -> (u16, String) {
    http_get_as(address, path, None)
}

fn http_get_as(address: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    let answer = support::request(address, "GET", path, bearer, &[], None);
    (answer.status, answer.body)
}

/// `countersign serve` in a child process, killed if the test fails before it stops it (an
/// orphan holding the test's output open would keep `cargo test` waiting).
struct Served {
    child: ChildGuard,
    /// Where it listens, from its JSON log.
    address: String,
    /// Reads the rest of its log as it comes (a full pipe would stall the service).
    log: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Served {
    /// Starts `command` (a `serve` listening on port 0) and waits until it says where it listens.
    fn start(command: &mut Command) -> Self {
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let address = lines.by_ref().map_while(Result::ok).find_map(|line| {
            let log: serde_json::Value = serde_json::from_str(&line).ok()?;
            (log["fields"]["message"] == "countersign listening")
                .then(|| log["fields"]["address"].as_str().map(str::to_owned))?
        });
        let log = std::thread::spawn(move || lines.map_while(Result::ok).collect());
        let mut served = Self {
            child: child.into(),
            address: String::new(),
            log: Some(log),
        };
        served.address = address.expect("a JSON log line with the address");
        served
    }

    /// `serve` on the embedded store in `data`, on a free loopback port.
    fn embedded(data: &str) -> Self {
        Self::start(
            Command::new(env!("CARGO_BIN_EXE_countersign"))
                .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data])
                .env_remove("DATABASE_URL"),
        )
    }

    /// Sends SIGTERM and requires a clean exit; returns the rest of the log.
    fn stop(mut self) -> Vec<String> {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let status = self.child.wait().expect("exits");
        assert!(status.success(), "graceful shutdown exits 0");
        self.log
            .take()
            .map(|log| log.join().expect("log reader"))
            .unwrap_or_default()
    }
}

#[test]
fn serve_answers_health_readiness_and_metrics_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let served = Served::start(
        Command::new(env!("CARGO_BIN_EXE_countersign"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                dir.path().to_str().expect("utf-8"),
            ])
            .env_remove("DATABASE_URL")
            .env("COUNTERSIGN_METRICS_TOKEN", "scrape"),
    );
    let address = served.address.clone();

    assert_eq!(http_get(&address, "/healthz").0, 200);
    let (status, body) = http_get(&address, "/readyz");
    assert_eq!(status, 200);
    assert!(body.contains(r#""store":"sqlite""#), "{body}");

    // Prometheus text: request latency per route, projection lag, how log reads were answered.
    assert_eq!(
        http_get(&address, "/metrics").0,
        401,
        "no token, no metrics"
    );
    let wanted = [
        r#"countersign_http_request_duration_seconds_count{route="/readyz",method="GET",status="200"}"#,
        r#"countersign_projection_lag_events{projection="actions""#,
        r#"countersign_log_reads_total{source="store"}"#,
    ];
    let deadline = within(Duration::from_secs(20)).every(Duration::from_millis(100));
    eventually_blocking(deadline, || {
        let (status, metrics) = http_get_as(&address, "/metrics", Some("scrape"));
        assert_eq!(status, 200);
        let missing: Vec<_> = wanted.iter().filter(|m| !metrics.contains(*m)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!("missing {missing:?} in {metrics}"))
    });

    assert!(
        served
            .stop()
            .iter()
            .any(|line| line.contains("shutting down"))
    );
}

#[test]
fn projections_rebuild_status_and_replay_through_the_cli() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("utf-8");
    assert!(
        countersign(&["demo", "--data-dir", data], &[])
            .status
            .success()
    );

    let first = countersign(&["projections", "rebuild", "all", "--data-dir", data], &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(text.contains("actions: generation 1 live with"), "{text}");
    assert!(text.contains("audit: generation 1 live with"), "{text}");

    let second = countersign(
        &["projections", "rebuild", "actions", "--data-dir", data],
        &[],
    );
    let text = String::from_utf8_lossy(&second.stdout);
    assert!(
        text.contains("actions: generation 2 live") && text.contains("1 old generation(s) dropped"),
        "{text}"
    );

    let status = countersign(&["projections", "status", "--data-dir", data], &[]);
    let text = String::from_utf8_lossy(&status.stdout);
    let live: Vec<&str> = text
        .lines()
        .filter(|line| line.contains(" live "))
        .collect();
    assert_eq!(live.len(), 2, "{text}");
    assert!(
        live.iter().all(|line| line.trim_end().ends_with(" 0")),
        "no lag: {text}"
    );

    let replayed = countersign(
        &[
            "replay",
            "--tenant",
            "demo",
            "--position",
            "1000000",
            "--json",
            "--data-dir",
            data,
        ],
        &[],
    );
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    let now: serde_json::Value = serde_json::from_slice(&replayed.stdout).expect("json");
    assert_eq!(
        now["inbox"].as_array().map(Vec::len),
        Some(3),
        "two pending demo actions and the escalated payout"
    );

    let first_id = now["inbox"][0]["id"].as_str().expect("id").to_owned();
    let long_ago = countersign(
        &[
            "replay",
            "--tenant",
            "demo",
            "--at",
            "2000-01-01T00:00:00Z",
            "--json",
            "--data-dir",
            data,
        ],
        &[],
    );
    let then: serde_json::Value = serde_json::from_slice(&long_ago.stdout).expect("json");
    assert_eq!(then["events"], 0);

    let timeline = countersign(
        &[
            "replay",
            "--tenant",
            "demo",
            "--position",
            "1000000",
            "--action",
            &first_id,
            "--data-dir",
            data,
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&timeline.stdout);
    assert!(
        text.contains("Audit timeline") && text.contains("ActionSubmitted"),
        "{text}"
    );

    for (args, complaint) in [
        (
            vec!["projections", "rebuild", "inbox"],
            "unknown projection `inbox`",
        ),
        (vec!["replay", "--tenant", "demo"], "--position"),
        (
            vec!["replay", "--tenant", "Demo Co", "--position", "3"],
            "--tenant",
        ),
        (
            vec![
                "replay",
                "--tenant",
                "demo",
                "--position",
                "3",
                "--action",
                "nope",
            ],
            "did not exist",
        ),
    ] {
        let mut args = args;
        args.extend(["--data-dir", data]);
        let output = countersign(&args, &[]);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(complaint),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn http(
    address: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    http_send(address, method, path, token, &[], body)
}

/// Server mode through the binary: PostgreSQL, NATS JetStream relay and executor, HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_runs_approved_actions_through_nats_on_postgres() {
    let store = TestStore::postgres().await.expect("database");
    let stream = TestStream::new("cli");
    let secret = "server-mode-test-secret-0123456789";
    let served = Served::start(
        Command::new(env!("CARGO_BIN_EXE_countersign"))
            .args(["serve", "--listen", "127.0.0.1:0", "--dev-keys", "false"])
            .env("DATABASE_URL", store.location())
            .env("NATS_URL", stream.url())
            .env("COUNTERSIGN_NATS_STREAM", &stream.name)
            .env("COUNTERSIGN_NATS_PREFIX", &stream.prefix)
            .env("COUNTERSIGN_JWT_HS256_SECRET", secret)
            .env("COUNTERSIGN_SWEEP_SECONDS", "1"),
    );
    let address = served.address.clone();
    let mint = |user: &str, roles: &[&str]| {
        countersign_gateway::mint_hs256(
            secret.as_bytes(),
            &countersign_gateway::Claims {
                sub: user.into(),
                tenant: "acme".into(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                exp: chrono::Utc::now().timestamp() + 600,
                iat: None,
                iss: None,
                aud: None,
            },
        )
        .expect("token")
    };
    let (owner, requester) = (mint("olga", &["owner"]), mint("rita", &["requester"]));
    let (status, submitted) = http(
        &address,
        "POST",
        "/v1/actions",
        &requester,
        Some(&serde_json::json!({
            "module": "noop", "capability": "echo", "summary": "Echo a greeting", "payload": { "hello": "world" }
        })),
    );
    assert_eq!(status, 201, "{submitted}");
    let id = submitted["id"].as_str().expect("id").to_owned();
    assert_eq!(
        http(
            &address,
            "POST",
            &format!("/v1/actions/{id}/approve"),
            &owner,
            Some(&serde_json::json!({}))
        )
        .0,
        200
    );
    assert_eq!(
        http(
            &address,
            "POST",
            &format!("/v1/actions/{id}/execute"),
            &owner,
            Some(&serde_json::json!({}))
        )
        .0,
        202
    );
    let deadline = within(Duration::from_secs(60)).every(Duration::from_millis(100));
    let detail = eventually(deadline, async || {
        let (_, detail) = http(&address, "GET", &format!("/v1/actions/{id}"), &owner, None);
        if detail["status"] == "executed" {
            return Ok(detail);
        }
        Err(format!("never executed: {detail}"))
    })
    .await;
    assert_eq!(
        detail["execution"]["result"],
        serde_json::json!({ "echo": { "hello": "world" } })
    );
    assert_eq!(detail["execution"]["attempts"], 1);
    served.stop();
}

/// On PostgreSQL, doctor says whether the server's autovacuum is on, as the server itself says,
/// and warns (without failing: nothing is broken yet) when it is off.
#[test]
fn doctor_reports_the_servers_autovacuum_and_warns_when_it_is_off() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let store = runtime.block_on(TestStore::postgres()).expect("database");
    let url = store.location();
    let setting: String = runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&url).await.expect("connect");
        let (setting,): (String,) = sqlx::query_as("SHOW autovacuum")
            .fetch_one(&pool)
            .await
            .expect("SHOW autovacuum");
        pool.close().await;
        setting
    });
    let doctor = countersign(&["doctor"], &[("DATABASE_URL", &url)]);
    let stdout = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        doctor.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&doctor.stderr)
    );
    if setting == "on" {
        assert!(stdout.contains("autovacuum: on\n"), "{stdout}");
    } else {
        assert!(stdout.contains("autovacuum: OFF (warning:"), "{stdout}");
        assert!(stdout.contains("docs/deployment.md"), "{stdout}");
    }
    assert!(stdout.contains("all tailers can go on"), "{stdout}");
    drop(store);
}

/// Runs `countersign doctor` (or any command) on a data directory.
fn on_data(args: &[&str], data: &str) -> Output {
    let mut all = args.to_vec();
    all.extend(["--data-dir", data]);
    countersign(&all, &[])
}

#[test]
fn a_log_event_no_reader_can_decode_stalls_readiness_and_doctor_and_status_name_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("utf-8");
    assert!(on_data(&["demo"], data).status.success());
    let healthy = on_data(&["doctor"], data);
    assert!(
        healthy.status.success(),
        "{}{}",
        String::from_utf8_lossy(&healthy.stdout),
        String::from_utf8_lossy(&healthy.stderr)
    );
    assert!(String::from_utf8_lossy(&healthy.stdout).contains("all tailers can go on"));
    // SQLite has no autovacuum to report.
    assert!(!String::from_utf8_lossy(&healthy.stdout).contains("autovacuum"));

    // An event written before the write-side checks existed (or by hand): deeper than
    // serde_json reads back. The API can no longer write one; the readers must still say so.
    let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let position: i64 = runtime.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{data}/countersign.db"))
            .await
            .expect("open the store");
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('action', 'poisoned', 1, 'ActionSubmitted', '1', $1, '{\"tenant\":\"evil\"}')",
        )
        .bind(format!("{{\"ActionSubmitted\":{deep}}}"))
        .execute(&pool)
        .await
        .expect("insert");
        let position = sqlx::query_scalar("SELECT position FROM events WHERE aggregate_id = 'poisoned'")
            .fetch_one(&pool)
            .await
            .expect("position");
        pool.close().await;
        position
    });

    let served = Served::embedded(data);
    let address = served.address.clone();
    let deadline = within(Duration::from_secs(60)).every(Duration::from_millis(200));
    let body = eventually_blocking(deadline, || {
        let (status, body) = http_get(&address, "/readyz");
        if status == 503 && body.contains("projection:actions") && body.contains("sealer") {
            return Ok(body);
        }
        Err(format!(
            "readiness never named the stalled tailers: {status} {body}"
        ))
    });
    let readiness: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let stalled = readiness["stalled"].as_array().expect("stalled tailers");
    assert!(
        stalled.iter().all(|stall| {
            stall["after"]["position"]
                .as_i64()
                .is_some_and(|after| after < position)
                && stall["error"]
                    .as_str()
                    .is_some_and(|error| error.contains(&format!("position {position}")))
        }),
        "each is stuck before the poisoned event and names it: {body}"
    );

    // Another process sees it from the store: doctor fails naming the position, status too.
    let doctor = on_data(&["doctor"], data);
    assert!(!doctor.status.success());
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.contains(&format!("the event at position {position}")),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&doctor.stderr).contains("cannot get past the next event"),
        "{}",
        String::from_utf8_lossy(&doctor.stderr)
    );
    let status = on_data(&["projections", "status"], data);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("STALLED: projection:actions"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );

    // The sealer of the running service holds its lock (it is stalled, not gone): the CLI's seal
    // refuses instead of sealing beside it.
    let seal = on_data(&["seal"], data);
    assert!(!seal.status.success());
    assert!(
        String::from_utf8_lossy(&seal.stderr).contains("another instance"),
        "{}",
        String::from_utf8_lossy(&seal.stderr)
    );
    let log = served.stop();
    assert!(
        log.iter().any(|line| line.contains("tailer stalled")),
        "a stalled tailer is logged"
    );
}

/// One HTTP/1.1 request with a JSON body, if any, and extra headers; answers (status, body).
fn http_send(
    address: &str,
    method: &str,
    path: &str,
    bearer: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let answer = support::request(address, method, path, Some(bearer), headers, body);
    (answer.status, answer.json())
}

#[test]
fn the_correlation_id_reaches_the_logs_of_the_work_it_caused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("utf-8");
    let demo = on_data(&["demo"], data);
    let tokens = String::from_utf8_lossy(&demo.stdout).into_owned();
    let token_of = |user: &str| {
        tokens
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.first() == Some(&user)).then(|| fields[3].to_owned())
            })
            .expect("a token")
    };
    let (rita, olivia) = (token_of("rita"), token_of("olivia"));
    let served = Served::embedded(data);
    let address = served.address.clone();
    let flow = [("X-Correlation-Id", "order-1042-notice")];
    let (status, submitted) = http_send(
        &address,
        "POST",
        "/v1/actions",
        &rita,
        &flow,
        Some(&serde_json::json!({
            "module": "email", "capability": "send", "summary": "Tell customer 1042",
            "payload": { "to": ["c1042@example.com"], "subject": "Refund", "text": "Done." }
        })),
    );
    assert_eq!(status, 201, "{submitted}");
    let id = submitted["id"].as_str().expect("id").to_owned();
    let (status, body) = http_send(
        &address,
        "POST",
        &format!("/v1/actions/{id}/approve"),
        &olivia,
        &flow,
        Some(&serde_json::json!({})),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_send(
        &address,
        "POST",
        &format!("/v1/actions/{id}/execute"),
        &olivia,
        &flow,
        Some(&serde_json::json!({})),
    );
    // The approval may already have set the run going (a policy that executes on approval):
    // then the request answers that it is running or ran; either way it runs once.
    let running = status == 409
        && ["already_executing", "already_executed"].contains(&body["code"].as_str().unwrap_or(""));
    assert!(status == 202 || status == 200 || running, "{status} {body}");
    let deadline = within(Duration::from_secs(60)).every(Duration::from_millis(100));
    eventually_blocking(deadline, || {
        let (_, detail) = http_get_as(&address, &format!("/v1/actions/{id}"), Some(&olivia));
        if detail.contains(r#""status":"executed""#) {
            return Ok(());
        }
        Err(format!("never executed: {detail}"))
    });
    let log = served.stop();
    let recorded = log
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| {
            line["fields"]["message"] == "execution recorded"
                && line["span"]["action_id"] == id.as_str()
        })
        .expect("the executor logged the run");
    let spans = recorded["spans"].as_array().expect("span list");
    assert!(
        spans
            .iter()
            .any(|span| span["correlation_id"] == "order-1042-notice"
                && span["tenant"] == "demo"
                && span["action_id"] == id.as_str()),
        "{recorded}"
    );
}
