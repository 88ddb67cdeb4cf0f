//! Rate limits per tenant and per principal, through the router: over a limit answers 429
//! `rate_limited` with `Retry-After` and records nothing; other principals and tenants are
//! unaffected; health, readiness, metrics and the API description are never limited.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use countersign_gateway::RateLimit;
use countersign_ledger::testing::{eventually, within};
use serde_json::{Value, json};
use support::{Answer, TestApp, token};

fn refund(order: u32) -> Value {
    json!({
        "module": "billing", "capability": "refund",
        "payload": { "order": order, "amount": 25.5 },
        "summary": format!("Refund order {order}"),
    })
}

/// `requests` an hour in bursts of `burst`: nothing refills during a test.
fn per_hour(requests: u32, burst: u32) -> Option<RateLimit> {
    RateLimit::parse(&format!("{requests}/h"))
        .expect("a rate")
        .map(|rate| rate.with_burst(NonZeroU32::new(burst).expect("non-zero burst")))
}

fn assert_limited(answer: &Answer, scope: &str) -> u64 {
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        "{}",
        answer.body
    );
    assert_eq!(
        answer.headers["content-type"], "application/problem+json",
        "a problem document"
    );
    assert!(
        answer.body["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains(scope)),
        "the {scope} limit refused: {}",
        answer.body
    );
    let seconds: u64 = answer
        .headers
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("Retry-After in whole seconds");
    assert!(seconds >= 1);
    seconds
}

#[tokio::test(flavor = "multi_thread")]
async fn a_principal_over_its_burst_is_refused_and_nothing_is_recorded() {
    let app = TestApp::spawn("sqlite")
        .await
        .with_rate_limits(None, per_hour(3, 3));
    let rita = token("rita", "acme", &["requester"]);
    let rick = token("rick", "acme", &["requester"]);
    for order in 0..3 {
        let submitted = app.post("/v1/actions", &rita, refund(order)).await;
        assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    }
    let before = app.settled_event_count().await;
    let refused = app.post("/v1/actions", &rita, refund(3)).await;
    let seconds = assert_limited(&refused, "principal");
    assert!(
        seconds > 60,
        "one request an hour refills in minutes, not {seconds} s"
    );
    assert_eq!(
        app.settled_event_count().await,
        before,
        "a refused submission records nothing"
    );
    // Refusals spend nothing, and are refused again.
    assert_limited(&app.get("/v1/actions", &rita).await, "principal");

    // Another principal of the same tenant has an allowance of its own.
    for order in 10..13 {
        let submitted = app.post("/v1/actions", &rick, refund(order)).await;
        assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    }
    assert_limited(
        &app.post("/v1/actions", &rick, refund(13)).await,
        "principal",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_key_is_a_principal_of_its_own() {
    let app = TestApp::spawn("sqlite")
        .await
        .with_rate_limits(None, per_hour(2, 2));
    let admin = token("adam", "acme", &["admin"]);
    let created = app
        .post(
            "/v1/api-keys",
            &admin,
            json!({ "name": "billing service", "roles": ["requester"] }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let key = created.body["api_key"].as_str().expect("the secret");
    for _ in 0..2 {
        assert_eq!(app.get("/v1/actions", key).await.status, StatusCode::OK);
    }
    assert_limited(&app.get("/v1/actions", key).await, "principal");
    // The admin who made it spent one of its own two requests.
    assert_eq!(app.get("/v1/actions", &admin).await.status, StatusCode::OK);
    assert_limited(&app.get("/v1/actions", &admin).await, "principal");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_limit_spans_its_principals_and_no_other_tenant() {
    let app = TestApp::spawn("sqlite")
        .await
        .with_rate_limits(per_hour(4, 4), None);
    let acme: Vec<String> = ["ana", "bea", "cy"]
        .iter()
        .map(|user| token(user, "acme", &["owner"]))
        .collect();
    for bearer in [&acme[0], &acme[0], &acme[1], &acme[1]] {
        assert_eq!(app.get("/v1/actions", bearer).await.status, StatusCode::OK);
    }
    for bearer in &acme {
        assert_limited(&app.get("/v1/actions", bearer).await, "tenant");
    }
    let before = app.settled_event_count().await;
    assert_limited(
        &app.post("/v1/actions", &acme[2], refund(1)).await,
        "tenant",
    );
    assert_eq!(app.settled_event_count().await, before);

    // Another tenant is unaffected, and has the same allowance of its own.
    let globex = token("gus", "globex", &["owner"]);
    for order in 0..4 {
        let submitted = app.post("/v1/actions", &globex, refund(order)).await;
        assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    }
    assert_limited(&app.get("/v1/actions", &globex).await, "tenant");
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_requests_are_refused_401_and_not_counted() {
    let app = TestApp::spawn("sqlite")
        .await
        .with_rate_limits(per_hour(1, 1), per_hour(1, 1));
    let forged = support::token_with("ana", "acme", &["owner"], 1);
    for _ in 0..5 {
        assert_eq!(
            app.call(Method::GET, "/v1/actions", None, None)
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            app.get("/v1/actions", &forged).await.status,
            StatusCode::UNAUTHORIZED,
            "an expired token"
        );
    }
    let ana = token("ana", "acme", &["owner"]);
    assert_eq!(app.get("/v1/actions", &ana).await.status, StatusCode::OK);
    assert_limited(&app.get("/v1/actions", &ana).await, "principal");
    // Over the limit, a request without a credential is still refused 401, not 429.
    assert_eq!(
        app.call(Method::GET, "/v1/actions", None, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_metrics_and_docs_are_never_limited_and_refusals_are_counted() {
    let app = TestApp::spawn("sqlite")
        .await
        .with_rate_limits(per_hour(1, 1), per_hour(1, 1))
        .with_metrics();
    let ana = token("ana", "acme", &["owner"]);
    assert_eq!(app.get("/v1/actions", &ana).await.status, StatusCode::OK);
    assert_limited(&app.get("/v1/actions", &ana).await, "principal");
    let bea = token("bea", "acme", &["owner"]);
    assert_limited(&app.get("/v1/actions", &bea).await, "tenant");
    for _ in 0..20 {
        for path in ["/healthz", "/readyz", "/openapi.json", "/docs"] {
            let answer = app.call(Method::GET, path, Some(&ana), None).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        }
        assert_eq!(
            app.get("/metrics", "metrics-secret").await.status,
            StatusCode::OK
        );
    }
    let metrics = app.get("/metrics", "metrics-secret").await;
    let text = metrics.body.as_str().expect("the exposition text");
    for scope in ["tenant", "principal"] {
        assert!(
            text.contains(&format!(
                "countersign_rate_limited_total{{scope=\"{scope}\"}}"
            )),
            "refusals by the {scope} limit are counted: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_retry_after_requests_pass_again() {
    // Two a second in bursts of one: the second request of a burst waits half a second.
    let fast = RateLimit::parse("2/s")
        .expect("a rate")
        .map(|rate| rate.with_burst(NonZeroU32::MIN));
    let app = TestApp::spawn("sqlite").await.with_rate_limits(fast, fast);
    let ana = token("ana", "acme", &["owner"]);
    assert_eq!(app.get("/v1/actions", &ana).await.status, StatusCode::OK);
    let refused = app.get("/v1/actions", &ana).await;
    let seconds = assert_limited(&refused, "principal");
    assert_eq!(seconds, 1, "half a second, rounded up");
    eventually(within(Duration::from_secs(seconds + 5)), async || match app
        .get("/v1/actions", &ana)
        .await
    {
        answer if answer.status == StatusCode::OK => Ok(()),
        answer => Err(format!("still {}: {}", answer.status, answer.body)),
    })
    .await;
}
