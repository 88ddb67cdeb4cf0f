//! Notifications end to end on both stores: the notifier tails the real log, resolves who hears
//! about each event from the member directory, applies preferences and writes one keyed row per
//! (event, recipient, channel); the feed, read marks, counts and the delivery log answer over
//! HTTP. Replays and a notifier killed mid-run write nothing twice and skip nothing.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use countersign_app::notify::{Notifier, NotifierConfig};
use countersign_ledger::LogCursor;
use countersign_ledger::on_both_stores;
use countersign_ledger::testing::{eventually, within};
use serde_json::{Value, json};
use support::{TestApp, token};

fn refund(order: u32) -> Value {
    json!({
        "module": "billing", "capability": "refund",
        "payload": { "order": order, "amount": 25.5 },
        "summary": format!("Refund order {order}"),
    })
}

/// Adds the tenant's members: two who may approve under the default policy (an owner, an
/// admin), an approver who may not, the requester, and an auditor.
async fn members(app: &TestApp) {
    let owner = token("olga", "acme", &["owner"]);
    for (user, roles, email) in [
        ("olga", json!(["owner"]), "olga@example.com"),
        ("adam", json!(["admin"]), "adam@example.com"),
        ("ana", json!(["approver"]), "ana@example.com"),
        ("rita", json!(["requester"]), "rita@example.com"),
        ("audrey", json!(["auditor"]), "audrey@example.com"),
    ] {
        let added = app
            .post(
                "/v1/members",
                &owner,
                json!({ "user_id": user, "roles": roles, "email": email }),
            )
            .await;
        assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    }
}

/// Runs the notifier until it has read the whole log (every committed event readable).
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

/// Rita submits refunds of orders `0..count`, each accepted; answers their action ids.
async fn submit_refunds(app: &TestApp, count: u32) -> Vec<String> {
    let requester = token("rita", "acme", &["requester"]);
    let mut ids = Vec::new();
    for order in 0..count {
        let submitted = app.post("/v1/actions", &requester, refund(order)).await;
        assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
        ids.push(submitted.body["id"].as_str().expect("id").to_owned());
    }
    ids
}

/// Approves the action as the token's holder; the vote must be accepted.
async fn approve(app: &TestApp, voter: &str, id: &str) {
    let voted = app
        .post(
            &format!("/v1/actions/{id}/votes"),
            voter,
            json!({ "vote": "approve" }),
        )
        .await;
    assert_eq!(voted.status, StatusCode::OK, "{}", voted.body);
}

async fn feed(app: &TestApp, user: &str, roles: &[&str]) -> Value {
    let answer = app
        .get("/v1/notifications", &token(user, "acme", roles))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body
}

fn kinds(feed: &Value) -> Vec<String> {
    feed["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .map(|n| n["kind"].as_str().expect("kind").to_owned())
        .collect()
}

on_both_stores!(approvers_hear_of_a_submission_and_the_requester_of_its_decision_once);
async fn approvers_hear_of_a_submission_and_the_requester_of_its_decision_once(kind: &str) {
    let app = TestApp::spawn(kind).await;
    members(&app).await;
    let notifier = Notifier::new(app.store.ledger.clone(), NotifierConfig::default());
    let mut checkpoint = None;
    let requester = token("rita", "acme", &["requester"]);
    let submitted = app.post("/v1/actions", &requester, refund(1042)).await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    let id = submitted.body["id"].as_str().expect("id").to_owned();
    drain(&app, &notifier, &mut checkpoint).await;

    for (user, roles) in [("olga", &["owner"][..]), ("adam", &["admin"][..])] {
        let page = feed(&app, user, roles).await;
        assert_eq!(kinds(&page), ["assigned"], "{user}: {page}");
        assert_eq!(page["unread"], 1);
        let first = &page["notifications"][0];
        assert_eq!(first["title"], "Approval needed: Refund order 1042");
        assert_eq!(first["action_id"], id.as_str());
        assert_eq!(first["details"]["risk"]["level"], "low");
        assert_eq!(first["details"]["link"], format!("/actions/{id}"));
    }
    for (user, roles) in [
        ("ana", &["approver"][..]),
        ("rita", &["requester"][..]),
        ("audrey", &["auditor"][..]),
    ] {
        assert_eq!(
            kinds(&feed(&app, user, roles).await),
            Vec::<String>::new(),
            "{user} may not vote under the default policy and requested nothing decided"
        );
    }

    let owner = token("olga", "acme", &["owner"]);
    approve(&app, &owner, &id).await;
    drain(&app, &notifier, &mut checkpoint).await;
    let rita = feed(&app, "rita", &["requester"]).await;
    assert_eq!(kinds(&rita), ["decided"], "{rita}");
    assert_eq!(
        rita["notifications"][0]["title"],
        "Approved: Refund order 1042"
    );
    assert_eq!(
        kinds(&feed(&app, "olga", &["owner"]).await),
        ["assigned"],
        "the voter is not told about their own act"
    );

    // A replay from the start (a crash between writing rows and saving the checkpoint) writes
    // nothing twice.
    let admin = token("adam", "acme", &["admin"]);
    let before = app
        .get("/v1/notifications/deliveries?limit=200", &admin)
        .await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.body);
    let count = before.body["deliveries"].as_array().map(Vec::len);
    assert_eq!(count, Some(3), "{}", before.body);
    let mut replay = Some(LogCursor::START);
    drain(&app, &notifier, &mut replay).await;
    let after = app
        .get("/v1/notifications/deliveries?limit=200", &admin)
        .await;
    assert_eq!(after.body["deliveries"].as_array().map(Vec::len), count);
    assert!(
        after.body["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .all(|d| d["channel"] == "in_app" && d["status"] == "delivered"),
        "{}",
        after.body
    );
    assert_eq!(
        app.get("/v1/notifications/deliveries", &requester)
            .await
            .code(),
        "forbidden",
        "the delivery log is for owners and admins"
    );

    // Read marks: one, then all; another user's notification is a missing one.
    let olga = feed(&app, "olga", &["owner"]).await;
    let notification = olga["notifications"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let stolen = app
        .call(
            Method::POST,
            &format!("/v1/notifications/{notification}/read"),
            Some(&requester),
            None,
        )
        .await;
    assert_eq!(stolen.status, StatusCode::NOT_FOUND, "{}", stolen.body);
    assert_eq!(stolen.code(), "notification_not_found");
    assert_eq!(feed(&app, "olga", &["owner"]).await["unread"], 1);
    let read = app
        .call(
            Method::POST,
            &format!("/v1/notifications/{notification}/read"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    let olga = feed(&app, "olga", &["owner"]).await;
    assert_eq!(olga["unread"], 0);
    assert!(olga["notifications"][0]["read_at"].is_string());
    let all = app
        .call(
            Method::POST,
            "/v1/notifications/read-all",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(all.body["marked"], 1, "{}", all.body);
    let stats = app.get("/v1/notifications/stats", &admin).await;
    assert_eq!(
        stats.body,
        json!({ "total": 1, "unread": 0, "by_kind": { "assigned": { "total": 1, "unread": 0 } } })
    );
    for (path, code) in [
        ("/v1/notifications?cursor=abc", "invalid_cursor"),
        ("/v1/notifications?limit=0", "invalid_input"),
        ("/v1/notifications?colour=red", "invalid_query"),
        ("/v1/notifications/deliveries?status=lost", "invalid_query"),
    ] {
        let answer = app.get(path, &admin).await;
        assert_eq!(answer.code(), code, "{path}: {}", answer.body);
    }
}

on_both_stores!(a_backlog_read_ahead_of_its_writes_notifies_everyone_once);
async fn a_backlog_read_ahead_of_its_writes_notifies_everyone_once(kind: &str) {
    let app = TestApp::spawn(kind).await;
    members(&app).await;
    let owner = token("olga", "acme", &["owner"]);
    let ids = submit_refunds(&app, 6).await;
    for id in &ids[..3] {
        approve(&app, &owner, id).await;
    }
    app.settled_event_count().await;
    // Batches of two: while a full batch is written, the next is read and prepared.
    let notifier = Notifier::new(
        app.store.ledger.clone(),
        NotifierConfig {
            batch: 2,
            ..NotifierConfig::default()
        },
    );
    let mut first = None;
    assert_eq!(notifier.process_next(&mut first).await.expect("a batch"), 2);
    // A caller starting somewhere else (the start again) is never handed the batch prepared
    // after `first`: it gets the batch after where it starts.
    let mut again = Some(LogCursor::START);
    assert_eq!(notifier.process_next(&mut again).await.expect("a batch"), 2);
    assert_eq!(
        again, first,
        "the first two events again, not the batch read ahead"
    );
    drain(&app, &notifier, &mut first).await;
    for (user, roles) in [("olga", &["owner"][..]), ("adam", &["admin"][..])] {
        let page = feed(&app, user, roles).await;
        assert_eq!(kinds(&page), ["assigned"; 6], "{user}: {page}");
    }
    let rita = feed(&app, "rita", &["requester"]).await;
    assert_eq!(kinds(&rita), ["decided"; 3], "{rita}");
}

on_both_stores!(a_batch_ends_at_its_rows_limit_and_the_rest_follows_in_the_next);
async fn a_batch_ends_at_its_rows_limit_and_the_rest_follows_in_the_next(kind: &str) {
    let app = TestApp::spawn(kind).await;
    members(&app).await;
    submit_refunds(&app, 4).await;
    app.settled_event_count().await;
    // Every submission gives two rows (olga's and adam's): a limit of one row ends each batch
    // at the event that has any.
    let notifier = Notifier::new(
        app.store.ledger.clone(),
        NotifierConfig {
            max_rows: 1,
            ..NotifierConfig::default()
        },
    );
    let mut checkpoint = None;
    let first = notifier
        .process_next(&mut checkpoint)
        .await
        .expect("a batch");
    let mut read = first;
    loop {
        match notifier
            .process_next(&mut checkpoint)
            .await
            .expect("a batch")
        {
            0 => break,
            more => read += more,
        }
    }
    assert!(
        first < read,
        "the first batch ended at its first submission: {first} of {read} events"
    );
    for (user, roles) in [("olga", &["owner"][..]), ("adam", &["admin"][..])] {
        let page = feed(&app, user, roles).await;
        assert_eq!(kinds(&page), ["assigned"; 4], "{user}: {page}");
    }
}

on_both_stores!(preferences_and_the_directory_at_the_moment_of_the_event_decide_who_hears);
async fn preferences_and_the_directory_at_the_moment_of_the_event_decide_who_hears(kind: &str) {
    let app = TestApp::spawn(kind).await;
    members(&app).await;
    let adam = token("adam", "acme", &["admin"]);
    let off = app
        .call(
            Method::PUT,
            "/v1/members/me/preferences",
            Some(&adam),
            Some(json!({ "preferences": { "in_app": { "assigned": false } } })),
        )
        .await;
    assert_eq!(off.status, StatusCode::OK, "{}", off.body);
    let requester = token("rita", "acme", &["requester"]);
    let first = app.post("/v1/actions", &requester, refund(1)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    // Olga leaves the directory after the first submission: the second reaches nobody but she
    // still heard of the first, though the notifier reads both only now.
    let owner = token("olga", "acme", &["owner"]);
    let removed = app
        .call(Method::DELETE, "/v1/members/olga", Some(&owner), None)
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);
    let second = app.post("/v1/actions", &requester, refund(2)).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);

    let notifier = Notifier::new(app.store.ledger.clone(), NotifierConfig::default());
    drain(&app, &notifier, &mut None).await;
    let olga = feed(&app, "olga", &["owner"]).await;
    assert_eq!(kinds(&olga), ["assigned"], "{olga}");
    assert_eq!(
        olga["notifications"][0]["title"],
        "Approval needed: Refund order 1"
    );
    assert_eq!(
        kinds(&feed(&app, "adam", &["admin"]).await),
        Vec::<String>::new(),
        "adam turned in-app approval requests off"
    );
}

on_both_stores!(a_notifier_stopped_mid_run_skips_nothing_and_writes_nothing_twice);
async fn a_notifier_stopped_mid_run_skips_nothing_and_writes_nothing_twice(kind: &str) {
    let app = TestApp::spawn(kind).await;
    members(&app).await;
    let requester = token("rita", "acme", &["requester"]);
    let config = NotifierConfig {
        batch: 3,
        ..NotifierConfig::default()
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running =
        tokio::spawn(Notifier::new(app.store.ledger.clone(), config.clone()).run(stopped));
    let total = 12;
    for order in 0..total {
        let submitted = app.post("/v1/actions", &requester, refund(order)).await;
        assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
        if order == total / 2 {
            // Killed mid-run: the task is aborted wherever it is (between rows and checkpoint,
            // or mid-batch).
            running.abort();
        }
    }
    let _ = running.await;
    drop(stop);
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let restarted = tokio::spawn(Notifier::new(app.store.ledger.clone(), config).run(stopped));
    let admin = token("adam", "acme", &["admin"]);
    eventually(within(Duration::from_secs(30)), async || {
        let olga = app
            .get(
                "/v1/notifications?limit=200",
                &token("olga", "acme", &["owner"]),
            )
            .await;
        let seen = olga.body["notifications"].as_array().map_or(0, Vec::len);
        if seen == usize::try_from(total).expect("small") {
            Ok(())
        } else {
            let checkpoint = app.store.ledger.load_checkpoint("notifier").await;
            Err(format!(
                "olga has {seen} of {total}; the restarted notifier ended: {}; its checkpoint: {checkpoint:?}",
                restarted.is_finished()
            ))
        }
    })
    .await;
    let deliveries = app
        .get("/v1/notifications/deliveries?limit=200", &admin)
        .await;
    let rows = deliveries.body["deliveries"].as_array().expect("rows");
    assert_eq!(
        rows.len(),
        2 * usize::try_from(total).expect("small"),
        "one per submission for each of the two who may approve: {}",
        deliveries.body
    );
    let distinct: BTreeSet<(String, String)> = rows
        .iter()
        .map(|row| {
            (
                row["recipient"].as_str().expect("recipient").to_owned(),
                row["title"].as_str().expect("title").to_owned(),
            )
        })
        .collect();
    assert_eq!(distinct.len(), rows.len(), "nothing twice");
}

on_both_stores!(a_live_feed_shows_new_notifications_and_the_unread_count);
async fn a_live_feed_shows_new_notifications_and_the_unread_count(kind: &str) {
    use futures::StreamExt as _;
    let app = TestApp::spawn(kind).await;
    members(&app).await;
    let request = axum::http::Request::get("/v1/notifications/stream")
        .header(
            "authorization",
            format!("Bearer {}", token("olga", "acme", &["owner"])),
        )
        .body(axum::body::Body::empty())
        .expect("request");
    let response = tower::ServiceExt::oneshot(countersign_gateway::app(app.state.clone()), request)
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body().into_data_stream();
    let mut seen = String::new();
    let mut until = async |wanted: &str| {
        while !seen.contains(wanted) {
            let frame = tokio::time::timeout(Duration::from_secs(20), body.next())
                .await
                .expect("a frame in time")
                .expect("a frame")
                .expect("bytes");
            seen.push_str(&String::from_utf8_lossy(&frame));
        }
        seen.clone()
    };
    let first = until("event: unread").await;
    assert!(first.contains(r#"{"unread":0}"#), "{first}");
    let submitted = app
        .post(
            "/v1/actions",
            &token("rita", "acme", &["requester"]),
            refund(77),
        )
        .await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    let notifier = Notifier::new(app.store.ledger.clone(), NotifierConfig::default());
    drain(&app, &notifier, &mut None).await;
    let live = until(r#"{"unread":1}"#).await;
    assert!(live.contains("event: notification"), "{live}");
    assert!(live.contains("Approval needed: Refund order 77"), "{live}");
}
