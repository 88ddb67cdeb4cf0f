//! Credentials end when they end, filters obey the rules of the resources they filter, secrets
//! stay secret, forged consistency tokens are refused at once, and every response carries the
//! headers that keep browsers and caches out of trouble. Everything through the router.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use base64::Engine;
use countersign_domain::TenantId;
use countersign_domain::tenant::TenantSettings;
use countersign_gateway::auth::LEEWAY_SECONDS;
use countersign_ledger::on_both_stores;
use futures::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{SECRET, TestApp, token, token_with};

fn refund() -> Value {
    json!({
        "module": "billing", "capability": "refund",
        "payload": { "order": 1042, "amount": 25.5 },
        "summary": "Refund order 1042",
    })
}

/// How often the tests' streams re-check their credential.
const RECHECK: Duration = Duration::from_millis(100);

async fn app_with_short_recheck() -> TestApp {
    let mut app = TestApp::spawn("sqlite").await;
    app.state.limits.credential_recheck = RECHECK;
    app
}

async fn submitted(app: &TestApp, credential: &str) -> String {
    let answer = app.post("/v1/actions", credential, refund()).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body["id"].as_str().expect("id").to_owned()
}

type Frames = axum::body::BodyDataStream;

/// Opens `/v1/actions/{id}/stream` with `credential` and reads its first frame (the status).
async fn open_stream(app: &TestApp, id: &str, credential: &str) -> Frames {
    let request = Request::get(format!("/v1/actions/{id}/stream"))
        .header("authorization", format!("Bearer {credential}"))
        .body(Body::empty())
        .expect("request");
    let response = tower::ServiceExt::oneshot(countersign_gateway::app(app.state.clone()), request)
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut frames = response.into_body().into_data_stream();
    let first = next_frame(&mut frames).await.expect("the status frame");
    assert!(first.contains("event: status"), "{first}");
    frames
}

async fn next_frame(frames: &mut Frames) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(20), frames.next())
        .await
        .expect("a frame or the end within 20 s")
        .map(|frame| String::from_utf8_lossy(&frame.expect("bytes")).into_owned())
}

/// Reads until the stream ends (within `deadline`), answering everything it sent.
async fn until_the_end(frames: &mut Frames, deadline: Duration) -> String {
    let mut seen = String::new();
    let ended = tokio::time::timeout(deadline, async {
        while let Some(frame) = frames.next().await {
            seen.push_str(&String::from_utf8_lossy(&frame.expect("bytes")));
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream is still open after {deadline:?}: {seen}"
    );
    seen
}

/// Reads until a frame contains `wanted`.
async fn until_seen(frames: &mut Frames, wanted: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(wanted) {
        let frame = next_frame(frames)
            .await
            .unwrap_or_else(|| panic!("the stream ended before {wanted}: {seen}"));
        seen.push_str(&frame);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_ends_when_its_api_key_is_revoked() {
    let app = app_with_short_recheck().await;
    let admin = token("adam", "acme", &["admin"]);
    let created = app
        .post(
            "/v1/api-keys",
            &admin,
            json!({ "name": "board", "roles": ["requester"] }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let key = created.body["api_key"].as_str().expect("secret").to_owned();
    let key_id = created.body["key_id"].as_str().expect("id").to_owned();
    let id = submitted(&app, &key).await;
    let mut frames = open_stream(&app, &id, &key).await;

    // While the key is valid, re-checks keep the stream open: a change after several of them
    // still arrives.
    tokio::time::sleep(RECHECK * 4).await;
    let voted = app
        .post(
            &format!("/v1/actions/{id}/approve"),
            &admin,
            json!({ "comment": "ok" }),
        )
        .await;
    assert_eq!(voted.status, StatusCode::OK, "{}", voted.body);
    until_seen(&mut frames, "event: VoteCast").await;

    let revoked = app
        .call(
            Method::DELETE,
            &format!("/v1/api-keys/{key_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    let rest = until_the_end(&mut frames, Duration::from_secs(10)).await;
    assert!(
        rest.contains("event: closed") && rest.contains("\"api_key_revoked\""),
        "the last event says why: {rest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_ends_when_its_token_expires() {
    let app = app_with_short_recheck().await;
    let requester = token("rita", "acme", &["requester"]);
    let id = submitted(&app, &requester).await;
    // Accepted now (within the clock-skew leeway), refused in about three seconds.
    let leeway = i64::try_from(LEEWAY_SECONDS).expect("leeway");
    let expiring = token_with(
        "rita",
        "acme",
        &["requester"],
        chrono::Utc::now().timestamp() - leeway + 3,
    );
    let mut frames = open_stream(&app, &id, &expiring).await;
    let rest = until_the_end(&mut frames, Duration::from_secs(15)).await;
    assert!(
        rest.contains("event: closed") && rest.contains("\"token_expired\""),
        "the last event says why: {rest}"
    );
    assert_eq!(
        app.get("/v1/actions", &expiring).await.code(),
        "token_expired",
        "the stream ended because a new request would be refused"
    );
}

fn jwt(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .expect("token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_not_valid_yet_or_claiming_a_reserved_subject_are_refused() {
    let app = TestApp::spawn("sqlite").await;
    let now = chrono::Utc::now().timestamp();
    let claims = |extra: Value| {
        let mut claims = json!({
            "sub": "rita", "tenant": "acme", "roles": ["requester"], "exp": now + 3600,
        });
        if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            claims.extend(extra);
        }
        claims
    };
    let cases = [
        (json!({ "nbf": now - 60 }), StatusCode::OK, ""),
        (json!({ "nbf": now + 10 }), StatusCode::OK, ""),
        (json!({ "iat": now }), StatusCode::OK, ""),
        (json!({ "iat": now + 10 }), StatusCode::OK, ""),
        (json!({ "sub": "keyholder" }), StatusCode::OK, ""),
        (
            json!({ "nbf": now + 365 * 86_400 }),
            StatusCode::UNAUTHORIZED,
            "token_not_yet_valid",
        ),
        (
            json!({ "nbf": "abc" }),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            json!({ "iat": now + 3600 }),
            StatusCode::UNAUTHORIZED,
            "token_not_yet_valid",
        ),
        (
            json!({ "iat": "abc" }),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            json!({ "sub": "key:abc" }),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            json!({ "sub": "KEY:abc" }),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            json!({ "sub": "system:deadlines" }),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            json!({ "sub": "executor:0123456789ab" }),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            json!({ "sub": "cli:root" }),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
    ];
    for (extra, status, code) in cases {
        let answer = app.get("/v1/actions", &jwt(&claims(extra.clone()))).await;
        assert_eq!(
            (answer.status, answer.code()),
            (status, code),
            "{extra}: {}",
            answer.body
        );
    }
}

on_both_stores!(the_requested_by_filter_refuses_what_the_user_history_refuses);
async fn the_requested_by_filter_refuses_what_the_user_history_refuses(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let rita = token("rita", "acme", &["requester"]);
    let answer = app.post("/v1/actions", &rita, refund()).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    // Read our own write: the inbox waits until the read model holds the submission, so the
    // history read after it sees it too.
    let written = answer.token().expect("consistency token");
    let owner = token("olga", "acme", &["owner"]);
    let caught_up = app
        .get(&format!("/v1/actions?consistent_with={written}"), &owner)
        .await;
    assert_eq!(caught_up.status, StatusCode::OK, "{}", caught_up.body);
    let callers = [
        ("an approver", token("ana", "acme", &["approver"]), false),
        (
            "another requester",
            token("rob", "acme", &["requester"]),
            false,
        ),
        ("the user", rita.clone(), true),
        ("an auditor", token("audrey", "acme", &["auditor"]), true),
        ("an admin", token("adam", "acme", &["admin"]), true),
        ("an owner", token("olga", "acme", &["owner"]), true),
    ];
    for (who, credential, allowed) in callers {
        let history = app.get("/v1/users/rita/actions", &credential).await;
        let filtered = app
            .get(
                &format!("/v1/actions?status=all&requested_by=rita&consistent_with={written}"),
                &credential,
            )
            .await;
        assert_eq!(
            (filtered.status, filtered.code()),
            (history.status, history.code()),
            "{who}: the filter answers as the resource does: {}",
            filtered.body
        );
        if allowed {
            assert_eq!(filtered.status, StatusCode::OK, "{who}: {}", filtered.body);
            assert_eq!(
                filtered.body["items"].as_array().map(Vec::len),
                Some(1),
                "{who}: {}",
                filtered.body
            );
        } else {
            assert_eq!(
                (filtered.status, filtered.code()),
                (StatusCode::FORBIDDEN, "forbidden"),
                "{who}"
            );
        }
    }
}

on_both_stores!(a_webhook_url_to_an_address_no_allow_list_opens_is_refused_when_saved);
async fn a_webhook_url_to_an_address_no_allow_list_opens_is_refused_when_saved(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let owner = token("olga", "acme", &["owner"]);
    let before = app.get("/v1/settings", &owner).await.body;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://0.0.0.0:5432/",
    ] {
        let mut settings = before.clone();
        settings["webhook_url"] = json!(url);
        let put = app
            .call(Method::PUT, "/v1/settings", Some(&owner), Some(settings))
            .await;
        assert_eq!(
            put.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{url}: {}",
            put.body
        );
        let text = put.body.to_string();
        assert!(
            text.contains("webhook_url") && text.contains("refused: "),
            "{url}: {text}"
        );
    }
    assert_eq!(
        app.get("/v1/settings", &owner).await.body,
        before,
        "nothing saved"
    );
}

on_both_stores!(settings_show_the_webhook_url_without_its_credentials);
async fn settings_show_the_webhook_url_without_its_credentials(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let owner = token("olga", "acme", &["owner"]);
    let secret_url = "https://hookuser:s3cr3t-pa55@hooks.example.com/countersign?x=1";
    let shown_url = "https://***@hooks.example.com/countersign?x=1";
    let mut settings = app.get("/v1/settings", &owner).await.body;
    settings["webhook_url"] = json!(secret_url);
    let put = app
        .call(Method::PUT, "/v1/settings", Some(&owner), Some(settings))
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert_eq!(put.body["webhook_url"], shown_url);
    for role in ["owner", "admin", "auditor"] {
        let read = app
            .get("/v1/settings", &token("someone", "acme", &[role]))
            .await;
        assert_eq!(read.status, StatusCode::OK, "{role}: {}", read.body);
        assert_eq!(read.body["webhook_url"], shown_url, "{role}");
        let text = read.body.to_string();
        assert!(
            !text.contains("s3cr3t") && !text.contains("hookuser"),
            "{role} sees no credential: {text}"
        );
    }

    // A client that sends back what it read (here: to switch to safe mode) keeps the
    // credentials it never saw: the log holds the redacted URL, the credentials are stored apart
    // for the executor.
    let mut read = app.get("/v1/settings", &owner).await.body;
    read["mode"] = json!("safe");
    let put = app
        .call(Method::PUT, "/v1/settings", Some(&owner), Some(read))
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert_eq!(put.body["mode"], "safe");
    let (stored, _) = app
        .state
        .app
        .ledger()
        .load::<TenantSettings>(&TenantId::parse("acme").expect("a tenant"))
        .await
        .expect("settings");
    let stored_url = stored.settings.webhook_url.expect("a webhook URL");
    assert_eq!(stored_url.as_str(), shown_url);
    let credentials = app
        .state
        .app
        .ledger()
        .secret("acme", &stored_url.secret_name())
        .await
        .expect("secrets");
    assert_eq!(credentials.as_deref(), Some("hookuser:s3cr3t-pa55"));
    assert_eq!(
        stored_url
            .with_credentials(credentials.as_deref().unwrap_or_default())
            .as_str(),
        secret_url
    );
}

on_both_stores!(a_consistency_token_above_the_log_head_is_refused_at_once);
async fn a_consistency_token_above_the_log_head_is_refused_at_once(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let rita = token("rita", "acme", &["requester"]);
    let answer = app.post("/v1/actions", &rita, refund()).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let id = answer.body["id"].as_str().expect("id").to_owned();
    let written = answer.token().expect("a consistency token");

    // Tokens for writes the log holds keep working.
    for good in [written.as_str(), "0.0"] {
        for path in [
            format!("/v1/actions/{id}?consistent_with={good}"),
            format!("/v1/actions?consistent_with={good}"),
        ] {
            let read = app.get(&path, &rita).await;
            assert_eq!(read.status, StatusCode::OK, "{path}: {}", read.body);
        }
    }

    let (txid, position) = written.split_once('.').expect("txid.position");
    let beyond = format!(
        "{txid}.{}",
        position.parse::<i64>().expect("position") + 1000
    );
    // A transaction a million ahead of this write's (a fixed number would be behind on a server
    // that has already run a million transactions: PostgreSQL's counter is server-wide).
    let later = format!(
        "{}.{position}",
        txid.parse::<i64>().expect("txid") + 1_000_000
    );
    for forged in [later.as_str(), beyond.as_str(), "9223372036854775807.0"] {
        for path in [
            format!("/v1/actions/{id}?consistent_with={forged}"),
            format!("/v1/actions?consistent_with={forged}"),
            format!("/v1/stats?consistent_with={forged}"),
        ] {
            let owner = token("olga", "acme", &["owner"]);
            let refused = app.get(&path, &owner).await;
            assert_eq!(
                (refused.status, refused.code()),
                (StatusCode::BAD_REQUEST, "consistency_token_ahead"),
                "{path}: {}",
                refused.body
            );
            // Waiting for the token would have ended in 503 `not_caught_up`: this code is the
            // proof that nothing waited.
            assert_eq!(refused.body["field"], "consistent_with");
        }
    }
}

fn assert_safe_headers(what: &str, headers: &HeaderMap) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header("cache-control"), "no-store", "{what}");
    assert!(
        header("content-security-policy").contains("frame-ancestors 'none'"),
        "{what}: {}",
        header("content-security-policy")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_response_forbids_sniffing_caching_and_framing() {
    let app = TestApp::spawn("sqlite").await;
    let rita = token("rita", "acme", &["requester"]);
    let owner = token("olga", "acme", &["owner"]);
    let id = submitted(&app, &rita).await;
    let answers = [
        ("the inbox", app.get("/v1/actions", &rita).await),
        (
            "a detail",
            app.get(&format!("/v1/actions/{id}"), &rita).await,
        ),
        ("settings", app.get("/v1/settings", &owner).await),
        (
            "a submission",
            app.post("/v1/actions", &rita, refund()).await,
        ),
        (
            "no credential",
            app.call(Method::GET, "/v1/actions", None, None).await,
        ),
        (
            "bad input",
            app.post("/v1/actions", &rita, json!({ "module": 1 })).await,
        ),
        ("an unknown path", app.get("/v1/nothing-here", &rita).await),
        (
            "health",
            app.call(Method::GET, "/healthz", None, None).await,
        ),
        (
            "the OpenAPI document",
            app.get("/openapi.json", &rita).await,
        ),
        ("metrics", app.get("/metrics", "metrics-secret").await),
    ];
    for (what, answer) in &answers {
        assert_safe_headers(what, &answer.headers);
    }
    let csp = answers[0].1.headers["content-security-policy"]
        .to_str()
        .expect("ascii");
    assert!(csp.contains("default-src 'none'"), "{csp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reference_page_allows_exactly_its_own_script() {
    let app = TestApp::spawn("sqlite").await;
    let page = app.call(Method::GET, "/docs", None, None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_safe_headers("/docs", &page.headers);
    let html = page.body.as_str().expect("html");
    let csp = page.headers["content-security-policy"]
        .to_str()
        .expect("ascii");
    let script_src = csp
        .split(';')
        .map(str::trim)
        .find(|directive| directive.starts_with("script-src "))
        .expect("a script-src directive");
    let (_, rest) = html.split_once("<script>").expect("an inline script");
    let (script, _) = rest.rsplit_once("</script>").expect("its end");
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script));
    assert_eq!(script_src, format!("script-src 'sha256-{hash}'"));
    assert_eq!(
        html.matches("</script>").count(),
        1,
        "one script element, the one hashed"
    );
    assert!(
        !html.contains("<script src"),
        "nothing loaded from elsewhere"
    );
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-eval"), "{csp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_stream_carries_the_headers_too() {
    let app = TestApp::spawn("sqlite").await;
    let rita = token("rita", "acme", &["requester"]);
    let id = submitted(&app, &rita).await;
    let request = Request::get(format!("/v1/actions/{id}/stream"))
        .header("authorization", format!("Bearer {rita}"))
        .body(Body::empty())
        .expect("request");
    let response = tower::ServiceExt::oneshot(countersign_gateway::app(app.state.clone()), request)
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_safe_headers("the stream", response.headers());
}
