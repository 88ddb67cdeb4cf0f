//! Every cell of the authorization matrix in docs/api.md, and tenant isolation on every
//! endpoint that names a resource.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::sync::LazyLock;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use countersign_ledger::testing::{eventually, within};
use serde_json::{Value, json};
use support::{TestApp, token, token_with};

const ROLES: [&str; 5] = ["owner", "admin", "approver", "requester", "auditor"];

/// One expiry for the whole run: a role's token is the same string whenever it is minted, so
/// a check can tell which role a token stands for by comparing strings (a token minted per
/// call would differ whenever the clock's second turned between two calls).
static EXPIRES: LazyLock<i64> = LazyLock::new(|| chrono::Utc::now().timestamp() + 3600);

fn as_role(role: &str) -> String {
    token_with(&format!("{role}-user"), "acme", &[role], *EXPIRES)
}

fn refund() -> Value {
    json!({ "module": "billing", "capability": "refund", "summary": "Refund order 1042", "payload": { "order": 1042 } })
}

/// A fresh pending action submitted by `requester-user`.
async fn pending(app: &TestApp) -> String {
    pending_by(app, &as_role("requester")).await
}

/// A fresh pending action submitted by someone holding no role in the matrix.
async fn pending_by(app: &TestApp, requester: &str) -> String {
    let answer = app.post("/v1/actions", requester, refund()).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body["id"].as_str().expect("id").to_owned()
}

/// A fresh approved action of `requester-user`, with the consistency token of its approval.
async fn approved_with_token(app: &TestApp) -> (String, String) {
    let id = pending(app).await;
    let answer = app
        .post(
            &format!("/v1/actions/{id}/approve"),
            &as_role("owner"),
            json!({}),
        )
        .await;
    assert_eq!(answer.body["status"], "approved");
    (id, answer.token().expect("consistency token"))
}

async fn approved_by(app: &TestApp, requester: &str) -> String {
    let id = pending_by(app, requester).await;
    let answer = app
        .post(
            &format!("/v1/actions/{id}/approve"),
            &as_role("owner"),
            json!({}),
        )
        .await;
    assert_eq!(answer.body["status"], "approved");
    id
}

fn allowed(status: StatusCode) -> bool {
    status.is_success()
}

/// Runs one operation as each role; `expected` lists who is allowed, in `ROLES` order.
async fn check(
    app: &TestApp,
    operation: &str,
    expected: [bool; 5],
    mut run: impl AsyncFnMut(&TestApp, &str) -> (StatusCode, String),
) {
    for (role, allow) in ROLES.iter().zip(expected) {
        let (status, code) = run(app, &as_role(role)).await;
        assert_eq!(
            allowed(status),
            allow,
            "{operation} as {role}: {status} {code}"
        );
        if !allow {
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{operation} as {role}: {code}"
            );
            assert!(
                [
                    "forbidden",
                    "not_eligible",
                    "not_permitted",
                    "self_approval_forbidden"
                ]
                .contains(&code.as_str()),
                "{operation} as {role}: {code}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_cell_of_the_authorization_matrix() {
    let app = TestApp::spawn("sqlite").await;
    let code = |answer: support::Answer| (answer.status, answer.code().to_owned());

    check(
        &app,
        "submit",
        [true, true, true, true, false],
        async |app, t| code(app.post("/v1/actions", t, refund()).await),
    )
    .await;
    check(&app, "read the inbox", [true; 5], async |app, t| {
        code(app.get("/v1/actions", t).await)
    })
    .await;
    let submitted = app
        .post("/v1/actions", &as_role("requester"), refund())
        .await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    let id = submitted.body["id"].as_str().expect("id").to_owned();
    let written = submitted.token().expect("consistency token");
    check(&app, "read an action", [true; 5], async |app, t| {
        // Read our own write: the projection has the action, so anything but 200 is a refusal.
        let answer = app
            .get(&format!("/v1/actions/{id}?consistent_with={written}"), t)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        code(answer)
    })
    .await;
    check(
        &app,
        "vote under the default policy",
        [true, true, false, false, false],
        async |app, t| {
            let id = pending(app).await;
            code(
                app.post(
                    &format!("/v1/actions/{id}/votes"),
                    t,
                    json!({ "vote": "approve" }),
                )
                .await,
            )
        },
    )
    .await;
    let stranger = token("stranger", "acme", &["requester"]);
    check(
        &app,
        "cancel someone else's action",
        [true, true, false, false, false],
        async |app, t| {
            let id = pending_by(app, &stranger).await;
            code(
                app.post(&format!("/v1/actions/{id}/cancel"), t, json!({}))
                    .await,
            )
        },
    )
    .await;
    check(
        &app,
        "execute someone else's action",
        [true, true, false, false, false],
        async |app, t| {
            let id = approved_by(app, &stranger).await;
            code(
                app.post(&format!("/v1/actions/{id}/execute"), t, json!({}))
                    .await,
            )
        },
    )
    .await;
    check(
        &app,
        "read an audit trail",
        [true, true, false, false, true],
        async |app, t| {
            let (id, written) = approved_with_token(app).await;
            let answer = app
                .get(
                    &format!("/v1/actions/{id}/audit?consistent_with={written}"),
                    t,
                )
                .await;
            assert_ne!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
            code(answer)
        },
    )
    .await;
    check(&app, "read policies", [true; 5], async |app, t| {
        code(app.get("/v1/policies", t).await)
    })
    .await;
    check(&app, "simulate", [true; 5], async |app, t| {
        code(app.post("/v1/policies/simulate", t, refund()).await)
    })
    .await;
    let mut n = 0;
    check(&app, "create a policy", [true, true, false, false, false], async |app, t| {
        n += 1;
        code(app.post("/v1/policies", t, json!({ "id": format!("p{n}"), "name": "p", "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }] } })).await)
    })
    .await;
    check(&app, "update a policy", [true, true, false, false, false], async |app, t| {
        n += 1;
        code(app.call(Method::PUT, "/v1/policies/p1", Some(t), Some(json!({ "name": format!("v{n}"), "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }] } }))).await)
    })
    .await;
    check(&app, "delete a policy", [true, true, false, false, false], async |app, t| {
        n += 1;
        let id = format!("d{n}");
        app.post("/v1/policies", &as_role("admin"), json!({ "id": id, "name": "d", "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }] } })).await;
        code(app.call(Method::DELETE, &format!("/v1/policies/{id}"), Some(t), None).await)
    })
    .await;
    check(
        &app,
        "read settings",
        [true, true, false, false, true],
        async |app, t| code(app.get("/v1/settings", t).await),
    )
    .await;
    check(
        &app,
        "change settings",
        [true, true, false, false, false],
        async |app, t| {
            let current = app.get("/v1/settings", &as_role("owner")).await.body;
            code(
                app.call(Method::PUT, "/v1/settings", Some(t), Some(current))
                    .await,
            )
        },
    )
    .await;
    check(
        &app,
        "create an API key",
        [true, true, false, false, false],
        async |app, t| {
            code(
                app.post(
                    "/v1/api-keys",
                    t,
                    json!({ "name": "svc", "roles": ["requester"] }),
                )
                .await,
            )
        },
    )
    .await;
    check(
        &app,
        "list API keys",
        [true, true, false, false, false],
        async |app, t| code(app.get("/v1/api-keys", t).await),
    )
    .await;
    check(
        &app,
        "revoke an API key",
        [true, true, false, false, false],
        async |app, t| {
            let key = app
                .post(
                    "/v1/api-keys",
                    &as_role("owner"),
                    json!({ "name": "svc", "roles": ["requester"] }),
                )
                .await;
            let key_id = key.body["key_id"].as_str().expect("key id").to_owned();
            code(
                app.call(
                    Method::DELETE,
                    &format!("/v1/api-keys/{key_id}"),
                    Some(t),
                    None,
                )
                .await,
            )
        },
    )
    .await;
    check(
        &app,
        "read stats",
        [true, true, true, false, true],
        async |app, t| code(app.get("/v1/stats", t).await),
    )
    .await;
    check(
        &app,
        "read another user's history",
        [true, true, false, false, true],
        async |app, t| code(app.get("/v1/users/someone-else/actions", t).await),
    )
    .await;
    check(
        &app,
        "read another user's votes",
        [true, true, false, false, true],
        async |app, t| code(app.get("/v1/users/someone-else/votes", t).await),
    )
    .await;
    check(&app, "read one's own history", [true; 5], async |app, t| {
        let me = app.get("/v1/actions?limit=1", t).await;
        assert_eq!(me.status, StatusCode::OK);
        // Each role's token names `<role>-user`.
        let user = ROLES
            .iter()
            .find(|role| *t == as_role(role))
            .map(|role| format!("{role}-user"))
            .unwrap_or_default();
        code(app.get(&format!("/v1/users/{user}/votes"), t).await)
    })
    .await;
    // The requester may cancel and execute their own action.
    let own = pending(&app).await;
    assert_eq!(
        app.post(
            &format!("/v1/actions/{own}/cancel"),
            &as_role("requester"),
            json!({})
        )
        .await
        .status,
        StatusCode::OK
    );
    let (own, _) = approved_with_token(&app).await;
    assert_eq!(
        app.post(
            &format!("/v1/actions/{own}/execute"),
            &as_role("requester"),
            json!({})
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_tenants_resources_answer_exactly_like_missing_ones() {
    let app = TestApp::spawn("postgres").await;
    let (id, _) = approved_with_token(&app).await;
    let policy = app.post("/v1/policies", &as_role("admin"), json!({ "id": "acme-only", "name": "a", "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }] } })).await;
    assert_eq!(policy.status, StatusCode::CREATED);
    let key = app
        .post(
            "/v1/api-keys",
            &as_role("admin"),
            json!({ "name": "svc", "roles": ["requester"] }),
        )
        .await;
    let key_id = key.body["key_id"].as_str().expect("key id").to_owned();
    // Make sure the projections hold the action before comparing.
    eventually(within(Duration::from_secs(30)), async || {
        let audit = app
            .get(&format!("/v1/actions/{id}/audit"), &as_role("owner"))
            .await;
        if audit.status != StatusCode::OK {
            return Err(format!("the audit trail answered {}", audit.status));
        }
        Ok(())
    })
    .await;
    let missing = "00000000-0000-7000-8000-000000000000";
    let globex = token("gus", "globex", &["owner", "admin", "approver", "auditor"]);
    let cases: Vec<(Method, String, String, Option<Value>)> = vec![
        (
            Method::GET,
            format!("/v1/actions/{id}"),
            format!("/v1/actions/{missing}"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/actions/{id}/audit"),
            format!("/v1/actions/{missing}/audit"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/actions/{id}/stream"),
            format!("/v1/actions/{missing}/stream"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/actions/{id}/votes"),
            format!("/v1/actions/{missing}/votes"),
            Some(json!({ "vote": "approve" })),
        ),
        (
            Method::POST,
            format!("/v1/actions/{id}/approve"),
            format!("/v1/actions/{missing}/approve"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/actions/{id}/reject"),
            format!("/v1/actions/{missing}/reject"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/actions/{id}/cancel"),
            format!("/v1/actions/{missing}/cancel"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/actions/{id}/execute"),
            format!("/v1/actions/{missing}/execute"),
            Some(json!({})),
        ),
        (
            Method::GET,
            "/v1/policies/acme-only".into(),
            "/v1/policies/nope".into(),
            None,
        ),
        (
            Method::PUT,
            "/v1/policies/acme-only".into(),
            "/v1/policies/nope".into(),
            Some(
                json!({ "name": "x", "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }] } }),
            ),
        ),
        (
            Method::DELETE,
            "/v1/policies/acme-only".into(),
            "/v1/policies/nope".into(),
            None,
        ),
        (
            Method::DELETE,
            format!("/v1/api-keys/{key_id}"),
            "/v1/api-keys/nope".into(),
            None,
        ),
    ];
    for (method, theirs, missing, body) in cases {
        let name = theirs.rsplit('/').next().unwrap_or_default().to_owned();
        let foreign = app
            .call(method.clone(), &theirs, Some(&globex), body.clone())
            .await;
        let absent = app
            .call(method.clone(), &missing, Some(&globex), body)
            .await;
        assert_eq!(
            foreign.status,
            StatusCode::NOT_FOUND,
            "{method} {theirs}: {}",
            foreign.body
        );
        assert_eq!(
            (foreign.status, foreign.code()),
            (absent.status, absent.code()),
            "{method} {theirs}"
        );
        // Details echo the requested name, and nothing else.
        let absent_detail = absent.body["detail"]
            .as_str()
            .unwrap_or_default()
            .replace("nope", &name);
        assert_eq!(
            foreign.body["detail"].as_str().unwrap_or_default(),
            absent_detail,
            "{method} {theirs}"
        );
    }
    let theirs = app.get("/v1/actions?status=all", &globex).await;
    assert_eq!(theirs.body["items"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        app.get("/v1/policies", &globex).await.body["policies"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert_eq!(
        app.get("/v1/api-keys", &globex).await.body["keys"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert_eq!(app.get("/v1/stats", &globex).await.body["submitted"], 0);
}
