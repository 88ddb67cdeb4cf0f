//! `countersign serve`: the flags and environment of a process, mapped onto a
//! [`countersign_runtime::RuntimeConfig`]; the runtime does the rest (see its crate documentation
//! for what each `--role` runs).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use countersign_executor::StreamConfig;
use countersign_gateway::{Limits, RateLimit};
use countersign_runtime::{
    DEFAULT_LISTEN, ExecutorSettings, Role, Runtime, RuntimeConfig, SmtpSettings,
};
use countersign_verification::SealerConfig;

use crate::auth::AuthArgs;
use crate::store::StoreArgs;
use crate::verify::SealArgs;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// What this process runs: `api` (the HTTP API and its event streams; any number behind a
    /// load balancer), `worker` (projections, sealer, relay, executor, deadline sweep; run two or
    /// more, one is active per task) or `all` (both).
    #[arg(
        long,
        env = "COUNTERSIGN_ROLE",
        default_value = "all",
        value_parser = PossibleValuesParser::new(Role::NAMES).try_map(|name| name.parse::<Role>())
    )]
    pub role: Role,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Address to listen on (port 0 picks a free port; the log says which). Roles api and all:
    /// default 127.0.0.1:8080. A worker listens only when given one, for /healthz, /readyz and
    /// /metrics.
    #[arg(long, env = "COUNTERSIGN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Bearer token a Prometheus scraper sends to read /metrics (unset: /metrics is refused).
    #[arg(long, env = "COUNTERSIGN_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// The service's public address (`https://approvals.example.com`): links in notifications
    /// and one-click approval links in emails are built on it (unset: no approval links).
    #[arg(long, env = "COUNTERSIGN_PUBLIC_URL")]
    pub public_url: Option<String>,
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
    pub rate_limits: RateLimitArgs,
    #[command(flatten)]
    pub seal: SealArgs,
    // Boxed: `Command` stays small (`clippy::large_enum_variant`).
    #[command(flatten)]
    pub executor: Box<ExecutorArgs>,
}

/// Rate limits on `/v1`, per tenant and per principal (a token's subject or an API key).
#[derive(Debug, Clone, Args)]
pub struct RateLimitArgs {
    /// Requests a tenant may make on /v1, all its principals together: `<n>/s`, `<n>/m` or
    /// `<n>/h` (unset or 0: no limit). Over it: 429 `rate_limited` with Retry-After.
    #[arg(long, env = "COUNTERSIGN_RATE_LIMIT_TENANT", value_parser = parse_rate)]
    pub rate_limit_tenant: Option<Rate>,
    /// Largest burst of a tenant's requests (default: the rate's count).
    #[arg(long, env = "COUNTERSIGN_RATE_LIMIT_TENANT_BURST")]
    pub rate_limit_tenant_burst: Option<NonZeroU32>,
    /// Requests one principal (a token's subject or an API key) may make on /v1: `<n>/s`,
    /// `<n>/m` or `<n>/h` (unset or 0: no limit).
    #[arg(long, env = "COUNTERSIGN_RATE_LIMIT_PRINCIPAL", value_parser = parse_rate)]
    pub rate_limit_principal: Option<Rate>,
    /// Largest burst of one principal's requests (default: the rate's count).
    #[arg(long, env = "COUNTERSIGN_RATE_LIMIT_PRINCIPAL_BURST")]
    pub rate_limit_principal_burst: Option<NonZeroU32>,
}

/// A parsed `--rate-limit-*` value: none when it turns the limit off (`0`).
#[derive(Debug, Clone, Copy)]
pub struct Rate(Option<RateLimit>);

fn parse_rate(text: &str) -> Result<Rate, String> {
    RateLimit::parse(text).map(Rate)
}

impl RateLimitArgs {
    fn rate(rate: Option<Rate>, burst: Option<NonZeroU32>) -> Option<RateLimit> {
        let rate = rate.and_then(|Rate(rate)| rate)?;
        Some(burst.map_or(rate, |burst| rate.with_burst(burst)))
    }

    /// The tenant's and the principal's rates.
    pub fn rates(&self) -> (Option<RateLimit>, Option<RateLimit>) {
        (
            Self::rate(self.rate_limit_tenant, self.rate_limit_tenant_burst),
            Self::rate(self.rate_limit_principal, self.rate_limit_principal_burst),
        )
    }
}

#[derive(Debug, Clone, Args)]
pub struct ExecutorArgs {
    /// NATS with JetStream (2.9+): one URL, or a cluster's seeds separated by commas. Without it,
    /// the executor tails the store directly.
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
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
    /// Run the executor, its deadline sweep and (with NATS) the relay in this process (roles
    /// worker and all).
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
    /// CIDRs outbound requests (webhooks) may reach off the public internet, comma-separated
    /// (`127.0.0.0/8` for a receiver on loopback); none by default. See docs/capabilities.md.
    #[arg(long, env = "COUNTERSIGN_OUTBOUND_ALLOW", default_value = "")]
    pub outbound_allow: countersign_executor::OutboundPolicy,
}

pub async fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let development = args.development_mode();
    if development {
        // Before the configuration is read, so that it picks them up like `demo`'s.
        crate::auth::ensure_dev_keys(&args.store.data_dir)?;
    }
    let runtime = Runtime::build(args.runtime_config()?).await?;
    if development {
        start_development(&runtime, args).await?;
    }
    runtime.run_until_stopped(shutdown_signal()).await
}

/// How long the sign-in links printed in development mode stay valid.
const DEVELOPMENT_LINK_SECONDS: i64 = 7 * 86_400;

/// Development mode's first steps, before anything is served: the demo tenant loaded once, then
/// the warning and one sign-in link per demo user on standard output.
async fn start_development(runtime: &Runtime, args: &ServeArgs) -> anyhow::Result<()> {
    let loaded = crate::demo::load_once(runtime.app().ledger(), chrono::Utc::now())
        .await
        .context("loading the demo tenant")?;
    let keys = crate::auth::ensure_dev_keys(&args.store.data_dir)?;
    let address = runtime
        .local_addr()
        .context("development mode serves HTTP: no listener")?;
    tracing::warn!(
        %address,
        keys = %args.store.data_dir.join("dev-keys.json").display(),
        "DEVELOPMENT MODE: embedded store on loopback with development keys and the demo tenant; configure key material for anything else"
    );
    let mut banner = String::new();
    let rule = "=".repeat(78);
    let _ = writeln!(banner, "{rule}");
    let _ = writeln!(banner, "  DEVELOPMENT MODE — not for production");
    let _ = writeln!(
        banner,
        "  No DATABASE_URL and no key material are configured, and {address} is loopback,"
    );
    let _ = writeln!(
        banner,
        "  so countersign runs on the embedded store ({}) with development keys",
        crate::store::describe(&args.store.config())
    );
    let _ = writeln!(
        banner,
        "  ({}) and the demo tenant ({}).",
        args.store.data_dir.join("dev-keys.json").display(),
        match loaded {
            Some(new) => format!("loaded now: {new} actions"),
            None => "already loaded, not loaded again".to_owned(),
        }
    );
    let _ = writeln!(
        banner,
        "  Configure COUNTERSIGN_JWT_HS256_SECRET or a JWKS file for real use (docs/deployment.md)."
    );
    let _ = writeln!(
        banner,
        "  Sign in to the console as a demo user (links valid 7 days):"
    );
    for (tenant, user, roles) in crate::demo::users()? {
        let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
        let token = crate::auth::token(
            keys.jwt_hs256_secret.as_bytes(),
            &user,
            tenant,
            &roles,
            DEVELOPMENT_LINK_SECONDS,
        )?;
        let _ = writeln!(
            banner,
            "    {user:<7} {tenant:<7} {:<21} http://{address}/sign-in?token={token}",
            roles.join(",")
        );
    }
    let _ = writeln!(banner, "{rule}");
    std::io::Write::write_all(&mut std::io::stdout(), banner.as_bytes())
        .context("printing the sign-in links")?;
    Ok(())
}

impl ServeArgs {
    /// Development mode: the whole service (role all) on the embedded store, listening on
    /// loopback, with no key material configured (and the development keys allowed). Anything
    /// else stays fail closed.
    pub fn development_mode(&self) -> bool {
        self.role.serves_api()
            && self.role.runs_workers()
            && self.store.database_url.is_none()
            && !self.auth.has_key_material()
            && self.auth.dev_keys
            && self.listen.unwrap_or(DEFAULT_LISTEN).ip().is_loopback()
    }

    /// The runtime's settings from the flags and environment.
    fn runtime_config(&self) -> anyhow::Result<RuntimeConfig> {
        let role = self.role;
        // The sealer runs in workers only: an api process needs no signing key.
        let seal = if role.runs_workers() {
            self.seal.config()?
        } else {
            SealerConfig::default()
        };
        let auth = self.auth.config(&self.store)?;
        let store = self.store.config();
        let (tenant_rate, principal_rate) = self.rate_limits.rates();
        Ok(RuntimeConfig {
            auth,
            listen: self
                .listen
                .or_else(|| role.serves_api().then_some(DEFAULT_LISTEN)),
            limits: Limits {
                body_bytes: self.body_limit_bytes,
                request_timeout: Duration::from_secs(self.request_timeout_seconds),
                tenant_rate,
                principal_rate,
                ..Limits::default()
            },
            metrics_token: self.metrics_token.clone(),
            seal,
            executor: ExecutorSettings {
                enabled: self.executor.executor,
                nats_url: self.executor.nats_url.clone(),
                stream: StreamConfig {
                    stream: self.executor.nats_stream.clone(),
                    prefix: self.executor.nats_prefix.clone(),
                },
                smtp: self.executor.smtp_url.as_ref().map(|url| SmtpSettings {
                    url: url.clone(),
                    from: self.executor.smtp_from.clone(),
                }),
                webhook_key: self.auth.webhook_key(&self.store)?,
                lease: Duration::from_secs(self.executor.execution_lease_seconds),
                sweep_interval: Duration::from_secs(self.executor.sweep_seconds),
                outbound: self.executor.outbound_allow.clone(),
                ..ExecutorSettings::default()
            },
            public_url: self.public_url.clone(),
            ..RuntimeConfig::new(role, store)
        })
    }
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

#[cfg(test)]
mod tests {

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        rate_limits: RateLimitArgs,
    }

    fn rates(args: &[&str]) -> Result<(Option<RateLimit>, Option<RateLimit>), clap::Error> {
        Flags::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .map(|flags| flags.rate_limits.rates())
    }

    #[test]
    fn rate_limits_parse_with_their_bursts_and_zero_is_off() {
        let (tenant, principal) = rates(&[
            "--rate-limit-tenant",
            "100/s",
            "--rate-limit-tenant-burst",
            "200",
            "--rate-limit-principal",
            "0",
            "--rate-limit-principal-burst",
            "5",
        ])
        .expect("valid flags");
        let tenant = tenant.expect("a tenant limit");
        assert_eq!(
            (tenant.requests.get(), tenant.per, tenant.burst.get()),
            (100, Duration::from_secs(1), 200)
        );
        assert_eq!(principal, None, "0 turns the limit off");
        let (_, principal) = rates(&["--rate-limit-principal", "30/m"]).expect("valid flags");
        let principal = principal.expect("a principal limit");
        assert_eq!(
            (
                principal.requests.get(),
                principal.per,
                principal.burst.get()
            ),
            (30, Duration::from_secs(60), 30)
        );
        assert!(rates(&["--rate-limit-tenant", "fast"]).is_err());
        assert!(rates(&["--rate-limit-tenant-burst", "0"]).is_err());
    }
}
