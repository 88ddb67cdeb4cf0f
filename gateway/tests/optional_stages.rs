//! Optional stages through the API: a reviewer stage skipped (and recorded as skipped) when an
//! owner approved the first stage, opened when an approver did; impossible stage settings
//! refused naming the field.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use axum::http::StatusCode;
use countersign_ledger::on_both_stores;
use serde_json::json;
use support::{TestApp, token};

on_both_stores!(a_reviewer_stage_is_skipped_when_an_owner_approved_and_required_otherwise);
async fn a_reviewer_stage_is_skipped_when_an_owner_approved_and_required_otherwise(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let owner = token("olga", "acme", &["owner"]);
    let requester = token("rita", "acme", &["requester"]);
    let created = app
        .post(
            "/v1/policies",
            &owner,
            json!({
                "id": "reviewed", "name": "owner or reviewed",
                "requirements": { "stages": [
                    { "name": "approver", "rules": [{ "type": "any", "min_approvals": 1 }] },
                    { "name": "reviewer", "optional": true,
                      "skip_when": { "type": "role", "role": "owner", "min_approvals": 1 },
                      "rules": [{ "type": "role", "role": "reviewer", "min_approvals": 1 }],
                      "timeout_seconds": 7200 }
                ] }
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(
        created.body["requirements"]["stages"][1]["optional"], true,
        "{}",
        created.body
    );
    let submit = async || {
        let submitted = app
            .post(
                "/v1/actions",
                &requester,
                json!({ "module": "billing", "capability": "refund", "summary": "refund",
                        "payload": { "order": 1 } }),
            )
            .await;
        assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
        submitted.body["id"].as_str().expect("id").to_owned()
    };

    // An owner approved: the reviewer stage is skipped, and the audit trail says so.
    let skipped = submit().await;
    let approved = app
        .post(&format!("/v1/actions/{skipped}/approve"), &owner, json!({}))
        .await;
    assert_eq!(approved.body["status"], "approved", "{}", approved.body);
    let audit = app
        .get(&format!("/v1/actions/{skipped}/audit"), &owner)
        .await;
    let types: Vec<&str> = audit.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|event| event["event_type"].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "ActionSubmitted",
            "VoteCast",
            "StageApproved",
            "StageSkipped",
            "ActionApproved"
        ],
        "{}",
        audit.body
    );
    let event = &audit.body["events"][3]["content"];
    assert!(
        event.to_string().contains("skip_when_held"),
        "the reason is recorded: {event}"
    );

    // An approver approved: the reviewer stage opens, with its own deadline, and needs a reviewer.
    let reviewed = submit().await;
    let first = app
        .post(
            &format!("/v1/actions/{reviewed}/approve"),
            &token("ann", "acme", &["approver"]),
            json!({}),
        )
        .await;
    assert_eq!(
        (
            first.body["status"].clone(),
            first.body["current_stage"].clone()
        ),
        (json!("pending"), json!(1)),
        "{}",
        first.body
    );
    let opened = chrono::DateTime::parse_from_rfc3339(
        first.body["stages"][0]["votes"][0]["cast_at"]
            .as_str()
            .expect("vote time"),
    )
    .expect("a time");
    let deadline =
        chrono::DateTime::parse_from_rfc3339(first.body["expires_at"].as_str().expect("deadline"))
            .expect("a time");
    assert_eq!(deadline - opened, chrono::Duration::seconds(7200));
    let second = app
        .post(
            &format!("/v1/actions/{reviewed}/approve"),
            &token("rob", "acme", &["reviewer"]),
            json!({}),
        )
        .await;
    assert_eq!(second.body["status"], "approved", "{}", second.body);
}

on_both_stores!(stage_settings_that_cannot_work_are_refused_naming_the_field);
async fn stage_settings_that_cannot_work_are_refused_naming_the_field(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let owner = token("olga", "acme", &["owner"]);
    for (stages, message) in [
        (
            json!([{ "optional": true, "rules": [{ "type": "any", "min_approvals": 1 }] }]),
            "stages[0].optional",
        ),
        (
            json!([
                { "rules": [{ "type": "any", "min_approvals": 1 }] },
                { "skip_when": { "type": "any", "min_approvals": 1 },
                  "rules": [{ "type": "any", "min_approvals": 1 }] }
            ]),
            "stages[1].skip_when",
        ),
    ] {
        let refused = app
            .post(
                "/v1/policies",
                &owner,
                json!({ "id": "bad", "name": "bad", "requirements": { "stages": stages } }),
            )
            .await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            refused.body
        );
        assert_eq!(refused.code(), "invalid_input", "{}", refused.body);
        assert!(
            refused.body["field"]
                .as_str()
                .is_some_and(|field| field.contains("stages")),
            "{}",
            refused.body
        );
        assert!(
            refused.body["detail"]
                .as_str()
                .is_some_and(|detail| detail.contains(message)),
            "{}",
            refused.body
        );
    }
    let listed = app.get("/v1/policies", &owner).await;
    assert_eq!(listed.body["policies"], json!([]), "nothing was recorded");
}
