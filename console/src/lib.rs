//! The web console: server-rendered pages for the people who approve, request, administer and
//! audit — the inbox, an action's detail (a drawer in the inbox), the request form, policies,
//! settings, the ledger's evidence, stats, governance and batch execution ("Run approved") — plus
//! a live stream that keeps open pages current.
//!
//! Every page is a front door like the `/v1` API: it parses its input, calls one use case of
//! `countersign-app` as the signed-in [`countersign_app::Actor`] (channel `console`) and renders
//! the outcome. No role or state rule lives here; buttons are shown from the domain's own
//! predicates and every POST is re-checked by the use case it calls.
//!
//! Signing in verifies a token or API key with the gateway's [`countersign_gateway::Authenticator`]
//! exactly as `/v1` does; the session cookie carries that credential encrypted and authenticated
//! (so every request re-authenticates it: a revoked key stops at once, and every api process
//! shares sessions). Every form carries a CSRF token (a keyed hash of the session); pages are
//! served with a Content-Security-Policy that allows no inline script, and the assets (htmx, its
//! SSE extension, the console's own script and style) are embedded in the binary under
//! content-hashed names with a year-long immutable cache.

mod assets;
mod error;
mod live;
mod pages;
mod session;
mod view;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::routing::{get, post};
use countersign_gateway::AppState;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use session::SESSION_COOKIE;

/// The console's Content-Security-Policy: scripts, styles and connections only from this origin,
/// no inline script or style, never framed.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// What every console handler reaches: the gateway's state (use cases, authentication, the live
/// hub, limits) and the console's keys.
#[derive(Clone)]
pub struct Console {
    pub(crate) gateway: AppState,
    pub(crate) keys: Arc<session::Keys>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

/// The console's routes, to merge next to `countersign_gateway::app(state)`.
pub fn router(state: AppState) -> Router {
    let console = Console {
        keys: Arc::new(session::Keys::derive(state.auth.config())),
        gateway: state,
    };
    let pages = Router::new()
        .route("/", get(pages::home))
        .route(
            "/sign-in",
            get(pages::sign_in::form).post(pages::sign_in::submit),
        )
        .route("/sign-out", post(pages::sign_in::sign_out))
        .route("/inbox", get(pages::inbox::page))
        .route("/inbox/rows", get(pages::inbox::rows))
        .route("/inbox/badge", get(pages::inbox::badge))
        .route("/inbox/votes", post(pages::inbox::bulk_vote))
        .route("/actions/{id}", get(pages::detail::page))
        .route("/actions/{id}/vote", post(pages::detail::vote))
        .route("/actions/{id}/cancel", post(pages::detail::cancel))
        .route("/actions/{id}/execute", post(pages::detail::execute))
        .route("/actions/{id}/rollback", post(pages::detail::roll_back))
        .route("/actions/{id}/preview", get(pages::detail::preview))
        .route("/actions/{id}/live", get(live::execution))
        .route(
            "/request",
            get(pages::request::form).post(pages::request::submit),
        )
        .route("/request/simulate", post(pages::request::simulate))
        .route(
            "/policies",
            get(pages::policies::list).post(pages::policies::create),
        )
        .route("/policies/new", get(pages::policies::new))
        .route("/policies/simulate", post(pages::policies::simulate))
        .route(
            "/policies/{id}",
            get(pages::policies::edit).post(pages::policies::update),
        )
        .route("/policies/{id}/delete", post(pages::policies::delete))
        .route(
            "/settings",
            get(pages::settings::page).post(pages::settings::update),
        )
        .route("/ledger", get(pages::ledger::page))
        .route("/ledger/export", get(pages::ledger::export))
        .route("/stats", get(pages::stats::page))
        .route("/notifications", get(pages::notifications::page))
        .route("/notifications/badge", get(pages::notifications::badge))
        .route(
            "/notifications/read-all",
            post(pages::notifications::mark_all_read),
        )
        .route(
            "/notifications/{id}/read",
            post(pages::notifications::mark_read),
        )
        .route(
            "/preferences",
            get(pages::notifications::preferences).post(pages::notifications::save_preferences),
        )
        .route("/workflows", get(pages::workflows::list))
        .route("/workflows/{id}", get(pages::workflows::page))
        .route(
            "/workflows/{id}/enabled",
            post(pages::workflows::set_enabled),
        )
        .route("/workflow-runs", get(pages::workflows::runs))
        .route("/workflow-runs/{id}", get(pages::workflows::run))
        .route("/workflow-runs/{id}/decide", post(pages::workflows::decide))
        .route(
            "/delegations",
            get(pages::governance::delegations_page).post(pages::governance::grant),
        )
        .route("/delegations/{id}/revoke", post(pages::governance::revoke))
        .route(
            "/backtest",
            get(pages::governance::backtest_page).post(pages::governance::run_backtest),
        )
        .route(
            "/actions/{id}/break-glass",
            post(pages::governance::break_glass),
        )
        .route("/actions/{id}/review", post(pages::governance::review))
        .route(
            "/execute",
            get(pages::batch::page).post(pages::batch::submit),
        )
        .route("/ui/stream", get(live::stream))
        .route("/ui/banner", get(live::banner))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    let limits = console.gateway.limits;
    Router::new()
        .merge(pages)
        .route("/assets/{name}", get(assets::serve))
        .layer(axum::extract::DefaultBodyLimit::max(limits.body_bytes))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let request_id = request
                    .headers()
                    .get("x-request-id")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!(
                    "console",
                    method = %request.method(),
                    path = %request.uri().path(),
                    request_id,
                    tenant = tracing::field::Empty,
                    principal = tracing::field::Empty,
                )
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .with_state(console)
}
