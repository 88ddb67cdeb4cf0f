//! Bad input of every kind: each answers its status and stable code, names the field where there
//! is one, and writes no event.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use countersign_gateway::{AuthConfig, Claims, mint_hs256};
use serde_json::{Value, json};
use support::{TestApp, token, token_with};

fn request(
    method: Method,
    path: &str,
    bearer: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(bearer) = bearer {
        builder = builder.header("authorization", format!("Bearer {bearer}"));
    }
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    builder.body(body.into()).expect("request")
}

/// (name, request, expected status, expected code, expected field)
type Case<'a> = (&'a str, Request<Body>, StatusCode, &'a str, Option<&'a str>);

fn refund() -> Value {
    json!({ "module": "billing", "capability": "refund", "summary": "Refund order 1042" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_with_its_code_and_changes_nothing() {
    let app = TestApp::spawn("postgres").await;
    let owner = token("olga", "acme", &["owner"]);
    let requester = token("rita", "acme", &["requester"]);
    let submitted = app.post("/v1/actions", &requester, refund()).await;
    let id = submitted.body["id"].as_str().expect("id").to_owned();
    let key = app
        .post(
            "/v1/api-keys",
            &owner,
            json!({ "name": "svc", "roles": ["requester"] }),
        )
        .await;
    let key_secret = key.body["api_key"].as_str().expect("key").to_owned();
    let key_id = key.body["key_id"].as_str().expect("key id").to_owned();
    app.call(
        Method::DELETE,
        &format!("/v1/api-keys/{key_id}"),
        Some(&owner),
        None,
    )
    .await;

    let expired = token_with(
        "rita",
        "acme",
        &["requester"],
        chrono::Utc::now().timestamp() - 3600,
    );
    let forged = mint_hs256(
        b"another-secret-entirely-forged",
        &Claims {
            sub: "rita".into(),
            tenant: "acme".into(),
            roles: vec!["owner".into()],
            exp: chrono::Utc::now().timestamp() + 3600,
            iat: None,
            iss: None,
            aud: None,
        },
    )
    .expect("forged");
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(json!({ "sub": "rita", "tenant": "acme", "roles": ["owner"], "exp": chrono::Utc::now().timestamp() + 3600 }).to_string())
    );
    let bad_tenant = token("rita", "Acme Corp", &["owner"]);
    let oversized = json!({ "module": "billing", "capability": "refund", "summary": "x", "payload": { "blob": "x".repeat(70 * 1024) } });

    let json = Some("application/json");
    let cases: Vec<Case> = vec![
        ("malformed JSON", request(Method::POST, "/v1/actions", Some(&requester), json, "{ not json"), StatusCode::BAD_REQUEST, "malformed_json", None),
        ("trailing garbage", request(Method::POST, "/v1/actions", Some(&requester), json, format!("{} x", refund())), StatusCode::BAD_REQUEST, "malformed_json", None),
        ("wrong type", request(Method::POST, "/v1/actions", Some(&requester), json, json!({ "module": "billing", "capability": "refund", "summary": 5 }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", Some("summary")),
        ("unknown field", request(Method::POST, "/v1/actions", Some(&requester), json, json!({ "module": "billing", "capability": "refund", "summary": "x", "priority": 1 }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", Some("priority")),
        ("missing field", request(Method::POST, "/v1/actions", Some(&requester), json, json!({ "module": "billing", "capability": "refund" }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", None),
        ("invalid value", request(Method::POST, "/v1/actions", Some(&requester), json, json!({ "module": "Billing Dept", "capability": "refund", "summary": "x" }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", Some("module")),
        ("nested invalid value", request(Method::POST, "/v1/actions", Some(&requester), json, json!({ "module": "billing", "capability": "refund", "summary": "x", "flags": ["ok", ""] }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", Some("flags[1]")),
        ("oversized body", request(Method::POST, "/v1/actions", Some(&requester), json, oversized.to_string()), StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", None),
        ("not JSON", request(Method::POST, "/v1/actions", Some(&requester), Some("text/plain"), refund().to_string()), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", None),
        ("bad idempotency key", {
            let mut r = request(Method::POST, "/v1/actions", Some(&requester), json, refund().to_string());
            r.headers_mut().insert("idempotency-key", "has spaces in it".parse().expect("header"));
            r
        }, StatusCode::BAD_REQUEST, "invalid_header", Some("Idempotency-Key")),
        ("bad vote", request(Method::POST, &format!("/v1/actions/{id}/votes"), Some(&owner), json, json!({ "vote": "maybe" }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", Some("vote")),
        ("bad action id", request(Method::GET, "/v1/actions/not-a-uuid", Some(&owner), None, Body::empty()), StatusCode::NOT_FOUND, "action_not_found", None),
        ("unknown action", request(Method::POST, "/v1/actions/00000000-0000-7000-8000-000000000000/approve", Some(&owner), None, Body::empty()), StatusCode::NOT_FOUND, "action_not_found", None),
        ("bad cursor", request(Method::GET, "/v1/actions?cursor=not-a-cursor", Some(&owner), None, Body::empty()), StatusCode::BAD_REQUEST, "invalid_cursor", Some("cursor")),
        ("bad limit", request(Method::GET, "/v1/actions?limit=0", Some(&owner), None, Body::empty()), StatusCode::BAD_REQUEST, "invalid_query", Some("limit")),
        ("bad status", request(Method::GET, "/v1/actions?status=waiting", Some(&owner), None, Body::empty()), StatusCode::BAD_REQUEST, "invalid_query", Some("status")),
        ("bad sort", request(Method::GET, "/v1/actions?sort=sideways", Some(&owner), None, Body::empty()), StatusCode::BAD_REQUEST, "invalid_query", Some("sort")),
        ("unknown parameter", request(Method::GET, "/v1/actions?colour=red", Some(&owner), None, Body::empty()), StatusCode::BAD_REQUEST, "invalid_query", None),
        ("bad consistency token", request(Method::GET, "/v1/actions?consistent_with=soon", Some(&owner), None, Body::empty()), StatusCode::BAD_REQUEST, "invalid_consistency_token", Some("consistent_with")),
        ("signed consistency token", request(Method::GET, "/v1/actions?consistent_with=%2B0.-1", Some(&owner), None, Body::empty()), StatusCode::BAD_REQUEST, "invalid_consistency_token", Some("consistent_with")),
        ("bad score", request(Method::GET, "/v1/actions?min_score=101", Some(&owner), None, Body::empty()), StatusCode::BAD_REQUEST, "invalid_query", Some("min_score")),
        ("bad module filter", request(Method::GET, "/v1/actions?module=Billing%20Dept", Some(&owner), None, Body::empty()), StatusCode::BAD_REQUEST, "invalid_query", Some("module")),
        ("bad user id", request(Method::GET, "/v1/users/ana%20lopez/actions", Some(&owner), None, Body::empty()), StatusCode::BAD_REQUEST, "invalid_path", Some("id")),
        ("paginated vote history", request(Method::GET, "/v1/users/rita/votes?cursor=abc", Some(&owner), None, Body::empty()), StatusCode::BAD_REQUEST, "invalid_query", None),
        ("vote history limit", request(Method::GET, "/v1/users/rita/votes?limit=201", Some(&owner), None, Body::empty()), StatusCode::BAD_REQUEST, "invalid_query", Some("limit")),
        ("heads limit", request(Method::GET, "/v1/ledger/heads?limit=0", Some(&owner), None, Body::empty()), StatusCode::BAD_REQUEST, "invalid_query", Some("limit")),
        ("hidden text in a simulation", request(Method::POST, "/v1/policies/simulate", Some(&owner), json, json!({ "module": "billing", "capability": "refund", "summary": "Refund \u{202e}0001 rodnev\u{202c}" }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", Some("summary")),
        ("a fraction for an integer", request(Method::POST, "/v1/policies", Some(&owner), json, json!({ "id": "p", "name": "p", "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1.5 }] }] } }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", Some("requirements.stages[0]")),
        ("an array for the body", request(Method::POST, &format!("/v1/actions/{id}/reject"), Some(&owner), json, "[]"), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", None),
        ("an array for an object", request(Method::PUT, "/v1/settings", Some(&owner), json, json!({ "mode": "safe", "default_requirements": { "stages": [[null, [{ "type": "any", "min_approvals": 1 }]]] } }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", Some("default_requirements.stages[0]")),
        ("an integer out of range", request(Method::POST, "/v1/policies", Some(&owner), json, json!({ "id": "p", "name": "p", "priority": 3_000_000_000_i64, "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }] } }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", Some("priority")),
        ("invalid criteria", request(Method::POST, "/v1/policies", Some(&owner), json, json!({ "id": "p", "name": "p", "criteria": { "$or": [{ "risk.lvl": "high" }] }, "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }] } }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", Some("criteria")),
        ("invalid requirements", request(Method::POST, "/v1/policies", Some(&owner), json, json!({ "id": "p", "name": "p", "requirements": { "stages": [] } }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", Some("requirements.stages")),
        ("bad settings", request(Method::PUT, "/v1/settings", Some(&owner), json, json!({ "mode": "yolo", "default_requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }] } }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", Some("mode")),
        ("no credentials", request(Method::GET, "/v1/actions", None, None, Body::empty()), StatusCode::UNAUTHORIZED, "unauthorized", None),
        ("not a bearer", {
            let mut r = request(Method::GET, "/v1/actions", None, None, Body::empty());
            r.headers_mut().insert("authorization", "Basic b2xnYTpwYXNz".parse().expect("header"));
            r
        }, StatusCode::UNAUTHORIZED, "unauthorized", None),
        ("expired token", request(Method::GET, "/v1/actions", Some(&expired), None, Body::empty()), StatusCode::UNAUTHORIZED, "token_expired", None),
        ("forged token", request(Method::POST, "/v1/actions", Some(&forged), json, refund().to_string()), StatusCode::UNAUTHORIZED, "invalid_token", None),
        ("alg none", request(Method::POST, "/v1/actions", Some(&unsigned), json, refund().to_string()), StatusCode::UNAUTHORIZED, "invalid_token", None),
        ("garbage token", request(Method::GET, "/v1/actions", Some("abc.def"), None, Body::empty()), StatusCode::UNAUTHORIZED, "invalid_token", None),
        ("bad tenant claim", request(Method::GET, "/v1/actions", Some(&bad_tenant), None, Body::empty()), StatusCode::UNAUTHORIZED, "invalid_token", None),
        ("revoked API key", request(Method::POST, "/v1/actions", Some(&key_secret), json, refund().to_string()), StatusCode::UNAUTHORIZED, "api_key_revoked", None),
        ("unknown API key", request(Method::POST, "/v1/actions", Some("csk.acme.0123456789ab.0000"), json, refund().to_string()), StatusCode::UNAUTHORIZED, "invalid_token", None),
        ("malformed API key", request(Method::POST, "/v1/actions", Some("csk.acme"), json, refund().to_string()), StatusCode::UNAUTHORIZED, "invalid_token", None),
    ];
    let before = app.settled_event_count().await;
    for (name, request, status, code, field) in cases {
        let answer = app.raw(request).await;
        assert_eq!(answer.status, status, "{name}: {}", answer.body);
        assert_eq!(answer.code(), code, "{name}: {}", answer.body);
        assert_eq!(
            answer.headers["content-type"], "application/problem+json",
            "{name}"
        );
        assert_eq!(answer.body["status"], status.as_u16(), "{name}");
        if let Some(field) = field {
            assert_eq!(
                answer.body["field"].as_str().map(|f| f
                    .split('.')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(".")),
                Some(field.split('.').take(2).collect::<Vec<_>>().join(".")),
                "{name}: {}",
                answer.body
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(answer.headers["www-authenticate"], "Bearer", "{name}");
        }
    }
    assert_eq!(
        app.settled_event_count().await,
        before,
        "no bad request wrote an event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn integers_written_with_a_zero_fraction_are_read_as_integers_and_documents_kept_as_written()
{
    let app = TestApp::spawn("sqlite").await;
    let owner = token("olga", "acme", &["owner"]);
    let created = app
        .post(
            "/v1/policies",
            &owner,
            json!({
                "id": "whole",
                "name": "Whole numbers",
                "priority": 5.0,
                "criteria": { "payload.amount": { "$gte": 2.0 } },
                "requirements": {
                    "stages": [{ "rules": [{ "type": "any", "min_approvals": 2.0 }] }],
                    "timeout_seconds": 3600.0,
                },
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["priority"], json!(5));
    assert_eq!(
        created.body["requirements"]["stages"][0]["rules"][0]["min_approvals"],
        json!(2)
    );
    assert_eq!(created.body["requirements"]["timeout_seconds"], json!(3600));
    // The criteria document is the owner's, kept as written.
    assert_eq!(
        created.body["criteria"]["payload.amount"]["$gte"].to_string(),
        "2.0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openapi_document_declares_what_the_server_enforces() {
    let document = serde_json::to_value(countersign_gateway::openapi()).expect("document");
    let schemas = &document["components"]["schemas"];
    // Refusals before any handler runs, on every operation that takes a JSON body.
    for (path, method) in [
        ("/v1/actions", "post"),
        ("/v1/votes", "post"),
        ("/v1/actions/{id}/approve", "post"),
        ("/v1/settings", "put"),
    ] {
        let responses = &document["paths"][path][method]["responses"];
        for status in ["413", "415"] {
            assert!(
                responses[status]["content"]["application/problem+json"].is_object(),
                "{method} {path} declares {status}"
            );
        }
    }
    let submit = &document["paths"]["/v1/actions"]["post"]["responses"];
    assert!(submit["200"].is_object() && submit["201"].is_object());
    // Constraints the newtypes check are in their schemas.
    assert_eq!(schemas["Role"]["pattern"], "^[a-z0-9][a-z0-9_-]*$");
    assert_eq!(schemas["Role"]["maxLength"], 64);
    assert_eq!(schemas["Summary"]["minLength"], 1);
    assert_eq!(schemas["Summary"]["maxLength"], 500);
    assert!(schemas["Comment"]["pattern"].is_string());
    assert_eq!(schemas["BulkVotes"]["properties"]["votes"]["minItems"], 1);
    assert_eq!(schemas["BulkVotes"]["properties"]["votes"]["maxItems"], 100);
    let parameters = |path: &str| {
        document["paths"][path]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .map(|parameter| {
                (
                    parameter["name"].as_str().unwrap_or_default().to_owned(),
                    parameter["schema"].clone(),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let inbox = parameters("/v1/actions");
    assert_eq!(
        (&inbox["limit"]["minimum"], &inbox["limit"]["maximum"]),
        (&json!(1), &json!(200))
    );
    assert!(inbox["risk"]["pattern"].is_string());
    assert!(inbox["consistent_with"]["pattern"].is_string());
    let votes = parameters("/v1/users/{id}/votes");
    assert!(
        !votes.contains_key("cursor"),
        "vote history takes no cursor"
    );
    assert_eq!(votes["limit"]["maximum"], 200);
    assert_eq!(parameters("/v1/ledger/heads")["limit"]["maximum"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_key_material_nothing_but_health_answers() {
    let app = TestApp::with_auth("sqlite", AuthConfig::default()).await;
    let any = token("olga", "acme", &["owner"]);
    for path in [
        "/v1/actions",
        "/v1/policies",
        "/v1/settings",
        "/openapi.json",
        "/docs",
    ] {
        let answer = app.call(Method::GET, path, Some(&any), None).await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::UNAUTHORIZED, "authentication_unconfigured"),
            "{path}"
        );
    }
    assert_eq!(
        app.call(Method::GET, "/healthz", None, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.call(Method::GET, "/readyz", None, None).await.status,
        StatusCode::OK
    );
}
