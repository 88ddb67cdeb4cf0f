//! The console's router on a fresh store, as `serve` runs it: projections, the event hub, the
//! notifier and the workflow engine beside it; requests go through the router with `oneshot`.
#![allow(dead_code, reason = "each test binary uses a different subset")]
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use countersign_app::actions::{self, Submitted};
use countersign_app::notify::{Notifier, NotifierConfig};
use countersign_app::{Actor, App, Channel, policies};
use countersign_domain::PolicyId;
use countersign_domain::submission::Submission;
use countersign_domain::tenant::PolicyDraft;
use countersign_domain::{ActionId, Principal, Role, TenantId, UserId};
use countersign_gateway::{AppState, AuthConfig, Claims, EventHub, mint_hs256};
use countersign_ledger::testing::{TestStore, eventually, within};
use countersign_projections::{ProjectionStore, Supervisor};
use serde_json::{Value, json};
use tokio::sync::watch;
use tower::ServiceExt;

pub const SECRET: &[u8] = b"console-test-secret-0123456789abcdef";
pub const API_KEY_SECRET: [u8; 32] = [9; 32];

pub struct Harness {
    _store: TestStore,
    pub state: AppState,
    pub router: Router,
    _stop: watch::Sender<bool>,
}

pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .map(str::to_owned)
            .collect()
    }

    /// The `name=value` part of the cookie `name` set by this answer.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies()
            .into_iter()
            .find(|cookie| cookie.starts_with(&format!("{name}=")))
            .map(|cookie| cookie.split(';').next().unwrap_or_default().to_owned())
    }

    /// The value of the first hidden `csrf` field.
    pub fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start = self.body.find(marker).expect("a CSRF field") + marker.len();
        self.body[start..]
            .split('"')
            .next()
            .expect("a value")
            .to_owned()
    }

    pub fn location(&self) -> String {
        self.headers
            .get(header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

pub fn token(user: &str, tenant: &str, roles: &[&str], exp: i64) -> String {
    mint_hs256(
        SECRET,
        &Claims {
            sub: user.to_owned(),
            tenant: tenant.to_owned(),
            roles: roles.iter().map(|role| (*role).to_owned()).collect(),
            exp,
            iat: None,
            iss: None,
            aud: None,
        },
    )
    .expect("token")
}

pub fn hour() -> i64 {
    chrono::Utc::now().timestamp() + 3600
}

pub fn actor(user: &str, tenant: &str, roles: &[&str]) -> Actor {
    Actor::new(
        TenantId::parse(tenant).expect("tenant"),
        Principal {
            id: UserId::parse(user).expect("user"),
            roles: roles
                .iter()
                .map(|role| Role::parse(*role).expect("role"))
                .collect(),
        },
        Channel::Api,
    )
}

impl Harness {
    pub async fn start(kind: &str) -> Self {
        let store = TestStore::of_kind(kind).await.expect("store");
        let projections = ProjectionStore::open(&store.config)
            .await
            .expect("projections");
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(
            Supervisor::new(store.ledger.clone(), projections.clone()).run(stopped.clone()),
        );
        let hub = EventHub::new();
        tokio::spawn(hub.clone().run(store.ledger.clone(), stopped.clone()));
        tokio::spawn(
            Notifier::new(store.ledger.clone(), NotifierConfig::default()).run(stopped.clone()),
        );
        let seals = countersign_verification::SealStore::open(&store.config)
            .await
            .expect("seal store");
        let app = App::new(store.ledger.clone(), projections, seals)
            .with_api_key_secret(Some(API_KEY_SECRET));
        tokio::spawn(countersign_workflows::Engine::new(app.clone()).run(stopped));
        let state = AppState {
            hub,
            ..AppState::new(
                app,
                AuthConfig {
                    hs256_secret: Some(SECRET.to_vec()),
                    api_key_secret: Some(API_KEY_SECRET),
                    ..AuthConfig::default()
                },
            )
        };
        eventually(within(Duration::from_secs(30)), async || {
            for projection in countersign_projections::Projection::ALL {
                if state
                    .app
                    .projections()
                    .live(projection)
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                {
                    return Err("projections never started");
                }
            }
            Ok(())
        })
        .await;
        // Refunds need two approvals from approvers (or admins, owners).
        let draft: PolicyDraft = serde_json::from_value(json!({
            "name": "Refunds", "priority": 10, "criteria": {"module": "billing"},
            "requirements": {"stages": [{"name": "finance", "rules": [{"type": "any", "min_approvals": 2}]}]},
        }))
        .expect("policy");
        policies::create(
            &state.app,
            &actor("olivia", "acme", &["owner"]),
            PolicyId::parse("refunds").expect("id"),
            draft,
        )
        .await
        .expect("policy created");
        Self {
            _store: store,
            router: countersign_console::router(state.clone()),
            state,
            _stop: stop,
        }
    }

    pub async fn send(&self, request: Request<Body>) -> Page {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("response");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), 8 * 1024 * 1024)
            .await
            .expect("body");
        Page {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub async fn get(&self, path: &str, cookie: Option<&str>) -> Page {
        let mut request = Request::builder().method(Method::GET).uri(path);
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Body::empty()).expect("request"))
            .await
    }

    pub async fn post(&self, path: &str, cookie: Option<&str>, fields: &[(&str, &str)]) -> Page {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Body::from(body)).expect("request"))
            .await
    }

    /// Signs in through the form; the answer to the POST.
    pub async fn sign_in_answer(&self, credential: &str, extra: &[(&str, &str)]) -> Page {
        let form = self.get("/sign-in", None).await;
        assert_eq!(form.status, StatusCode::OK);
        let pre = form
            .cookie("countersign_sign_in")
            .expect("pre-session cookie");
        let csrf = form.csrf();
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([("csrf", csrf.as_str()), ("credential", credential)])
            .finish();
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/sign-in")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, pre);
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        self.send(request.body(Body::from(body)).expect("request"))
            .await
    }

    /// Signs in; the session cookie (`name=value`).
    pub async fn sign_in(&self, credential: &str) -> String {
        let answer = self.sign_in_answer(credential, &[]).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        answer
            .cookie("countersign_session")
            .expect("session cookie")
    }

    /// The CSRF token of a signed-in session, as its pages carry it.
    pub async fn csrf(&self, cookie: &str) -> String {
        let page = self.get("/inbox", Some(cookie)).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        page.csrf()
    }

    pub async fn submit(&self, by: &Actor, summary: &str, payload: Value) -> ActionId {
        let submission: Submission = serde_json::from_value(json!({
            "module": "billing", "capability": "refund", "summary": summary, "payload": payload,
            "impact": "mass refund", "flags": ["financial"],
        }))
        .expect("submission");
        match actions::submit(&self.state.app, by, submission, None)
            .await
            .expect("submitted")
        {
            Submitted::New(written) | Submitted::Existing(written) => written.value.id,
        }
    }
}
