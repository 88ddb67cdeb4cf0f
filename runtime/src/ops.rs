//! The operational endpoints of a worker given a listen address: `/healthz`, `/readyz` (the
//! gateway's own handlers: the database answers, is migrated, and none of this process's
//! tailers is stalled) and `/metrics` (projection, sealer and relay lag live in the worker's
//! process). No `/v1` route, no docs.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use countersign_gateway::AppState;
use countersign_gateway::error::ApiError;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .merge(countersign_gateway::routes::health::router())
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Prometheus metrics for a scraper holding the metrics token (the gateway's rule).
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let Some(expected) = state.metrics_token.as_deref() else {
        return Err(ApiError::unauthorized(
            "metrics_unconfigured",
            "set COUNTERSIGN_METRICS_TOKEN to expose metrics",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    // Compared through digests, so the time taken says nothing about the token.
    let matches = given
        .is_some_and(|given| blake3::hash(given.as_bytes()) == blake3::hash(expected.as_bytes()));
    if !matches {
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
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}
