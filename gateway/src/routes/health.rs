//! `/healthz` (the process answers) and `/readyz` (the database answers and is migrated, and
//! none of the process's tailers is stalled: see `countersign_ledger::health`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use countersign_app::Readiness;

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = state.app.ledger().kind();
    match state.app.readiness().await {
        Readiness::Ready => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "store": store })),
        ),
        Readiness::Unavailable { reason, stalled } => {
            let mut body = json!({ "status": "unavailable", "store": store, "reason": reason });
            if !stalled.is_empty() {
                body["stalled"] = json!(stalled);
            }
            (StatusCode::SERVICE_UNAVAILABLE, Json(body))
        }
    }
}
