//! Workflows end to end (issue 17): CloudEvents published over HTTP (`POST /v1/events`) and
//! JetStream start runs whose steps are governed actions — voted on, executed once at a real
//! webhook receiver — with the engine and the executor running beside the gateway as in a worker.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use countersign_ledger::on_both_stores;
use countersign_ledger::testing::{TestStream, eventually, within};
use countersign_workflows::{Engine, IntakeConfig, NatsIntake};
use futures::StreamExt;
use serde_json::{Value, json};
use support::{TestApp, receiver, token};
use tokio::sync::watch;

const WEBHOOK_KEY: [u8; 32] = [17; 32];

/// The app with an executor, and the workflow engine running until the sender drops.
async fn with_engine(kind: &str) -> (TestApp, watch::Sender<bool>) {
    let app = TestApp::with_executor(kind, WEBHOOK_KEY).await;
    let stop = start_engine(&app);
    (app, stop)
}

fn start_engine(app: &TestApp) -> watch::Sender<bool> {
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(Engine::new(app.state.app.clone()).run(stopped));
    stop
}

fn refunds_workflow(require_approval: bool) -> Value {
    json!({
        "id": "refund-to-ledger",
        "name": "Large refunds tell the ledger",
        "triggers": ["order.refunded"],
        "condition": { "data.amount": { "$gt": 500 } },
        "constants": { "system": "ledger" },
        "steps": [{
            "capability": "webhook.post",
            "summary": "Tell the {{ constants.system }} about the refund of {{ event.data.amount }} on {{ event.subject }}",
            "payload": { "order": "{{ event.subject }}", "amount": "{{ event.data.amount }}", "system": "{{ constants.system }}" },
            "require_approval": require_approval,
        }],
    })
}

fn refund(id: &str, amount: u64) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "shop/orders", "type": "order.refunded",
        "subject": format!("order-{id}"), "time": "2026-11-30T08:00:00Z",
        "data": { "amount": amount, "currency": "EUR" },
    })
}

async fn runs(app: &TestApp, owner: &str, query: &str) -> Vec<Value> {
    let page = app.get(&format!("/v1/workflow-runs{query}"), owner).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    page.body["runs"].as_array().cloned().unwrap_or_default()
}

/// Waits until exactly one run of the tenant has `status`, and answers it.
async fn one_run_with(app: &TestApp, owner: &str, status: &str) -> Value {
    eventually(within(Duration::from_secs(30)), async || {
        let all = runs(app, owner, "").await;
        match all.as_slice() {
            [run] if run["status"] == status => Ok(run.clone()),
            _ => Err(format!("not one {status} run: {all:?}")),
        }
    })
    .await
}

async fn setup(app: &TestApp, owner: &str, url: &str, workflow: Value) {
    app.set_setting(owner, "webhook_url", json!(url)).await;
    let created = app.post("/v1/workflows", owner, workflow).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["version"], 1);
}

on_both_stores!(an_http_event_runs_through_a_vote_to_one_webhook_delivery);

async fn an_http_event_runs_through_a_vote_to_one_webhook_delivery(kind: &str) {
    let (app, _engine) = with_engine(kind).await;
    let (url, deliveries) = receiver().await;
    let owner = token("olga", "acme", &["owner"]);
    let publisher = token("shop", "acme", &["publisher"]);
    setup(&app, &owner, &url, refunds_workflow(true)).await;

    let published = app
        .post("/v1/events", &publisher, refund("1042", 900))
        .await;
    assert_eq!(published.status, StatusCode::ACCEPTED, "{}", published.body);
    assert_eq!(published.body["events"][0]["status"], "accepted");
    assert_eq!(
        published.body["events"][0]["runs"].as_array().map(Vec::len),
        Some(1)
    );

    let run = one_run_with(&app, &owner, "pending_approval").await;
    let run_id = run["run_id"].as_str().expect("run id").to_owned();
    let detail = app
        .get(&format!("/v1/workflow-runs/{run_id}"), &owner)
        .await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
    assert_eq!(detail.body["correlation_id"], "1042");
    let action = &detail.body["actions"][0];
    assert_eq!(action["correlation_id"], "1042", "{action}");
    assert_eq!(action["action_type"], "webhook.post");
    assert_eq!(
        action["request"]["payload"],
        json!({ "order": "order-1042", "amount": 900, "system": "ledger" })
    );
    assert_eq!(action["requested_by"]["id"], "workflow:refund-to-ledger");
    assert!(
        deliveries.lock().expect("lock").is_empty(),
        "nothing runs before the vote"
    );

    // Another tenant sees nothing and approves nothing.
    let stranger = token("gus", "globex", &["owner"]);
    let hidden = app
        .get(&format!("/v1/workflow-runs/{run_id}"), &stranger)
        .await;
    assert_eq!(
        (hidden.status, hidden.code()),
        (StatusCode::NOT_FOUND, "run_not_found")
    );
    let refused = app
        .post(
            &format!("/v1/workflow-runs/{run_id}/approve"),
            &stranger,
            json!({}),
        )
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::NOT_FOUND, "run_not_found")
    );
    assert!(runs(&app, &stranger, "").await.is_empty());

    let approved = app
        .post(
            &format!("/v1/workflow-runs/{run_id}/approve"),
            &owner,
            json!({ "comment": "refund checked" }),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.body);
    one_run_with(&app, &owner, "completed").await;
    {
        let delivered = deliveries.lock().expect("lock");
        assert_eq!(delivered.len(), 1);
        let body: Value = serde_json::from_slice(&delivered[0].body).expect("JSON");
        assert_eq!(body["amount"], 900, "{body}");
    }

    // The same event again: accepted, ignored.
    let again = app
        .post("/v1/events", &publisher, refund("1042", 900))
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert_eq!(again.body["events"][0]["status"], "duplicate");
    let timeline = app
        .get(&format!("/v1/workflow-runs/{run_id}"), &owner)
        .await;
    let kinds: Vec<&str> = timeline.body["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|entry| entry["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "run_triggered",
            "step_submitted",
            "step_pending_approval",
            "step_executed",
            "run_completed"
        ]
    );
    assert_eq!(runs(&app, &owner, "").await.len(), 1);
    assert_eq!(
        runs(
            &app,
            &owner,
            "?status=completed&event_type=order.refunded&workflow=refund-to-ledger"
        )
        .await
        .len(),
        1
    );
    assert!(runs(&app, &owner, "?status=denied").await.is_empty());
    assert_eq!(deliveries.lock().expect("lock").len(), 1, "delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_denied_step_denies_the_run_and_runs_nothing() {
    let (app, _engine) = with_engine("sqlite").await;
    let (url, deliveries) = receiver().await;
    let owner = token("olga", "acme", &["owner"]);
    setup(&app, &owner, &url, refunds_workflow(true)).await;
    let published = app.post("/v1/events", &owner, refund("7", 600)).await;
    assert_eq!(published.status, StatusCode::ACCEPTED, "{}", published.body);
    let run = one_run_with(&app, &owner, "pending_approval").await;
    let run_id = run["run_id"].as_str().expect("run id");
    let denied = app
        .post(
            &format!("/v1/workflow-runs/{run_id}/deny"),
            &owner,
            json!({ "comment": "not this one" }),
        )
        .await;
    assert_eq!(denied.status, StatusCode::OK, "{}", denied.body);
    assert_eq!(denied.body["status"], "rejected");
    one_run_with(&app, &owner, "denied").await;
    let again = app
        .post(
            &format!("/v1/workflow-runs/{run_id}/approve"),
            &owner,
            json!({}),
        )
        .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "run_not_pending")
    );
    assert!(deliveries.lock().expect("lock").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_a_workflow_does_not_take_are_recorded_and_start_nothing() {
    let (app, _engine) = with_engine("sqlite").await;
    let (url, _deliveries) = receiver().await;
    let owner = token("olga", "acme", &["owner"]);
    setup(&app, &owner, &url, refunds_workflow(false)).await;

    // The condition does not hold.
    let small = app.post("/v1/events", &owner, refund("small", 20)).await;
    assert_eq!(small.status, StatusCode::ACCEPTED, "{}", small.body);
    assert_eq!(
        small.body["events"][0]["skipped"],
        json!([{ "workflow_id": "refund-to-ledger", "version": 1, "reason": "condition_not_met" }])
    );
    // Disabled: recorded (a repeat is a duplicate), and no run.
    let disabled = app
        .post("/v1/workflows/refund-to-ledger/disable", &owner, json!({}))
        .await;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.body);
    assert_eq!(
        (
            disabled.body["enabled"].clone(),
            disabled.body["version"].clone()
        ),
        (json!(false), json!(2))
    );
    let off = app.post("/v1/events", &owner, refund("big", 2000)).await;
    assert_eq!(
        off.body["events"][0]["skipped"][0]["reason"], "disabled",
        "{}",
        off.body
    );
    assert_eq!(off.body["events"][0]["runs"], json!([]));
    let repeat = app.post("/v1/events", &owner, refund("big", 2000)).await;
    assert_eq!(repeat.body["events"][0]["status"], "duplicate");
    // Another type: nothing listens.
    let mut other = refund("x", 2000);
    other["type"] = json!("order.created");
    let created = app.post("/v1/events", &owner, other).await;
    assert_eq!(created.body["events"][0]["skipped"], json!([]));

    // A marker event after them all, to a workflow that takes it: once its run is listed, the
    // engine has passed the others.
    let enabled = app
        .post("/v1/workflows/refund-to-ledger/enable", &owner, json!({}))
        .await;
    assert_eq!(enabled.body["version"], 3);
    app.post("/v1/events", &owner, refund("marker", 2000)).await;
    let run = eventually(within(Duration::from_secs(30)), async || {
        let all = runs(&app, &owner, "").await;
        match all.as_slice() {
            [run] => Ok(run.clone()),
            _ => Err(format!("not one run: {all:?}")),
        }
    })
    .await;
    assert_eq!(run["event_id"], "marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_its_code_and_starts_nothing() {
    let (app, _engine) = with_engine("sqlite").await;
    let (url, _deliveries) = receiver().await;
    let owner = token("olga", "acme", &["owner"]);
    setup(&app, &owner, &url, refunds_workflow(false)).await;

    let cases: Vec<(Value, &str)> = vec![
        (
            json!({ "id": "a", "source": "s", "type": "order.refunded" }),
            "specversion",
        ),
        (
            json!({ "specversion": "0.3", "id": "a", "source": "s", "type": "order.refunded" }),
            "specversion",
        ),
        (
            json!({ "specversion": "1.0", "source": "s", "type": "order.refunded" }),
            "id",
        ),
        (
            json!({ "specversion": "1.0", "id": "a", "type": "order.refunded" }),
            "source",
        ),
        (
            json!({ "specversion": "1.0", "id": "a", "source": "s", "type": "order refunded" }),
            "type",
        ),
        (
            json!({ "specversion": "1.0", "id": "a", "source": "s", "type": "x".repeat(129) }),
            "type",
        ),
        (
            json!({ "specversion": "1.0", "id": "a", "source": "s", "type": "order.refunded", "time": "yesterday" }),
            "time",
        ),
        (
            json!({ "specversion": "1.0", "id": "a", "source": "s", "type": "order.refunded", "data": { "blob": "x".repeat(40_000) } }),
            "data",
        ),
        (
            json!([refund("ok", 900), { "specversion": "1.0", "id": "b", "source": "s", "type": "bad type" }]),
            "[1].type",
        ),
        (json!([refund("dup", 900), refund("dup", 900)]), "[1].id"),
        (json!([]), ""),
    ];
    for (body, field) in cases {
        let refused = app.post("/v1/events", &owner, body.clone()).await;
        assert_eq!(
            (
                refused.status,
                refused.code(),
                refused.body["field"].as_str().unwrap_or_default()
            ),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", field),
            "{body}: {}",
            refused.body
        );
    }
    let approver = token("fay", "acme", &["approver"]);
    let forbidden = app.post("/v1/events", &approver, refund("f", 900)).await;
    assert_eq!(
        (forbidden.status, forbidden.code()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let publisher = token("shop", "acme", &["publisher"]);
    let not_admin = app.get("/v1/workflows", &publisher).await;
    assert_eq!(not_admin.status, StatusCode::FORBIDDEN);

    // The valid event of the refused batch was not recorded: sent alone, it is new.
    let alone = app.post("/v1/events", &owner, refund("ok", 900)).await;
    assert_eq!(
        alone.body["events"][0]["status"], "accepted",
        "{}",
        alone.body
    );
    let run = one_run_with(&app, &owner, "pending_approval").await;
    assert_eq!(run["event_id"], "ok");

    // Definitions: a template that does not compile names its step; a stale If-Match is refused.
    let mut broken = refunds_workflow(false);
    broken["id"] = json!("broken");
    broken["steps"][0]["payload"]["order"] = json!("{{ event.subject | }}");
    let refused = app.post("/v1/workflows", &owner, broken).await;
    assert_eq!(
        (refused.status, refused.body["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("steps[0].payload.order")
        ),
        "{}",
        refused.body
    );
    let mut unknown = refunds_workflow(false);
    unknown["id"] = json!("unknown-field");
    unknown["condition"] = json!({ "module": "billing" });
    let refused = app.post("/v1/workflows", &owner, unknown).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    let mut extra = refunds_workflow(false);
    extra["id"] = json!("extra-field");
    extra["priority"] = json!(1);
    let refused = app.post("/v1/workflows", &owner, extra).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    let exists = app
        .post("/v1/workflows", &owner, refunds_workflow(false))
        .await;
    assert_eq!(
        (exists.status, exists.code()),
        (StatusCode::CONFLICT, "workflow_exists")
    );
    let mut draft = refunds_workflow(false);
    draft.as_object_mut().expect("object").remove("id");
    let stale = app
        .raw(
            axum::http::Request::builder()
                .method(Method::PUT)
                .uri("/v1/workflows/refund-to-ledger")
                .header("authorization", format!("Bearer {owner}"))
                .header("content-type", "application/json")
                .header("if-match", "7")
                .body(axum::body::Body::from(draft.to_string()))
                .expect("request"),
        )
        .await;
    assert_eq!(
        (stale.status, stale.code()),
        (StatusCode::CONFLICT, "stale_version")
    );
    let stranger = token("gus", "globex", &["owner"]);
    let hidden = app.get("/v1/workflows/refund-to-ledger", &stranger).await;
    assert_eq!(
        (hidden.status, hidden.code()),
        (StatusCode::NOT_FOUND, "workflow_not_found")
    );
    assert_eq!(
        runs(&app, &owner, "").await.len(),
        1,
        "only the valid event ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dry_run_renders_each_step_and_changes_nothing() {
    let (app, _engine) = with_engine("sqlite").await;
    let (url, _deliveries) = receiver().await;
    let owner = token("olga", "acme", &["owner"]);
    setup(&app, &owner, &url, refunds_workflow(true)).await;
    let dry = app
        .post(
            "/v1/workflows/refund-to-ledger/test",
            &owner,
            json!({ "event": refund("sample", 750) }),
        )
        .await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.body);
    assert_eq!(dry.body["would_start"], true);
    assert_eq!(dry.body["steps"][0]["submission"]["payload"]["amount"], 750);
    assert_eq!(dry.body["steps"][0]["waits_for_approval"], true);
    assert!(
        dry.body["steps"][0]["policy"]["id"].is_string(),
        "{}",
        dry.body
    );
    let small = app
        .post(
            "/v1/workflows/refund-to-ledger/test",
            &owner,
            json!({ "event": refund("sample", 5) }),
        )
        .await;
    assert_eq!(
        (
            small.body["would_start"].clone(),
            small.body["skipped"].clone()
        ),
        (json!(false), json!("condition_not_met"))
    );
    // Nothing was recorded: the sample's id is new to the intake.
    let real = app.post("/v1/events", &owner, refund("sample", 750)).await;
    assert_eq!(real.body["events"][0]["status"], "accepted");
}

/// Auto mode and a policy that approves and runs workflow actions at once.
async fn auto_execute_workflows(app: &TestApp, owner: &str) {
    app.set_setting(owner, "mode", json!("auto")).await;
    let policy = app
        .post("/v1/policies", owner, json!({
            "id": "workflow-notices", "name": "Workflow notices run at once", "priority": 10,
            "criteria": { "source": "workflow" },
            "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }], "auto_approve": true, "auto_execute": true },
        }))
        .await;
    assert_eq!(policy.status, StatusCode::CREATED, "{}", policy.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_engine_killed_mid_stream_skips_nothing_and_runs_nothing_twice() {
    let app = TestApp::with_executor("postgres", WEBHOOK_KEY).await;
    let (url, deliveries) = receiver().await;
    let owner = token("olga", "acme", &["owner"]);
    setup(&app, &owner, &url, refunds_workflow(false)).await;
    auto_execute_workflows(&app, &owner).await;
    let batch: Vec<Value> = (0..30)
        .map(|i| refund(&format!("r{i}"), 1000 + i))
        .collect();
    let published = app.post("/v1/events", &owner, Value::Array(batch)).await;
    assert_eq!(published.status, StatusCode::ACCEPTED, "{}", published.body);

    // The first engine is killed (its task aborted wherever it is: between a submission and its
    // record, mid-batch) once it has started some runs.
    let (_first_stop, first_stopped) = watch::channel(false);
    let first = tokio::spawn(Engine::new(app.state.app.clone()).run(first_stopped));
    eventually(within(Duration::from_secs(30)), async || {
        let started = runs(&app, &owner, "?limit=200").await.len();
        if started >= 3 {
            Ok(())
        } else {
            Err(format!("{started} runs"))
        }
    })
    .await;
    first.abort();
    let _ = first.await;
    let _second = start_engine(&app);
    eventually(within(Duration::from_secs(60)), async || {
        let done = runs(&app, &owner, "?status=completed&limit=200")
            .await
            .len();
        if done == 30 {
            Ok(())
        } else {
            Err(format!("{done} runs completed"))
        }
    })
    .await;
    let delivered = deliveries.lock().expect("lock").clone();
    let orders: BTreeSet<String> = delivered
        .iter()
        .map(|delivery| {
            let body: Value = serde_json::from_slice(&delivery.body).expect("JSON");
            body["order"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(
        (delivered.len(), orders.len()),
        (30, 30),
        "each event delivered once"
    );
    // Pages: 30 runs, 7 a page, no run twice.
    let mut seen = BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let page = app
            .get(&format!("/v1/workflow-runs?limit=7{cursor}"), &owner)
            .await;
        for run in page.body["runs"].as_array().expect("runs") {
            assert!(seen.insert(run["run_id"].to_string()), "a run twice");
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 30);
    // A cursor this list did not issue — garbage, a run id's shape broken, an inbox cursor
    // ("created, before everything") — is refused like every list's: 400 `invalid_cursor`
    // naming `cursor`.
    let inbox_cursor =
        "Y3JlYXRlZHw5MjIzMzcyMDM2ODU0Nzc1ODA3fDAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMA";
    for cursor in ["garbage", "1_not-a-run", "_", inbox_cursor] {
        let refused = app
            .get(&format!("/v1/workflow-runs?cursor={cursor}"), &owner)
            .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "cursor {cursor}");
        assert_eq!(refused.body["code"], "invalid_cursor", "cursor {cursor}");
        assert_eq!(refused.body["field"], "cursor", "cursor {cursor}");
    }
}

/// A JetStream intake of the test's own: its stream (deleted on drop) created, a client, the
/// settings, and a subscription to its dead letters.
struct Intake {
    _stream: TestStream,
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    config: IntakeConfig,
    dead_letters: async_nats::Subscriber,
}

async fn intake(tag: &str, duplicate_window: Duration) -> Intake {
    let stream = TestStream::new(tag);
    let client = async_nats::connect(stream.url())
        .await
        .expect("NATS with JetStream");
    let config = IntakeConfig {
        stream: stream.name.clone(),
        prefix: stream.prefix.clone(),
        consumer: "intake".into(),
        duplicate_window,
    };
    let jetstream = async_nats::jetstream::new(client.clone());
    config.ensure(&jetstream).await.expect("the intake stream");
    let dead_letters = client
        .subscribe(config.dead_letter_subject())
        .await
        .expect("subscribe");
    Intake {
        _stream: stream,
        client,
        jetstream,
        config,
        dead_letters,
    }
}

impl Intake {
    /// Runs the intake for `app` until the sender drops or sends `true`.
    fn start(&self, app: &TestApp) -> watch::Sender<bool> {
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(
            NatsIntake {
                app: app.state.app.clone(),
                client: self.client.clone(),
                config: self.config.clone(),
            }
            .run(stopped),
        );
        stop
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_jetstream_event_runs_once_even_after_the_duplicate_window() {
    let app = TestApp::with_nats_executor("postgres", WEBHOOK_KEY).await;
    let _engine = start_engine(&app);
    let mut intake = intake("intake", Duration::from_secs(1)).await;
    let stop_intake = intake.start(&app);
    let (url, deliveries) = receiver().await;
    let owner = token("olga", "acme", &["owner"]);
    setup(&app, &owner, &url, refunds_workflow(true)).await;
    let (jetstream, config) = (&intake.jetstream, &intake.config);
    let publish = async |subject: String, event: &Value| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event["id"].as_str().unwrap_or_default());
        jetstream
            .publish_with_headers(subject, headers, event.to_string().into())
            .await
            .expect("published")
            .await
            .expect("acknowledged")
    };
    let event = refund("nats-1", 1200);
    let first = publish(config.subject("acme", "order.refunded"), &event).await;
    // At once again: within the window JetStream drops the repeat itself.
    let repeat = publish(config.subject("acme", "order.refunded"), &event).await;
    assert_eq!((first.duplicate, repeat.duplicate), (false, true));
    let run = one_run_with(&app, &owner, "pending_approval").await;
    let run_id = run["run_id"].as_str().expect("run id");
    app.post(
        &format!("/v1/workflow-runs/{run_id}/approve"),
        &owner,
        json!({}),
    )
    .await;
    one_run_with(&app, &owner, "completed").await;
    assert_eq!(deliveries.lock().expect("lock").len(), 1);

    // After the window the stream takes the repeat, and the ledger ignores it.
    eventually(within(Duration::from_secs(30)), async || {
        let ack = publish(config.subject("acme", "order.refunded"), &event).await;
        if ack.duplicate {
            Err("still in the window")
        } else {
            Ok(())
        }
    })
    .await;

    // A refused event goes to the dead-letter subject with its code; so does an unknown tenant.
    publish(
        config.subject("acme", "order.created"),
        &refund("mismatch", 1),
    )
    .await;
    publish(
        config.subject("nobody", "order.refunded"),
        &refund("stranger", 1),
    )
    .await;
    let mut codes = Vec::new();
    for _ in 0..2 {
        let letter = tokio::time::timeout(Duration::from_secs(30), intake.dead_letters.next())
            .await
            .expect("a dead letter")
            .expect("a message");
        let headers = letter.headers.expect("headers");
        codes.push(
            headers
                .get(countersign_workflows::HEADER_CODE)
                .map(|value| value.as_str().to_owned())
                .unwrap_or_default(),
        );
    }
    assert_eq!(codes, ["type_mismatch", "unknown_tenant"]);
    // The dead letters came after the repeat, one at a time: it was handled, and ran nothing.
    assert_eq!(runs(&app, &owner, "").await.len(), 1);
    assert_eq!(deliveries.lock().expect("lock").len(), 1, "delivered once");
    let _ = stop_intake.send(true);
}

/// A burst already waiting in the stream when the intake starts is taken in batches (what the
/// consumer has ready is recorded together): every event is recorded once — a repeat with
/// another `Nats-Msg-Id` in the same burst is a duplicate, a refused event is dead-lettered
/// alone — each run starts once, and every message is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_over_jetstream_is_recorded_once_per_event() {
    let app = TestApp::with_executor("postgres", WEBHOOK_KEY).await;
    let _engine = start_engine(&app);
    let mut intake = intake("burst", Duration::from_secs(120)).await;
    let (url, _deliveries) = receiver().await;
    let owner = token("olga", "acme", &["owner"]);
    setup(&app, &owner, &url, refunds_workflow(true)).await;
    let (jetstream, config) = (&intake.jetstream, &intake.config);

    const EVENTS: usize = 40;
    let mut acks = Vec::new();
    let mut publish = async |message_id: String, subject: String, event: Value| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", message_id.as_str());
        acks.push(
            jetstream
                .publish_with_headers(subject, headers, event.to_string().into())
                .await
                .expect("published"),
        );
    };
    for i in 0..EVENTS {
        let amount = if i % 2 == 0 { 1000 } else { 10 };
        let event = refund(&format!("burst-{i}"), amount);
        publish(
            format!("burst-{i}"),
            config.subject("acme", "order.refunded"),
            event,
        )
        .await;
        if i == EVENTS / 2 {
            publish(
                "mismatch".into(),
                config.subject("acme", "order.created"),
                refund("mismatch", 1000),
            )
            .await;
            // The same event again under another message id: JetStream keeps it.
            publish(
                "burst-0-again".into(),
                config.subject("acme", "order.refunded"),
                refund("burst-0", 1000),
            )
            .await;
        }
    }
    for ack in acks {
        assert!(!ack.await.expect("stored").duplicate);
    }

    let stop_intake = intake.start(&app);
    let letter = tokio::time::timeout(Duration::from_secs(30), intake.dead_letters.next())
        .await
        .expect("a dead letter")
        .expect("a message");
    let code = letter
        .headers
        .as_ref()
        .and_then(|headers| headers.get(countersign_workflows::HEADER_CODE))
        .map(|value| value.as_str().to_owned());
    assert_eq!(code.as_deref(), Some("type_mismatch"));

    // Every message acknowledged (none waits for redelivery) ...
    let stream = jetstream
        .get_stream(&config.stream)
        .await
        .expect("the stream");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer("intake")
        .await
        .expect("the intake's consumer");
    // Room for every batch the intake handles side by side (the server's default of 1,000
    // unacknowledged messages would hold it to two batches of 500).
    let config = &consumer.info().await.expect("the consumer's info").config;
    let in_flight =
        countersign_workflows::intake::CONCURRENCY * countersign_workflows::intake::BATCH;
    assert!(
        usize::try_from(config.max_ack_pending).is_ok_and(|limit| limit > in_flight),
        "max_ack_pending {} holds back the intake's {in_flight} messages in flight",
        config.max_ack_pending
    );
    let total = u64::try_from(EVENTS + 2).expect("count");
    eventually(within(Duration::from_secs(30)), async || {
        let info = consumer.info().await.map_err(|err| err.to_string())?;
        if info.ack_floor.stream_sequence == total
            && info.num_ack_pending == 0
            && info.num_pending == 0
        {
            Ok(())
        } else {
            Err(format!("not all acknowledged: {info:?}"))
        }
    })
    .await;
    // ... each event recorded once, and each run started once.
    // (The log is readable below the oldest running transaction: wait for it to pass.)
    let received: Vec<String> = eventually(within(Duration::from_secs(30)), async || {
        let log = countersign_ledger::testing::readable_log(app.state.app.ledger()).await;
        let received: Vec<String> = log
            .into_iter()
            .filter(|event| event.aggregate_type == "intake_event")
            .map(|event| event.aggregate_id)
            .collect();
        if received.len() >= EVENTS {
            Ok(received)
        } else {
            Err(format!("{} events readable", received.len()))
        }
    })
    .await;
    let distinct: BTreeSet<&String> = received.iter().collect();
    assert_eq!((received.len(), distinct.len()), (EVENTS, EVENTS));
    let started = eventually(within(Duration::from_secs(30)), async || {
        let all = runs(&app, &owner, "?limit=100").await;
        if all.len() == EVENTS / 2 {
            Ok(all)
        } else {
            Err(format!("{} runs, not {}", all.len(), EVENTS / 2))
        }
    })
    .await;
    let subjects: BTreeSet<String> = started
        .iter()
        .filter_map(|run| run["event_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(subjects.len(), EVENTS / 2, "{started:?}");
    let _ = stop_intake.send(true);
}
