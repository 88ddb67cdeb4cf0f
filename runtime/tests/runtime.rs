//! The runtime as a library: each role builds on an embedded store, serves what it should on a
//! port chosen by the system, and stops when its shutdown future resolves.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

use std::net::SocketAddr;
use std::time::Duration;

use countersign_ledger::StoreConfig;
use countersign_runtime::{Role, Runtime, RuntimeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(role: Role, dir: &tempfile::TempDir) -> RuntimeConfig {
    RuntimeConfig::new(
        role,
        StoreConfig::Sqlite {
            path: dir.path().join("countersign.db"),
        },
    )
}

/// The status code of `GET path`.
async fn get(address: SocketAddr, path: &str) -> u16 {
    get_as(address, path, None).await
}

/// The status code of `GET path`, with `Authorization: Bearer <bearer>` when given.
async fn get_as(address: SocketAddr, path: &str, bearer: Option<&str>) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let authorization = bearer
        .map(|bearer| format!("Authorization: Bearer {bearer}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{authorization}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line")
}

/// Runs `runtime` until the returned sender fires; the handle answers how the run ended.
fn start(
    runtime: Runtime,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(runtime.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    (stop, run)
}

async fn stop(
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("stops in time")
        .expect("joins")
        .expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_serves_the_api_and_stops_when_asked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(Role::All, &dir);
    config.listen = Some("127.0.0.1:0".parse().expect("address"));
    let runtime = Runtime::build(config).await.expect("builds");
    let address = runtime.local_addr().expect("listens");
    assert_ne!(address.port(), 0, "the port the system chose");
    let (sender, run) = start(runtime);
    assert_eq!(get(address, "/healthz").await, 200);
    // No key material: the API is there and refuses.
    assert_eq!(get(address, "/v1/actions").await, 401);
    stop(sender, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_no_api_and_listens_only_when_asked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = Runtime::build(config(Role::Worker, &dir))
        .await
        .expect("builds");
    assert_eq!(
        runtime.local_addr(),
        None,
        "a worker listens only when asked"
    );
    let (sender, run) = start(runtime);
    stop(sender, run).await;

    let mut config = config(Role::Worker, &dir);
    config.listen = Some("127.0.0.1:0".parse().expect("address"));
    config.metrics_token = Some("scrape".into());
    let runtime = Runtime::build(config).await.expect("builds");
    let address = runtime.local_addr().expect("listens");
    let (sender, run) = start(runtime);
    assert_eq!(get(address, "/healthz").await, 200);
    assert_eq!(get(address, "/v1/actions").await, 404, "no /v1 on a worker");
    assert_eq!(get(address, "/openapi.json").await, 404);
    assert_eq!(get(address, "/metrics").await, 401, "no token, no metrics");
    stop(sender, run).await;
}

#[tokio::test]
async fn an_api_without_an_address_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(Role::Api, &dir);
    config.listen = None;
    let err = Runtime::build(config).await.expect_err("refused");
    assert!(err.to_string().contains("listen"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_rate_limits_reach_the_api() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(Role::Api, &dir);
    config.listen = Some("127.0.0.1:0".parse().expect("address"));
    let secret = b"runtime-rate-limit-secret".to_vec();
    config.auth.hs256_secret = Some(secret.clone());
    config.limits.principal_rate = countersign_gateway::RateLimit::parse("1/h").expect("a rate");
    let runtime = Runtime::build(config).await.expect("builds");
    let address = runtime.local_addr().expect("listens");
    let (sender, run) = start(runtime);
    let bearer = countersign_gateway::mint_hs256(
        &secret,
        &countersign_gateway::Claims {
            sub: "ana".into(),
            tenant: "acme".into(),
            roles: vec!["owner".into()],
            exp: an_hour_from_now(),
            iat: None,
            iss: None,
            aud: None,
        },
    )
    .expect("a token");
    let first = get_as(address, "/v1/actions", Some(&bearer)).await;
    assert_ne!(first, 429, "the first request is within the limit");
    assert_eq!(get_as(address, "/v1/actions", Some(&bearer)).await, 429);
    assert_eq!(
        get(address, "/healthz").await,
        200,
        "health is never limited"
    );
    stop(sender, run).await;
}

/// An hour from now, in seconds since the epoch.
fn an_hour_from_now() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs();
    i64::try_from(now).expect("a timestamp") + 3600
}

/// A webhook receiver on loopback answering 200 to each request; the count says how many came.
async fn receiver() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buffer = [0u8; 8192];
            let _ = stream.read(&mut buffer).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
        }
    });
    (format!("http://{address}/hook"), hits)
}

/// Approves and asks to run a `webhook.post` to `url` through the runtime's own use cases, and
/// answers the action once it is finished.
async fn post_webhook(app: &countersign_app::App, url: &str) -> serde_json::Value {
    use countersign_app::{Actor, Channel, actions, settings};
    use countersign_domain::{Principal, Role, TenantId, UserId};
    let tenant = TenantId::parse("acme").expect("tenant");
    let as_user = |user: &str, role: Role| {
        Actor::new(
            tenant.clone(),
            Principal::new(UserId::parse(user).expect("user"), [role]),
            Channel::System,
        )
    };
    let owner = as_user("olga", Role::owner());
    let requester = as_user("rita", Role::parse("requester").expect("role"));
    let mut current =
        serde_json::to_value(settings::read(app, &owner).await.expect("settings")).expect("json");
    current["webhook_url"] = serde_json::json!(url);
    settings::update(
        app,
        &owner,
        serde_json::from_value(current).expect("settings"),
    )
    .await
    .expect("webhook url saved");
    let submission = serde_json::from_value(serde_json::json!({
        "module": "webhook", "capability": "post", "summary": "Tell the CRM",
        "payload": { "order": 7 }
    }))
    .expect("submission");
    let id = match actions::submit(app, &requester, submission, None)
        .await
        .expect("submitted")
    {
        actions::Submitted::New(written) | actions::Submitted::Existing(written) => {
            written.value.id
        }
    };
    actions::vote(
        app,
        &owner,
        id,
        countersign_domain::quorum::Vote::Approve,
        None,
    )
    .await
    .expect("approved");
    actions::request_execution(app, &owner, id)
        .await
        .expect("execution requested");
    countersign_ledger::testing::eventually(
        countersign_ledger::testing::within(Duration::from_secs(30)),
        async || {
            let detail = actions::detail(app, &owner, id).await.expect("detail");
            let detail = serde_json::to_value(detail).expect("json");
            match detail["status"].as_str() {
                Some("executed" | "failed") => Ok(detail),
                status => Err(format!("still {status:?}")),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_requests_reach_loopback_only_when_the_operator_allows_it() {
    for (allow, delivered) in [("", false), ("127.0.0.0/8", true)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = config(Role::All, &dir);
        config.listen = Some("127.0.0.1:0".parse().expect("address"));
        config.executor.webhook_key = Some([9; 32]);
        config.executor.sweep_interval = Duration::from_secs(1);
        config.executor.outbound = allow.parse().expect("allow-list");
        let runtime = Runtime::build(config).await.expect("builds");
        let app = runtime.app().clone();
        let (stop_runtime, run) = start(runtime);
        let (url, hits) = receiver().await;
        let detail = post_webhook(&app, &url).await;
        let hits = hits.load(std::sync::atomic::Ordering::SeqCst);
        if delivered {
            assert_eq!(detail["status"], "executed", "{detail}");
            assert_eq!(hits, 1, "delivered once");
        } else {
            assert_eq!(detail["status"], "failed", "{detail}");
            assert!(
                detail.to_string().contains("loopback"),
                "the failure says why: {detail}"
            );
            assert_eq!(hits, 0, "nothing reached the receiver");
        }
        stop(stop_runtime, run).await;
    }
}
