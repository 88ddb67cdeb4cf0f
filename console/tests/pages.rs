//! The console's notification, preference and workflow pages through its router (`oneshot`),
//! on both stores, with the notifier and the workflow engine running beside it: the feed of a
//! submission's notification, mark read (one, all) and the unread count, CSRF, preferences
//! saved and read back, a run's timeline, approve on a run, another tenant's ids, escaping.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use countersign_app::actions;
use countersign_app::{Actor, members, notify, workflows};
use countersign_domain::workflow::{RunStatus, WorkflowId};
use countersign_domain::{ActionId, UserId};
use countersign_ledger::on_both_stores;
use countersign_ledger::testing::{eventually, within};
use serde_json::json;

use support::*;

impl Harness {
    /// Adds members to acme's directory (the notifier writes only to members).
    async fn members(&self, people: &[(&str, &str)]) {
        let owner = actor("olivia", "acme", &["owner"]);
        for (user, role) in people {
            let draft = serde_json::from_value(json!({ "roles": [role] })).expect("draft");
            members::create(
                &self.state.app,
                &owner,
                UserId::parse(*user).expect("user"),
                draft,
            )
            .await
            .expect("member added");
        }
    }

    async fn unread(&self, who: &Actor) -> i64 {
        notify::stats(&self.state.app, who)
            .await
            .expect("stats")
            .unread
    }

    /// Waits until `who` has `count` notifications; answers the feed page.
    async fn feed_with(&self, cookie: &str, count: usize) -> Page {
        eventually(within(Duration::from_secs(30)), async || {
            let page = self.get("/notifications", Some(cookie)).await;
            let rows = page.body.matches("<tr id=\"notification-").count();
            if page.status == StatusCode::OK && rows == count {
                Ok(page)
            } else {
                Err(format!("{} rows, status {}", rows, page.status))
            }
        })
        .await
    }
}

/// The id of the first unread notification of a feed page.
fn first_unread_id(page: &Page) -> String {
    let marker = "<tr id=\"notification-";
    let start = page
        .body
        .match_indices(marker)
        .map(|(at, _)| at + marker.len())
        .find(|at| {
            page.body[*at..]
                .split('>')
                .next()
                .is_some_and(|tag| tag.contains("unread"))
        })
        .expect("an unread row");
    page.body[start..]
        .split('"')
        .next()
        .expect("an id")
        .to_owned()
}

async fn a_submission_shows_in_the_feed_and_mark_read_changes_the_unread_count(kind: &str) {
    let harness = Harness::start(kind).await;
    harness
        .members(&[("olivia", "owner"), ("ana", "approver")])
        .await;
    let rita = actor("rita", "acme", &["requester"]);
    let first = harness
        .submit(&rita, "Refund <b>order</b> 1", json!({"order": 1}))
        .await;
    harness
        .submit(&rita, "Refund order 2", json!({"order": 2}))
        .await;
    let ana_actor = actor("ana", "acme", &["approver"]);
    let ana = harness
        .sign_in(&token("ana", "acme", &["approver"], hour()))
        .await;
    let feed = harness.feed_with(&ana, 2).await;
    assert!(feed.body.contains("2 unread"), "{}", feed.body);
    assert!(
        feed.body.contains("Approval needed: Refund order 2"),
        "{}",
        feed.body
    );
    // Newest first.
    let second_at = feed.body.find("Refund order 2").expect("second");
    let first_at = feed
        .body
        .find("Refund &#60;b&#62;order")
        .expect("first, escaped");
    assert!(second_at < first_at, "newest first");
    assert!(!feed.body.contains("<b>order</b>"), "user text is escaped");
    assert!(feed.body.contains(&format!("href=\"/actions/{first}\"")));
    assert_eq!(feed.body.matches("<strong>unread</strong>").count(), 2);
    assert_eq!(
        harness.get("/notifications/badge", Some(&ana)).await.body,
        "2"
    );
    // The nav carries the badge on every page.
    let inbox = harness.get("/inbox", Some(&ana)).await;
    assert!(inbox.body.contains("id=\"notification-badge\""));
    assert!(inbox.body.contains("href=\"/preferences\""));

    // Mark one read.
    let csrf = feed.csrf();
    let id = first_unread_id(&feed);
    let read = harness
        .post(
            &format!("/notifications/{id}/read"),
            Some(&ana),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(read.status, StatusCode::SEE_OTHER, "{}", read.body);
    assert_eq!(read.location(), "/notifications?notice=read");
    assert_eq!(harness.unread(&ana_actor).await, 1);
    assert_eq!(
        harness.get("/notifications/badge", Some(&ana)).await.body,
        "1"
    );
    let after = harness.get("/notifications?notice=read", Some(&ana)).await;
    assert!(after.body.contains("1 unread"));
    assert!(after.body.contains("The notification was marked read."));
    assert_eq!(after.body.matches("<strong>unread</strong>").count(), 1);

    // Without the CSRF token nothing changes.
    let forged = harness
        .post("/notifications/read-all", Some(&ana), &[])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(forged.body.contains("csrf_token_invalid"));
    let forged_one = harness
        .post(
            &format!("/notifications/{}/read", first_unread_id(&after)),
            Some(&ana),
            &[("csrf", "not-the-token")],
        )
        .await;
    assert_eq!(forged_one.status, StatusCode::FORBIDDEN);
    assert_eq!(harness.unread(&ana_actor).await, 1);

    // Someone else's notification answers like a missing one, and stays unread.
    let olivia = actor("olivia", "acme", &["owner"]);
    let theirs = eventually(within(Duration::from_secs(30)), async || {
        let feed = notify::feed(&harness.state.app, &olivia, None, None, false)
            .await
            .map_err(|err| err.to_string())?;
        feed.notifications
            .first()
            .map(|notification| notification.id.clone())
            .ok_or_else(|| "olivia has no notification yet".to_owned())
    })
    .await;
    let before = harness.unread(&olivia).await;
    let other = harness
        .post(
            &format!("/notifications/{theirs}/read"),
            Some(&ana),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!(harness.unread(&olivia).await, before);

    // Mark all read.
    let all = harness
        .post("/notifications/read-all", Some(&ana), &[("csrf", &csrf)])
        .await;
    assert_eq!(all.status, StatusCode::SEE_OTHER);
    assert_eq!(harness.unread(&ana_actor).await, 0);
    let done = harness.get("/notifications", Some(&ana)).await;
    assert!(done.body.contains("0 unread"));
    assert!(!done.body.contains("<strong>unread</strong>"));
    assert!(!done.body.contains("id=\"read-all\""));
    assert_eq!(
        harness.get("/notifications/badge", Some(&ana)).await.body,
        ""
    );
}
on_both_stores!(a_submission_shows_in_the_feed_and_mark_read_changes_the_unread_count);

async fn preferences_are_saved_and_read_back(kind: &str) {
    let harness = Harness::start(kind).await;
    let ana_actor = actor("ana", "acme", &["approver"]);
    let ana = harness
        .sign_in(&token("ana", "acme", &["approver"], hour()))
        .await;
    let page = harness.get("/preferences", Some(&ana)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("The tenant's defaults apply"));
    assert!(page.body.contains("name=\"email.assigned\" id=\"email.assigned\" value=\"on\" aria-label=\"email: assigned\" checked"));
    let csrf = page.csrf();
    let mut fields = vec![("csrf", csrf.as_str())];
    for kind in [
        "in_app.assigned",
        "in_app.decided",
        "in_app.outcome",
        "email.decided",
    ] {
        fields.push((kind, "on"));
    }
    fields.push(("min_risk", "medium"));
    fields.push(("daily_digest", "on"));
    let saved = harness.post("/preferences", Some(&ana), &fields).await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let mine = members::my_preferences(&harness.state.app, &ana_actor)
        .await
        .expect("preferences");
    assert!(mine.custom);
    let preferences = mine.preferences;
    assert!(preferences.in_app.assigned && preferences.in_app.outcome);
    assert!(!preferences.in_app.reminder && !preferences.email.assigned);
    assert!(preferences.email.decided && !preferences.slack.assigned);
    assert_eq!(preferences.min_risk.as_str(), "medium");
    assert!(preferences.daily_digest);
    let back = harness
        .get("/preferences?notice=preferences", Some(&ana))
        .await;
    assert!(back.body.contains("Your own preferences apply."));
    assert!(back.body.contains("Your preferences were saved."));
    assert!(back.body.contains("<option value=\"medium\" selected>"));
    assert!(
        back.body.contains("aria-label=\"email: assigned\" >"),
        "email.assigned is off"
    );

    // A forged POST and a bad value change nothing.
    let forged = harness
        .post("/preferences", Some(&ana), &[("min_risk", "high")])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let bad = harness
        .post(
            "/preferences",
            Some(&ana),
            &[("csrf", &csrf), ("min_risk", "extreme")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        members::my_preferences(&harness.state.app, &ana_actor)
            .await
            .expect("preferences")
            .preferences,
        preferences
    );

    // Back to the tenant's defaults.
    let reset = harness
        .post(
            "/preferences",
            Some(&ana),
            &[("csrf", &csrf), ("reset", "1")],
        )
        .await;
    assert_eq!(reset.status, StatusCode::SEE_OTHER);
    assert!(
        !members::my_preferences(&harness.state.app, &ana_actor)
            .await
            .expect("preferences")
            .custom
    );
}
on_both_stores!(preferences_are_saved_and_read_back);

fn workflow_draft(name: &str) -> countersign_domain::workflow::WorkflowDraft {
    serde_json::from_value(json!({
        "name": name,
        "triggers": ["order.refunded"],
        "steps": [{
            "capability": "webhook.post",
            "summary": "Tell the ledger about {{ event.subject }}",
            "payload": { "order": "{{ event.subject }}" },
            "require_approval": true,
        }],
    }))
    .expect("workflow")
}

/// Creates the workflow in `tenant`, publishes one event and waits for its run to wait for
/// approval; answers the run id.
async fn pending_run(harness: &Harness, tenant: &str, name: &str, event: &str) -> String {
    let owner = actor("olivia", tenant, &["owner"]);
    workflows::create(
        &harness.state.app,
        &owner,
        WorkflowId::parse("refund-to-ledger").expect("id"),
        workflow_draft(name),
    )
    .await
    .expect("workflow created");
    workflows::publish(
        &harness.state.app,
        &owner,
        &json!({
            "specversion": "1.0", "id": event, "source": "shop/orders", "type": "order.refunded",
            "subject": "order-7", "data": { "amount": 700 },
        }),
        "http",
    )
    .await
    .expect("published");
    eventually(within(Duration::from_secs(30)), async || {
        let filter = workflows::RunFilter {
            status: Some(RunStatus::PendingApproval),
            ..workflows::RunFilter::default()
        };
        let page = workflows::list_runs(&harness.state.app, &owner, &filter)
            .await
            .map_err(|err| err.to_string())?;
        page.runs
            .first()
            .map(|run| run.run_id.clone())
            .ok_or_else(|| format!("no pending run in {tenant} yet"))
    })
    .await
}

async fn a_workflow_run_shows_its_timeline_and_approve_records_the_vote(kind: &str) {
    let harness = Harness::start(kind).await;
    let run = pending_run(&harness, "acme", "Refunds <i>tell</i> the ledger", "evt-1").await;
    let olivia = harness
        .sign_in(&token("olivia", "acme", &["owner"], hour()))
        .await;

    let list = harness.get("/workflows", Some(&olivia)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert!(
        list.body
            .contains("Refunds &#60;i&#62;tell&#60;/i&#62; the ledger")
    );
    assert!(!list.body.contains("<i>tell</i>"), "user text is escaped");
    assert!(list.body.contains("order.refunded"));
    assert!(
        list.body.contains("href=\"/workflows\""),
        "nav link for owners"
    );

    let run_page = harness
        .get(&format!("/workflow-runs/{run}"), Some(&olivia))
        .await;
    assert_eq!(run_page.status, StatusCode::OK, "{}", run_page.body);
    assert!(run_page.body.contains("run triggered"));
    assert!(run_page.body.contains("step waits for approval"));
    assert!(
        run_page
            .body
            .contains("<code id=\"correlation-id\">evt-1</code>")
    );
    assert!(run_page.body.contains("pending_approval"));
    assert!(run_page.body.contains("id=\"approve-run\""));
    let action_marker = "<a href=\"/actions/";
    let start = run_page.body.find(action_marker).expect("an action link") + action_marker.len();
    let action: ActionId = run_page.body[start..]
        .split('"')
        .next()
        .expect("id")
        .parse::<uuid::Uuid>()
        .map(ActionId::from_uuid)
        .expect("an action id");

    let runs = harness
        .get("/workflow-runs?status=pending_approval", Some(&olivia))
        .await;
    assert!(runs.body.contains(&run));
    let none = harness
        .get("/workflow-runs?status=completed", Some(&olivia))
        .await;
    assert!(!none.body.contains(&run));
    let other_workflow = harness
        .get("/workflow-runs?workflow=another", Some(&olivia))
        .await;
    assert!(!other_workflow.body.contains(&run));
    let bad = harness
        .get("/workflow-runs?status=sleeping", Some(&olivia))
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Approve: without the token nothing is recorded; with it the vote is.
    let votes = async || -> Vec<String> {
        actions::detail(
            &harness.state.app,
            &actor("olivia", "acme", &["owner"]),
            action,
        )
        .await
        .expect("detail")
        .stages
        .iter()
        .flat_map(|stage| stage.votes.iter().map(|vote| vote.voter.to_string()))
        .collect()
    };
    let forged = harness
        .post(
            &format!("/workflow-runs/{run}/decide"),
            Some(&olivia),
            &[("decision", "approve")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(votes().await.is_empty());
    let csrf = run_page.csrf();
    let approved = harness
        .post(
            &format!("/workflow-runs/{run}/decide"),
            Some(&olivia),
            &[("csrf", &csrf), ("decision", "approve")],
        )
        .await;
    assert_eq!(approved.status, StatusCode::SEE_OTHER, "{}", approved.body);
    assert_eq!(votes().await, ["olivia"]);

    // Disable, then the page says so.
    let disabled = harness
        .post(
            "/workflows/refund-to-ledger/enabled",
            Some(&olivia),
            &[("csrf", &csrf), ("enabled", "false")],
        )
        .await;
    assert_eq!(disabled.status, StatusCode::SEE_OTHER, "{}", disabled.body);
    let page = harness
        .get("/workflows/refund-to-ledger", Some(&olivia))
        .await;
    assert!(
        page.body
            .contains("<dd id=\"workflow-state\">disabled</dd>")
    );
    assert!(page.body.contains("id=\"enable-workflow\""));
    assert!(
        page.body.contains("&#34;triggers&#34;"),
        "the definition as JSON"
    );

    // An approver sees no workflow page.
    let ana = harness
        .sign_in(&token("ana", "acme", &["approver"], hour()))
        .await;
    assert_eq!(
        harness.get("/workflows", Some(&ana)).await.status,
        StatusCode::FORBIDDEN
    );
    assert!(
        !harness
            .get("/inbox", Some(&ana))
            .await
            .body
            .contains("href=\"/workflows\"")
    );
}
on_both_stores!(a_workflow_run_shows_its_timeline_and_approve_records_the_vote);

async fn another_tenants_run_answers_404(kind: &str) {
    let harness = Harness::start(kind).await;
    let theirs = pending_run(&harness, "globex", "Globex refunds", "evt-g").await;
    let olivia = harness
        .sign_in(&token("olivia", "acme", &["owner"], hour()))
        .await;
    let page = harness
        .get(&format!("/workflow-runs/{theirs}"), Some(&olivia))
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(!page.body.contains("Globex refunds"));
    assert_eq!(
        harness
            .get("/workflow-runs/not-a-run", Some(&olivia))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        harness
            .get("/workflows/refund-to-ledger", Some(&olivia))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let csrf = harness.csrf(&olivia).await;
    let decided = harness
        .post(
            &format!("/workflow-runs/{theirs}/decide"),
            Some(&olivia),
            &[("csrf", &csrf), ("decision", "approve")],
        )
        .await;
    assert_eq!(decided.status, StatusCode::NOT_FOUND);
    let globex = actor("olivia", "globex", &["owner"]);
    let detail = workflows::read_run(
        &harness.state.app,
        &globex,
        countersign_domain::workflow::RunId::parse(&theirs).expect("run"),
    )
    .await
    .expect("run");
    assert_eq!(detail.run.status, RunStatus::PendingApproval);
    assert!(
        detail
            .actions
            .iter()
            .all(|action| action.stages.iter().all(|stage| stage.votes.is_empty())),
        "no vote recorded"
    );
}
on_both_stores!(another_tenants_run_answers_404);
