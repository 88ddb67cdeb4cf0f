//! `countersign serve`: the HTTP service on the embedded store or PostgreSQL, with the
//! projection supervisor and the event hub running beside it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use countersign_app::App;
use countersign_executor::{
    Executor, ExecutorConfig, JetStreamSource, LogSource, ProgressHub, Relay, StreamConfig, Sweeper,
};
use countersign_gateway::{AppState, EventHub, Limits, app};
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
    #[command(flatten)]
    pub executor: ExecutorArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ExecutorArgs {
    /// NATS with JetStream (2.9+). Without it, the executor tails the store directly.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// The JetStream stream events are relayed to.
    #[arg(
        long,
        env = "COUNTERSIGN_NATS_STREAM",
        default_value = "COUNTERSIGN_EVENTS"
    )]
    pub nats_stream: String,
    /// Subject prefix: events go to `<prefix>.events.<tenant>.<aggregate>.<event type>`.
    #[arg(long, env = "COUNTERSIGN_NATS_PREFIX", default_value = "countersign")]
    pub nats_prefix: String,
    /// Run the executor (and the relay) in this process.
    #[arg(long, env = "COUNTERSIGN_EXECUTOR", default_value_t = true, action = clap::ArgAction::Set)]
    pub executor: bool,
    /// SMTP server for `email.send` (`smtp://host:port`, `smtps://host`); without it emails go to the log.
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    #[arg(
        long,
        env = "COUNTERSIGN_SMTP_FROM",
        default_value = "countersign@localhost"
    )]
    pub smtp_from: String,
    /// How long an executor's claim on an attempt lasts.
    #[arg(
        long,
        env = "COUNTERSIGN_EXECUTION_LEASE_SECONDS",
        default_value_t = 60
    )]
    pub execution_lease_seconds: u64,
    /// How often deadlines, retries and expired leases are swept.
    #[arg(long, env = "COUNTERSIGN_SWEEP_SECONDS", default_value_t = 5)]
    pub sweep_seconds: u64,
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
    let mut sealer_stop = stopped.clone();
    let sealer = tokio::spawn(Sealer::new(ledger.clone(), seals.clone(), seal_config).run(
        async move {
            let _ = sealer_stop.wait_for(|stop| *stop).await;
        },
    ));
    let nats = match &args.executor.nats_url {
        Some(url) => Some(
            async_nats::connect(url.as_str())
                .await
                .with_context(|| format!("connecting to NATS at {url}"))?,
        ),
        None => None,
    };
    let progress = ProgressHub::default();
    let registry = countersign_executor::registry(
        args.auth.webhook_key(&args.store)?,
        args.executor
            .smtp_url
            .as_deref()
            .map(|url| (url, args.executor.smtp_from.as_str())),
        nats.clone(),
    )?;
    let executor = Executor::new(
        ledger.clone(),
        registry,
        progress.clone(),
        ExecutorConfig {
            lease: Duration::from_secs(args.executor.execution_lease_seconds.max(1)),
            ..ExecutorConfig::default()
        },
    );
    let mut workers = Vec::new();
    if args.executor.executor {
        let stream = StreamConfig {
            stream: args.executor.nats_stream.clone(),
            prefix: args.executor.nats_prefix.clone(),
        };
        match &nats {
            Some(client) => {
                workers.push(tokio::spawn(
                    Relay::new(ledger.clone(), client.clone(), stream.clone()).run(stopped.clone()),
                ));
                workers.push(tokio::spawn(
                    JetStreamSource {
                        executor: executor.clone(),
                        client: client.clone(),
                        stream,
                        consumer: "executor".into(),
                        max_deliver: 10,
                        concurrency: 16,
                    }
                    .run(stopped.clone()),
                ));
            }
            None => workers.push(tokio::spawn(
                LogSource {
                    executor: executor.clone(),
                }
                .run(stopped.clone()),
            )),
        }
        workers.push(tokio::spawn(
            Sweeper {
                executor: executor.clone(),
                projections: projections.clone(),
                interval: Duration::from_secs(args.executor.sweep_seconds.max(1)),
            }
            .run(stopped.clone()),
        ));
        tracing::info!(transport = if nats.is_some() { "nats" } else { "embedded" }, executor = %executor.identity(), "executor running");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, store = ledger.kind(), "countersign listening");
    let app_layer = App::new(ledger.clone(), projections.clone(), seals.clone())
        .with_progress(progress)
        .with_previewer(Arc::new(executor))
        .with_api_key_secret(auth.api_key_secret);
    let state = AppState {
        hub,
        limits: Limits {
            body_bytes: args.body_limit_bytes,
            request_timeout: Duration::from_secs(args.request_timeout_seconds),
            ..Limits::default()
        },
        metrics,
        metrics_token: args.metrics_token.clone(),
        ..AppState::new(app_layer, auth)
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
    for worker in workers {
        if let Ok(Err(err)) = worker.await {
            tracing::warn!(
                error = format!("{err:#}"),
                "an executor task stopped with an error"
            );
        }
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
