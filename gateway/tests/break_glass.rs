//! Break-glass through the API: a member with the `break_glass` role approves a pending action
//! alone with a justification; it is marked, runs once, its approvers and the tenant's owners
//! are told (never the breaker), an eligible approver reviews it after the fact, and the decision
//! replay decides it all again. Refusals: no role, no justification, one's own request, twice.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use countersign_app::notify::{Notifier, NotifierConfig};
use countersign_ledger::LogCursor;
use countersign_ledger::on_both_stores;
use countersign_ledger::testing::{eventually, within};
use serde_json::{Value, json};
use support::{TestApp, receiver, token};

const WEBHOOK_KEY: [u8; 32] = [9; 32];

/// Runs the notifier until it has read the whole log.
async fn drain(app: &TestApp, notifier: &Notifier, checkpoint: &mut Option<LogCursor>) {
    app.settled_event_count().await;
    eventually(within(Duration::from_secs(20)), async || {
        match notifier.process_next(checkpoint).await {
            Ok(0) => Ok(()),
            Ok(read) => Err(format!("read {read} more events")),
            Err(err) => Err(format!("{err:#}")),
        }
    })
    .await;
}

async fn kinds(app: &TestApp, user: &str, roles: &[&str]) -> Vec<String> {
    let answer = app
        .get("/v1/notifications", &token(user, "acme", roles))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .map(|n| n["kind"].as_str().expect("kind").to_owned())
        .collect()
}

on_both_stores!(a_breaker_approves_alone_it_runs_once_and_is_reviewed);
async fn a_breaker_approves_alone_it_runs_once_and_is_reviewed(kind: &str) {
    let app = TestApp::with_executor(kind, WEBHOOK_KEY).await;
    let (url, deliveries) = receiver().await;
    let owner = token("olga", "acme", &["owner"]);
    let admin = token("adam", "acme", &["admin"]);
    let breaker = token("bea", "acme", &["break_glass"]);
    let requester = token("rita", "acme", &["requester"]);
    app.set_setting(&owner, "webhook_url", json!(url)).await;
    for (user, roles) in [
        ("olga", json!(["owner"])),
        ("adam", json!(["admin"])),
        ("ana", json!(["approver"])),
        ("bea", json!(["break_glass"])),
        ("rita", json!(["requester", "break_glass"])),
    ] {
        let added = app
            .post(
                "/v1/members",
                &owner,
                json!({ "user_id": user, "roles": roles }),
            )
            .await;
        assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    }
    let notifier = Notifier::new(app.store.ledger.clone(), NotifierConfig::default());
    let mut checkpoint = None;

    let submitted = app
        .post(
            "/v1/actions",
            &requester,
            json!({ "module": "webhook", "capability": "post", "summary": "Restart the API",
                    "payload": { "service": "api" } }),
        )
        .await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    let id = submitted.body["id"].as_str().expect("id").to_owned();
    let path = format!("/v1/actions/{id}/break-glass");
    let events_before = app.settled_event_count().await;

    // Refusals record nothing.
    let no_role = app
        .post(
            &path,
            &token("ana", "acme", &["approver"]),
            json!({ "justification": "outage" }),
        )
        .await;
    assert_eq!(
        (no_role.status, no_role.code()),
        (StatusCode::FORBIDDEN, "not_permitted"),
        "{}",
        no_role.body
    );
    let empty = app
        .post(&path, &breaker, json!({ "justification": "" }))
        .await;
    assert_eq!(
        (empty.status, empty.body["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("justification")),
        "{}",
        empty.body
    );
    let missing = app.post(&path, &breaker, json!({})).await;
    assert_eq!(
        missing.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        missing.body
    );
    let own = app
        .post(
            &path,
            &token("rita", "acme", &["requester", "break_glass"]),
            json!({ "justification": "my own outage" }),
        )
        .await;
    assert_eq!(
        (own.status, own.code()),
        (StatusCode::FORBIDDEN, "self_approval_forbidden"),
        "{}",
        own.body
    );
    assert_eq!(app.settled_event_count().await, events_before);

    // The breaker approves alone: approved at once, marked, a review due a day later.
    let approved = app
        .post(
            &path,
            &breaker,
            json!({ "justification": "checkout is down for every customer" }),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.body);
    assert_eq!(approved.body["status"], "approved", "{}", approved.body);
    let glass = &approved.body["break_glass"];
    assert_eq!(glass["by"], "bea", "{}", approved.body);
    assert_eq!(
        glass["justification"],
        "checkout is down for every customer"
    );
    let at =
        chrono::DateTime::parse_from_rfc3339(glass["at"].as_str().expect("at")).expect("a time");
    let due = chrono::DateTime::parse_from_rfc3339(glass["review_due"].as_str().expect("due"))
        .expect("a time");
    assert_eq!(due - at, chrono::Duration::hours(24));
    let again = app
        .post(
            &path,
            &token("bo", "acme", &["break_glass"]),
            json!({ "justification": "again" }),
        )
        .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "invalid_state"),
        "{}",
        again.body
    );

    // It runs as any approved action does: once, at the receiver.
    let requested = app
        .post(&format!("/v1/actions/{id}/execute"), &requester, json!({}))
        .await;
    assert_eq!(requested.status, StatusCode::ACCEPTED, "{}", requested.body);
    app.wait_for_status(&id, &owner, "executed").await;
    assert_eq!(deliveries.lock().expect("lock").len(), 1);

    // Approvers and owners hear of it at once; the breaker does not.
    drain(&app, &notifier, &mut checkpoint).await;
    for (user, roles) in [("olga", &["owner"][..]), ("adam", &["admin"][..])] {
        let heard = kinds(&app, user, roles).await;
        assert!(
            heard.iter().any(|k| k == "break_glass"),
            "{user}: {heard:?}"
        );
    }
    for (user, roles) in [("bea", &["break_glass"][..]), ("ana", &["approver"][..])] {
        let heard = kinds(&app, user, roles).await;
        assert!(
            !heard.iter().any(|k| k == "break_glass"),
            "{user}: {heard:?}"
        );
    }

    // The review: not by the breaker, not by one who could not approve; once by an approver.
    let review = format!("/v1/actions/{id}/review");
    let by_breaker = app
        .post(&review, &breaker, json!({ "verdict": "upheld" }))
        .await;
    assert_eq!(
        (by_breaker.status, by_breaker.code()),
        (StatusCode::FORBIDDEN, "not_permitted"),
        "{}",
        by_breaker.body
    );
    let bad_verdict = app
        .post(&review, &admin, json!({ "verdict": "fine" }))
        .await;
    assert_eq!(
        (bad_verdict.status, bad_verdict.body["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("verdict")),
        "{}",
        bad_verdict.body
    );
    let upheld = app
        .post(
            &review,
            &admin,
            json!({ "verdict": "upheld", "comment": "right call" }),
        )
        .await;
    assert_eq!(upheld.status, StatusCode::OK, "{}", upheld.body);
    assert_eq!(upheld.body["break_glass"]["review"]["verdict"], "upheld");
    assert_eq!(upheld.body["break_glass"]["review"]["by"], "adam");
    let twice = app
        .post(&review, &owner, json!({ "verdict": "disputed" }))
        .await;
    assert_eq!(twice.code(), "invalid_state", "{}", twice.body);

    // Every step is in the audit trail.
    let audit = app.get(&format!("/v1/actions/{id}/audit"), &owner).await;
    let types: Vec<&str> = audit.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|event| event["event_type"].as_str())
        .collect();
    for expected in ["BreakGlassApproved", "ActionApproved", "BreakGlassReviewed"] {
        assert!(types.contains(&expected), "{expected}: {}", audit.body);
    }
    let recorded: Vec<&Value> = audit.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|event| event["content"]["justification"].is_string())
        .collect();
    assert_eq!(recorded.len(), 1, "{}", audit.body);
    assert_eq!(recorded[0]["actor"], "bea");

    // The tenant's stats count it.
    eventually(within(Duration::from_secs(30)), async || {
        let stats = app.get("/v1/stats", &owner).await;
        if stats.body["break_glass"] == 1 {
            return Ok(());
        }
        Err(format!("not counted: {}", stats.body))
    })
    .await;

    // The decision replay decides the break-glass approval and its review again.
    let replay = countersign_verification::decisions::check_decisions(
        &app.store.ledger,
        Some("acme"),
        |_, _| {},
    )
    .await
    .expect("decision replay");
    assert!(replay.is_ok(), "{:?}", replay.mismatches);
}
