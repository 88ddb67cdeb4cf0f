//! The HTTP gateway: the `/v1` API with authentication and tenant isolation, its OpenAPI
//! document, health, readiness and metrics. [`app`] builds the whole router, so tests drive it
//! with `oneshot` and `serve` binds it to a socket. Handlers stay thin: parse the request, call
//! one use case of `countersign-app` as the authenticated [`countersign_app::Actor`], reply (see
//! [`error`] for the error policy). No role or state rule lives here.

pub mod auth;
pub mod error;
pub mod extract;
mod hub;
pub mod rate_limit;
pub mod routes;
mod shape;
pub mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aide::axum::ApiRouter;
use aide::openapi::{Info, OpenApi};
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::{Extension, Router};
use countersign_app::App;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use auth::{AuthConfig, Authenticator, Caller, Claims, mint_hs256};
pub use hub::EventHub;
pub use rate_limit::{RateLimit, RateLimiters};

/// Limits the gateway enforces on every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub body_bytes: usize,
    pub request_timeout: Duration,
    /// How often a long-lived response (an event stream) re-checks its credential: it ends at
    /// the first check after the key is revoked or the token expires.
    pub credential_recheck: Duration,
    /// Requests a tenant may make on `/v1`, all its principals together (none: unlimited).
    pub tenant_rate: Option<RateLimit>,
    /// Requests one principal (a token's subject or an API key) may make on `/v1` (none:
    /// unlimited).
    pub principal_rate: Option<RateLimit>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 256 * 1024,
            request_timeout: Duration::from_secs(30),
            credential_recheck: Duration::from_secs(5),
            tenant_rate: None,
            principal_rate: None,
        }
    }
}

/// What every handler can reach: the use cases, authentication, the live event hub, limits
/// and metrics.
#[derive(Debug, Clone)]
pub struct AppState {
    pub app: App,
    pub auth: Authenticator,
    pub hub: EventHub,
    pub limits: Limits,
    /// The limiters of [`Limits::tenant_rate`] and [`Limits::principal_rate`], shared by every
    /// clone of this state (see [`rate_limit`]).
    pub rate_limiters: RateLimiters,
    pub metrics: Option<PrometheusHandle>,
    pub metrics_token: Option<String>,
}

impl AppState {
    /// The state of a gateway over `app`, authenticating with `auth`, with default limits and no
    /// metrics. The event hub must be run ([`EventHub::run`]) for streams to see new events.
    pub fn new(app: App, auth: AuthConfig) -> Self {
        Self {
            app,
            auth: Authenticator::new(auth),
            hub: EventHub::new(),
            limits: Limits::default(),
            rate_limiters: RateLimiters::default(),
            metrics: None,
            metrics_token: None,
        }
    }
}

fn api_routes() -> ApiRouter<AppState> {
    ApiRouter::new()
        .merge(routes::actions::router())
        .merge(routes::policies::router())
        .merge(routes::members::router())
        .merge(routes::signing_keys::router())
        .merge(routes::notifications::router())
        .merge(routes::slack::router())
        .merge(routes::backtest::router())
        .merge(routes::delegations::router())
        .merge(routes::tenant::router())
        .merge(routes::ledger::router())
        .merge(routes::workflows::router())
        .merge(routes::events::router())
        .merge(routes::stream::router())
}

fn describe(api: &mut OpenApi) {
    api.info = Info {
        title: "countersign".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: Some(
            "An event-sourced approval ledger. Authenticate with `Authorization: Bearer <JWT or API key>`; \
             errors are RFC 9457 problem+json with a stable `code`. See docs/api.md."
                .into(),
        ),
        ..Info::default()
    };
    api.components
        .get_or_insert_with(Default::default)
        .security_schemes
        .insert(
            "bearer".into(),
            aide::openapi::ReferenceOr::Item(aide::openapi::SecurityScheme::Http {
                scheme: "bearer".into(),
                bearer_format: Some(
                    "JWT or countersign API key (csk.<tenant>.<id>.<secret>)".into(),
                ),
                description: None,
                extensions: Default::default(),
            }),
        );
}

/// The OpenAPI document of the `/v1` API.
pub fn openapi() -> OpenApi {
    let mut api = OpenApi::default();
    let _ = api_routes().finish_api(&mut api);
    describe(&mut api);
    api
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::histogram!(
        "countersign_http_request_duration_seconds",
        "route" => route,
        "method" => method,
        "status" => response.status().as_u16().to_string(),
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    let mut api = OpenApi::default();
    let limits = state.limits;
    let v1 = api_routes().finish_api(&mut api);
    describe(&mut api);
    Router::new()
        .merge(v1)
        .merge(routes::docs::router())
        .merge(routes::health::router())
        .merge(routes::notifications::links())
        .merge(routes::slack::callbacks())
        .layer(Extension(Arc::new(api)))
        .layer(axum::extract::DefaultBodyLimit::max(limits.body_bytes))
        .layer(axum::middleware::from_fn(record_metrics))
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
                let correlation_id = request
                    .headers()
                    .get(&extract::CORRELATION_ID)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or(request_id);
                tracing::info_span!(
                    "http",
                    method = %request.method(),
                    path = %request.uri().path(),
                    request_id,
                    correlation_id,
                    tenant = tracing::field::Empty,
                    principal = tracing::field::Empty,
                )
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        // Responses carry payloads, settings and keys: no cache keeps them.
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        // Nothing here is meant to run scripts or be framed; the reference page sets its own.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(routes::docs::API_CSP),
        ))
        .with_state(state)
}
