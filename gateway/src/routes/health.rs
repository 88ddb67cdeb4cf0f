//! The operational endpoints, served by every role: `/metrics` for Prometheus, `/healthz` (the
//! process answers) and `/readyz` (the database answers and is migrated, and
//! none of the process's tailers is stalled: see `countersign_ledger::health`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use countersign_app::Readiness;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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

/// Whether the request carries `Authorization: Bearer <expected>` (compared in constant time).
fn bearer_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|given| blake3::hash(given.as_bytes()) == blake3::hash(expected.as_bytes()))
}

/// Prometheus metrics, for a scraper holding `COUNTERSIGN_METRICS_TOKEN`.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let Some(expected) = state.metrics_token.as_deref() else {
        return Err(ApiError::unauthorized(
            "metrics_unconfigured",
            "set COUNTERSIGN_METRICS_TOKEN to expose metrics",
        ));
    };
    if !bearer_is(&headers, expected) {
        return Err(ApiError::unauthorized(
            "unauthorized",
            "metrics need `Authorization: Bearer <metrics token>`",
        ));
    }
    let body = state
        .metrics
        .as_ref()
        .map(|handle| handle.render())
        .unwrap_or_default();
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
        .into_response())
}
