//! Rolling back is one use case with a defined outcome for each step: the request is recorded on
//! the original first (the domain decides who may and whether there is anything to undo), then
//! the rollback action is submitted; if that second step never happened, asking again completes
//! it with the same action.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use axum::http::StatusCode;
use countersign_domain::action::{ActionCommand, RequestRollback};
use countersign_domain::{ActionId, IdempotencyKey};
use countersign_ledger::on_both_stores;
use countersign_ledger::testing::actions::{self, principal, tenant};
use serde_json::json;
use support::{TestApp, token};

on_both_stores!(a_rollback_whose_submission_never_happened_completes_when_asked_again);
async fn a_rollback_whose_submission_never_happened_completes_when_asked_again(kind: &str) {
    let app = TestApp::with_executor(kind, [4; 32]).await;
    let owner = token("olga", "acme", &["owner"]);
    let requester = token("rita", "acme", &["requester"]);
    let stranger = token("sam", "acme", &["requester", "approver"]);
    let submitted = app
        .post(
            "/v1/actions",
            &requester,
            json!({ "module": "noop", "capability": "echo", "summary": "tag the order",
                    "payload": { "tag": "vip" }, "undo_payload": { "untag": "vip" } }),
        )
        .await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    let id = submitted.body["id"].as_str().expect("id").to_owned();
    let approved = app
        .post(&format!("/v1/actions/{id}/approve"), &owner, json!({}))
        .await;
    assert_eq!(approved.body["status"], "approved", "{}", approved.body);
    let requested = app
        .post(&format!("/v1/actions/{id}/execute"), &requester, json!({}))
        .await;
    assert_eq!(requested.status, StatusCode::ACCEPTED, "{}", requested.body);
    app.wait_for_status(&id, &owner, "executed").await;

    // Someone who is neither its requester nor an admin is refused by the domain, and nothing
    // is recorded on either action.
    let before = app.get(&format!("/v1/actions/{id}"), &owner).await.body;
    let refused = app
        .post(&format!("/v1/actions/{id}/rollback"), &stranger, json!({}))
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::FORBIDDEN, "not_permitted"),
        "{}",
        refused.body
    );
    let after = app.get(&format!("/v1/actions/{id}"), &owner).await.body;
    assert_eq!(after["position"], before["position"], "nothing recorded");
    assert_eq!(after["rolled_back_by"], json!(null));

    // The first step alone, as if the process died before the second: the original names its
    // rollback action, which does not exist yet.
    let tenant = tenant("acme");
    let original = ActionId::parse(&id).expect("action id");
    let key = IdempotencyKey::parse(format!("rollback:{id}")).expect("key");
    let rollback_id = ActionId::for_idempotency_key(&tenant, &key);
    let by = principal("rita", &["requester"]);
    let request = ActionCommand::RequestRollback(RequestRollback {
        context: actions::context(&tenant, &by, chrono::Utc::now()),
        rollback_action_id: rollback_id,
    });
    actions::execute(&app.store.ledger, original, request)
        .await
        .expect("the request is recorded");
    let linked = app.get(&format!("/v1/actions/{id}"), &owner).await.body;
    assert_eq!(linked["rolled_back_by"], rollback_id.to_string());
    let missing = app.get(&format!("/v1/actions/{rollback_id}"), &owner).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.body);

    // Asking again completes it: the rollback action named on the original, then the same one.
    let completed = app
        .post(&format!("/v1/actions/{id}/rollback"), &requester, json!({}))
        .await;
    assert_eq!(completed.status, StatusCode::CREATED, "{}", completed.body);
    assert_eq!(completed.body["id"], rollback_id.to_string());
    assert_eq!(completed.body["rollback_of"], id);
    assert_eq!(
        completed.body["request"]["payload"],
        json!({ "untag": "vip" })
    );
    let again = app
        .post(&format!("/v1/actions/{id}/rollback"), &requester, json!({}))
        .await;
    assert_eq!(
        (again.status, again.body["id"].clone()),
        (StatusCode::OK, completed.body["id"].clone())
    );
}
