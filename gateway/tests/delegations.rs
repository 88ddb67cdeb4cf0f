//! Delegation windows through the API: a delegate's vote is the delegator's ballot, "cast by B
//! for A"; never without an active window, never chained, never twice in a stage, never on one's
//! own request; owners list every delegation, the delegator revokes.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use axum::http::{Method, StatusCode};
use countersign_ledger::on_both_stores;
use serde_json::{Value, json};
use support::{TestApp, token};

fn window() -> Value {
    json!((chrono::Utc::now() + chrono::Duration::hours(8)).to_rfc3339())
}

on_both_stores!(a_delegate_votes_in_the_delegators_place_within_the_rules);
async fn a_delegate_votes_in_the_delegators_place_within_the_rules(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let owner = token("olga", "acme", &["owner"]);
    let fay = token("fay", "acme", &["finance_ops"]);
    let fin = token("fin", "acme", &["finance_ops"]);
    let bob = token("bob", "acme", &["finance_ops", "requester"]);
    let carl = token("carl", "acme", &["approver"]);
    let created = app
        .post(
            "/v1/policies",
            &owner,
            json!({ "id": "payouts", "name": "payouts", "requirements": { "stages": [
                { "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 2 }] }
            ] } }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let submit = async |bearer: &str| {
        let submitted = app
            .post(
                "/v1/actions",
                bearer,
                json!({ "module": "payouts", "capability": "pause", "summary": "pause payout",
                        "payload": { "payout": 7 } }),
            )
            .await;
        assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
        submitted.body["id"].as_str().expect("id").to_owned()
    };
    let id = submit(&token("rita", "acme", &["requester"])).await;
    let vote_for = async |bearer: &str, action: &str, delegator: &str| {
        app.post(
            &format!("/v1/actions/{action}/approve"),
            bearer,
            json!({ "on_behalf_of": delegator }),
        )
        .await
    };

    // Without a delegation, nobody votes in another's place.
    let refused = vote_for(&bob, &id, "fay").await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "no_active_delegation"),
        "{}",
        refused.body
    );

    // Fay lends her eligibility to bob; bob lends his to carl.
    let granted = app
        .post(
            "/v1/delegations",
            &fay,
            json!({ "delegate": "bob", "ends_at": window() }),
        )
        .await;
    assert_eq!(granted.status, StatusCode::CREATED, "{}", granted.body);
    assert_eq!(granted.body["delegator"]["id"], "fay");
    assert_eq!(granted.body["delegator"]["roles"], json!(["finance_ops"]));
    let fays = granted.body["id"].as_str().expect("id").to_owned();
    let chained = app
        .post(
            "/v1/delegations",
            &bob,
            json!({ "delegate": "carl", "ends_at": window() }),
        )
        .await;
    assert_eq!(chained.status, StatusCode::CREATED, "{}", chained.body);
    let to_self = app
        .post(
            "/v1/delegations",
            &fay,
            json!({ "delegate": "fay", "ends_at": window() }),
        )
        .await;
    assert_eq!(
        (to_self.status, to_self.body["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("delegate")),
        "{}",
        to_self.body
    );

    // Bob votes for fay: her ballot, cast by him.
    let voted = vote_for(&bob, &id, "fay").await;
    assert_eq!(voted.status, StatusCode::OK, "{}", voted.body);
    assert_eq!(voted.body["status"], "pending");
    let ballot = &voted.body["stages"][0]["votes"][0];
    assert_eq!(
        (ballot["voter"].clone(), ballot["cast_by"].clone()),
        (json!("fay"), json!("bob")),
        "{}",
        voted.body
    );
    // Never chained: carl holds bob's delegation, not fay's.
    let chain = vote_for(&carl, &id, "fay").await;
    assert_eq!(chain.code(), "no_active_delegation", "{}", chain.body);
    // Never twice in a stage: bob's own vote after the one for fay.
    let twice = app
        .post(&format!("/v1/actions/{id}/approve"), &bob, json!({}))
        .await;
    assert_eq!(
        (twice.status, twice.code()),
        (StatusCode::CONFLICT, "already_voted_in_stage"),
        "{}",
        twice.body
    );
    // Never on one's own request: bob's action, voted for fay by bob.
    let own = submit(&bob).await;
    let self_vote = vote_for(&bob, &own, "fay").await;
    assert_eq!(
        (self_vote.status, self_vote.code()),
        (StatusCode::FORBIDDEN, "self_approval_forbidden"),
        "{}",
        self_vote.body
    );

    // Fay's place counted once: one more finance vote approves.
    let approved = app
        .post(&format!("/v1/actions/{id}/approve"), &fin, json!({}))
        .await;
    assert_eq!(approved.body["status"], "approved", "{}", approved.body);
    let audit = app.get(&format!("/v1/actions/{id}/audit"), &owner).await;
    let delegated: Vec<&Value> = audit.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|event| event["content"]["on_behalf_of"] == "fay")
        .collect();
    assert_eq!(delegated.len(), 1, "{}", audit.body);
    assert_eq!(delegated[0]["actor"], "bob");

    // Owners list every delegation; others the ones they give or receive.
    let all = app.get("/v1/delegations", &owner).await;
    assert_eq!(
        all.body["delegations"].as_array().map(Vec::len),
        Some(2),
        "{}",
        all.body
    );
    let theirs = app.get("/v1/delegations", &fin).await;
    assert_eq!(theirs.body["delegations"], json!([]), "{}", theirs.body);

    // Only the delegator, an owner or an admin revokes; a stranger cannot even see it.
    let path = format!("/v1/delegations/{fays}");
    let stranger = app.call(Method::DELETE, &path, Some(&fin), None).await;
    assert_eq!(
        (stranger.status, stranger.code()),
        (StatusCode::NOT_FOUND, "delegation_not_found"),
        "{}",
        stranger.body
    );
    let delegate = app.call(Method::DELETE, &path, Some(&bob), None).await;
    assert_eq!(
        (delegate.status, delegate.code()),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{}",
        delegate.body
    );
    let revoked = app.call(Method::DELETE, &path, Some(&fay), None).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert_eq!(revoked.body["revoked"]["by"], "fay");
    let another = submit(&token("rita", "acme", &["requester"])).await;
    let after = vote_for(&bob, &another, "fay").await;
    assert_eq!(after.code(), "no_active_delegation", "{}", after.body);

    // The decision replay decides the delegated vote again, in fay's place.
    let replay = countersign_verification::decisions::check_decisions(
        &app.store.ledger,
        Some("acme"),
        |_, _| {},
    )
    .await
    .expect("decision replay");
    assert!(replay.is_ok(), "{:?}", replay.mismatches);

    // Another tenant sees none of it.
    let elsewhere = app
        .get("/v1/delegations", &token("gus", "globex", &["owner"]))
        .await;
    assert_eq!(
        elsewhere.body["delegations"],
        json!([]),
        "{}",
        elsewhere.body
    );
}
