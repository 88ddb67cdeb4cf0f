//! Safe mode always wins (reference 004's precedence), end to end through HTTP and the executor:
//! an action approved while the tenant required approval is skipped once the tenant switches to
//! safe mode, nothing reaches the webhook, asking again is refused while the tenant is still in
//! safe mode, and an explicit request once it is not runs the action exactly once.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use countersign_ledger::on_both_stores;
use countersign_ledger::testing::{eventually, within};
use serde_json::{Value, json};
use support::{TestApp, receiver, token};

const WEBHOOK_KEY: [u8; 32] = [7; 32];

async fn set_mode(app: &TestApp, owner: &str, mode: &str) {
    let changed = app.set_setting(owner, "mode", json!(mode)).await;
    assert_eq!(changed.body["mode"], mode);
}

/// The action's audit trail once it holds `last` as its last event.
async fn audit_ending_with(app: &TestApp, id: &str, last: &str) -> Vec<Value> {
    let auditor = token("audrey", "acme", &["auditor"]);
    eventually(within(Duration::from_secs(30)), async || {
        let audit = app.get(&format!("/v1/actions/{id}/audit"), &auditor).await;
        let events = audit.body["events"].as_array().cloned().unwrap_or_default();
        if events.last().is_some_and(|e| e["event_type"] == last) {
            return Ok(events);
        }
        Err(format!(
            "the audit does not end with {last}: {}",
            audit.body
        ))
    })
    .await
}

fn count(events: &[Value], event_type: &str) -> usize {
    events
        .iter()
        .filter(|e| e["event_type"] == event_type)
        .count()
}

on_both_stores!(safe_mode_stops_an_approved_action_until_it_is_resumed_explicitly);
async fn safe_mode_stops_an_approved_action_until_it_is_resumed_explicitly(kind: &str) {
    let app = TestApp::with_executor(kind, WEBHOOK_KEY).await;
    let (url, received) = receiver().await;
    let owner = token("olga", "acme", &["owner"]);
    let requester = token("rita", "acme", &["requester"]);
    let saved = app.set_setting(&owner, "webhook_url", json!(url)).await;
    assert_eq!(saved.body["mode"], "require_approval");

    // Submitted and approved while the tenant requires approval.
    let submitted = app
        .post(
            "/v1/actions",
            &requester,
            json!({
                "module": "webhook", "capability": "post", "summary": "Notify the CRM of order 7",
                "payload": { "order": 7, "event": "refunded" }
            }),
        )
        .await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    assert_eq!(submitted.body["mode"], "require_approval");
    let id = submitted.body["id"].as_str().expect("id").to_owned();
    let approved = app
        .post(
            &format!("/v1/actions/{id}/approve"),
            &owner,
            json!({ "comment": "go" }),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.body);
    app.wait_for_status(&id, &requester, "approved").await;

    // The tenant switches to safe mode; asking the action to run now skips it.
    set_mode(&app, &owner, "safe").await;
    let requested = app
        .post(&format!("/v1/actions/{id}/execute"), &requester, json!({}))
        .await;
    assert_eq!(requested.status, StatusCode::ACCEPTED, "{}", requested.body);
    app.wait_for_status(&id, &requester, "skipped").await;
    let detail = app.get(&format!("/v1/actions/{id}"), &requester).await;
    assert_eq!(detail.body["execution"]["skip_reason"], "safe_mode");
    assert_eq!(detail.body["execution"]["attempts"], 0);
    let events = audit_ending_with(&app, &id, "ExecutionSkipped").await;
    let skipped = events.last().expect("the skip");
    assert_eq!(skipped["content"]["reason"], "safe_mode", "{skipped}");
    assert_eq!(skipped["content"]["mode"], "safe", "{skipped}");
    assert_eq!(count(&events, "ExecutionStarted"), 0);
    assert_eq!(received.lock().expect("lock").len(), 0, "nothing ran");

    let preview = app
        .post(
            &format!("/v1/actions/{id}/execute"),
            &requester,
            json!({ "dry_run": true }),
        )
        .await;
    assert_eq!(preview.body["would_execute"], false, "{}", preview.body);

    // Asking again while the tenant is still in safe mode is refused and records nothing.
    let refused = app
        .post(&format!("/v1/actions/{id}/execute"), &owner, json!({}))
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert_eq!(refused.code(), "safe_mode_on");
    let detail = app.get(&format!("/v1/actions/{id}"), &requester).await;
    assert_eq!(detail.body["status"], "skipped");

    // Leaving safe mode does not run it by itself: once the executor has run an action
    // requested after the switch (so it has seen the switch and swept since), the skipped one is
    // still skipped and nothing was delivered ...
    set_mode(&app, &owner, "require_approval").await;
    let later = app
        .post(
            "/v1/actions",
            &requester,
            json!({ "module": "noop", "capability": "echo", "summary": "After the switch",
                    "payload": { "n": 1 } }),
        )
        .await;
    let later = later.body["id"].as_str().expect("id").to_owned();
    app.post(&format!("/v1/actions/{later}/approve"), &owner, json!({}))
        .await;
    let ran = app
        .post(
            &format!("/v1/actions/{later}/execute"),
            &requester,
            json!({}),
        )
        .await;
    assert_eq!(ran.status, StatusCode::ACCEPTED, "{}", ran.body);
    app.wait_for_status(&later, &requester, "executed").await;
    let detail = app.get(&format!("/v1/actions/{id}"), &requester).await;
    assert_eq!(detail.body["status"], "skipped");
    assert_eq!(received.lock().expect("lock").len(), 0);

    // ... an explicit request does, exactly once, and the audit trail says who asked.
    let resumed = app
        .post(&format!("/v1/actions/{id}/execute"), &requester, json!({}))
        .await;
    assert_eq!(resumed.status, StatusCode::ACCEPTED, "{}", resumed.body);
    app.wait_for_status(&id, &requester, "executed").await;
    let events = audit_ending_with(&app, &id, "ExecutionSucceeded").await;
    let resumed = events
        .iter()
        .find(|e| e["event_type"] == "ExecutionResumed")
        .expect("the resume is audited");
    assert_eq!(resumed["actor"], "rita");
    assert_eq!(resumed["content"]["mode"], "require_approval");
    assert_eq!(count(&events, "ExecutionStarted"), 1);
    assert_eq!(count(&events, "ExecutionSucceeded"), 1);
    // One attempt, recorded as succeeded once the receiver had answered: one delivery.
    assert_eq!(received.lock().expect("lock").len(), 1, "ran exactly once");

    // Executed: asking again is refused as before.
    let again = app
        .post(&format!("/v1/actions/{id}/execute"), &requester, json!({}))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
}
