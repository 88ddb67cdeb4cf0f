//! The operational endpoints of a worker given a listen address: `/healthz`, `/readyz` (the
//! gateway's operational router: the database answers, is migrated, and none of this process's
//! tailers is stalled) and `/metrics` (projection, sealer and relay lag live in the worker's
//! process). No `/v1` route, no docs.

use axum::Router;
use countersign_gateway::AppState;

pub(crate) fn router(state: AppState) -> Router {
    countersign_gateway::routes::health::router().with_state(state)
}
