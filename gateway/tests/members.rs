//! The member directory over HTTP: owners and admins manage it, users set their own
//! preferences, and bad input (unknown member, invalid email, unknown field) gets its code and
//! records nothing.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use axum::http::{Method, StatusCode};
use countersign_ledger::on_both_stores;
use serde_json::json;
use support::{TestApp, token};

on_both_stores!(admins_manage_members_and_users_set_their_own_preferences);
async fn admins_manage_members_and_users_set_their_own_preferences(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let admin = token("ada", "acme", &["admin"]);
    let bob = token("bob", "acme", &["approver"]);

    let created = app
        .post(
            "/v1/members",
            &admin,
            json!({
                "user_id": "bob", "display_name": " Bob Builder ", "email": "Bob@Example.COM",
                "slack_user_id": "U0BOB", "roles": ["approver", "finance_ops"]
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["display_name"], "Bob Builder");
    assert_eq!(created.body["email"], "Bob@example.com");
    assert!(
        created.token().is_some(),
        "a write answers its consistency token"
    );

    let listed = app.get("/v1/members", &admin).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["members"][0]["user_id"], "bob");
    assert_eq!(
        app.get("/v1/members", &bob).await.status,
        StatusCode::FORBIDDEN,
        "an approver does not read the directory"
    );
    assert_eq!(
        app.get("/v1/members/bob", &bob).await.status,
        StatusCode::OK,
        "but reads their own entry"
    );

    let own = app.get("/v1/members/me/preferences", &bob).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    assert_eq!(own.body["custom"], false);
    assert_eq!(own.body["preferences"]["email"]["assigned"], true);
    let set = app
        .call(
            Method::PUT,
            "/v1/members/me/preferences",
            Some(&bob),
            Some(json!({ "preferences": {
                "email": { "reminder": false }, "min_risk": "medium", "daily_digest": true
            }})),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    assert_eq!(set.body["custom"], true);
    assert_eq!(set.body["preferences"]["email"]["reminder"], false);
    assert_eq!(set.body["preferences"]["email"]["assigned"], true);
    assert_eq!(set.body["preferences"]["min_risk"], "medium");
    let entry = app.get("/v1/members/bob", &admin).await;
    assert_eq!(entry.body["preferences"]["daily_digest"], true);

    // A signed-in user missing from the directory is added by setting preferences.
    let carol = token("carol", "acme", &["approver"]);
    let carol_set = app
        .call(
            Method::PUT,
            "/v1/members/me/preferences",
            Some(&carol),
            Some(json!({ "preferences": { "in_app": { "outcome": false } } })),
        )
        .await;
    assert_eq!(carol_set.status, StatusCode::OK, "{}", carol_set.body);
    let carol_entry = app.get("/v1/members/carol", &admin).await;
    assert_eq!(carol_entry.body["roles"], json!(["approver"]));

    let updated = app
        .call(
            Method::PUT,
            "/v1/members/bob",
            Some(&admin),
            Some(
                json!({ "display_name": "Bob", "email": "bob@example.com", "roles": ["approver"] }),
            ),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(updated.body["roles"], json!(["approver"]));
    assert!(
        updated.body.get("slack_user_id").is_none(),
        "an update replaces every field"
    );

    let defaults = app
        .call(
            Method::PUT,
            "/v1/notifications/preferences/defaults",
            Some(&admin),
            Some(json!({ "min_risk": "high" })),
        )
        .await;
    assert_eq!(defaults.status, StatusCode::OK, "{}", defaults.body);
    assert_eq!(defaults.body["min_risk"], "high");
    assert_eq!(
        app.call(
            Method::PUT,
            "/v1/notifications/preferences/defaults",
            Some(&bob),
            Some(json!({ "min_risk": "low" })),
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );

    let removed = app
        .call(Method::DELETE, "/v1/members/bob", Some(&admin), None)
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);
    assert_eq!(removed.body["user_id"], "bob");
    assert_eq!(
        app.get("/v1/members/bob", &admin).await.code(),
        "member_not_found"
    );
}

on_both_stores!(bad_member_input_gets_its_code_and_records_nothing);
async fn bad_member_input_gets_its_code_and_records_nothing(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let admin = token("ada", "acme", &["admin"]);
    let approver = token("bob", "acme", &["approver"]);
    let added = app
        .post(
            "/v1/members",
            &admin,
            json!({ "user_id": "bob", "roles": ["approver"] }),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    let before = app.settled_event_count().await;

    let cases = [
        (
            "invalid email",
            Method::POST,
            "/v1/members",
            &admin,
            Some(json!({ "user_id": "carl", "email": "carl at example" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            Some("email"),
        ),
        (
            "header injection in an email",
            Method::POST,
            "/v1/members",
            &admin,
            Some(json!({ "user_id": "carl", "email": "carl@example.com\r\nBcc: eve@evil.test" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            Some("email"),
        ),
        (
            "bad Slack id",
            Method::POST,
            "/v1/members",
            &admin,
            Some(json!({ "user_id": "carl", "slack_user_id": "carl" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            Some("slack_user_id"),
        ),
        (
            "a role listed twice (new member)",
            Method::POST,
            "/v1/members",
            &admin,
            Some(json!({ "user_id": "carl", "roles": ["approver", "approver"] })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            Some("roles"),
        ),
        (
            "a role listed twice (update)",
            Method::PUT,
            "/v1/members/bob",
            &admin,
            Some(json!({ "roles": ["finance_ops", "approver", "finance_ops"] })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            Some("roles"),
        ),
        (
            "blank display name",
            Method::POST,
            "/v1/members",
            &admin,
            Some(json!({ "user_id": "carl", "display_name": "  " })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            Some("display_name"),
        ),
        (
            "unknown field",
            Method::POST,
            "/v1/members",
            &admin,
            Some(json!({ "user_id": "carl", "phone": "555" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            None,
        ),
        (
            "existing member",
            Method::POST,
            "/v1/members",
            &admin,
            Some(json!({ "user_id": "bob" })),
            StatusCode::CONFLICT,
            "member_exists",
            None,
        ),
        (
            "unknown member read",
            Method::GET,
            "/v1/members/nobody",
            &admin,
            None,
            StatusCode::NOT_FOUND,
            "member_not_found",
            None,
        ),
        (
            "unknown member update",
            Method::PUT,
            "/v1/members/nobody",
            &admin,
            Some(json!({ "roles": [] })),
            StatusCode::NOT_FOUND,
            "member_not_found",
            None,
        ),
        (
            "unknown member removal",
            Method::DELETE,
            "/v1/members/nobody",
            &admin,
            None,
            StatusCode::NOT_FOUND,
            "member_not_found",
            None,
        ),
        (
            "not a user id",
            Method::GET,
            "/v1/members/%20",
            &admin,
            None,
            StatusCode::NOT_FOUND,
            "member_not_found",
            None,
        ),
        (
            "an approver managing members",
            Method::POST,
            "/v1/members",
            &approver,
            Some(json!({ "user_id": "carl" })),
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
        ),
        (
            "an admin granting owner",
            Method::PUT,
            "/v1/members/bob",
            &admin,
            Some(json!({ "roles": ["owner"] })),
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
        ),
        (
            "an unknown risk level",
            Method::PUT,
            "/v1/members/me/preferences",
            &approver,
            Some(json!({ "preferences": { "min_risk": "extreme" } })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            None,
        ),
    ];
    for (name, method, path, bearer, body, status, code, field) in cases {
        let answer = app.call(method, path, Some(bearer), body).await;
        assert_eq!(answer.status, status, "{name}: {}", answer.body);
        assert_eq!(answer.code(), code, "{name}: {}", answer.body);
        if let Some(field) = field {
            assert_eq!(answer.body["field"], field, "{name}: {}", answer.body);
        }
    }
    assert_eq!(
        app.settled_event_count().await,
        before,
        "no refused request recorded anything"
    );
    let other_tenant = token("zed", "globex", &["admin"]);
    assert_eq!(
        app.get("/v1/members/bob", &other_tenant).await.code(),
        "member_not_found",
        "another tenant's member is a missing one"
    );
    let listed = app.get("/v1/members", &admin).await;
    assert_eq!(listed.body["members"].as_array().map(Vec::len), Some(1));
    let email = app
        .post(
            "/v1/members",
            &admin,
            json!({ "user_id": "dora", "email": "dora@example.com" }),
        )
        .await;
    assert_eq!(email.status, StatusCode::CREATED, "{}", email.body);
    assert_eq!(
        app.get("/v1/members/dora", &admin).await.body["email"]
            .as_str()
            .expect("email"),
        "dora@example.com"
    );
}
