//! The pages, one module per area. Each handler parses its input, calls one use case as the
//! session's actor and renders the outcome (or redirects after a POST).

pub mod batch;
pub mod detail;
pub mod governance;
pub mod inbox;
pub mod ledger;
pub mod notifications;
pub mod policies;
pub mod request;
pub mod settings;
pub mod sign_in;
pub mod stats;
pub mod workflows;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};

use crate::Console;
use crate::session::{SESSION_COOKIE, authenticate};

/// `/`: the inbox when the session still authenticates, else the sign-in page.
pub async fn home(State(console): State<Console>, headers: HeaderMap) -> Response {
    let jar = console.keys.jar(&headers);
    let signed_in = match jar.get(SESSION_COOKIE) {
        Some(cookie) => authenticate(&console, cookie.value()).await.is_ok(),
        None => false,
    };
    Redirect::to(if signed_in { "/inbox" } else { "/sign-in" }).into_response()
}

/// Whether htmx asked for a fragment (a drawer, rows) rather than a page.
pub fn is_htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request") && !headers.contains_key("hx-boosted")
}
