//! Reference 001's acceptance flow end to end: submit, approve, execute through a real webhook
//! receiver (signature checked, received once), status and progress streamed over SSE, rollback.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use countersign_executor::builtin::{SIGNATURE_HEADER, Webhook};
use countersign_ledger::testing::{eventually, readable_log, within};
use futures::StreamExt;
use serde_json::json;
use support::{TestApp, receiver, token};

const WEBHOOK_KEY: [u8; 32] = [42; 32];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submit_approve_execute_through_a_signed_webhook_and_stream_it() {
    let app = TestApp::with_executor("sqlite", WEBHOOK_KEY).await;
    let (url, deliveries) = receiver().await;
    let owner = token("olga", "acme", &["owner"]);
    let requester = token("rita", "acme", &["requester"]);
    app.set_setting(&owner, "webhook_url", json!(url)).await;

    let submitted = app
        .post("/v1/actions", &requester, json!({
            "module": "webhook", "capability": "post", "summary": "Notify the CRM of order 1042",
            "payload": { "order": 1042, "event": "refunded" }, "undo_payload": { "order": 1042, "event": "refund-cancelled" }
        }))
        .await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    let id = submitted.body["id"].as_str().expect("id").to_owned();
    let execution_key = submitted.body["execution_key"]
        .as_str()
        .expect("key")
        .to_owned();

    // Watch it over SSE from the start.
    let request = Request::get(format!("/v1/actions/{id}/stream"))
        .header("authorization", format!("Bearer {requester}"))
        .body(Body::empty())
        .expect("request");
    let response = tower::ServiceExt::oneshot(countersign_gateway::app(app.state.clone()), request)
        .await
        .expect("response");
    let mut stream = response.into_body().into_data_stream();

    let preview = app
        .post(
            &format!("/v1/actions/{id}/execute"),
            &owner,
            json!({ "dry_run": true }),
        )
        .await;
    assert_eq!(preview.body["would_execute"], false, "not approved yet");
    assert_eq!(preview.body["capability_preview"]["would_post_to"], url);

    app.post(
        &format!("/v1/actions/{id}/approve"),
        &owner,
        json!({ "comment": "go" }),
    )
    .await;
    let requested = app
        .post(&format!("/v1/actions/{id}/execute"), &owner, json!({}))
        .await;
    assert_eq!(requested.status, StatusCode::ACCEPTED, "{}", requested.body);

    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.contains("event: ExecutionSucceeded") {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = tokio::time::timeout(left, stream.next())
            .await
            .expect("the execution is streamed")
            .expect("frame")
            .expect("bytes");
        seen.push_str(&String::from_utf8_lossy(&frame));
    }
    for expected in [
        "event: status",
        "event: ActionApproved",
        "event: ExecutionRequested",
        "event: ExecutionStarted",
        "event: progress",
        "\"executed\"",
    ] {
        assert!(seen.contains(expected), "{expected} missing from {seen}");
    }

    // Received exactly once (the outcome is recorded: no attempt can follow it), signed, with
    // the execution key as Idempotency-Key.
    let deliveries = deliveries.lock().expect("lock").clone();
    assert_eq!(deliveries.len(), 1);
    let delivery = &deliveries[0];
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&delivery.body).expect("json"),
        json!({ "order": 1042, "event": "refunded" })
    );
    assert_eq!(delivery.headers["idempotency-key"], execution_key.as_str());
    let timestamp: i64 = delivery.headers["x-countersign-timestamp"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number");
    let expected = Webhook::signature(
        &Webhook::tenant_secret(&WEBHOOK_KEY, "acme"),
        timestamp,
        &delivery.body,
    );
    assert_eq!(
        delivery.headers[SIGNATURE_HEADER],
        expected.as_str(),
        "the signature verifies"
    );
    let forged = Webhook::signature(
        &Webhook::tenant_secret(&[1; 32], "acme"),
        timestamp,
        &delivery.body,
    );
    assert_ne!(delivery.headers[SIGNATURE_HEADER], forged.as_str());

    // The audit shows the whole lifecycle.
    let auditor = token("audrey", "acme", &["auditor"]);
    let deadline = within(Duration::from_secs(30)).every(Duration::from_millis(50));
    let types = eventually(deadline, async || {
        let audit = app.get(&format!("/v1/actions/{id}/audit"), &auditor).await;
        let types: Vec<String> = audit.body["events"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|e| e["event_type"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if types.last().is_some_and(|t| t == "ExecutionSucceeded") {
            return Ok(types);
        }
        Err(format!("{types:?}"))
    })
    .await;
    assert_eq!(
        types,
        [
            "ActionSubmitted",
            "VoteCast",
            "StageApproved",
            "ActionApproved",
            "ExecutionRequested",
            "ExecutionStarted",
            "ExecutionSucceeded"
        ]
    );

    // Roll it back: a new action with the undo payload, linked both ways, under its own policy.
    let rollback = app
        .post(&format!("/v1/actions/{id}/rollback"), &owner, json!({}))
        .await;
    assert_eq!(rollback.status, StatusCode::CREATED, "{}", rollback.body);
    assert_eq!(rollback.body["rollback_of"], id);
    assert_eq!(
        rollback.body["request"]["payload"],
        json!({ "order": 1042, "event": "refund-cancelled" })
    );
    assert_eq!(rollback.body["status"], "pending");
    let again = app
        .post(&format!("/v1/actions/{id}/rollback"), &owner, json!({}))
        .await;
    assert_eq!(
        (again.status, again.body["id"].clone()),
        (StatusCode::OK, rollback.body["id"].clone())
    );
    let token_after = rollback.token().expect("token");
    let original = app
        .get(
            &format!("/v1/actions/{id}?consistent_with={token_after}"),
            &owner,
        )
        .await;
    assert_eq!(original.body["rolled_back_by"], rollback.body["id"]);
    let pending = app
        .post(
            &format!(
                "/v1/actions/{}/rollback",
                rollback.body["id"].as_str().expect("id")
            ),
            &owner,
            json!({}),
        )
        .await;
    assert_eq!(pending.code(), "nothing_to_roll_back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_credentials_reach_the_receiver_and_never_the_log() {
    let app = TestApp::with_executor("postgres", WEBHOOK_KEY).await;
    let (url, deliveries) = receiver().await;
    let with_credentials = url.replacen("http://", "http://crm:s3cret@", 1);
    let owner = token("olga", "acme", &["owner"]);
    let auditor = token("audrey", "acme", &["auditor"]);
    let requester = token("rita", "acme", &["requester"]);
    let updated = app
        .set_setting(&owner, "webhook_url", json!(with_credentials))
        .await;
    let shown = url.replacen("http://", "http://***@", 1);
    assert_eq!(updated.body["webhook_url"], shown);
    // Sending back what was shown keeps the credentials (nothing changes).
    let again = app
        .call(
            Method::PUT,
            "/v1/settings",
            Some(&owner),
            Some(updated.body.clone()),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);

    let submitted = app
        .post(
            "/v1/actions",
            &requester,
            json!({
                "module": "webhook", "capability": "post", "summary": "Notify the CRM",
                "payload": { "order": 7 }
            }),
        )
        .await;
    let id = submitted.body["id"].as_str().expect("id").to_owned();
    app.post(&format!("/v1/actions/{id}/approve"), &owner, json!({}))
        .await;
    let requested = app
        .post(&format!("/v1/actions/{id}/execute"), &owner, json!({}))
        .await;
    assert_eq!(requested.status, StatusCode::ACCEPTED, "{}", requested.body);
    let delivery = eventually(within(Duration::from_secs(30)), async || {
        let first = deliveries.lock().expect("lock").first().cloned();
        first.ok_or("never delivered")
    })
    .await;
    // HTTP basic credentials from the URL: base64("crm:s3cret").
    assert_eq!(delivery.headers["authorization"], "Basic Y3JtOnMzY3JldA==");

    // Nowhere in the log (once the run's outcome is recorded), the settings view or the audit
    // trail.
    app.wait_for_status(&id, &owner, "executed").await;
    let count = app.settled_event_count().await;
    let log = readable_log(&app.store.ledger).await;
    for event in &log {
        assert!(
            !event.payload.to_string().contains("s3cret"),
            "{}",
            event.payload
        );
    }
    assert_eq!(log.len(), count);
    let read = app.get("/v1/settings", &auditor).await;
    assert_eq!(read.body["webhook_url"], shown);
    assert!(!read.body.to_string().contains("s3cret"));
}
