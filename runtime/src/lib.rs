//! The countersign service as a library: [`Runtime::build`] opens the stores (migrated; the
//! ledger's pool, and one pool the projections and the seals share), builds the use cases
//! ([`countersign_app::App`]), binds the listener and connects NATS;
//! [`Runtime::run_until_stopped`] runs what the process's [`Role`] asks for until a future
//! resolves, then stops every task the same way and closes the stores. `countersign serve` is
//! this crate behind flags.
//!
//! # Roles
//!
//! - **api** serves HTTP: the gateway's router (`/v1`, docs, health, metrics) and the event hub
//!   its streams read. The hub tails the shared log, so a stream sees every event whichever
//!   process wrote it. An executor object is built only to answer dry-run previews; it runs
//!   nothing. Any number of api processes can run side by side: they keep no state.
//! - **worker** runs the tailers: the projection supervisor, the sealer, the relay (with NATS),
//!   the executor (the JetStream consumer with NATS, else the embedded log source) and the
//!   deadline sweep. It serves no `/v1` API; given a listen address it answers `/healthz`,
//!   `/readyz` and `/metrics` there.
//! - **all** runs both in one process.
//!
//! With NATS, the progress capabilities report while they run crosses from the processes running
//! the executor to the api processes running none (NATS core, `<prefix>.progress.<action id>`;
//! see `progress.rs`), so every api process's streams show it.
//!
//! # Several workers
//!
//! Every singleton a worker starts takes its tailer lock first (a PostgreSQL session advisory
//! lock, or a file lock on SQLite: `countersign_ledger::lock`) and, while another process holds
//! it, retries every 2 s until shut down:
//!
//! | task | lock |
//! | --- | --- |
//! | each live projection runner (`Supervisor`) | `projection:<name>:g<generation>` |
//! | a projection rebuild (`Supervisor`, on a version change) | `projection-build:<name>` (a second builder gives up) |
//! | the sealer | `sealer` |
//! | the relay | `relay:<stream>` |
//! | the embedded executor (`LogSource`, without NATS) | `executor` |
//! | the notifier (`countersign_app::notify::Notifier`) | `notifier` |
//! | the notification dispatcher (email, Slack, webhook deliveries) | `notify-dispatch` |
//!
//! The rest may run on every worker at once: the JetStream durable consumer hands each message
//! to one of its pullers and the ledger refuses a second claim of an execution
//! (`ExecutionStarted`), so an action runs once however many executors consume; the sweep only
//! sends commands the ledger refuses when another instance got there first. When the active
//! worker dies, PostgreSQL ends its sessions (at once when the process is killed; after the
//! server notices a vanished host through TCP keepalives otherwise), the locks go with them,
//! and a standby takes each one within its next 2 s retry.
//!
//! # Stopping
//!
//! One way for every task: a `watch` channel turned `true` when the shutdown future resolves.
//! The HTTP server's graceful shutdown waits on the same channel. Every task is joined (errors
//! are logged with their cause chain), for at most [`RuntimeConfig::shutdown_grace`]; then the
//! stores are closed.
//!
//! A tailer that fails before the stop (a store or NATS error it does not retry by itself, such
//! as one while taking its lock) is logged and started again after a pause, 1 s doubling to
//! 30 s: a database outage does not take the process down. A task that cannot be started again
//! — the HTTP server — or a panic stops the whole process: the runtime stops the other tasks
//! and returns an error, so that a process supervisor restarts it.

mod config;
mod ops;
mod progress;
mod role;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use countersign_app::{App, ProgressHub};
use countersign_executor::{Executor, ExecutorConfig, JetStreamSource, LogSource, Relay, Sweeper};
use countersign_gateway::AppState;
use countersign_ledger::{Ledger, StoreConfig};
use countersign_projections::{ProjectionStore, Supervisor};
use countersign_verification::{SealStore, Sealer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{Id, JoinError, JoinSet};
use tracing::{error, info, warn};

pub use config::{DEFAULT_LISTEN, ExecutorSettings, RuntimeConfig, SmtpSettings};
pub use role::{Role, UnknownRole};

/// Deliveries of one JetStream message before it goes to the dead-letter subject.
const MAX_DELIVER: i64 = 10;
/// Actions one executor works on at once.
const CONCURRENCY: usize = 16;
/// The first pause before a failed task is started again, and the longest.
const RESTART_PAUSE: Duration = Duration::from_secs(1);
const MAX_RESTART_PAUSE: Duration = Duration::from_secs(30);

/// A built process, ready to run: stores open and migrated, listener bound, NATS connected.
pub struct Runtime {
    config: RuntimeConfig,
    app: App,
    executor: Executor,
    nats: Option<async_nats::Client>,
    listener: Option<TcpListener>,
    local_addr: Option<SocketAddr>,
    metrics: Option<PrometheusHandle>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("role", &self.config.role)
            .field("store", &self.app.ledger().kind())
            .field("local_addr", &self.local_addr)
            .field("nats", &self.nats.is_some())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Opens and migrates the stores, connects NATS (when configured), binds the listener (when
    /// the role serves HTTP or a worker was given an address) and builds the use cases.
    /// Nothing runs until [`Runtime::run_until_stopped`].
    pub async fn build(config: RuntimeConfig) -> anyhow::Result<Self> {
        let role = config.role;
        if role.serves_api() && config.listen.is_none() {
            bail!("the {role} role serves HTTP: it needs an address to listen on");
        }
        if role.serves_api() && !config.auth.is_configured() {
            warn!(
                "no key material configured: every /v1 request will be refused (run `countersign demo` for development keys)"
            );
        }
        // Process-wide; a second runtime in the same process (tests) reuses the first's.
        let metrics = config
            .listen
            .and_then(|_| PrometheusBuilder::new().install_recorder().ok());
        let ledger = open_migrated(&config.store).await?;
        let (projections, seals) = open_projections_and_seals(&config.store).await?;
        let nats = match &config.executor.nats_url {
            Some(urls) => Some(connect_nats(urls, role).await?),
            None => None,
        };
        // Bound last: once the port accepts connections, the stores are open and migrated.
        let listener = match config.listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding {address}"))?,
            ),
            None => None,
        };
        let local_addr = listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
            .context("reading the listener's address")?;
        let progress = ProgressHub::default();
        let registry = countersign_executor::registry_with(
            config.executor.webhook_key,
            config
                .executor
                .smtp
                .as_ref()
                .map(|smtp| (smtp.url.as_str(), smtp.from.as_str())),
            nats.clone(),
            config.executor.outbound.clone(),
        )?;
        let executor = Executor::new(
            ledger.clone(),
            registry,
            progress.clone(),
            ExecutorConfig {
                lease: config.executor.lease.max(Duration::from_secs(1)),
                ..ExecutorConfig::default()
            },
        );
        let app = App::new(ledger, projections, seals)
            .with_progress(progress)
            .with_previewer(Arc::new(executor.clone()))
            .with_api_key_secret(config.auth.api_key_secret);
        Ok(Self {
            config,
            app,
            executor,
            nats,
            listener,
            local_addr,
            metrics,
        })
    }

    pub fn role(&self) -> Role {
        self.config.role
    }

    /// Where the process listens, when it does (the port chosen when port 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The use cases over this runtime's stores.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Runs the role's tasks until `shutdown` resolves (or a task fails), stops them all, joins
    /// them and closes the stores. Errs when a task ended on its own before the stop.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Self {
            config,
            app,
            executor,
            nats,
            listener,
            local_addr,
            metrics,
        } = self;
        let role = config.role;
        let ledger = app.ledger().clone();
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Tasks::default();

        let state = AppState {
            limits: config.limits,
            metrics,
            metrics_token: config.metrics_token.clone(),
            ..AppState::new(app.clone(), config.auth.clone())
        };
        if role.serves_api() {
            let (hub, ledger) = (state.hub.clone(), ledger.clone());
            tasks.spawn_restarting("event hub", &stopped, move |stopped| {
                hub.clone().run(ledger.clone(), stopped)
            });
        }
        if let Some(listener) = listener {
            let router = if role.serves_api() {
                // The web console beside the API: the same state, its own pages under `/`.
                countersign_gateway::app(state.clone()).merge(countersign_console::router(state))
            } else {
                ops::router(state)
            };
            let mut wait = stopped.clone();
            tasks.spawn("http", async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = wait.wait_for(|stop| *stop).await;
                    })
                    .await
                    .context("serving HTTP")
            });
        }
        if role.runs_workers() {
            let (ledger, projections) = (ledger.clone(), app.projections().clone());
            tasks.spawn_restarting("projections", &stopped, move |stopped| {
                Supervisor::new(ledger.clone(), projections.clone()).run(stopped)
            });
            let (ledger, seals, seal) = (
                app.ledger().clone(),
                app.seals().clone(),
                config.seal.clone(),
            );
            tasks.spawn_restarting("sealer", &stopped, move |mut stopped| {
                Sealer::new(ledger.clone(), seals.clone(), seal.clone()).run(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
            });
            // Notifications: the notifier tails the log into keyed rows; the dispatcher delivers
            // the email and webhook ones (docs/notifications.md).
            let senders = countersign_notify::senders(
                &app,
                config
                    .executor
                    .smtp
                    .as_ref()
                    .map(|smtp| (smtp.url.as_str(), smtp.from.as_str())),
                config.public_url.clone(),
                config.executor.webhook_key,
                config.executor.outbound.clone(),
            )?;
            let notifier = countersign_app::notify::Notifier::new(
                app.ledger().clone(),
                countersign_app::notify::NotifierConfig {
                    channels: senders.iter().map(|sender| sender.channel()).collect(),
                    link_base: config.public_url.clone(),
                    ..countersign_app::notify::NotifierConfig::default()
                },
            );
            tasks.spawn_restarting("notifier", &stopped, move |stopped| {
                notifier.clone().run(stopped)
            });
            let dispatcher = countersign_app::notify::Dispatcher::new(app.clone(), senders);
            tasks.spawn_restarting("notification dispatcher", &stopped, move |stopped| {
                dispatcher.clone().run(stopped)
            });
            // Workflows (issue 17): the engine tails the log; with NATS, the intake consumes
            // CloudEvents from `<prefix>.intake.<tenant>.<type>`.
            let engine = countersign_workflows::Engine::new(app.clone());
            tasks.spawn_restarting("workflows", &stopped, move |stopped| {
                engine.clone().run(stopped)
            });
            if let Some(client) = &nats {
                let intake = countersign_workflows::NatsIntake {
                    app: app.clone(),
                    client: client.clone(),
                    config: config
                        .executor
                        .intake
                        .clone()
                        .with_prefix(&config.executor.stream.prefix),
                };
                tasks.spawn_restarting("event intake", &stopped, move |stopped| {
                    intake.clone().run(stopped)
                });
            }
            if config.executor.enabled {
                if let Some(client) = &nats {
                    let (client, hub) = (client.clone(), app.progress().clone());
                    let prefix = config.executor.stream.prefix.clone();
                    tasks.spawn_restarting("progress out", &stopped, move |stopped| {
                        progress::publish(client.clone(), hub.clone(), prefix.clone(), stopped)
                    });
                }
                spawn_executor(&mut tasks, &config, &app, executor, nats.clone(), &stopped);
            }
        } else if role.serves_api()
            && let Some(client) = &nats
        {
            // No executor here: the progress the streams show comes from the workers.
            let (client, hub) = (client.clone(), app.progress().clone());
            let prefix = config.executor.stream.prefix.clone();
            tasks.spawn_restarting("progress in", &stopped, move |stopped| {
                progress::receive(client.clone(), hub.clone(), prefix.clone(), stopped)
            });
        }
        if let Some(address) = local_addr {
            info!(%address, store = ledger.kind(), %role, "countersign listening");
        } else {
            info!(store = ledger.kind(), %role, "countersign running (no listener)");
        }

        tokio::pin!(shutdown);
        let mut failed = Vec::new();
        tokio::select! {
            () = &mut shutdown => info!(%role, "shutting down"),
            Some(ended) = tasks.next() => {
                // Tailers are restarted in place; what ends here (the HTTP server, a panic)
                // cannot be, and the process stops.
                ended.report();
                error!(task = ended.name, "a task ended before the stop was asked; stopping");
                failed.push(ended.name);
            }
        }
        let _ = stop.send(true);
        let grace = tokio::time::sleep(config.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                ended = tasks.next() => match ended {
                    Some(ended) => ended.report(),
                    None => break,
                },
                () = &mut grace => {
                    warn!(still_running = ?tasks.running(), grace = ?config.shutdown_grace, "tasks did not stop in time; aborting them");
                    tasks.abort_all().await;
                    break;
                }
            }
        }
        app.close().await;
        info!(%role, "stopped");
        if failed.is_empty() {
            Ok(())
        } else {
            bail!("{} ended before the stop was asked", failed.join(", "))
        }
    }
}

/// The executor's tasks in a worker: with NATS the relay and the shared JetStream consumer,
/// without it the embedded log source; the deadline sweep either way.
fn spawn_executor(
    tasks: &mut Tasks,
    config: &RuntimeConfig,
    app: &App,
    executor: Executor,
    nats: Option<async_nats::Client>,
    stopped: &watch::Receiver<bool>,
) {
    let stream = config.executor.stream.clone();
    let identity = executor.identity().to_string();
    let transport = match nats {
        Some(client) => {
            let (ledger, relay_client, relay_stream) =
                (app.ledger().clone(), client.clone(), stream.clone());
            tasks.spawn_restarting("relay", stopped, move |stopped| {
                Relay::new(ledger.clone(), relay_client.clone(), relay_stream.clone()).run(stopped)
            });
            let source = JetStreamSource {
                executor: executor.clone(),
                client,
                stream,
                consumer: config.executor.consumer.clone(),
                max_deliver: MAX_DELIVER,
                concurrency: CONCURRENCY,
            };
            tasks.spawn_restarting("executor", stopped, move |stopped| {
                source.clone().run(stopped)
            });
            "nats"
        }
        None => {
            let source = LogSource {
                executor: executor.clone(),
            };
            tasks.spawn_restarting("executor", stopped, move |stopped| {
                source.clone().run(stopped)
            });
            "embedded"
        }
    };
    let sweeper = Sweeper {
        executor,
        projections: app.projections().clone(),
        interval: config.executor.sweep_interval.max(Duration::from_secs(1)),
    };
    tasks.spawn_restarting("deadline sweep", stopped, move |stopped| {
        sweeper.clone().run(stopped)
    });
    info!(transport, executor = %identity, "executor running");
}

/// The running tasks, by name.
#[derive(Default)]
struct Tasks {
    set: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
}

/// How one task ended.
struct Ended {
    name: &'static str,
    outcome: Result<anyhow::Result<()>, JoinError>,
}

impl Ended {
    fn report(&self) {
        let task = self.name;
        match &self.outcome {
            Ok(Ok(())) => info!(task, "stopped"),
            Ok(Err(err)) => error!(task, error = format!("{err:#}"), "stopped with an error"),
            Err(err) if err.is_cancelled() => warn!(task, "aborted"),
            Err(err) => error!(task, error = %err, "panicked"),
        }
    }
}

impl Tasks {
    fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Runs the task `start` makes until the stop; when it ends before (a store or NATS error
    /// it does not retry itself, such as one while taking its tailer lock), logs why and starts
    /// a new one after a pause (1 s, doubling to 30 s; back to 1 s after a minute of running).
    fn spawn_restarting<F, T>(
        &mut self,
        name: &'static str,
        stopped: &watch::Receiver<bool>,
        start: F,
    ) where
        F: Fn(watch::Receiver<bool>) -> T + Send + 'static,
        T: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let mut stopped = stopped.clone();
        self.spawn(name, async move {
            let mut pause = RESTART_PAUSE;
            loop {
                let began = tokio::time::Instant::now();
                let outcome = start(stopped.clone()).await;
                if *stopped.borrow() {
                    return outcome;
                }
                if began.elapsed() > Duration::from_secs(60) {
                    pause = RESTART_PAUSE;
                }
                match outcome {
                    Ok(()) => warn!(task = name, restart_in = ?pause, "ended on its own; restarting"),
                    Err(err) => error!(task = name, error = format!("{err:#}"), restart_in = ?pause, "failed; restarting"),
                }
                tokio::select! {
                    _ = stopped.changed() => return Ok(()),
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_RESTART_PAUSE);
            }
        });
    }

    /// The next task to end; `None` when none is left.
    async fn next(&mut self) -> Option<Ended> {
        let joined = self.set.join_next_with_id().await?;
        let (id, outcome) = match joined {
            Ok((id, outcome)) => (id, Ok(outcome)),
            Err(err) => (err.id(), Err(err)),
        };
        Some(Ended {
            name: self.names.remove(&id).unwrap_or("task"),
            outcome,
        })
    }

    fn running(&self) -> Vec<&'static str> {
        self.names.values().copied().collect()
    }

    async fn abort_all(&mut self) {
        self.set.abort_all();
        while let Some(ended) = self.next().await {
            ended.report();
        }
    }
}

/// Opens and migrates the store (concurrent migrations from several processes wait for each
/// other: the migrator holds a lock while it runs).
async fn open_migrated(store: &StoreConfig) -> anyhow::Result<Ledger> {
    let ledger = Ledger::open(store).await?;
    let pending = ledger.pending_migrations().await?;
    ledger.migrate().await?;
    info!(store = ledger.kind(), applied = pending, location = %describe(store), "store migrated");
    Ok(ledger)
}

/// The projection and seal stores over one pool of driver-neutral connections, sized for both
/// (the sum of what each would open alone): with the ledger's own pool, two pools per process.
/// The store must be migrated.
pub async fn open_projections_and_seals(
    store: &StoreConfig,
) -> anyhow::Result<(ProjectionStore, SealStore)> {
    let pool = store
        .any_pool(ProjectionStore::connections(store) + SealStore::connections(store))
        .await
        .context("opening the pool of the projection and seal tables")?;
    let projections = ProjectionStore::with_pool(pool.clone()).await?;
    Ok((projections, SealStore::with_pool(pool)))
}

/// Connects to NATS: `urls` is one server or several separated by commas. Connection changes
/// are logged; the client reconnects by itself.
async fn connect_nats(urls: &str, role: Role) -> anyhow::Result<async_nats::Client> {
    let servers: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect();
    async_nats::ConnectOptions::new()
        .name(format!("countersign-{role}"))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => info!("NATS connected"),
                async_nats::Event::Disconnected => warn!("NATS disconnected; reconnecting"),
                other => info!(event = %other, "NATS"),
            }
        })
        .connect(servers)
        .await
        .with_context(|| format!("connecting to NATS at {}", redact_urls(urls)))
}

/// Where the store is, without credentials.
pub(crate) fn describe(config: &StoreConfig) -> String {
    match config {
        StoreConfig::Sqlite { path } => path.display().to_string(),
        StoreConfig::Postgres { url } => redact_urls(url),
    }
}

/// URLs (comma-separated) without their passwords.
pub(crate) fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|url| match url::Url::parse(url.trim()) {
            Ok(mut parsed) => {
                if parsed.password().is_some() {
                    let _ = parsed.set_password(Some("***"));
                } else if !parsed.username().is_empty() {
                    // A lone userinfo is a token (`nats://<token>@host`).
                    let _ = parsed.set_username("***");
                }
                parsed.to_string()
            }
            // Not a URL (`host:port`): shown unless it might hold credentials.
            Err(_) if url.contains('@') => "<redacted>".to_owned(),
            Err(_) => url.trim().to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_failed_task_is_started_again_until_the_stop() {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Tasks::default();
        let starts = Arc::new(AtomicUsize::new(0));
        let counter = starts.clone();
        tasks.spawn_restarting("flaky", &stopped, move |mut stopped| {
            let start = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                anyhow::ensure!(start > 0, "the first start fails");
                let _ = stopped.wait_for(|stop| *stop).await;
                Ok(())
            }
        });
        countersign_ledger::testing::eventually(
            countersign_ledger::testing::within(Duration::from_secs(20)),
            async || {
                if starts.load(Ordering::SeqCst) >= 2 {
                    Ok(())
                } else {
                    Err("never started again")
                }
            },
        )
        .await;
        let _ = stop.send(true);
        let ended = tokio::time::timeout(Duration::from_secs(10), tasks.next())
            .await
            .expect("stops in time")
            .expect("the task");
        assert_eq!(ended.name, "flaky");
        assert!(matches!(ended.outcome, Ok(Ok(()))));
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_urls("postgres://app:hunter2@db:5432/cs"),
            "postgres://app:***@db:5432/cs"
        );
        assert_eq!(
            redact_urls("nats://a:4222, nats://u:p@b:4222"),
            "nats://a:4222,nats://u:***@b:4222"
        );
        assert!(!redact_urls("smtp://u:secret@mail").contains("secret"));
        assert_eq!(redact_urls("nats://t0ken@b:4222"), "nats://***@b:4222");
    }
}
