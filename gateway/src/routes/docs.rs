//! `/openapi.json` and the API reference page (Redoc, embedded in the binary: no CDN).
//!
//! Every response forbids framing and scripts ([`API_CSP`]); the reference page's policy allows
//! exactly its one inline script, by hash ([`reference_page`]).

use std::sync::{Arc, LazyLock};

use aide::openapi::OpenApi;
use aide::redoc::Redoc;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs))
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

/// The Content-Security-Policy of every response but the reference page: nothing loads, runs
/// or frames it.
pub const API_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The reference page and its Content-Security-Policy. The page is Redoc's standalone bundle in
/// one inline `<script>`, allowed by its SHA-256 (no `'unsafe-inline'` scripts, no `eval`);
/// Redoc injects its styles (`'unsafe-inline'` styles), fetches `/openapi.json`
/// (`connect-src 'self'`), runs its search in a `blob:` worker and draws icons from `data:`
/// URIs. The Redocly logo it would fetch from cdn.redoc.ly is blocked (the page hides it).
pub fn reference_page() -> &'static (String, String) {
    static PAGE: LazyLock<(String, String)> = LazyLock::new(|| {
        let html = Redoc::new("/openapi.json")
            .with_title("countersign API")
            .html();
        let script = html
            .split_once("<script>")
            .and_then(|(_, rest)| rest.rsplit_once("</script>"))
            .map_or("", |(script, _)| script);
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script));
        let csp = format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src blob:; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        );
        (html, csp)
    });
    &PAGE
}

async fn docs(State(state): State<AppState>) -> Result<Response, ApiError> {
    require_configured(&state)?;
    let (html, csp) = reference_page();
    let mut response = Html(html.clone()).into_response();
    if let Ok(csp) = HeaderValue::from_str(csp) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    Ok(response)
}
