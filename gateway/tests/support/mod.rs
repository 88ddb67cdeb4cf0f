//! A running app on a fresh store: projections and the event hub run as in `serve`; requests go
//! through the router with `oneshot`.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use countersign_app::App;
use countersign_gateway::{
    AppState, AuthConfig, Claims, EventHub, Limits, RateLimit, RateLimiters, app, mint_hs256,
};
use countersign_ledger::testing::{TestStore, TestStream, eventually, settled_log, within};
use countersign_projections::{ProjectionStore, Supervisor};
use serde_json::{Value, json};
use tokio::sync::watch;
use tower::ServiceExt;

pub const SECRET: &[u8] = b"test-secret-for-countersign-gateway";
pub const API_KEY_SECRET: [u8; 32] = [7; 32];

pub struct TestApp {
    pub store: TestStore,
    pub state: AppState,
    /// The executor running beside the gateway ([`TestApp::with_executor`]).
    pub executor: Option<countersign_executor::Executor>,
    /// The JetStream stream of [`TestApp::with_nats_executor`], deleted with the app.
    pub nats_stream: Option<TestStream>,
    stop: watch::Sender<bool>,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }

    pub fn token(&self) -> Option<String> {
        self.headers
            .get("x-consistency-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

pub fn token(user: &str, tenant: &str, roles: &[&str]) -> String {
    token_with(user, tenant, roles, chrono::Utc::now().timestamp() + 3600)
}

pub fn token_with(user: &str, tenant: &str, roles: &[&str], exp: i64) -> String {
    mint_hs256(
        SECRET,
        &Claims {
            sub: user.to_owned(),
            tenant: tenant.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            exp,
            iat: None,
            iss: None,
            aud: None,
        },
    )
    .expect("token")
}

impl TestApp {
    pub async fn spawn(kind: &str) -> Self {
        Self::with_auth(
            kind,
            AuthConfig {
                hs256_secret: Some(SECRET.to_vec()),
                api_key_secret: Some(API_KEY_SECRET),
                ..AuthConfig::default()
            },
        )
        .await
    }

    /// An app whose process also runs an executor (embedded mode) and sweeps deadlines.
    pub async fn with_executor(kind: &str, webhook_key: [u8; 32]) -> Self {
        Self::spawn(kind)
            .await
            .run_executor(webhook_key, None)
            .await
    }

    /// An app whose process also relays the log to NATS JetStream (the tests' server, on a
    /// stream of its own) and runs the executor as a JetStream consumer, as `serve` does with
    /// `--nats-url`.
    pub async fn with_nats_executor(kind: &str, webhook_key: [u8; 32]) -> Self {
        let stream = TestStream::new("test");
        let client = async_nats::connect(stream.url())
            .await
            .expect("NATS with JetStream");
        let mut app = Self::spawn(kind).await;
        let config = countersign_executor::StreamConfig {
            stream: stream.name.clone(),
            prefix: stream.prefix.clone(),
        };
        app.nats_stream = Some(stream);
        app.run_executor(webhook_key, Some((client, config))).await
    }

    async fn run_executor(
        mut self,
        webhook_key: [u8; 32],
        nats: Option<(async_nats::Client, countersign_executor::StreamConfig)>,
    ) -> Self {
        // Receivers run on loopback: the tests' allow-list opens it, as an operator's would.
        let registry = countersign_executor::registry_with(
            Some(webhook_key),
            None,
            None,
            "127.0.0.0/8".parse().expect("a CIDR"),
        )
        .expect("registry");
        let executor = countersign_executor::Executor::new(
            self.store.ledger.clone(),
            registry,
            self.state.app.progress().clone(),
            countersign_executor::ExecutorConfig {
                lease: Duration::from_secs(10),
                ..Default::default()
            },
        );
        let stopped = self.stop.subscribe();
        match nats {
            None => {
                tokio::spawn(
                    countersign_executor::LogSource {
                        executor: executor.clone(),
                    }
                    .run(stopped.clone()),
                );
            }
            Some((client, stream)) => {
                tokio::spawn(
                    countersign_executor::Relay::new(
                        self.store.ledger.clone(),
                        client.clone(),
                        stream.clone(),
                    )
                    .run(stopped.clone()),
                );
                tokio::spawn(
                    countersign_executor::JetStreamSource {
                        executor: executor.clone(),
                        client,
                        stream,
                        consumer: "executor".into(),
                        max_deliver: 10,
                        concurrency: 4,
                    }
                    .run(stopped.clone()),
                );
            }
        }
        tokio::spawn(
            countersign_executor::Sweeper {
                executor: executor.clone(),
                projections: self.state.app.projections().clone(),
                interval: Duration::from_millis(200),
            }
            .run(stopped),
        );
        self.state.app = self
            .state
            .app
            .clone()
            .with_previewer(Arc::new(executor.clone()));
        self.executor = Some(executor);
        self
    }

    /// The same app with rate limits per tenant and per principal (none: unlimited), on fresh
    /// limiters.
    #[must_use]
    pub fn with_rate_limits(
        mut self,
        tenant: Option<RateLimit>,
        principal: Option<RateLimit>,
    ) -> Self {
        self.state.limits.tenant_rate = tenant;
        self.state.limits.principal_rate = principal;
        self.state.rate_limiters = RateLimiters::default();
        self
    }

    /// The same app rendering `/metrics` from this test binary's Prometheus recorder (installed
    /// once per process).
    #[must_use]
    pub fn with_metrics(mut self) -> Self {
        static RECORDER: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
            std::sync::OnceLock::new();
        let handle = RECORDER.get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("the only recorder of this test binary")
        });
        self.state.metrics = Some(handle.clone());
        self
    }

    pub async fn with_auth(kind: &str, auth: AuthConfig) -> Self {
        let store = TestStore::of_kind(kind).await.expect("store");
        let projections = ProjectionStore::open(&store.config)
            .await
            .expect("projections");
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(
            Supervisor::new(store.ledger.clone(), projections.clone()).run(stopped.clone()),
        );
        let hub = EventHub::new();
        tokio::spawn(hub.clone().run(store.ledger.clone(), stopped));
        let seals = countersign_verification::SealStore::open(&store.config)
            .await
            .expect("seal store");
        let app = App::new(store.ledger.clone(), projections, seals)
            .with_api_key_secret(auth.api_key_secret);
        let state = AppState {
            hub,
            limits: Limits {
                body_bytes: 64 * 1024,
                ..Limits::default()
            },
            metrics_token: Some("metrics-secret".into()),
            ..AppState::new(app, auth)
        };
        // Wait for the projections to exist, as a deployed service would before taking traffic.
        eventually(within(Duration::from_secs(30)), async || {
            for projection in countersign_projections::Projection::ALL {
                let live = state.app.projections().live(projection).await;
                if live.ok().flatten().is_none() {
                    return Err("projections never started");
                }
            }
            Ok(())
        })
        .await;
        Self {
            store,
            state,
            executor: None,
            nats_stream: None,
            stop,
        }
    }

    pub async fn raw(&self, request: Request<Body>) -> Answer {
        let response = app(self.state.clone())
            .oneshot(request)
            .await
            .expect("response");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), 4 << 20).await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .expect("request");
        self.raw(request).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// Reads the tenant's settings as `owner`, sets one field, writes them back and checks the
    /// write was accepted; answers the written settings.
    pub async fn set_setting(&self, owner: &str, field: &str, value: Value) -> Answer {
        let mut settings = self.get("/v1/settings", owner).await.body;
        settings[field] = value;
        let changed = self
            .call(Method::PUT, "/v1/settings", Some(owner), Some(settings))
            .await;
        assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
        changed
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Waits until the action's detail answers `status`.
    pub async fn wait_for_status(&self, id: &str, bearer: &str, status: &str) {
        eventually(within(Duration::from_secs(30)), async || {
            let detail = self.get(&format!("/v1/actions/{id}"), bearer).await;
            if detail.body["status"] == status {
                return Ok(());
            }
            Err(format!("never {status}: {}", detail.body))
        })
        .await;
    }

    /// The number of committed events, once every one is readable.
    pub async fn settled_event_count(&self) -> usize {
        settled_log(&self.store.ledger).await.len()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A real HTTP receiver on a free loopback port (`<url>/hook`); it answers 200 and keeps each
/// delivery's headers and body.
pub async fn receiver() -> (String, Arc<Mutex<Vec<Delivery>>>) {
    let deliveries = Arc::new(Mutex::new(Vec::new()));
    let recorded = deliveries.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let recorded = recorded.clone();
            async move {
                recorded
                    .lock()
                    .expect("lock")
                    .push(Delivery { headers, body });
                axum::Json(json!({ "accepted": true }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/hook"), deliveries)
}
