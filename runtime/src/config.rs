//! Everything a runtime needs, as plain values: the front door (`countersign serve`) parses its
//! flags and environment into a [`RuntimeConfig`]; an embedding program or a test builds one
//! directly.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use countersign_executor::StreamConfig;
use countersign_gateway::{AuthConfig, Limits};
use countersign_ledger::StoreConfig;
use countersign_verification::SealerConfig;

use crate::Role;

/// Where the HTTP service listens unless told otherwise (the api and all roles).
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));

/// The settings of one process.
#[derive(Clone)]
pub struct RuntimeConfig {
    pub role: Role,
    /// The event store, read models and seals (one database).
    pub store: StoreConfig,
    /// Key material for `/v1` credentials (and the key API key secrets are digested under).
    pub auth: AuthConfig,
    /// The api and all roles: where the HTTP service listens (required; port 0 picks a free
    /// port, see [`crate::Runtime::local_addr`]). A worker listens only when given an address,
    /// and serves `/healthz`, `/readyz` and `/metrics` there, never `/v1`.
    pub listen: Option<SocketAddr>,
    /// Body size, request timeout, and the `/v1` rate limits per tenant and per principal (off
    /// by default; counted by each process on its own).
    pub limits: Limits,
    /// Bearer token a Prometheus scraper sends to read `/metrics` (unset: refused).
    pub metrics_token: Option<String>,
    /// How the sealer seals and signs (workers).
    pub seal: SealerConfig,
    /// The transport and the executor.
    pub executor: ExecutorSettings,
    /// After a stop is asked, how long tasks get to finish (an open event stream holds the HTTP
    /// server's graceful shutdown) before they are aborted.
    pub shutdown_grace: Duration,
    /// The service's public address (`https://approvals.example.com`): links in notifications
    /// (the console's action page, one-click approval) are built on it; none: relative links
    /// and no approval links in emails.
    pub public_url: Option<String>,
}

impl RuntimeConfig {
    /// The defaults for `role` on `store`: no key material, [`DEFAULT_LISTEN`] when the role
    /// serves the API (a worker does not listen), no NATS (the executor tails the store).
    pub fn new(role: Role, store: StoreConfig) -> Self {
        Self {
            role,
            store,
            auth: AuthConfig::default(),
            listen: role.serves_api().then_some(DEFAULT_LISTEN),
            limits: Limits::default(),
            metrics_token: None,
            seal: SealerConfig::default(),
            executor: ExecutorSettings::default(),
            shutdown_grace: Duration::from_secs(30),
            public_url: None,
        }
    }
}

impl fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("role", &self.role)
            .field("store", &crate::describe(&self.store))
            .field("auth", &self.auth)
            .field("listen", &self.listen)
            .field("limits", &self.limits)
            .field(
                "metrics_token",
                &self.metrics_token.as_ref().map(|_| "<redacted>"),
            )
            .field("seal", &self.seal)
            .field("executor", &self.executor)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish()
    }
}

/// NATS, the event stream and the executor's capabilities, leases and sweeps.
#[derive(Clone)]
pub struct ExecutorSettings {
    /// Workers run the executor, its deadline sweep and (with NATS) the relay. Off: a worker
    /// runs the projections and the sealer only.
    pub enabled: bool,
    /// NATS with JetStream (2.9+): one URL, or several separated by commas (the seeds of a
    /// cluster). Without it the executor tails the store directly.
    pub nats_url: Option<String>,
    /// The JetStream stream events are relayed to, and their subject prefix.
    pub stream: StreamConfig,
    /// The durable consumer every worker's executor shares.
    pub consumer: String,
    /// `email.send` over SMTP; without it emails go to the log.
    pub smtp: Option<SmtpSettings>,
    /// The key webhook signing secrets derive from; without it `webhook.post` refuses to run.
    pub webhook_key: Option<[u8; 32]>,
    /// How long an executor's claim on an attempt lasts (at least 1 s).
    pub lease: Duration,
    /// How often deadlines, due retries and expired leases are swept (at least 1 s).
    pub sweep_interval: Duration,
    /// The private ranges outbound requests (webhooks) may reach; none by default.
    pub outbound: countersign_executor::OutboundPolicy,
    /// The JetStream intake of domain events (with NATS): its stream, durable consumer and
    /// duplicate window; its subject prefix is the event stream's (`<prefix>.intake.…`).
    pub intake: countersign_workflows::IntakeConfig,
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            nats_url: None,
            stream: StreamConfig::default(),
            consumer: "executor".into(),
            smtp: None,
            webhook_key: None,
            lease: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(5),
            outbound: countersign_executor::OutboundPolicy::default(),
            intake: countersign_workflows::IntakeConfig::default(),
        }
    }
}

impl fmt::Debug for ExecutorSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecutorSettings")
            .field("enabled", &self.enabled)
            .field(
                "nats_url",
                &self.nats_url.as_deref().map(crate::redact_urls),
            )
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .field("smtp", &self.smtp)
            .field(
                "webhook_key",
                &self.webhook_key.as_ref().map(|_| "<redacted>"),
            )
            .field("lease", &self.lease)
            .field("sweep_interval", &self.sweep_interval)
            .field("outbound", &self.outbound)
            .field("intake", &self.intake)
            .finish()
    }
}

/// The SMTP server `email.send` uses.
#[derive(Clone)]
pub struct SmtpSettings {
    /// `smtp://host:port` or `smtps://host` (may carry credentials).
    pub url: String,
    /// The sender address.
    pub from: String,
}

impl fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("url", &crate::redact_urls(&self.url))
            .field("from", &self.from)
            .finish()
    }
}
