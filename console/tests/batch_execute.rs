//! "Run approved" (batch execution, reference 004) in the console, on both stores: through the
//! router with plain form posts (no JavaScript) — a preview that records nothing, a run that
//! records one `ExecutionRequested` per approved action it shows, refusals of actions the member
//! may not direct, bad form values refused whole, a forged form — and in Debian's headless
//! Chromium (fantoccini) against the same router served on a loopback port: the navigation link,
//! Preview, then Run all.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

#[path = "../../cli/tests/support/browser.rs"]
mod browser;
mod support;

use std::time::Duration;

use axum::http::StatusCode;
use countersign_app::actions::{self, Submitted};
use countersign_app::{Actor, App};
use countersign_domain::ActionId;
use countersign_domain::quorum::Vote;
use countersign_domain::risk::RiskLevel;
use countersign_domain::submission::Submission;
use countersign_ledger::on_both_stores;
use countersign_ledger::testing::{eventually, settled_log, within};
use countersign_projections::Projection;
use fantoccini::Locator;
use serde_json::json;

use support::*;

/// Every event of the log, once all committed events are readable: (type, aggregate id).
async fn events(app: &App) -> Vec<(String, String)> {
    settled_log(app.ledger())
        .await
        .into_iter()
        .map(|event| (event.event_type, event.aggregate_id))
        .collect()
}

/// The ids of the actions asked to run, in log order.
async fn execution_requests(app: &App) -> Vec<String> {
    events(app)
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "ExecutionRequested")
        .map(|(_, id)| id)
        .collect()
}

async fn submit_to(harness: &Harness, by: &Actor, module: &str, summary: &str) -> ActionId {
    let submission: Submission = serde_json::from_value(json!({
        "module": module, "capability": "send", "summary": summary, "payload": {"to": summary},
    }))
    .expect("submission");
    match actions::submit(&harness.state.app, by, submission, None)
        .await
        .expect("submitted")
    {
        Submitted::New(written) | Submitted::Existing(written) => written.value.id,
    }
}

/// Approves `id` with two admins' votes (refunds need two; the default policy, one); waits until
/// the inbox's read model shows it approved.
async fn approve(harness: &Harness, id: ActionId) {
    let app = &harness.state.app;
    let mut cursor = None;
    for voter in ["ada", "abe"] {
        // A second vote on an action one admin's approval decided is refused, changing nothing.
        if let Ok(written) = actions::vote(
            app,
            &actor(voter, "acme", &["admin"]),
            id,
            Vote::Approve,
            None,
        )
        .await
        {
            cursor = written.cursor.or(cursor);
        }
    }
    let owner = actor("olivia", "acme", &["owner"]);
    let detail = actions::detail(app, &owner, id).await.expect("detail");
    assert_eq!(detail.status.to_string(), "approved", "{id}");
    eventually(within(Duration::from_secs(30)), async || {
        app.wait_for(Projection::Actions, cursor)
            .await
            .map_err(|err| err.to_string())
    })
    .await;
}

/// The `data-result` of each row of a results page, by action id, in page order.
fn rows(body: &str) -> Vec<(String, String)> {
    body.split("class=\"execute-row")
        .skip(1)
        .map(|row| {
            let attribute = |name: &str| {
                let marker = format!("{name}=\"");
                let start = row.find(&marker).expect(name) + marker.len();
                row[start..].split('"').next().expect("value").to_owned()
            };
            (
                attribute("id").trim_start_matches("execute-").to_owned(),
                attribute("data-result"),
            )
        })
        .collect()
}

fn sorted(mut pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    pairs.sort();
    pairs
}

on_both_stores!(run_approved_previews_runs_and_refuses_from_a_plain_form);
async fn run_approved_previews_runs_and_refuses_from_a_plain_form(kind: &str) {
    let harness = Harness::start(kind).await;
    let app = &harness.state.app;
    let rita = actor("rita", "acme", &["requester"]);
    let sam = actor("sam", "acme", &["requester"]);
    let first = harness
        .submit(&rita, "Refund order 1", json!({ "order": 1 }))
        .await;
    let second = harness
        .submit(&rita, "Refund order 2", json!({ "order": 2 }))
        .await;
    let pending = harness
        .submit(&rita, "Refund order 3", json!({ "order": 3 }))
        .await;
    let mail = submit_to(&harness, &rita, "mailer", "newsletter").await;
    let sams = harness
        .submit(&sam, "Refund order 4", json!({ "order": 4 }))
        .await;
    for id in [first, second, mail, sams] {
        approve(&harness, id).await;
    }
    let level = actions::detail(app, &rita, first)
        .await
        .expect("detail")
        .risk
        .level;
    let other_level = [RiskLevel::Low, RiskLevel::Medium, RiskLevel::High]
        .into_iter()
        .find(|other| *other != level)
        .expect("another level");

    let olivia = harness
        .sign_in(&token("olivia", "acme", &["owner"], hour()))
        .await;
    let form = harness.get("/execute", Some(&olivia)).await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    assert!(
        form.body
            .contains("href=\"/execute\" aria-current=\"page\"")
    );
    assert!(!form.body.contains("id=\"execute-results\""));
    let csrf = form.csrf();
    let before = events(app).await;

    // Bad values are refused whole, naming the field, and record nothing.
    for (fields, field) in [
        (vec![("mode", "preview"), ("limit", "0")], "limit"),
        (vec![("mode", "run"), ("limit", "101")], "limit"),
        (vec![("mode", "run"), ("limit", "many")], "limit"),
        (vec![("mode", "run"), ("risk", "extreme")], "risk"),
        (vec![("mode", "run"), ("module", "Not A Slug")], "module"),
        (vec![("mode", "run"), ("ids", "not-an-id")], "ids"),
        (
            vec![
                ("mode", "run"),
                ("module", "billing"),
                ("ids", &first.to_string()),
            ],
            "ids",
        ),
        (vec![("mode", "everything")], "mode"),
    ] {
        let mut posted = vec![("csrf", csrf.as_str())];
        posted.extend(fields.iter().copied());
        let refused = harness.post("/execute", Some(&olivia), &posted).await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{fields:?}: {}",
            refused.body
        );
        assert!(
            refused.body.contains(field),
            "{fields:?} does not name {field}: {}",
            refused.body
        );
    }
    // A forged form (no CSRF token) is refused too.
    let forged = harness
        .post(
            "/execute",
            Some(&olivia),
            &[("mode", "run"), ("module", "billing")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
    assert_eq!(
        events(app).await,
        before,
        "a refused form recorded something"
    );

    // Preview: every approved refund (the owner reaches sam's too), none of the pending one or
    // the other module; nothing recorded.
    let preview = harness
        .post(
            "/execute",
            Some(&olivia),
            &[("csrf", &csrf), ("mode", "preview"), ("module", "billing")],
        )
        .await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.body);
    assert!(
        preview.body.contains("data-dry-run=\"true\""),
        "{}",
        preview.body
    );
    assert!(preview.body.contains("nothing was recorded"));
    assert_eq!(
        sorted(rows(&preview.body)),
        sorted(
            [first, second, sams]
                .map(|id| (id.to_string(), "would_request".to_owned()))
                .to_vec()
        ),
        "{}",
        preview.body
    );
    assert!(!preview.body.contains(&pending.to_string()));
    assert!(!preview.body.contains(&mail.to_string()));
    // Each row says what the action does; the form is shown again as it was filled in.
    for text in [
        "Refund order 1",
        "Refund order 4",
        "billing/refund",
        ">sam<",
    ] {
        assert!(preview.body.contains(text), "{text}: {}", preview.body);
    }
    assert!(preview.body.contains("value=\"billing\""));
    // A risk level none of them has reaches nothing; theirs reaches them all.
    let none = harness
        .post(
            "/execute",
            Some(&olivia),
            &[
                ("csrf", &csrf),
                ("mode", "preview"),
                ("module", "billing"),
                ("risk", other_level.as_str()),
            ],
        )
        .await;
    assert!(rows(&none.body).is_empty(), "{}", none.body);
    assert!(none.body.contains("No approved action matches."));
    let theirs = harness
        .post(
            "/execute",
            Some(&olivia),
            &[
                ("csrf", &csrf),
                ("mode", "preview"),
                ("module", "billing"),
                ("risk", level.as_str()),
                ("limit", "2"),
            ],
        )
        .await;
    assert_eq!(rows(&theirs.body).len(), 2, "{}", theirs.body);
    assert!(theirs.body.contains("More approved actions match"));
    assert_eq!(events(app).await, before, "a preview recorded something");

    // A requester names rita's actions: each is refused with the reason, nothing recorded; a
    // requester's filter reaches only what they requested.
    let sam_session = harness
        .sign_in(&token("sam", "acme", &["requester"], hour()))
        .await;
    let sam_page = harness.get("/execute", Some(&sam_session)).await;
    assert_eq!(sam_page.status, StatusCode::OK, "{}", sam_page.body);
    assert!(
        !sam_page.body.contains("href=\"/execute\""),
        "the navigation links the page for owners and admins only"
    );
    assert!(
        sam_page
            .body
            .contains("You reach only the approved actions you requested.")
    );
    let sam_csrf = sam_page.csrf();
    let names = format!("{first}\n{second}");
    let stranger = harness
        .post(
            "/execute",
            Some(&sam_session),
            &[("csrf", &sam_csrf), ("mode", "run"), ("ids", &names)],
        )
        .await;
    assert_eq!(stranger.status, StatusCode::OK, "{}", stranger.body);
    assert_eq!(
        rows(&stranger.body),
        [first, second]
            .map(|id| (id.to_string(), "not_permitted".to_owned()))
            .to_vec(),
        "{}",
        stranger.body
    );
    assert!(
        stranger
            .body
            .contains("Refused: you may not direct this action")
    );
    let own = harness
        .post(
            "/execute",
            Some(&sam_session),
            &[("csrf", &sam_csrf), ("mode", "preview")],
        )
        .await;
    assert_eq!(
        rows(&own.body),
        vec![(sams.to_string(), "would_request".to_owned())],
        "{}",
        own.body
    );
    // An auditor directs nothing: their filter reaches nothing.
    let viewer = harness
        .sign_in(&token("audrey", "acme", &["auditor"], hour()))
        .await;
    let viewer_csrf = harness.get("/execute", Some(&viewer)).await.csrf();
    let nothing = harness
        .post(
            "/execute",
            Some(&viewer),
            &[("csrf", &viewer_csrf), ("mode", "run")],
        )
        .await;
    assert_eq!(nothing.status, StatusCode::OK, "{}", nothing.body);
    assert!(rows(&nothing.body).is_empty(), "{}", nothing.body);
    assert_eq!(events(app).await, before, "a refusal recorded something");

    // Run all: one ExecutionRequested per approved action shown, each row `requested`.
    let run = harness
        .post(
            "/execute",
            Some(&olivia),
            &[("csrf", &csrf), ("mode", "run"), ("module", "billing")],
        )
        .await;
    assert_eq!(run.status, StatusCode::OK, "{}", run.body);
    assert!(run.body.contains("data-dry-run=\"false\""));
    let shown = sorted(rows(&run.body));
    assert_eq!(
        shown,
        sorted(
            [first, second, sams]
                .map(|id| (id.to_string(), "requested".to_owned()))
                .to_vec()
        ),
        "{}",
        run.body
    );
    let mut requested = execution_requests(app).await;
    requested.sort();
    let mut expected: Vec<String> = shown.into_iter().map(|(id, _)| id).collect();
    expected.sort();
    assert_eq!(requested, expected);

    // Run again (once the read model has them): nothing is asked twice.
    eventually(within(Duration::from_secs(30)), async || {
        app.wait_for(Projection::Actions, None)
            .await
            .map_err(|err| err.to_string())?;
        let again = harness
            .post(
                "/execute",
                Some(&olivia),
                &[("csrf", &csrf), ("ids", &names), ("mode", "run")],
            )
            .await;
        let got = rows(&again.body);
        if got.iter().all(|(_, result)| result == "already_requested") && got.len() == 2 {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    assert_eq!(execution_requests(app).await.len(), 3);
}

/// The page in a real browser: the owner's navigation links it; Preview lists the approved
/// actions and records nothing; Run all records one request per row shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_approved_in_the_browser() {
    let harness = Harness::start("sqlite").await;
    let app = harness.state.app.clone();
    let rita = actor("rita", "acme", &["requester"]);
    let first = harness
        .submit(&rita, "Refund order 1", json!({ "order": 1 }))
        .await;
    let second = harness
        .submit(&rita, "Refund order 2", json!({ "order": 2 }))
        .await;
    let mail = submit_to(&harness, &rita, "mailer", "newsletter").await;
    for id in [first, second, mail] {
        approve(&harness, id).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let router = harness.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let driver = browser::Driver::start();
    let client = driver.session().await;
    browser::sign_in(&client, &base, &token("olivia", "acme", &["owner"], hour())).await;
    browser::wait_for(&client, "nav a[href=\"/execute\"]")
        .await
        .click()
        .await
        .expect("the navigation link");
    browser::wait_for(&client, "#execute-module")
        .await
        .send_keys("billing")
        .await
        .expect("typed");
    let before = events(&app).await;
    browser::wait_for(&client, "#execute-preview")
        .await
        .click()
        .await
        .expect("preview");
    browser::wait_for(&client, "#execute-results[data-dry-run=\"true\"]").await;
    browser::screenshot(&client, "run-approved-preview").await;
    let results = |wanted: &'static str| {
        let client = client.clone();
        async move {
            let mut got = Vec::new();
            for row in client
                .find_all(Locator::Css("tr.execute-row"))
                .await
                .expect("rows")
            {
                let id = row.attr("id").await.expect("id").expect("an id");
                let result = row
                    .attr("data-result")
                    .await
                    .expect("result")
                    .expect("a result");
                assert_eq!(result, wanted, "{id}");
                got.push(id.trim_start_matches("execute-").to_owned());
            }
            got.sort();
            got
        }
    };
    let mut expected = vec![first.to_string(), second.to_string()];
    expected.sort();
    assert_eq!(results("would_request").await, expected);
    assert_eq!(events(&app).await, before, "a preview recorded something");

    // The form kept the module: Run all asks exactly the rows shown to run.
    browser::wait_for(&client, "#execute-run")
        .await
        .click()
        .await
        .expect("run");
    browser::wait_for(&client, "#execute-results[data-dry-run=\"false\"]").await;
    browser::screenshot(&client, "run-approved-run").await;
    assert_eq!(results("requested").await, expected);
    let mut requested = execution_requests(&app).await;
    requested.sort();
    assert_eq!(requested, expected);
    client.close().await.expect("closed");
}
