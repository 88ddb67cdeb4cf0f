//! `countersign serve`: the HTTP service on the embedded store or PostgreSQL.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use countersign_gateway::{AppState, app};
use countersign_projections::{ProjectionStore, Supervisor};
use countersign_verification::{SealStore, Sealer};

use crate::store::StoreArgs;
use crate::verify::SealArgs;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on (port 0 picks a free port; the log says which).
    #[arg(long, env = "COUNTERSIGN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub seal: SealArgs,
}

pub async fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let seal_config = args.seal.config()?;
    let ledger = args.store.open_migrated().await?;
    let projections = ProjectionStore::open(&args.store.config()).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let supervisor =
        tokio::spawn(Supervisor::new(ledger.clone(), projections.clone()).run(stopped.clone()));
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
    axum::serve(
        listener,
        app(AppState {
            ledger: ledger.clone(),
        }),
    )
    .with_graceful_shutdown(shutdown_signal())
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
