//! `/healthz` (the process answers) and `/readyz` (the database answers and is migrated, and
//! none of the process's tailers is stalled: see `countersign_ledger::health`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

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
    if let Err(err) = state.app.ledger().ping().await {
        tracing::warn!(error = %err, "readiness: database unreachable");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({ "status": "unavailable", "store": store, "reason": "database unreachable" }),
            ),
        );
    }
    match state.app.ledger().pending_migrations().await {
        Ok(0) => {
            let stalled = state.app.ledger().health().stalled();
            if stalled.is_empty() {
                return (
                    StatusCode::OK,
                    Json(json!({ "status": "ready", "store": store })),
                );
            }
            let names: Vec<&str> = stalled.iter().map(|stall| stall.tailer.as_str()).collect();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "store": store,
                             "reason": format!("stalled: {}", names.join(", ")),
                             "stalled": stalled })),
            )
        }
        Ok(pending) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "store": store,
                         "reason": format!("{pending} migrations not applied") })),
        ),
        Err(err) => {
            tracing::warn!(error = %err, "readiness: cannot read migrations");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({ "status": "unavailable", "store": store, "reason": "migrations unreadable" }),
                ),
            )
        }
    }
}
