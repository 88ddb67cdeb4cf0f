//! The HTTP gateway. `app(state)` builds the whole router, so tests drive it with `oneshot` and
//! `serve` binds it to a socket.

mod health;

use axum::Router;
use countersign_ledger::Ledger;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub ledger: Ledger,
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    Router::new().merge(health::router()).with_state(state)
}
