//! Reading one resource right after writing it answers the write: an action's detail and audit
//! trail after a vote, a cancel, a rejection and an execution request, and a policy after its
//! change — with the executor on NATS JetStream and embedded, on both stores. The read models
//! may lag behind the log; reads of one resource do not wait for them.

#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use countersign_ledger::on_both_stores;
use countersign_ledger::testing::{eventually, within};
use serde_json::{Value, json};
use support::{Answer, TestApp, token};

/// The log position of the write a reply's consistency token names.
fn written_at(answer: &Answer) -> i64 {
    let token = answer
        .token()
        .expect("a write answers its consistency token");
    let (_, position) = token.split_once('.').expect("<txid>.<position>");
    position.parse().expect("position")
}

/// Reads the action right after a write and checks it shows that write.
async fn read_after(app: &TestApp, reader: &str, write: &Answer, what: &str) -> Value {
    let id = write.body["id"].as_str().expect("id");
    let detail = app.get(&format!("/v1/actions/{id}"), reader).await;
    assert_eq!(detail.status, StatusCode::OK, "{what}: {}", detail.body);
    assert!(
        detail.body["position"].as_i64() >= Some(written_at(write)),
        "{what}: the detail is older than the write: {} < {}",
        detail.body["position"],
        written_at(write)
    );
    detail.body
}

async fn submit(app: &TestApp, requester: &str, n: usize) -> Answer {
    let answer = app
        .post(
            "/v1/actions",
            requester,
            json!({ "module": "noop", "capability": "echo", "summary": format!("echo {n}"),
                    "payload": { "n": n } }),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer
}

async fn every_single_resource_read_shows_the_write_before_it(app: TestApp) {
    let owner = token("olga", "acme", &["owner"]);
    let approver = token("ana", "acme", &["approver"]);
    let requester = token("rita", "acme", &["requester"]);
    let auditor = token("audrey", "acme", &["auditor"]);
    let policy = json!({
        "name": "one approval for echoes", "priority": 10, "criteria": { "module": "noop" },
        "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }] }
    });
    let mut created = policy.clone();
    created["id"] = json!("echoes");
    let answer = app.post("/v1/policies", &owner, created).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let mut executed = Vec::new();
    for round in 0..5 {
        // A vote that decides.
        let submitted = submit(&app, &requester, round).await;
        let id = submitted.body["id"].as_str().expect("id").to_owned();
        read_after(&app, &approver, &submitted, "after submit").await;
        let approved = app
            .post(&format!("/v1/actions/{id}/approve"), &approver, json!({}))
            .await;
        assert_eq!(approved.status, StatusCode::OK, "{}", approved.body);
        assert_eq!(approved.body["status"], "approved");
        let detail = read_after(&app, &requester, &approved, "after a vote").await;
        assert_ne!(detail["status"], "pending", "{detail}");
        let audit = app.get(&format!("/v1/actions/{id}/audit"), &auditor).await;
        assert_eq!(audit.status, StatusCode::OK, "{}", audit.body);
        let events = audit.body["events"].as_array().expect("events");
        assert!(
            events
                .iter()
                .any(|event| event["position"].as_i64() == Some(written_at(&approved))),
            "the audit trail lacks the vote: {}",
            audit.body
        );

        // A request to run it.
        let requested = app
            .post(&format!("/v1/actions/{id}/execute"), &requester, json!({}))
            .await;
        assert_eq!(requested.status, StatusCode::ACCEPTED, "{}", requested.body);
        let detail = read_after(&app, &approver, &requested, "after execute").await;
        assert_eq!(detail["execution"]["requested"], true, "{detail}");
        executed.push(id);

        // A cancel.
        let submitted = submit(&app, &requester, 100 + round).await;
        let id = submitted.body["id"].as_str().expect("id");
        let cancelled = app
            .post(&format!("/v1/actions/{id}/cancel"), &requester, json!({}))
            .await;
        assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
        let detail = read_after(&app, &approver, &cancelled, "after cancel").await;
        assert_eq!(detail["status"], "cancelled", "{detail}");

        // A rejection.
        let submitted = submit(&app, &requester, 200 + round).await;
        let id = submitted.body["id"].as_str().expect("id");
        let rejected = app
            .post(&format!("/v1/actions/{id}/reject"), &approver, json!({}))
            .await;
        assert_eq!(rejected.status, StatusCode::OK, "{}", rejected.body);
        let detail = read_after(&app, &requester, &rejected, "after reject").await;
        assert_eq!(detail["status"], "rejected", "{detail}");

        // A policy change.
        let mut changed = policy.clone();
        changed["name"] = json!(format!("one approval for echoes, round {round}"));
        let updated = app
            .call(
                Method::PUT,
                "/v1/policies/echoes",
                Some(&owner),
                Some(changed),
            )
            .await;
        assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
        let read = app.get("/v1/policies/echoes", &owner).await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.body);
        assert_eq!(
            read.body["version"], updated.body["version"],
            "{}",
            read.body
        );
        assert_eq!(read.body["name"], updated.body["name"], "{}", read.body);
    }
    // The requested executions happen, through whichever transport this app runs.
    let deadline = within(Duration::from_secs(30)).every(Duration::from_millis(50));
    for id in &executed {
        eventually(deadline, async || {
            let detail = app.get(&format!("/v1/actions/{id}"), &auditor).await;
            if detail.body["status"] == "executed" {
                return Ok(());
            }
            Err(format!("never executed: {}", detail.body))
        })
        .await;
    }
}

on_both_stores!(with_the_embedded_executor);
async fn with_the_embedded_executor(kind: &str) {
    every_single_resource_read_shows_the_write_before_it(
        TestApp::with_executor(kind, [5; 32]).await,
    )
    .await;
}

on_both_stores!(with_the_executor_on_nats);
async fn with_the_executor_on_nats(kind: &str) {
    // The app's stream is deleted when it is dropped.
    every_single_resource_read_shows_the_write_before_it(
        TestApp::with_nats_executor(kind, [5; 32]).await,
    )
    .await;
}
