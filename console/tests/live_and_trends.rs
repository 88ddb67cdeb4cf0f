//! Through the console's router (`oneshot`), on both stores: the stats page's decision-latency
//! trend drawn from actions decided on known days with known latencies, and an open drawer's
//! execution log (`/actions/{id}/live`) showing execution requested, started, each progress
//! report and the outcome as they happen.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use chrono::{DateTime, Utc};
use countersign_app::actions;
use countersign_domain::action::{
    Action, ActionCommand, CastVote, CommandContext, RecordExecutionSuccess, StartExecution,
    SubmitAction,
};
use countersign_domain::policy::PolicySnapshot;
use countersign_domain::quorum::Vote;
use countersign_domain::{ActionId, Principal, Role, TenantId, TenantMode, UserId};
use countersign_ledger::Metadata;
use countersign_ledger::on_both_stores;
use countersign_ledger::testing::{eventually, within};
use futures::StreamExt;
use serde_json::json;
use tower::ServiceExt;

use support::*;

fn principal(user: &str, role: &str) -> Principal {
    Principal::new(
        UserId::parse(user).expect("user"),
        [Role::parse(role).expect("role")],
    )
}

fn context(by: &Principal, at: DateTime<Utc>) -> CommandContext {
    CommandContext {
        tenant: TenantId::parse("acme").expect("tenant"),
        by: by.clone(),
        at,
        correlation_id: None,
    }
}

impl Harness {
    async fn execute(&self, id: ActionId, command: ActionCommand) {
        let by = command.context().by.id.clone();
        self.state
            .app
            .ledger()
            .execute::<Action>(
                &id,
                command,
                &Metadata::new(TenantId::parse("acme").expect("tenant"), by),
            )
            .await
            .expect("command recorded");
    }

    /// An action submitted at `submitted_at` and approved by one vote `latency` seconds later
    /// (times are inputs of the commands, as the gateway passes them).
    async fn decided(&self, submitted_at: DateTime<Utc>, latency: i64) {
        let id = ActionId::from_uuid(uuid::Uuid::now_v7());
        let requirements = serde_json::from_value(json!({
            "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }],
            "timeout_seconds": 86_400,
        }))
        .expect("requirements");
        let submission = serde_json::from_value(json!({
            "module": "ops", "capability": "restart", "summary": format!("Restart after {latency} s"),
        }))
        .expect("submission");
        let submit = ActionCommand::SubmitAction(Box::new(SubmitAction {
            context: context(&principal("rita", "requester"), submitted_at),
            action_id: id,
            submission,
            mode: TenantMode::RequireApproval,
            policy: PolicySnapshot::tenant_default(requirements),
            idempotency_key: None,
            rollback_of: None,
        }));
        self.execute(id, submit).await;
        let vote = ActionCommand::CastVote(CastVote {
            context: context(
                &principal("ana", "approver"),
                submitted_at + chrono::Duration::seconds(latency),
            ),
            vote: Vote::Approve,
            comment: None,
        });
        self.execute(id, vote).await;
    }
}

/// 09:00 UTC `days` days before today.
fn morning(days: u64) -> DateTime<Utc> {
    Utc::now()
        .date_naive()
        .checked_sub_days(chrono::Days::new(days))
        .and_then(|day| day.and_hms_opt(9, 0, 0))
        .expect("a day")
        .and_utc()
}

/// The markup of one series (`p50`, `p95`) of the trend chart.
fn series<'a>(body: &'a str, name: &str) -> &'a str {
    let start = body
        .find(&format!("data-series=\"{name}\""))
        .unwrap_or_else(|| panic!("no {name} series in {body}"));
    let rest = &body[start..];
    &rest[..rest.find("</g>").expect("the series' end")]
}

async fn the_latency_trend_draws_each_days_p50_and_p95_of_the_decided_actions(kind: &str) {
    let harness = Harness::start(kind).await;
    let three = morning(3);
    for latency in [60, 600, 120] {
        harness.decided(three, latency).await;
    }
    let one = morning(1);
    for latency in [7200, 30] {
        harness.decided(one, latency).await;
    }
    // Outside the 30 days the chart covers.
    harness.decided(morning(40), 999).await;

    let cookie = harness
        .sign_in(&token("olivia", "acme", &["owner"], hour()))
        .await;
    let page = eventually(within(Duration::from_secs(30)), async || {
        let page = harness.get("/stats", Some(&cookie)).await;
        if page.status == StatusCode::OK && page.body.contains("5 decisions") {
            Ok(page)
        } else {
            Err(format!("{}: {}", page.status, page.body))
        }
    })
    .await;
    let (three, one) = (three.date_naive(), one.date_naive());
    let p50 = series(&page.body, "p50");
    let p95 = series(&page.body, "p95");
    // Nearest rank: of 60, 120 and 600 s the 2nd and the 3rd; of 30 and 7200 s the 1st and 2nd.
    assert!(
        p50.contains(&format!("data-day=\"{three}\" data-seconds=\"120\"")),
        "{p50}"
    );
    assert!(
        p95.contains(&format!("data-day=\"{three}\" data-seconds=\"600\"")),
        "{p95}"
    );
    assert!(
        p50.contains(&format!("data-day=\"{one}\" data-seconds=\"30\"")),
        "{p50}"
    );
    assert!(
        p95.contains(&format!("data-day=\"{one}\" data-seconds=\"7200\"")),
        "{p95}"
    );
    assert!(
        p95.contains(&format!("<title>{one}: p95 2 h 0 min (2 decided)</title>")),
        "{p95}"
    );
    assert_eq!(p50.matches("<circle").count(), 2, "{p50}");
    assert!(!page.body.contains("data-seconds=\"999\""));
    // The older day sits left of the newer one, and the slower p95 above (a smaller y) the p50.
    let x = |series: &str, day: chrono::NaiveDate, attribute: &str| -> f64 {
        let at = series
            .find(&format!("data-day=\"{day}\""))
            .expect("the point");
        let circle = &series[series[..at].rfind("<circle").expect("its circle")..at];
        let start =
            circle.find(&format!("{attribute}=\"")).expect("coordinate") + attribute.len() + 2;
        circle[start..]
            .split('"')
            .next()
            .expect("value")
            .parse()
            .expect("a number")
    };
    assert!(x(p50, three, "cx") < x(p50, one, "cx"));
    assert!(x(p95, one, "cy") < x(p50, one, "cy"));
}
on_both_stores!(the_latency_trend_draws_each_days_p50_and_p95_of_the_decided_actions);

/// Reads SSE messages from `body` until one named `until`; every message as (event, data).
async fn messages_until(
    body: &mut (impl futures::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
    until: &str,
) -> Vec<(String, String)> {
    let mut buffer = String::new();
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let mut event = String::new();
            let mut data = Vec::new();
            for line in message.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    event = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
                }
            }
            if event.is_empty() {
                continue; // a keep-alive comment
            }
            let done = event == until;
            messages.push((event, data.join("\n")));
            if done {
                return messages;
            }
        }
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("no `{until}` within 30 s; got {messages:?}"))
            .unwrap_or_else(|| panic!("the stream ended before `{until}`: {messages:?}"))
            .expect("a chunk");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

async fn an_open_drawer_shows_execution_started_each_step_and_the_outcome_as_they_happen(
    kind: &str,
) {
    let harness = Harness::start(kind).await;
    let rita = actor("rita", "acme", &["requester"]);
    let id = harness
        .submit(&rita, "Refund order 1042", json!({ "order": 1042 }))
        .await;
    for voter in ["ana", "bob"] {
        actions::vote(
            &harness.state.app,
            &actor(voter, "acme", &["approver"]),
            id,
            Vote::Approve,
            None,
        )
        .await
        .expect("vote");
    }
    let cookie = harness
        .sign_in(&token("olivia", "acme", &["owner"], hour()))
        .await;
    let drawer = harness
        .send(
            Request::builder()
                .uri(format!("/actions/{id}"))
                .header(header::COOKIE, &cookie)
                .header("hx-request", "true")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(drawer.status, StatusCode::OK);
    assert!(
        drawer
            .body
            .contains(&format!("sse-connect=\"/actions/{id}/live\"")),
        "the approved action's drawer follows its execution: {}",
        drawer.body
    );

    let response = harness
        .router
        .clone()
        .oneshot(
            Request::builder()
                .method(Method::GET)
                .uri(format!("/actions/{id}/live"))
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"))
    );
    let mut body = response.into_body().into_data_stream();
    let ready = messages_until(&mut body, "ready").await;
    assert_eq!(ready.last().map(|m| m.1.as_str()), Some("approved"));

    // The requester asks; an executor claims the attempt, its capability reports two steps
    // through the progress hub (before the stream has even seen the attempt start), then the
    // outcome is recorded.
    actions::request_execution(&harness.state.app, &rita, id)
        .await
        .expect("execution requested");
    let executor = Principal::new(UserId::parse("executor:test").expect("user"), []);
    harness
        .execute(
            id,
            ActionCommand::StartExecution(StartExecution {
                context: context(&executor, Utc::now()),
                lease_seconds: 60,
                mode: TenantMode::RequireApproval,
            }),
        )
        .await;
    let progress = harness.state.app.progress();
    progress.report(id, json!({ "step": "refunding", "order": 1042 }));
    progress.report(id, json!({ "step": "telling the customer <b>now</b>" }));
    harness
        .execute(
            id,
            ActionCommand::RecordExecutionSuccess(RecordExecutionSuccess {
                context: context(&executor, Utc::now()),
                attempt: 1,
                result: json!({ "refund": "re_1042" }),
                undo_payload: None,
                duration_ms: 42,
            }),
        )
        .await;

    let messages = messages_until(&mut body, "end").await;
    let (end, lines) = messages.split_last().expect("messages");
    assert_eq!(end, &("end".to_owned(), "executed".to_owned()));
    let lines: Vec<&str> = lines
        .iter()
        .filter(|(event, _)| event == "execution")
        .map(|(_, data)| data.as_str())
        .collect();
    let expected = [
        ("ExecutionRequested", "Execution requested by rita"),
        (
            "ExecutionStarted",
            "Execution started (attempt 1) by executor:test",
        ),
        ("progress", "Step: refunding · {"),
        // A report's text is escaped, never markup.
        ("progress", "Step: telling the customer &#60;b&#62;now&#60;"),
        (
            "ExecutionSucceeded",
            "Execution succeeded (attempt 1, 42 ms)",
        ),
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    assert!(
        lines[2].contains("1042") && !lines[3].contains("<b>"),
        "{lines:#?}"
    );
    for (line, (event, text)) in lines.iter().zip(expected) {
        assert!(
            line.starts_with("<li class=\"execution-line")
                && line.contains(&format!("data-event=\"{event}\""))
                && line.contains(text),
            "expected {event} {text:?} in {line}"
        );
    }
    // The stream closes after `end`.
    let after = tokio::time::timeout(Duration::from_secs(30), body.next())
        .await
        .expect("the stream closes");
    assert!(after.is_none(), "{after:?}");

    // A finished action's drawer opens no stream, and asked anyway it ends at once.
    let finished = harness.get(&format!("/actions/{id}"), Some(&cookie)).await;
    assert!(!finished.body.contains("sse-connect=\"/actions/"));
    let again = harness
        .get(&format!("/actions/{id}/live"), Some(&cookie))
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(
        again.body.contains("event: end\ndata: executed"),
        "{}",
        again.body
    );

    // Another tenant's session: the action does not exist.
    let other = harness
        .sign_in(&token("olivia", "globex", &["owner"], hour()))
        .await;
    let refused = harness
        .get(&format!("/actions/{id}/live"), Some(&other))
        .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    let malformed = harness.get("/actions/not-an-id/live", Some(&cookie)).await;
    assert_eq!(malformed.status, StatusCode::NOT_FOUND);
}
on_both_stores!(an_open_drawer_shows_execution_started_each_step_and_the_outcome_as_they_happen);
