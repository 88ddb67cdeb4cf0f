//! What the views show of optional stages and delegation windows: a skipped stage is `skipped`
//! with its reason (not `approved`); a delegate's `eligible=me` inbox holds what their delegators
//! may vote on, marked with `on_behalf_of`, while the window is active; a delegated vote is in
//! the delegator's vote history, cast by the delegate.
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

fn window() -> Value {
    json!((chrono::Utc::now() + chrono::Duration::hours(8)).to_rfc3339())
}

async fn submit(app: &TestApp, bearer: &str, order: u32) -> String {
    let submitted = app
        .post(
            "/v1/actions",
            bearer,
            json!({ "module": "billing", "capability": "refund", "summary": "refund",
                    "payload": { "order": order } }),
        )
        .await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    submitted.body["id"].as_str().expect("id").to_owned()
}

fn consistency(answer: &Answer) -> String {
    answer
        .token()
        .expect("a write answers with a consistency token")
}

on_both_stores!(a_skipped_stage_shows_as_skipped_with_its_reason);
async fn a_skipped_stage_shows_as_skipped_with_its_reason(kind: &str) {
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
                      "rules": [{ "type": "role", "role": "reviewer", "min_approvals": 1 }] }
                ] }
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);

    // An owner approved: the reviewer stage was skipped, and every view of the action says so.
    let skipped = submit(&app, &requester, 1).await;
    let approved = app
        .post(&format!("/v1/actions/{skipped}/approve"), &owner, json!({}))
        .await;
    assert_eq!(approved.body["status"], "approved", "{}", approved.body);
    let detail = app.get(&format!("/v1/actions/{skipped}"), &requester).await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
    let stages = &detail.body["stages"];
    assert_eq!(stages[0]["state"], "approved", "{}", detail.body);
    assert_eq!(stages[0].get("skipped"), None, "{}", detail.body);
    assert_eq!(stages[1]["state"], "skipped", "{}", detail.body);
    assert_eq!(
        stages[1]["skipped"],
        json!({ "kind": "skip_when_held" }),
        "{}",
        detail.body
    );
    assert_eq!(approved.body["stages"], detail.body["stages"]);

    // An approver approved, then a reviewer: both stages approved, none skipped.
    let reviewed = submit(&app, &requester, 2).await;
    let first = app
        .post(
            &format!("/v1/actions/{reviewed}/approve"),
            &token("ann", "acme", &["approver"]),
            json!({}),
        )
        .await;
    assert_eq!(
        first.body["stages"][1]["state"], "current",
        "{}",
        first.body
    );
    let second = app
        .post(
            &format!("/v1/actions/{reviewed}/approve"),
            &token("rob", "acme", &["reviewer"]),
            json!({}),
        )
        .await;
    assert_eq!(second.body["status"], "approved", "{}", second.body);
    for stage in second.body["stages"].as_array().expect("stages") {
        assert_eq!(stage["state"], "approved", "{}", second.body);
        assert_eq!(stage.get("skipped"), None, "{}", second.body);
    }
}

/// The ids of the `eligible=me` inbox of `bearer`, with each item's `on_behalf_of`, at least as
/// new as the write that answered `after`.
async fn eligible(app: &TestApp, bearer: &str, after: &str) -> Vec<(String, Value)> {
    let page = app
        .get(
            &format!("/v1/actions?eligible=me&consistent_with={after}"),
            bearer,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let mut items: Vec<(String, Value)> = page.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            (
                item["id"].as_str().expect("id").to_owned(),
                item.get("on_behalf_of").cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items
}

on_both_stores!(a_delegates_inbox_holds_the_delegators_items_while_the_window_is_active);
async fn a_delegates_inbox_holds_the_delegators_items_while_the_window_is_active(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let owner = token("olga", "acme", &["owner"]);
    let fay = token("fay", "acme", &["finance_ops", "requester"]);
    let bob = token("bob", "acme", &["approver", "requester"]);
    let carl = token("carl", "acme", &["finance_ops"]);
    let rita = token("rita", "acme", &["requester"]);
    let created = app
        .post(
            "/v1/policies",
            &owner,
            json!({ "id": "refunds", "name": "refunds", "requirements": { "stages": [
                { "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 2 }] }
            ] } }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let rited = submit(&app, &rita, 1).await;
    let fays_own = submit(&app, &fay, 2).await;
    let bobs_own = submit(&app, &bob, 3).await;
    let voted_by_fay = submit(&app, &rita, 4).await;
    let vote = app
        .post(
            &format!("/v1/actions/{voted_by_fay}/approve"),
            &fay,
            json!({}),
        )
        .await;
    assert_eq!(vote.status, StatusCode::OK, "{}", vote.body);

    // Before any delegation, bob (no finance role) may vote on nothing.
    assert_eq!(eligible(&app, &bob, &consistency(&vote)).await, []);

    // Fay lends her eligibility to bob and to carl.
    let to_bob = app
        .post(
            "/v1/delegations",
            &fay,
            json!({ "delegate": "bob", "ends_at": window() }),
        )
        .await;
    assert_eq!(to_bob.status, StatusCode::CREATED, "{}", to_bob.body);
    let to_carl = app
        .post(
            "/v1/delegations",
            &fay,
            json!({ "delegate": "carl", "ends_at": window() }),
        )
        .await;
    assert_eq!(to_carl.status, StatusCode::CREATED, "{}", to_carl.body);
    let after = consistency(&to_carl);

    // Bob sees what fay may vote on and has not, marked as hers: not her own request, not the one
    // she voted on, not his own request.
    assert_eq!(
        eligible(&app, &bob, &after).await,
        [(rited.clone(), json!("fay"))],
    );
    // Carl may vote on them himself: his items are his own, unmarked (fay's own request too).
    let mut carls = vec![
        (rited.clone(), Value::Null),
        (fays_own.clone(), Value::Null),
        (bobs_own.clone(), Value::Null),
        (voted_by_fay.clone(), Value::Null),
    ];
    carls.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(eligible(&app, &carl, &after).await, carls);
    // Fay's own view is unchanged by what she lent.
    let mut fays = vec![
        (rited.clone(), Value::Null),
        (bobs_own.clone(), Value::Null),
    ];
    fays.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(eligible(&app, &fay, &after).await, fays);

    // Bob votes in fay's place: the item leaves his inbox (fay's ballot is cast).
    let cast = app
        .post(
            &format!("/v1/actions/{rited}/approve"),
            &bob,
            json!({ "on_behalf_of": "fay" }),
        )
        .await;
    assert_eq!(cast.status, StatusCode::OK, "{}", cast.body);
    assert_eq!(cast.body["status"], "pending", "{}", cast.body);
    assert_eq!(eligible(&app, &bob, &consistency(&cast)).await, []);

    // Once fay revokes, bob's inbox holds nothing of hers.
    let submitted = app
        .post(
            "/v1/actions",
            &rita,
            json!({ "module": "billing", "capability": "refund", "summary": "refund",
                    "payload": { "order": 5 } }),
        )
        .await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    let another = submitted.body["id"].as_str().expect("id").to_owned();
    let before_revoke = eligible(&app, &bob, &consistency(&submitted)).await;
    assert!(
        before_revoke.contains(&(another.clone(), json!("fay"))),
        "{before_revoke:?}"
    );
    let id = to_bob.body["id"].as_str().expect("id");
    let revoked = app
        .call(
            Method::DELETE,
            &format!("/v1/delegations/{id}"),
            Some(&fay),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert_eq!(eligible(&app, &bob, &consistency(&revoked)).await, []);

    // Another tenant's delegate sees none of it.
    let stranger = token("bob", "globex", &["approver"]);
    assert_eq!(eligible(&app, &stranger, &after).await, []);
}

on_both_stores!(a_delegated_vote_is_in_the_delegators_history_cast_by_the_delegate);
async fn a_delegated_vote_is_in_the_delegators_history_cast_by_the_delegate(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let owner = token("olga", "acme", &["owner"]);
    let fay = token("fay", "acme", &["finance_ops"]);
    let bob = token("bob", "acme", &["approver"]);
    let created = app
        .post(
            "/v1/policies",
            &owner,
            json!({ "id": "refunds", "name": "refunds", "requirements": { "stages": [
                { "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 1 }] }
            ] } }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let granted = app
        .post(
            "/v1/delegations",
            &fay,
            json!({ "delegate": "bob", "ends_at": window() }),
        )
        .await;
    assert_eq!(granted.status, StatusCode::CREATED, "{}", granted.body);
    let delegated = submit(&app, &token("rita", "acme", &["requester"]), 1).await;
    let cast = app
        .post(
            &format!("/v1/actions/{delegated}/reject"),
            &bob,
            json!({ "on_behalf_of": "fay", "comment": "not now" }),
        )
        .await;
    assert_eq!(cast.status, StatusCode::OK, "{}", cast.body);
    assert_eq!(cast.body["status"], "rejected", "{}", cast.body);

    let votes = eventually(within(Duration::from_secs(30)), async || {
        let history = app.get("/v1/users/fay/votes", &owner).await;
        match history.body["votes"].as_array() {
            Some(votes) if !votes.is_empty() => Ok(votes.clone()),
            _ => Err(format!("fay's history has no vote yet: {}", history.body)),
        }
    })
    .await;
    assert_eq!(votes.len(), 1, "{votes:?}");
    assert_eq!(votes[0]["action_id"], json!(delegated));
    assert_eq!(votes[0]["voter"], "fay");
    assert_eq!(votes[0]["cast_by"], "bob");
    assert_eq!(votes[0]["vote"], "reject");
    assert_eq!(votes[0]["roles"], json!(["finance_ops"]));
    // The projection that answered has the vote: the delegate's own history does not list it.
    let bobs = app.get("/v1/users/bob/votes", &bob).await;
    assert_eq!(bobs.status, StatusCode::OK, "{}", bobs.body);
    assert_eq!(bobs.body["votes"], json!([]), "{}", bobs.body);

    // A member's own vote names no delegate.
    let own = submit(&app, &token("rita", "acme", &["requester"]), 2).await;
    let voted = app
        .post(&format!("/v1/actions/{own}/approve"), &fay, json!({}))
        .await;
    assert_eq!(voted.status, StatusCode::OK, "{}", voted.body);
    let own_vote = eventually(within(Duration::from_secs(30)), async || {
        let history = app.get("/v1/users/fay/votes", &fay).await;
        history.body["votes"]
            .as_array()
            .and_then(|votes| votes.iter().find(|vote| vote["action_id"] == json!(own)))
            .cloned()
            .ok_or_else(|| format!("fay's own vote not listed yet: {}", history.body))
    })
    .await;
    assert_eq!(own_vote.get("cast_by"), None, "{own_vote}");
}

/// Each item of the `status=all` inbox of `bearer` by id, at least as new as the write that
/// answered `after`.
async fn listed(app: &TestApp, bearer: &str, after: &str) -> Vec<Value> {
    let page = app
        .get(
            &format!("/v1/actions?status=all&consistent_with={after}"),
            bearer,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    page.body["items"].as_array().expect("items").clone()
}

fn item<'a>(items: &'a [Value], id: &str) -> &'a Value {
    items
        .iter()
        .find(|item| item["id"] == id)
        .unwrap_or_else(|| panic!("{id} is not listed: {items:?}"))
}

on_both_stores!(a_break_glass_approval_is_marked_in_the_inbox_with_its_review);
async fn a_break_glass_approval_is_marked_in_the_inbox_with_its_review(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let admin = token("adam", "acme", &["admin"]);
    let breaker = token("bea", "acme", &["break_glass"]);
    let requester = token("rita", "acme", &["requester"]);
    let glassed = submit(&app, &requester, 1).await;
    let ordinary = submit(&app, &requester, 2).await;
    let voted = submit(&app, &requester, 3).await;
    let approved = app
        .post(&format!("/v1/actions/{voted}/approve"), &admin, json!({}))
        .await;
    assert_eq!(approved.body["status"], "approved", "{}", approved.body);

    let broken = app
        .post(
            &format!("/v1/actions/{glassed}/break-glass"),
            &breaker,
            json!({ "justification": "checkout is down" }),
        )
        .await;
    assert_eq!(broken.status, StatusCode::OK, "{}", broken.body);

    // The inbox marks it — who, when, its review due and pending — and nothing else.
    let items = listed(&app, &requester, &consistency(&broken)).await;
    let mark = &item(&items, &glassed)["break_glass"];
    assert_eq!(mark["by"], "bea", "{mark}");
    assert_eq!(mark["review"], "pending", "{mark}");
    assert_eq!(mark["at"], broken.body["break_glass"]["at"], "{mark}");
    assert_eq!(
        mark["review_due"], broken.body["break_glass"]["review_due"],
        "{mark}"
    );
    assert_eq!(item(&items, &glassed)["status"], "approved");
    for other in [&ordinary, &voted] {
        assert_eq!(item(&items, other).get("break_glass"), None, "{items:?}");
    }
    // Filtered to approved actions, it is still marked.
    let approved_only = app.get("/v1/actions?status=approved", &requester).await;
    assert_eq!(
        item(
            approved_only.body["items"].as_array().expect("items"),
            &glassed
        )["break_glass"]["review"],
        "pending",
        "{}",
        approved_only.body
    );

    // Once reviewed, the mark says how.
    let reviewed = app
        .post(
            &format!("/v1/actions/{glassed}/review"),
            &admin,
            json!({ "verdict": "disputed", "comment": "could have waited" }),
        )
        .await;
    assert_eq!(reviewed.status, StatusCode::OK, "{}", reviewed.body);
    let items = listed(&app, &requester, &consistency(&reviewed)).await;
    assert_eq!(
        item(&items, &glassed)["break_glass"]["review"],
        "disputed",
        "{items:?}"
    );
}
