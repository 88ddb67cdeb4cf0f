//! Health and readiness through the router, against real stores.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use countersign_gateway::{AppState, app};
use countersign_ledger::testing::TestStore;
use countersign_ledger::{Ledger, StoreConfig};
use serde_json::{Value, json};
use tower::ServiceExt;

async fn get(ledger: &Ledger, path: &str) -> (StatusCode, Value) {
    let response = app(AppState {
        ledger: ledger.clone(),
    })
    .oneshot(Request::get(path).body(Body::empty()).expect("request"))
    .await
    .expect("response");
    let status = response.status();
    let body = to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, serde_json::from_slice(&body).expect("json body"))
}

#[tokio::test]
async fn healthz_answers_while_the_process_runs() {
    let store = TestStore::sqlite().await.expect("store");
    assert_eq!(
        get(&store.ledger, "/healthz").await,
        (StatusCode::OK, json!({ "status": "ok" }))
    );
}

#[tokio::test]
async fn readyz_is_ready_on_a_migrated_store() {
    for store in [
        TestStore::sqlite().await.expect("sqlite"),
        TestStore::postgres().await.expect("postgres"),
    ] {
        let kind = store.ledger.kind();
        assert_eq!(
            get(&store.ledger, "/readyz").await,
            (StatusCode::OK, json!({ "status": "ready", "store": kind }))
        );
    }
}

#[tokio::test]
async fn readyz_is_unavailable_before_migration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Ledger::open(&StoreConfig::Sqlite {
        path: dir.path().join("fresh.db"),
    })
    .await
    .expect("open");
    let (status, body) = get(&ledger, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let pending = ledger.pending_migrations().await.expect("migrations");
    assert!(pending > 0);
    assert_eq!(body["reason"], format!("{pending} migrations not applied"));
    ledger.migrate().await.expect("migrate");
    assert_eq!(get(&ledger, "/readyz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn readyz_is_unavailable_when_the_database_is_gone() {
    let store = TestStore::sqlite().await.expect("store");
    store.ledger.close().await;
    let (status, body) = get(&store.ledger, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["reason"], "database unreachable");
}
