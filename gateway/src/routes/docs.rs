//! `/openapi.json`, the API reference page (Redoc, embedded in the binary: no CDN), and
//! `/metrics` for Prometheus.

use std::sync::Arc;

use aide::openapi::OpenApi;
use aide::redoc::Redoc;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};

use crate::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs))
        .route("/metrics", get(metrics))
}

fn require_configured(state: &AppState) -> Result<(), ApiError> {
    if state.auth.config().is_configured() {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "authentication_unconfigured",
            "the service has no key material configured",
        ))
    }
}

async fn openapi(
    State(state): State<AppState>,
    Extension(api): Extension<Arc<OpenApi>>,
) -> Result<Json<OpenApi>, ApiError> {
    require_configured(&state)?;
    Ok(Json((*api).clone()))
}

async fn docs(State(state): State<AppState>) -> Result<Html<String>, ApiError> {
    require_configured(&state)?;
    Ok(Html(
        Redoc::new("/openapi.json")
            .with_title("countersign API")
            .html(),
    ))
}

/// Prometheus metrics, for a scraper holding `COUNTERSIGN_METRICS_TOKEN`.
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
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
        .into_response())
}
