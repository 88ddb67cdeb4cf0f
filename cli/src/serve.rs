//! `countersign serve`: the HTTP service on the embedded store or PostgreSQL, with the
//! projection supervisor and the event hub running beside it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use countersign_gateway::{AppState, Authenticator, EventHub, Limits, app};
use countersign_projections::{ProjectionStore, Supervisor};
use countersign_verification::{SealStore, Sealer};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::auth::AuthArgs;
use crate::store::StoreArgs;
use crate::verify::SealArgs;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Address to listen on (port 0 picks a free port; the log says which).
    #[arg(long, env = "COUNTERSIGN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Bearer token a Prometheus scraper sends to read /metrics (unset: /metrics is refused).
    #[arg(long, env = "COUNTERSIGN_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Largest request body accepted.
    #[arg(long, env = "COUNTERSIGN_BODY_LIMIT_BYTES", default_value_t = 256 * 1024)]
    pub body_limit_bytes: usize,
    /// Requests running longer are answered 408.
    #[arg(
        long,
        env = "COUNTERSIGN_REQUEST_TIMEOUT_SECONDS",
        default_value_t = 30
    )]
    pub request_timeout_seconds: u64,
    #[command(flatten)]
    pub seal: SealArgs,
}

pub async fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let seal_config = args.seal.config()?;
    let auth = args.auth.config(&args.store)?;
    if !auth.is_configured() {
        tracing::warn!(
            "no key material configured: every /v1 request will be refused (run `countersign demo` for development keys)"
        );
    }
    let metrics = PrometheusBuilder::new().install_recorder().ok();
    let ledger = args.store.open_migrated().await?;
    let projections = ProjectionStore::open(&args.store.config()).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let supervisor =
        tokio::spawn(Supervisor::new(ledger.clone(), projections.clone()).run(stopped.clone()));
    let hub = EventHub::new();
    let hub_task = tokio::spawn(hub.clone().run(ledger.clone(), stopped.clone()));
    let seals = SealStore::open(&args.store.config()).await?;
    let mut sealer_stop = stopped;
    let sealer = tokio::spawn(Sealer::new(ledger.clone(), seals.clone(), seal_config).run(
        async move {
            let _ = sealer_stop.wait_for(|stop| *stop).await;
        },
    ));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, store = ledger.kind(), "countersign listening");
    let state = AppState {
        ledger: ledger.clone(),
        projections: projections.clone(),
        seals: seals.clone(),
        auth: Authenticator::new(auth),
        hub,
        limits: Limits {
            body_bytes: args.body_limit_bytes,
            request_timeout: Duration::from_secs(args.request_timeout_seconds),
        },
        metrics,
        metrics_token: args.metrics_token.clone(),
    };
    let shutdown = {
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        }
    };
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")?;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    match supervisor.await {
        Ok(Err(err)) => tracing::warn!(
            error = format!("{err:#}"),
            "projections stopped with an error"
        ),
        Err(err) => tracing::warn!(error = %err, "projections task failed"),
        Ok(Ok(())) => {}
    }
    let _ = hub_task.await;
    match sealer.await {
        Ok(Err(err)) => tracing::warn!(error = format!("{err:#}"), "sealer stopped with an error"),
        Err(err) => tracing::warn!(error = %err, "sealer task failed"),
        Ok(Ok(())) => {}
    }
    seals.close().await;
    projections.close().await;
    ledger.close().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
