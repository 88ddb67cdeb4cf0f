//! Governance operations through the API: a break-glass review not recorded within the tenant's
//! window escalates once (found by the deadline sweep from the read model, so a restarted
//! worker finds it too), batch execution of approved actions with a per-action result, and the
//! inbox's vote summary. Refusals: settings out of range, bad batch filters, batches over the
//! limit, a stranger directing someone else's actions.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use countersign_app::notify::{Notifier, NotifierConfig};
use countersign_domain::ActionId;
use countersign_executor::{Executor, ExecutorConfig, Processed, Sweeper};
use countersign_ledger::LogCursor;
use countersign_ledger::on_both_stores;
use countersign_ledger::testing::{eventually, within};
use serde_json::{Value, json};
use support::{TestApp, token};

/// A worker that was not running when the break-glass approvals were recorded: it knows of them
/// only what the store holds.
fn fresh_sweeper(app: &TestApp) -> Sweeper {
    let registry = countersign_executor::registry_with(
        Some([9; 32]),
        None,
        None,
        "127.0.0.0/8".parse().expect("a CIDR"),
    )
    .expect("registry");
    Sweeper {
        executor: Executor::new(
            app.store.ledger.clone(),
            registry,
            app.state.app.progress().clone(),
            ExecutorConfig::default(),
        ),
        projections: app.state.app.projections().clone(),
        interval: Duration::from_millis(100),
    }
}

async fn event_types(app: &TestApp, id: &str, bearer: &str) -> Vec<String> {
    let audit = app.get(&format!("/v1/actions/{id}/audit"), bearer).await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.body);
    audit.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|event| event["event_type"].as_str().map(str::to_owned))
        .collect()
}

async fn submit(app: &TestApp, bearer: &str, module: &str, summary: &str) -> String {
    let submitted = app
        .post(
            "/v1/actions",
            bearer,
            json!({ "module": module, "capability": "post", "summary": summary,
                    "payload": { "summary": summary } }),
        )
        .await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    submitted.body["id"].as_str().expect("id").to_owned()
}

async fn add_members(app: &TestApp, owner: &str, members: &[(&str, &[&str])]) {
    for (user, roles) in members {
        let added = app
            .post(
                "/v1/members",
                owner,
                json!({ "user_id": user, "roles": roles }),
            )
            .await;
        assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    }
}

async fn notification_titles(app: &TestApp, user: &str, roles: &[&str]) -> Vec<String> {
    let answer = app
        .get("/v1/notifications", &token(user, "acme", roles))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .filter_map(|n| n["title"].as_str().map(str::to_owned))
        .collect()
}

on_both_stores!(an_unreviewed_break_glass_approval_escalates_once_when_its_review_is_overdue);
async fn an_unreviewed_break_glass_approval_escalates_once_when_its_review_is_overdue(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let owner = token("olga", "acme", &["owner"]);
    let admin = token("adam", "acme", &["admin"]);
    let breaker = token("bea", "acme", &["break_glass"]);
    let requester = token("rita", "acme", &["requester"]);
    let cfo = token("carl", "acme", &["cfo"]);

    // The review window is a bounded tenant setting.
    for refused in [json!(0), json!(2_592_001), json!("1h"), json!(-5)] {
        let mut settings = app.get("/v1/settings", &owner).await.body;
        settings["break_glass_review_seconds"] = refused.clone();
        let answer = app
            .call(
                axum::http::Method::PUT,
                "/v1/settings",
                Some(&owner),
                Some(settings),
            )
            .await;
        assert_eq!(
            (answer.status, answer.body["field"].clone()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!("break_glass_review_seconds")
            ),
            "{refused}: {}",
            answer.body
        );
    }
    let defaults = app.get("/v1/settings", &owner).await;
    assert_eq!(
        defaults.body.get("break_glass_review_seconds"),
        None,
        "the default (a day) is not written: {}",
        defaults.body
    );
    app.set_setting(&owner, "break_glass_review_seconds", json!(1))
        .await;
    let policy = app
        .post(
            "/v1/policies",
            &owner,
            json!({ "id": "ops", "name": "ops", "criteria": { "module": "webhook" },
                    "requirements": { "escalation_role": "cfo",
                        "stages": [{ "rules": [{ "type": "any", "min_approvals": 2 }] }] } }),
        )
        .await;
    assert_eq!(policy.status, StatusCode::CREATED, "{}", policy.body);
    add_members(
        &app,
        &owner,
        &[
            ("olga", &["owner"]),
            ("adam", &["admin"]),
            ("bea", &["break_glass"]),
            ("carl", &["cfo"]),
        ],
    )
    .await;

    // Two emergencies: the first is reviewed in time, the second never is.
    let reviewed = submit(&app, &requester, "webhook", "Restart the API").await;
    let forgotten = submit(&app, &requester, "webhook", "Flush the cache").await;
    for id in [&reviewed, &forgotten] {
        let approved = app
            .post(
                &format!("/v1/actions/{id}/break-glass"),
                &breaker,
                json!({ "justification": "outage" }),
            )
            .await;
        assert_eq!(approved.status, StatusCode::OK, "{}", approved.body);
        let glass = &approved.body["break_glass"];
        let at = chrono::DateTime::parse_from_rfc3339(glass["at"].as_str().expect("at"))
            .expect("a time");
        let due = chrono::DateTime::parse_from_rfc3339(glass["review_due"].as_str().expect("due"))
            .expect("a time");
        assert_eq!(
            due - at,
            chrono::Duration::seconds(1),
            "the tenant's window"
        );
    }
    let upheld = app
        .post(
            &format!("/v1/actions/{reviewed}/review"),
            &admin,
            json!({ "verdict": "upheld" }),
        )
        .await;
    assert_eq!(upheld.status, StatusCode::OK, "{}", upheld.body);
    // Before it is escalated, the escalation role may not review.
    let early = app
        .post(
            &format!("/v1/actions/{forgotten}/review"),
            &cfo,
            json!({ "verdict": "upheld" }),
        )
        .await;
    assert_eq!(early.code(), "not_permitted", "{}", early.body);

    // A worker that starts now finds the overdue review in the store and escalates it.
    let sweeper = fresh_sweeper(&app);
    let forgotten_id = ActionId::parse(&forgotten).expect("an id");
    eventually(within(Duration::from_secs(30)), async || {
        let done = sweeper.sweep().await.map_err(|err| format!("{err:#}"))?;
        if done.contains(&(forgotten_id, Processed::ReviewOverdue)) {
            return Ok(());
        }
        Err(format!("not escalated yet: {done:?}"))
    })
    .await;
    // Once: sweeping again (this worker, or another started later) records nothing more.
    let settled = app.settled_event_count().await;
    for sweeper in [sweeper, fresh_sweeper(&app)] {
        let done = sweeper.sweep().await.expect("sweep");
        assert!(!done.iter().any(|(id, _)| *id == forgotten_id), "{done:?}");
    }
    assert_eq!(app.settled_event_count().await, settled);
    let types = event_types(&app, &forgotten, &owner).await;
    assert_eq!(
        types
            .iter()
            .filter(|t| *t == "BreakGlassReviewOverdue")
            .count(),
        1,
        "{types:?}"
    );
    assert!(
        !event_types(&app, &reviewed, &owner)
            .await
            .iter()
            .any(|t| t == "BreakGlassReviewOverdue"),
        "a reviewed approval never escalates"
    );

    // The detail shows it; the stats count it.
    let detail = app.get(&format!("/v1/actions/{forgotten}"), &owner).await;
    let overdue = &detail.body["break_glass"]["overdue"];
    assert_eq!(overdue["escalation_role"], "cfo", "{}", detail.body);
    assert!(overdue["at"].is_string(), "{}", detail.body);
    eventually(within(Duration::from_secs(30)), async || {
        let stats = app.get("/v1/stats", &owner).await;
        if stats.body["break_glass_overdue"] == 1 && stats.body["break_glass"] == 2 {
            return Ok(());
        }
        Err(format!("not counted: {}", stats.body))
    })
    .await;

    // The escalation role and the owners hear of it; the breaker does not.
    let notifier = Notifier::new(app.store.ledger.clone(), NotifierConfig::default());
    let mut checkpoint: Option<LogCursor> = None;
    app.settled_event_count().await;
    eventually(within(Duration::from_secs(20)), async || {
        match notifier.process_next(&mut checkpoint).await {
            Ok(0) => Ok(()),
            Ok(read) => Err(format!("read {read} more events")),
            Err(err) => Err(format!("{err:#}")),
        }
    })
    .await;
    let overdue_notice = "Break-glass review overdue: Flush the cache";
    for (user, roles) in [("carl", &["cfo"][..]), ("olga", &["owner"][..])] {
        let titles = notification_titles(&app, user, roles).await;
        assert!(
            titles.iter().any(|t| t == overdue_notice),
            "{user}: {titles:?}"
        );
    }
    let titles = notification_titles(&app, "bea", &["break_glass"]).await;
    assert!(!titles.iter().any(|t| t == overdue_notice), "{titles:?}");

    // Escalated, the escalation role reviews it; the decision replay agrees with it all.
    let late = app
        .post(
            &format!("/v1/actions/{forgotten}/review"),
            &cfo,
            json!({ "verdict": "disputed", "comment": "should have paged the CFO" }),
        )
        .await;
    assert_eq!(late.status, StatusCode::OK, "{}", late.body);
    assert_eq!(late.body["break_glass"]["review"]["by"], "carl");
    let replay = countersign_verification::decisions::check_decisions(
        &app.store.ledger,
        Some("acme"),
        |_, _| {},
    )
    .await
    .expect("decision replay");
    assert!(replay.is_ok(), "{:?}", replay.mismatches);
}

fn results_by_id(answer: &Value) -> Vec<(String, String)> {
    answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().expect("id").to_owned(),
                r["result"].as_str().expect("result").to_owned(),
            )
        })
        .collect()
}

on_both_stores!(a_batch_requests_every_approved_action_it_may_direct_with_a_result_each);
async fn a_batch_requests_every_approved_action_it_may_direct_with_a_result_each(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let owner = token("olga", "acme", &["owner"]);
    let rita = token("rita", "acme", &["requester"]);
    let sam = token("sam", "acme", &["requester"]);
    let approve = async |id: &str| {
        let approved = app
            .post(&format!("/v1/actions/{id}/approve"), &owner, json!({}))
            .await;
        assert_eq!(approved.status, StatusCode::OK, "{}", approved.body);
        approved.token().expect("a consistency token")
    };
    let first = submit(&app, &rita, "webhook", "first").await;
    let second = submit(&app, &rita, "webhook", "second").await;
    let other_module = submit(&app, &rita, "mailer", "other module").await;
    let pending = submit(&app, &rita, "webhook", "still pending").await;
    let sams = submit(&app, &sam, "webhook", "sam's").await;
    for id in [&first, &second, &other_module] {
        approve(id).await;
    }
    let written = approve(&sams).await;
    let path = format!("/v1/actions/execute?consistent_with={written}");
    let before = app.settled_event_count().await;

    // Bad filters and batches over the limit are refused whole, recording nothing.
    let many: Vec<String> = (0..101).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for (body, field) in [
        (json!({ "limit": 0 }), "limit"),
        (json!({ "limit": 101 }), "limit"),
        (json!({ "ids": many }), "ids"),
        (json!({ "ids": [first], "module": "webhook" }), "ids"),
        (json!({ "ids": ["not-an-id"] }), "ids[0]"),
        (json!({ "risk": ["extreme"] }), "risk[0]"),
        (json!({ "module": "Not A Slug" }), "module"),
        (json!({ "modules": "webhook" }), ""),
    ] {
        let refused = app.post(&path, &rita, body.clone()).await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            refused.body
        );
        if !field.is_empty() {
            assert_eq!(refused.body["field"], field, "{body}: {}", refused.body);
        }
    }
    assert_eq!(app.settled_event_count().await, before);

    // A dry run previews every approved action of the filter and records nothing.
    let preview = app
        .post(
            &path,
            &rita,
            json!({ "module": "webhook", "dry_run": true }),
        )
        .await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.body);
    let mut expected = vec![
        (first.clone(), "would_request".to_owned()),
        (second.clone(), "would_request".to_owned()),
    ];
    expected.sort();
    let mut got = results_by_id(&preview.body);
    got.sort();
    assert_eq!(got, expected, "{}", preview.body);
    assert_eq!(preview.body["dry_run"], true);
    assert_eq!(preview.body["requested"], 2);
    assert_eq!(app.settled_event_count().await, before);

    // A stranger directs none of rita's actions: each is refused, nothing recorded; a filter
    // reaches only what they requested.
    let stranger = app
        .post(&path, &sam, json!({ "ids": [first, second] }))
        .await;
    assert_eq!(stranger.status, StatusCode::OK, "{}", stranger.body);
    assert_eq!(
        results_by_id(&stranger.body),
        vec![
            (first.clone(), "not_permitted".to_owned()),
            (second.clone(), "not_permitted".to_owned())
        ]
    );
    assert_eq!(app.settled_event_count().await, before);
    let own = app.post(&path, &sam, json!({ "dry_run": true })).await;
    assert_eq!(
        results_by_id(&own.body),
        vec![(sams.clone(), "would_request".to_owned())],
        "{}",
        own.body
    );

    // Named ids each get their answer: requested, not approved, not found.
    let missing = uuid::Uuid::new_v4().to_string();
    let named = app
        .post(&path, &rita, json!({ "ids": [first, pending, missing] }))
        .await;
    assert_eq!(named.status, StatusCode::OK, "{}", named.body);
    assert_eq!(
        results_by_id(&named.body),
        vec![
            (first.clone(), "requested".to_owned()),
            (pending.clone(), "not_approved".to_owned()),
            (missing.clone(), "action_not_found".to_owned()),
        ],
        "{}",
        named.body
    );
    let token = named
        .token()
        .expect("a write answers its consistency token");

    // Then the whole filter: the one asked before is not asked twice.
    let all = app
        .post(
            &format!("/v1/actions/execute?consistent_with={token}"),
            &rita,
            json!({ "module": "webhook", "capability": "post", "risk": ["low", "medium", "high"] }),
        )
        .await;
    let mut got = results_by_id(&all.body);
    got.sort();
    let mut expected = vec![
        (first.clone(), "already_requested".to_owned()),
        (second.clone(), "requested".to_owned()),
    ];
    expected.sort();
    assert_eq!(got, expected, "{}", all.body);
    let detail = app.get(&format!("/v1/actions/{second}"), &rita).await;
    assert_eq!(
        detail.body["execution"]["requested"], true,
        "{}",
        detail.body
    );

    // An owner's batch reaches every approved action, a limit at a time.
    let limited = app
        .post(&path, &owner, json!({ "limit": 1, "dry_run": true }))
        .await;
    assert_eq!(limited.body["matched"], 1, "{}", limited.body);
    assert_eq!(limited.body["more"], true, "{}", limited.body);
}

on_both_stores!(each_inbox_item_carries_its_current_stage_vote_summary);
async fn each_inbox_item_carries_its_current_stage_vote_summary(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let owner = token("olga", "acme", &["owner"]);
    let requester = token("rita", "acme", &["requester"]);
    let policy = app
        .post(
            "/v1/policies",
            &owner,
            json!({ "id": "two", "name": "two approvers", "criteria": { "module": "webhook" },
                    "requirements": { "stages": [{ "rules": [
                        { "type": "role", "role": "approver", "min_approvals": 4 },
                        { "type": "specific_users", "users": ["fay"] }
                    ] }] } }),
        )
        .await;
    assert_eq!(policy.status, StatusCode::CREATED, "{}", policy.body);
    let id = submit(&app, &requester, "webhook", "Two approvals").await;
    let mut token_of_last = None;
    // Not decided yet: two of four approvals, fay's listed vote, one rejection, one abstention.
    for (user, vote) in [
        ("ana", "approve"),
        ("bo", "reject"),
        ("abe", "abstain"),
        ("fay", "approve"),
    ] {
        let voted = app
            .post(
                &format!("/v1/actions/{id}/votes"),
                &token(user, "acme", &["approver"]),
                json!({ "vote": vote }),
            )
            .await;
        assert_eq!(voted.status, StatusCode::OK, "{user}: {}", voted.body);
        token_of_last = voted.token();
    }
    let token_of_last = token_of_last.expect("a consistency token");
    let inbox = app
        .get(
            &format!("/v1/actions?consistent_with={token_of_last}"),
            &owner,
        )
        .await;
    assert_eq!(inbox.status, StatusCode::OK, "{}", inbox.body);
    let item = inbox.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|item| item["id"] == id.as_str())
        .expect("the action is in the inbox");
    assert_eq!(
        item["vote_summary"],
        json!({
            "tally": { "approvals": 2, "rejections": 1, "abstentions": 1 },
            "rules": [
                { "counted": 2, "needed": 4, "satisfied": false },
                { "counted": 1, "needed": 1, "satisfied": true }
            ]
        }),
        "{item}"
    );
}
