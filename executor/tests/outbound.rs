//! The outbound client (`countersign_executor::outbound`) and `webhook.post` through it, against
//! receivers on loopback: every address off the public internet is refused for good and reaches
//! nothing, unless the operator's allow-list (`COUNTERSIGN_OUTBOUND_ALLOW`) opens its range; no
//! redirect is followed; time and answers are bounded.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use countersign_domain::canonical::ExecutionKey;
use countersign_domain::tenant::WebhookUrl;
use countersign_domain::{ActionId, ActionType, TenantId};
use countersign_executor::builtin::Webhook;
use countersign_executor::outbound::{
    CheckingResolver, Limits, Outbound, OutboundError, OutboundPolicy,
};
use countersign_executor::{Capability, Failure, Invocation, Progress, ProgressHub};
use reqwest::dns::{Name, Resolve};
use serde_json::json;
use tokio::sync::mpsc;

/// A receiver on 127.0.0.1 and, on the same port, on [::1] when this host has IPv6 loopback:
/// `POST /hook` is recorded; `/redirect` answers 307 to `location`; `/big` answers 64 KiB;
/// `/slow` never answers.
struct Receiver {
    port: u16,
    received: mpsc::UnboundedReceiver<String>,
}

#[derive(Clone)]
struct Shared {
    received: mpsc::UnboundedSender<String>,
    location: String,
}

async fn record(State(shared): State<Shared>, body: Bytes) -> StatusCode {
    let _ = shared
        .received
        .send(String::from_utf8_lossy(&body).into_owned());
    StatusCode::OK
}

impl Receiver {
    async fn start(location: &str) -> Self {
        let (sender, received) = mpsc::unbounded_channel();
        let app = Router::new()
            .route("/hook", post(record))
            .route(
                "/redirect",
                post(|State(shared): State<Shared>| async move {
                    (
                        StatusCode::TEMPORARY_REDIRECT,
                        [("location", shared.location)],
                    )
                }),
            )
            .route("/big", post(|| async { vec![b'x'; 64 * 1024] }))
            .route("/slow", post(std::future::pending::<&'static str>))
            .with_state(Shared {
                received: sender,
                location: location.to_owned(),
            });
        let v4 = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = v4.local_addr().expect("address").port();
        if let Ok(v6) = tokio::net::TcpListener::bind(("::1", port)).await {
            let app = app.clone();
            tokio::spawn(async move { axum::serve(v6, app).await });
        }
        tokio::spawn(async move { axum::serve(v4, app).await });
        Self { port, received }
    }

    fn received(&mut self) -> Vec<String> {
        let mut all = Vec::new();
        while let Ok(body) = self.received.try_recv() {
            all.push(body);
        }
        all
    }
}

fn client(allow: &str) -> Outbound {
    Outbound::new(
        allow.parse().expect("an allow-list"),
        Limits {
            timeout: Duration::from_secs(10),
            max_body: 1024,
        },
    )
    .expect("an HTTP client")
}

fn invocation(url: &str) -> Invocation {
    let action_type = ActionType::parse("webhook.post").expect("an action type");
    let payload = json!({ "order": 1042 });
    Invocation {
        tenant: TenantId::parse("acme").expect("a tenant"),
        action_id: ActionId::from_uuid(uuid::Uuid::new_v4()),
        execution_key: ExecutionKey::compute(&action_type, &payload),
        action_type,
        payload,
        attempt: 1,
        settings: countersign_domain::tenant::Settings {
            webhook_url: Some(WebhookUrl::parse(url).expect("a webhook URL")),
            ..Default::default()
        },
    }
}

async fn post_webhook(allow: &str, url: &str) -> Result<(), Failure> {
    let invocation = invocation(url);
    let progress = Progress::new(ProgressHub::default(), invocation.action_id);
    Webhook::new([42; 32], client(allow))
        .execute(&invocation, &progress)
        .await
        .map(drop)
}

/// Whether this host can reach `[::1]` (some containers have no IPv6 loopback).
async fn ipv6_loopback() -> bool {
    tokio::net::TcpListener::bind("[::1]:0").await.is_ok()
}

#[tokio::test]
async fn addresses_off_the_public_internet_are_refused_for_good_and_reach_nothing() {
    let mut receiver = Receiver::start("/hook").await;
    let port = receiver.port;
    let cases = [
        (
            format!("http://127.0.0.1:{port}/hook"),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("http://127.1.2.3:{port}/hook"),
            "127.1.2.3 is a loopback address",
        ),
        (
            format!("http://2130706433:{port}/hook"),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("http://[::1]:{port}/hook"),
            "::1 is a loopback address",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/hook"),
            "::ffff:127.0.0.1 is a loopback address",
        ),
        (
            format!("http://[::127.0.0.1]:{port}/hook"),
            "a loopback address",
        ),
        (
            format!("http://localhost:{port}/hook"),
            "localhost resolves to ",
        ),
        (
            format!("http://10.0.0.1:{port}/hook"),
            "10.0.0.1 is a private address",
        ),
        (
            format!("http://172.16.0.1:{port}/hook"),
            "172.16.0.1 is a private address",
        ),
        (
            format!("http://172.31.255.1:{port}/hook"),
            "172.31.255.1 is a private address",
        ),
        (
            format!("http://192.168.1.1:{port}/hook"),
            "192.168.1.1 is a private address",
        ),
        (
            format!("http://100.64.0.1:{port}/hook"),
            "carrier-grade NAT",
        ),
        (
            format!("http://169.254.1.1:{port}/hook"),
            "169.254.1.1 is a link-local address",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "169.254.169.254 is the cloud metadata address; no outbound request may reach it",
        ),
        (
            format!("http://[fe80::1]:{port}/hook"),
            "a link-local address",
        ),
        (
            format!("http://[fd00::1]:{port}/hook"),
            "a unique-local address",
        ),
        (
            format!("http://0.0.0.0:{port}/hook"),
            "0.0.0.0 is an unspecified address",
        ),
        (
            format!("http://224.0.0.1:{port}/hook"),
            "a multicast address",
        ),
        (
            format!("http://192.0.2.1:{port}/hook"),
            "a documentation address",
        ),
    ];
    for (url, expected) in &cases {
        let failed = post_webhook("", url).await.expect_err(url);
        assert!(!failed.retryable, "{url}: {failed:?}");
        assert!(
            failed.message.starts_with("refused: ") && failed.message.contains(expected),
            "{url}: {failed:?}"
        );
        let closed = ["unspecified", "multicast", "metadata"]
            .iter()
            .any(|kind| expected.contains(kind));
        let hint = if closed {
            "; no outbound request may reach it"
        } else {
            "; allow it with COUNTERSIGN_OUTBOUND_ALLOW"
        };
        assert!(failed.message.ends_with(hint), "{url}: {failed:?}");
    }
    // An allow-list of other ranges opens none of these.
    for (url, _) in &cases {
        let failed = post_webhook("10.9.0.0/16, fd99::/16", url)
            .await
            .expect_err(url);
        assert!(
            !failed.retryable && failed.message.starts_with("refused: "),
            "{url}: {failed:?}"
        );
    }
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );
}

#[tokio::test]
async fn an_allowed_range_lets_the_receiver_be_reached_and_only_it() {
    let mut receiver = Receiver::start("/hook").await;
    let port = receiver.port;
    let allow = "127.0.0.0/8, ::1/128";
    post_webhook(allow, &format!("http://127.0.0.1:{port}/hook"))
        .await
        .expect("127.0.0.0/8 is allowed");
    post_webhook(allow, &format!("http://localhost:{port}/hook"))
        .await
        .expect("localhost resolves to allowed addresses only");
    let mut expected = 2;
    if ipv6_loopback().await {
        post_webhook(allow, &format!("http://[::1]:{port}/hook"))
            .await
            .expect("::1 is allowed");
        expected += 1;
    }
    assert_eq!(receiver.received().len(), expected);
    // 127.0.0.1/32 does not open the rest of 127.0.0.0/8, nor IPv6's loopback.
    for url in [
        format!("http://127.0.0.2:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
    ] {
        let failed = post_webhook("127.0.0.1/32", &url).await.expect_err(&url);
        assert!(!failed.retryable, "{url}: {failed:?}");
    }
    // Allowing everything still never reaches the metadata address.
    let failed = post_webhook(
        "0.0.0.0/0, ::/0",
        "http://169.254.169.254/latest/meta-data/",
    )
    .await
    .expect_err("metadata");
    assert!(!failed.retryable && failed.message.contains("no outbound request may reach it"));
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn a_redirect_to_loopback_from_an_allowed_receiver_is_not_followed() {
    let mut target = Receiver::start("/hook").await;
    for location in [
        format!("http://127.0.0.1:{}/hook", target.port),
        format!("http://localhost:{}/hook", target.port),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let mut redirecting = Receiver::start(&location).await;
        let url = format!("http://127.0.0.1:{}/redirect", redirecting.port);

        let failed = post_webhook("127.0.0.0/8", &url)
            .await
            .expect_err(&location);

        assert!(!failed.retryable, "{location}: {failed:?}");
        assert!(failed.message.contains("307"), "{location}: {failed:?}");
        assert!(redirecting.received().is_empty());
    }
    assert!(
        target.received().is_empty(),
        "the redirect's target got nothing"
    );
}

#[tokio::test]
async fn the_resolver_answers_a_name_only_when_every_address_it_resolves_to_is_allowed() {
    let name = || "localhost".parse::<Name>().expect("a name");
    let refused = CheckingResolver::new(OutboundPolicy::default())
        .resolve(name())
        .await
        .err()
        .expect("localhost is refused");
    assert!(
        refused
            .to_string()
            .starts_with("refused: localhost resolves to "),
        "{refused}"
    );
    // Only loopback IPv4 allowed: refused too when localhost also resolves to ::1.
    let v4_only: Vec<_> = tokio::net::lookup_host(("localhost", 0))
        .await
        .expect("localhost resolves")
        .collect();
    let partly = CheckingResolver::new("127.0.0.0/8".parse().expect("a CIDR"))
        .resolve(name())
        .await;
    assert_eq!(
        partly.is_ok(),
        v4_only.iter().all(|address| address.is_ipv4()),
        "every address is checked"
    );
    let addresses: Vec<_> = CheckingResolver::new("127.0.0.0/8, ::1/128".parse().expect("CIDRs"))
        .resolve(name())
        .await
        .unwrap_or_else(|err| panic!("allowed: {err}"))
        .collect();
    assert!(!addresses.is_empty());
    assert!(addresses.iter().all(|address| address.ip().is_loopback()));
}

#[tokio::test]
async fn answers_are_cut_at_the_bound_and_slow_receivers_time_out_retryably() {
    let receiver = Receiver::start("/hook").await;
    let port = receiver.port;
    let answer = client("127.0.0.0/8")
        .post(
            &format!("http://127.0.0.1:{port}/big"),
            |request| request,
            Vec::new(),
        )
        .await
        .expect("an answer");
    assert!(answer.truncated);
    assert_eq!(answer.body.len(), 1024);

    let impatient = Outbound::new(
        "127.0.0.0/8".parse().expect("a CIDR"),
        Limits {
            timeout: Duration::from_millis(300),
            ..Limits::default()
        },
    )
    .expect("an HTTP client");
    let err = impatient
        .post(
            &format!("http://127.0.0.1:{port}/slow"),
            |request| request,
            Vec::new(),
        )
        .await
        .expect_err("timed out");
    assert!(
        matches!(err, OutboundError::Transport(_)) && err.retryable(),
        "{err:?}"
    );

    let err = client("")
        .post("ftp://example.com/x", |request| request, Vec::new())
        .await
        .expect_err("not http");
    assert!(matches!(err, OutboundError::InvalidUrl(_)), "{err:?}");
}
