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
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
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
