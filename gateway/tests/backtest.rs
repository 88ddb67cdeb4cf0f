//! Policy backtesting through `POST /v1/policies/backtest`: a recorded history replayed under a
//! stricter and a looser draft, bad drafts refused naming the field, another tenant's history
//! never included, nothing recorded by a backtest; streamed with `Accept: text/event-stream`,
//! progress then the same report, refusals before any stream.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use countersign_ledger::on_both_stores;
use serde_json::{Value, json};
use support::{Answer, TestApp, token};

fn policy(id: &str, module: &str, min_approvals: u32) -> Value {
    json!({
        "id": id, "name": format!("{module} approvals"),
        "criteria": { "module": module },
        "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": min_approvals }] }] }
    })
}

fn draft(module: &str, min_approvals: u32) -> Value {
    let mut policy = policy("unused", module, min_approvals);
    policy.as_object_mut().expect("an object").remove("id");
    policy
}

/// Submits an action of `module` and answers its id.
async fn submit(app: &TestApp, requester: &str, module: &str) -> String {
    let submitted = app
        .post(
            "/v1/actions",
            requester,
            json!({ "module": module, "capability": "run", "summary": format!("{module} job"),
                    "payload": { "n": 1 } }),
        )
        .await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    submitted.body["id"].as_str().expect("id").to_owned()
}

async fn approve(app: &TestApp, id: &str, voter: &str) -> Answer {
    let approved = app
        .post(&format!("/v1/actions/{id}/approve"), voter, json!({}))
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.body);
    approved
}

fn range() -> Value {
    let now = chrono::Utc::now();
    json!({
        "from": (now - chrono::Duration::hours(1)).to_rfc3339(),
        "to": (now + chrono::Duration::hours(1)).to_rfc3339(),
    })
}

fn request(changes: Value) -> Value {
    let mut body = range();
    body["changes"] = changes;
    body
}

async fn backtest(app: &TestApp, bearer: &str, consistent_with: &str, body: Value) -> Answer {
    app.post(
        &format!("/v1/policies/backtest?consistent_with={consistent_with}"),
        bearer,
        body,
    )
    .await
}

fn diff_of<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|diff| diff["action_id"] == id)
        .unwrap_or_else(|| panic!("{id} is not listed: {report}"))
}

on_both_stores!(a_draft_replays_the_recorded_ballots_and_reports_what_would_differ);
async fn a_draft_replays_the_recorded_ballots_and_reports_what_would_differ(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let owner = token("olga", "acme", &["owner"]);
    let requester = token("rita", "acme", &["requester"]);
    let ann = token("ann", "acme", &["approver"]);
    for body in [policy("billing", "billing", 1), policy("ops", "ops", 2)] {
        let created = app.post("/v1/policies", &owner, body).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    }
    // Recorded: the billing action approved by one vote, the ops action waiting for a second.
    let billing = submit(&app, &requester, "billing").await;
    let approved = approve(&app, &billing, &ann).await;
    assert_eq!(approved.body["status"], "approved");
    let ops = submit(&app, &requester, "ops").await;
    let waiting = approve(&app, &ops, &ann).await;
    assert_eq!(waiting.body["status"], "pending");
    let ops_vote_at = waiting.body["stages"][0]["votes"][0]["cast_at"].clone();
    assert!(ops_vote_at.is_string(), "{}", waiting.body);
    let seen = waiting.token().expect("a consistency token");

    // Another tenant's history in the same range, under a policy the drafts would change too.
    let globex = token("gus", "globex", &["owner"]);
    let created = app
        .post("/v1/policies", &globex, policy("billing", "billing", 1))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let foreign = submit(&app, &globex, "billing").await;
    let foreign_vote = approve(&app, &foreign, &token("gil", "globex", &["approver"])).await;
    let foreign_seen = foreign_vote.token().expect("a consistency token");

    let before = app.settled_event_count().await;

    // Stricter: billing needs two approvals, so the recorded approval would still be waiting.
    let stricter = backtest(
        &app,
        &owner,
        &foreign_seen,
        request(json!([{ "op": "change", "id": "billing", "policy": draft("billing", 2) }])),
    )
    .await;
    assert_eq!(stricter.status, StatusCode::OK, "{}", stricter.body);
    let report = &stricter.body;
    assert_eq!(report["replayed"], 2, "{report}");
    assert_eq!(report["complete"], true);
    assert_eq!(report["outcome_changed"], 1);
    assert_eq!(report["requirements_changed"], 1);
    assert_eq!(report["policy_changed"], 0);
    assert_eq!(report["transitions"], json!({ "approved_to_waiting": 1 }));
    let diff = diff_of(report, &billing);
    assert_eq!(diff["recorded"]["outcome"], "approved");
    assert_eq!(diff["draft"]["outcome"], "waiting");
    assert_eq!(diff["draft"]["decided_at"], Value::Null);
    assert_eq!(diff["recorded"]["policy_version"], 1);
    assert_eq!(diff["draft"]["policy_version"], 2);
    assert_eq!(
        report["outcomes"]["approved"],
        json!({ "recorded": 1, "draft": 0 })
    );
    assert_eq!(
        report["outcomes"]["waiting"],
        json!({ "recorded": 1, "draft": 2 })
    );
    assert_eq!(report["time_to_decision_recorded"]["decided"], 1);
    assert_eq!(report["time_to_decision_draft"]["decided"], 0);
    assert_eq!(
        report["load"]["members"]["ann"],
        json!({ "recorded": 2, "draft": 2 })
    );
    assert!(
        !report.to_string().contains(&foreign),
        "another tenant's action is never replayed: {report}"
    );

    // Looser: ops needs one approval, so the waiting action is approved at the recorded vote.
    let looser = backtest(
        &app,
        &owner,
        &seen,
        request(json!([{ "op": "change", "id": "ops", "policy": draft("ops", 1) }])),
    )
    .await;
    assert_eq!(looser.status, StatusCode::OK, "{}", looser.body);
    let report = &looser.body;
    assert_eq!(report["transitions"], json!({ "waiting_to_approved": 1 }));
    let diff = diff_of(report, &ops);
    assert_eq!(diff["recorded"]["outcome"], "waiting");
    assert_eq!(diff["draft"]["outcome"], "approved");
    assert_eq!(diff["draft"]["decided_at"], ops_vote_at);
    assert_eq!(report["time_to_decision_draft"]["decided"], 2);

    // Removing the ops policy puts its action under the tenant default (an owner or admin): the
    // approver's recorded vote no longer counts, and the action is listed as another policy's.
    let removed = backtest(
        &app,
        &owner,
        &seen,
        request(json!([{ "op": "remove", "id": "ops" }])),
    )
    .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);
    let diff = diff_of(&removed.body, &ops);
    assert_eq!(diff["policy_changed"], true);
    assert_eq!(diff["draft"]["policy_id"], "default");
    assert_eq!(diff["ignored_votes"], 1);

    // The other tenant sees only its own action.
    let theirs = backtest(&app, &globex, &foreign_seen, request(json!([]))).await;
    assert_eq!(theirs.status, StatusCode::OK, "{}", theirs.body);
    assert_eq!(theirs.body["replayed"], 1, "{}", theirs.body);
    assert_eq!(theirs.body["outcome_changed"], 0);

    // A range with no submissions replays nothing.
    let empty = backtest(
        &app,
        &owner,
        &seen,
        json!({ "from": "2020-01-01T00:00:00Z", "to": "2020-02-01T00:00:00Z" }),
    )
    .await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.body);
    assert_eq!(
        (
            empty.body["replayed"].clone(),
            empty.body["complete"].clone()
        ),
        (json!(0), json!(true))
    );
    assert_eq!(empty.body["actions"], json!([]));

    // A backtest records nothing.
    assert_eq!(app.settled_event_count().await, before);
}

on_both_stores!(bad_drafts_and_callers_are_refused_naming_the_field);
async fn bad_drafts_and_callers_are_refused_naming_the_field(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let owner = token("olga", "acme", &["owner"]);
    let created = app
        .post("/v1/policies", &owner, policy("billing", "billing", 1))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let cases = [
        (
            request(json!([{ "op": "change", "id": "nope", "policy": draft("ops", 1) }])),
            "changes[0].id",
        ),
        (
            request(json!([{ "op": "add", "id": "billing", "policy": draft("billing", 1) }])),
            "changes[0].id",
        ),
        (
            request(json!([
                { "op": "remove", "id": "billing" },
                { "op": "remove", "id": "billing" }
            ])),
            "changes[1].id",
        ),
        (
            request(json!([{ "op": "add", "id": "new", "policy": {
                "name": "  ", "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }] }
            } }])),
            "changes[0].policy.name",
        ),
        (
            request(json!([{ "op": "change", "id": "billing" }])),
            "changes[0].policy",
        ),
        (
            json!({ "from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z" }),
            "to",
        ),
        (
            {
                let mut body = range();
                body["time_limit_seconds"] = json!(600);
                body
            },
            "time_limit_seconds",
        ),
    ];
    for (body, field) in cases {
        let refused = app.post("/v1/policies/backtest", &owner, body).await;
        assert_eq!(
            (
                refused.status,
                refused.code(),
                refused.body["field"].as_str()
            ),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                Some(field)
            ),
            "{}",
            refused.body
        );
    }
    // A malformed rule is refused by the JSON reader, naming its path.
    let malformed = app
        .post(
            "/v1/policies/backtest",
            &owner,
            request(json!([{ "op": "add", "id": "new", "policy": {
                "name": "zero", "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 0 }] }] }
            } }])),
        )
        .await;
    assert_eq!(
        malformed.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        malformed.body
    );
    assert!(
        malformed.body["field"]
            .as_str()
            .is_some_and(|field| field.starts_with("changes[0].policy.requirements")),
        "{}",
        malformed.body
    );
    // Requesters may not backtest.
    let forbidden = app
        .post(
            "/v1/policies/backtest",
            &token("rita", "acme", &["requester"]),
            request(json!([])),
        )
        .await;
    assert_eq!(
        (forbidden.status, forbidden.code()),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{}",
        forbidden.body
    );
}

/// One server-sent event: its name and its JSON data.
type Sse = (String, Value);

/// `POST /v1/policies/backtest` with `Accept: text/event-stream`; the answer's body, when it is
/// an event stream, read to its end and split into events (keep-alive comments skipped).
async fn streamed(
    app: &TestApp,
    bearer: &str,
    consistent_with: &str,
    body: &str,
) -> (Answer, Vec<Sse>) {
    let request = Request::post(format!(
        "/v1/policies/backtest?consistent_with={consistent_with}"
    ))
    .header("authorization", format!("Bearer {bearer}"))
    .header("content-type", "application/json")
    .header("accept", "text/event-stream")
    .body(Body::from(body.to_owned()))
    .expect("request");
    let answer = tokio::time::timeout(Duration::from_secs(60), app.raw(request))
        .await
        .expect("the stream ends within a minute");
    let mut events = Vec::new();
    if answer
        .headers
        .get("content-type")
        .map(|value| value.as_bytes())
        == Some(b"text/event-stream")
    {
        let text = answer.body.as_str().expect("an event stream is text");
        for block in text.split("\n\n").filter(|block| !block.trim().is_empty()) {
            let (mut name, mut data) = (String::from("message"), String::new());
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    value.trim().clone_into(&mut name);
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim());
                }
            }
            if !data.is_empty() {
                events.push((name, serde_json::from_str(&data).expect("JSON data")));
            }
        }
    }
    (answer, events)
}

/// The report without `as_of` (the moment each backtest ran).
fn timeless(mut report: Value) -> Value {
    report
        .as_object_mut()
        .expect("a report is an object")
        .remove("as_of");
    report
}

/// Checks an event stream: `progress` events (replayed so far, never more than `of`, never going
/// back), then exactly one `report`, which it answers.
fn report_after_progress(events: &[Sse], selected: u64) -> Value {
    let Some(((last, report), progress)) = events.split_last() else {
        panic!("an empty stream");
    };
    assert_eq!(
        last, "report",
        "the stream ends with the report: {events:?}"
    );
    assert!(
        !progress.is_empty(),
        "progress comes before the report: {events:?}"
    );
    let mut replayed = 0;
    for (name, data) in progress {
        assert_eq!(name, "progress", "{events:?}");
        let now = data["replayed"].as_u64().expect("replayed");
        assert!(now >= replayed && now <= selected, "{events:?}");
        assert_eq!(data["of"], selected, "{events:?}");
        assert!(data["elapsed_ms"].is_u64(), "{events:?}");
        replayed = now;
    }
    assert_eq!(
        progress[0].1["replayed"], 0,
        "the first progress comes once the actions are selected"
    );
    report.clone()
}

on_both_stores!(a_streamed_backtest_sends_progress_then_the_report_of_the_plain_call);
async fn a_streamed_backtest_sends_progress_then_the_report_of_the_plain_call(kind: &str) {
    const ACTIONS: u64 = 240;
    const APPROVED: usize = 6;
    let app = TestApp::spawn(kind).await;
    let owner = token("olga", "acme", &["owner"]);
    let requester = token("rita", "acme", &["requester"]);
    let ann = token("ann", "acme", &["approver"]);
    let created = app
        .post("/v1/policies", &owner, policy("billing", "billing", 1))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let mut ids = Vec::new();
    while (ids.len() as u64) < ACTIONS {
        ids.extend(
            futures::future::join_all((0..20).map(|_| submit(&app, &requester, "billing"))).await,
        );
    }
    let mut seen = None;
    for id in &ids[..APPROVED] {
        seen = approve(&app, id, &ann).await.token();
    }
    let seen = seen.expect("a consistency token");
    let before = app.settled_event_count().await;

    // The stricter draft, plain and streamed: the same report, after progress.
    let body = request(json!([{ "op": "change", "id": "billing", "policy": draft("billing", 2) }]));
    let plain = backtest(&app, &owner, &seen, body.clone()).await;
    assert_eq!(plain.status, StatusCode::OK, "{}", plain.body);
    assert_eq!(plain.body["replayed"], ACTIONS, "{}", plain.body);
    assert_eq!(
        plain.body["transitions"],
        json!({ "approved_to_waiting": APPROVED })
    );
    let (answer, events) = streamed(&app, &owner, &seen, &body.to_string()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.headers["content-type"], "text/event-stream");
    let report = report_after_progress(&events, ACTIONS);
    assert!(report["as_of"].is_string(), "{report}");
    assert_eq!(timeless(report), timeless(plain.body.clone()));

    // Streamed, the time limit may be longer than a plain call's 25 s.
    let mut longer = body.clone();
    longer["time_limit_seconds"] = json!(600);
    let (answer, events) = streamed(&app, &owner, &seen, &longer.to_string()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let report = report_after_progress(&events, ACTIONS);
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(timeless(report), timeless(plain.body.clone()));

    // A range with no submissions: progress of nothing, then the empty report.
    let empty = json!({ "from": "2020-01-01T00:00:00Z", "to": "2020-02-01T00:00:00Z" });
    let (answer, events) = streamed(&app, &owner, &seen, &empty.to_string()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let report = report_after_progress(&events, 0);
    assert_eq!(
        (report["replayed"].clone(), report["complete"].clone()),
        (json!(0), json!(true))
    );

    // Refusals of the request come before any stream, as ordinary problems.
    let mut too_long = body.clone();
    too_long["time_limit_seconds"] = json!(601);
    let refusals = [
        (
            &owner,
            too_long.to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("time_limit_seconds"),
        ),
        (
            &owner,
            json!({ "from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z" }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("to"),
        ),
        (
            &owner,
            request(json!([{ "op": "change", "id": "nope", "policy": draft("ops", 1) }]))
                .to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("changes[0].id"),
        ),
        (
            &owner,
            "{\"from\": ".to_owned(),
            StatusCode::BAD_REQUEST,
            Some("from"),
        ),
        (&requester, body.to_string(), StatusCode::FORBIDDEN, None),
    ];
    for (bearer, refused_body, status, field) in refusals {
        let (refused, events) = streamed(&app, bearer, &seen, &refused_body).await;
        assert_eq!(
            (refused.status, refused.headers["content-type"].as_bytes()),
            (status, b"application/problem+json".as_slice()),
            "{refused_body}: {}",
            refused.body
        );
        assert!(events.is_empty(), "{events:?}");
        assert!(!refused.code().is_empty(), "{}", refused.body);
        assert_eq!(refused.body["field"].as_str(), field, "{}", refused.body);
    }

    // Backtests record nothing, streamed or not.
    assert_eq!(app.settled_event_count().await, before);
}
