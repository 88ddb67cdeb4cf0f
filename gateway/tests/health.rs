//! Health and readiness through the router, against real stores.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use axum::http::{Method, StatusCode};
use countersign_ledger::{Ledger, StoreConfig};
use serde_json::json;
use support::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn healthz_answers_while_the_process_runs() {
    let app = TestApp::spawn("sqlite").await;
    let answer = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(
        (answer.status, answer.body),
        (StatusCode::OK, json!({ "status": "ok" }))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_ready_on_a_migrated_store() {
    for kind in ["sqlite", "postgres"] {
        let app = TestApp::spawn(kind).await;
        let answer = app.call(Method::GET, "/readyz", None, None).await;
        assert_eq!(
            (answer.status, answer.body),
            (StatusCode::OK, json!({ "status": "ready", "store": kind }))
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_unavailable_before_migration_and_when_the_database_is_gone() {
    let mut app = TestApp::spawn("sqlite").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let fresh = Ledger::open(&StoreConfig::Sqlite {
        path: dir.path().join("fresh.db"),
    })
    .await
    .expect("open");
    app.state.app = countersign_app::App::new(
        fresh.clone(),
        app.state.app.projections().clone(),
        app.state.app.seals().clone(),
    );
    let answer = app.call(Method::GET, "/readyz", None, None).await;
    let pending = fresh.pending_migrations().await.expect("migrations");
    assert!(pending > 0);
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        answer.body["reason"],
        format!("{pending} migrations not applied")
    );
    fresh.close().await;
    let answer = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body["reason"], "database unreachable");
}
