//! A signed-in user's token claims (`name`, `email`) keep their own directory entry current:
//! the first request with them adds or updates the entry, an identical one records nothing, and
//! an email claim that is not an address changes nothing while the request still succeeds.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use axum::http::StatusCode;
use countersign_gateway::auth::TokenClaims;
use countersign_gateway::{Claims, mint_hs256};
use countersign_ledger::on_both_stores;
use serde_json::json;
use support::{SECRET, TestApp, token};

fn token_claiming(user: &str, roles: &[&str], name: Option<&str>, email: Option<&str>) -> String {
    mint_hs256(
        SECRET,
        &TokenClaims {
            claims: Claims {
                sub: user.to_owned(),
                tenant: "acme".to_owned(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                exp: chrono::Utc::now().timestamp() + 3600,
                iat: None,
                iss: None,
                aud: None,
            },
            name: name.map(str::to_owned),
            email: email.map(str::to_owned),
        },
    )
    .expect("token")
}

/// How many `RecordClaims` commands this test binary ran (its Prometheus recorder is shared by
/// its tests, so the tests that count hold [`COUNTING`]).
async fn record_claims_commands(app: &TestApp) -> u64 {
    let metrics = app.get("/metrics", "metrics-secret").await;
    assert_eq!(metrics.status, StatusCode::OK, "{:?}", metrics.body);
    // Before this binary has recorded any metric the exposition is empty (read as null).
    let text = metrics.body.as_str().unwrap_or_default();
    text.lines()
        .filter(|line| {
            line.starts_with("countersign_commands_total{")
                && line.contains("command=\"RecordClaims\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

static COUNTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

on_both_stores!(token_claims_update_the_users_own_entry_once);
async fn token_claims_update_the_users_own_entry_once(kind: &str) {
    let _counting = COUNTING.lock().await;
    let app = TestApp::spawn(kind).await.with_metrics();
    let commands = record_claims_commands(&app).await;
    let admin = token("ada", "acme", &["admin"]);
    let before = app.settled_event_count().await;

    // A user missing from the directory is added by their first request.
    let dora = token_claiming(
        "dora",
        &["approver"],
        Some("Dora Explorer"),
        Some("Dora@Example.com"),
    );
    let own = app.get("/v1/members/dora", &dora).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    let listed = app.get("/v1/members", &admin).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let entry = listed.body["members"]
        .as_array()
        .and_then(|members| members.iter().find(|m| m["user_id"] == "dora"))
        .cloned()
        .expect("dora is in the directory");
    assert_eq!(entry["display_name"], "Dora Explorer");
    assert_eq!(entry["email"], "Dora@example.com");
    assert_eq!(entry["roles"], json!(["approver"]));
    let added = app.settled_event_count().await;
    assert_eq!(added, before + 1, "one MemberAdded event");
    assert_eq!(record_claims_commands(&app).await, commands + 1);

    // The same claims again record nothing.
    for _ in 0..3 {
        assert_eq!(
            app.get("/v1/members/dora", &dora).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        app.settled_event_count().await,
        added,
        "no write for unchanged claims"
    );
    assert_eq!(
        record_claims_commands(&app).await,
        commands + 1,
        "unchanged claims are not even tried: this process remembers them"
    );

    // Changed claims update the entry, once.
    let renamed = token_claiming("dora", &["approver"], Some("Dora M."), None);
    assert_eq!(
        app.get("/v1/members/dora", &renamed).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.get("/v1/members/dora", &renamed).await.status,
        StatusCode::OK
    );
    let entry = app.get("/v1/members/dora", &admin).await;
    assert_eq!(entry.body["display_name"], "Dora M.");
    assert_eq!(
        entry.body["email"], "Dora@example.com",
        "an absent claim keeps the field"
    );
    assert_eq!(
        app.settled_event_count().await,
        added + 1,
        "one MemberUpdated event"
    );
    assert_eq!(record_claims_commands(&app).await, commands + 2);

    // A token without profile claims writes nothing and adds nobody.
    let plain = token("erin", "acme", &["approver"]);
    assert_eq!(
        app.get("/v1/members/me/preferences", &plain).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.get("/v1/members/erin", &admin).await.code(),
        "member_not_found"
    );
    assert_eq!(app.settled_event_count().await, added + 1);
}

on_both_stores!(an_invalid_email_claim_changes_nothing_and_the_request_succeeds);
async fn an_invalid_email_claim_changes_nothing_and_the_request_succeeds(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let admin = token("ada", "acme", &["admin"]);
    let added = app
        .post(
            "/v1/members",
            &admin,
            json!({ "user_id": "bob", "display_name": "Bob", "email": "bob@example.com", "roles": ["approver"] }),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    let before = app.settled_event_count().await;

    for email in [
        "bob at example",
        "bob@example.com\r\nBcc: eve@evil.test",
        "",
    ] {
        let bad = token_claiming("bob", &["approver"], None, Some(email));
        let own = app.get("/v1/members/bob", &bad).await;
        assert_eq!(own.status, StatusCode::OK, "{email:?}: {}", own.body);
        assert_eq!(own.body["email"], "bob@example.com", "{email:?}");
        assert_eq!(own.body["display_name"], "Bob", "{email:?}");
    }
    assert_eq!(
        app.settled_event_count().await,
        before,
        "an invalid email claim records nothing"
    );
    let gone = token_claiming("carl", &["approver"], None, Some("not-an-address"));
    assert_eq!(
        app.get("/v1/members/carl", &gone).await.code(),
        "member_not_found"
    );
    assert_eq!(app.settled_event_count().await, before);
}

on_both_stores!(a_request_over_its_rate_limit_records_no_claims);
async fn a_request_over_its_rate_limit_records_no_claims(kind: &str) {
    let principal = countersign_gateway::RateLimit::parse("1/h")
        .expect("a rate")
        .expect("a limit");
    let app = TestApp::spawn(kind)
        .await
        .with_rate_limits(None, Some(principal));
    let before = app.settled_event_count().await;
    let first = token_claiming("dora", &["approver"], Some("Dora"), None);
    assert_eq!(
        app.get("/v1/members/dora", &first).await.status,
        StatusCode::OK
    );
    let added = app.settled_event_count().await;
    assert_eq!(
        added,
        before + 1,
        "the request within its limit records dora"
    );

    let renamed = token_claiming("dora", &["approver"], Some("Dora M."), None);
    let refused = app.get("/v1/members/dora", &renamed).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert_eq!(
        app.settled_event_count().await,
        added,
        "a refused request writes nothing, its claims included"
    );
}
