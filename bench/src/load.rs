//! The service under load over HTTP (a separate `countersign serve` process, release build,
//! authentication on), beside a bare cqrs-es + postgres-es service of a trivial aggregate and
//! pgbench, all on the same PostgreSQL server in the same run: submit throughput and latency,
//! vote latency at a fixed arrival rate, 100 concurrent votes on one action, and inbox query
//! latency with 100,000 pending actions among 1,000,000 events.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::Mutex;

use crate::ledger::{Database, Settings};
use crate::projections::{people, percentile, seed};
use crate::report::{Figure, Section, machine, progress};
use crate::usage::{CpuTimes, resident_mib};

const CONCURRENCY: [usize; 4] = [1, 16, 64, 256];
/// clients, bare rate, our rate, p50, p95, p99.
type SubmitRow = (usize, Figure, Figure, Figure, Figure, Figure);
/// The client count whose CPU per action is reported.
const CPU_CLIENTS: usize = 16;
pub(crate) const SECRET: &str = "bench-secret-for-countersign-load-0123456789";

// ---------------------------------------------------------------- bare cqrs-es baseline

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Tally {
    count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum TallyEvent {
    Counted { note: Value },
}

impl DomainEvent for TallyEvent {
    fn event_type(&self) -> String {
        "Counted".into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Tally {
    const TYPE: &'static str = "tally";
    type Command = Value;
    type Event = TallyEvent;
    type Error = Never;
    type Services = ();

    async fn handle(
        &mut self,
        note: Value,
        _: &(),
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Never> {
        sink.write(TallyEvent::Counted { note }, self).await;
        Ok(())
    }

    fn apply(&mut self, _event: TallyEvent) {
        self.count += 1;
    }
}

/// A bare cqrs-es service: `CqrsFramework::execute` of a one-event command on a fresh aggregate.
/// The bare baseline at `clients` for `seconds`: (commands per second, commands, the CPU its
/// process and PostgreSQL spent meanwhile).
async fn bare_rate(
    url: &str,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<(f64, u64, CpuTimes)> {
    // The same pool settings and transport (plain TCP on loopback) as countersign's own.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(32)
        .test_before_acquire(false)
        .connect(&countersign_ledger::loopback_plain(url))
        .await?;
    let cqrs = Arc::new(postgres_es::postgres_cqrs::<Tally>(
        pool.clone(),
        Vec::new(),
        (),
    ));
    let note =
        json!({ "summary": "Refund order 1042", "payload": { "order": 1042, "amount": 25.5 } });
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let cpu = CpuTimes::now(None)?;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (cqrs, note) = (cqrs.clone(), note.clone());
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    cqrs.execute(&uuid::Uuid::now_v7().to_string(), note.clone())
                        .await?;
                    done += 1;
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    // Read before the pool closes, while its backends still hold what they spent.
    let cpu = CpuTimes::now(None)?.since(&cpu);
    let rate = total as f64 / started.elapsed().as_secs_f64();
    pool.close().await;
    Ok((rate, total, cpu))
}

// ---------------------------------------------------------------- the service

pub(crate) struct Service {
    child: Child,
    pub(crate) base: String,
}

impl Service {
    pub(crate) fn start(url: &str) -> anyhow::Result<Self> {
        Self::start_with(url, &["--executor", "false"], &[])
    }

    /// `serve` on `url` with more arguments and environment (as `start`, which adds
    /// `--executor false`).
    pub(crate) fn start_with(
        url: &str,
        arguments: &[&str],
        environment: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let binary = std::env::current_exe()?.with_file_name("countersign");
        if !binary.exists() {
            bail!(
                "{} is missing: `make bench` builds it first",
                binary.display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(&binary)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--dev-keys",
                "false",
            ])
            .args(arguments)
            .envs(environment.iter().copied())
            .env("DATABASE_URL", url)
            .env("COUNTERSIGN_JWT_HS256_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting countersign serve")?;
        let service = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(service);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("countersign serve never listened")
    }
}

impl Service {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn token(user: &str, tenant: &str, roles: &[&str]) -> anyhow::Result<String> {
    let now = chrono::Utc::now().timestamp();
    let claims =
        json!({ "sub": user, "tenant": tenant, "roles": roles, "exp": now + 3600, "iat": now });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}

pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?)
}

pub(crate) fn submission(n: usize) -> Value {
    json!({
        "module": "billing", "capability": "refund", "summary": format!("Refund order {n}"),
        "payload": { "order": n, "amount": { "value": 25.5, "currency": "EUR" }, "reason": "damaged in transit" },
        "connectors": ["stripe"], "impact": "one customer refunded", "scope": "one order", "flags": ["financial"], "source": "billing-service",
    })
}

/// `clients` loops submitting for `seconds`: (submissions per second, latencies in ms, the CPU
/// the service, PostgreSQL and this load generator spent meanwhile).
pub(crate) async fn submit_load(
    service: &Service,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<(f64, Vec<f64>, CpuTimes)> {
    let http = client()?;
    let bearer = format!(
        "Bearer {}",
        token("bench-service", "bench", &["requester"])?
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let cpu = CpuTimes::now(Some(service.pid()))?;
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (http, bearer, latencies, url) = (
                http.clone(),
                bearer.clone(),
                latencies.clone(),
                format!("{}/v1/actions", service.base),
            );
            tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut n = c * 1_000_000;
                while Instant::now() < deadline {
                    n += 1;
                    let sent = Instant::now();
                    let response = http
                        .post(&url)
                        .header("authorization", &bearer)
                        .json(&submission(n))
                        .send()
                        .await?;
                    anyhow::ensure!(
                        response.status().as_u16() == 201,
                        "submit answered {}",
                        response.status()
                    );
                    mine.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                latencies.lock().await.extend(mine);
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = CpuTimes::now(Some(service.pid()))?.since(&cpu);
    let latencies = Arc::try_unwrap(latencies)
        .map_err(|_| anyhow::anyhow!("tasks still hold the latencies"))?
        .into_inner();
    Ok((latencies.len() as f64 / elapsed, latencies, cpu))
}

/// `serve`'s resident memory in MiB: (idle before, the most sampled every 100 ms while
/// CPU_CLIENTS clients submit for `seconds`, the kernel's peak mark since the start).
async fn memory_under_load(service: &Service, seconds: u64) -> anyhow::Result<(f64, f64, f64)> {
    let pid = service.pid();
    let (idle, _) = resident_mib(pid)?;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn({
        let done = done.clone();
        async move {
            let mut most = 0.0f64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((rss, _)) = resident_mib(pid) {
                    most = most.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            most
        }
    });
    let load = submit_load(service, CPU_CLIENTS, seconds).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.await?;
    load?;
    let (rss, peak) = resident_mib(pid)?;
    Ok((idle, most.max(rss), peak))
}

/// Pending actions that will take many votes without deciding.
pub(crate) async fn open_actions(
    service: &Service,
    count: usize,
    voters_needed: u32,
) -> anyhow::Result<Vec<String>> {
    let http = client()?;
    let admin = format!("Bearer {}", token("bench-admin", "votes", &["admin"])?);
    let policy = json!({
        "id": format!("many-votes-{voters_needed}"), "name": "many votes", "priority": 1_000_000 - i64::from(voters_needed.min(999_999)), "criteria": { "module": "votes" },
        "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": voters_needed }], "required_ratio": 0.0 }] }
    });
    let created = http
        .post(format!("{}/v1/policies", service.base))
        .header("authorization", &admin)
        .json(&policy)
        .send()
        .await?;
    anyhow::ensure!(
        created.status().is_success() || created.status().as_u16() == 409,
        "policy: {}",
        created.status()
    );
    let requester = format!(
        "Bearer {}",
        token("bench-requester", "votes", &["requester"])?
    );
    let mut ids = Vec::new();
    for n in 0..count {
        let body = json!({ "module": "votes", "capability": "tally", "summary": format!("Vote target {n}") });
        let answer: Value = http
            .post(format!("{}/v1/actions", service.base))
            .header("authorization", &requester)
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        ids.push(answer["id"].as_str().context("id")?.to_owned());
    }
    Ok(ids)
}

/// Votes at a fixed arrival rate (an open-loop load) on many actions; latencies in ms.
async fn vote_latency(
    service: &Service,
    rate: u32,
    seconds: u64,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let ids = Arc::new(open_actions(service, 200, 1_000_000).await?);
    let http = client()?;
    let voters: Arc<Vec<String>> = Arc::new(
        (0..50)
            .map(|v| {
                token(&format!("voter-{v}"), "votes", &["approver"]).map(|t| format!("Bearer {t}"))
            })
            .collect::<Result<_, _>>()?,
    );
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut n = 0usize;
    while started.elapsed() < Duration::from_secs(seconds) {
        ticker.tick().await;
        n += 1;
        let (http, ids, voters, latencies, base) = (
            http.clone(),
            ids.clone(),
            voters.clone(),
            latencies.clone(),
            service.base.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let id = &ids[n % ids.len()];
            // Alternate approve and abstain so that each vote changes the voter's ballot.
            let vote = if (n / ids.len()).is_multiple_of(2) {
                "approve"
            } else {
                "abstain"
            };
            let sent = Instant::now();
            let response = http
                .post(format!("{base}/v1/actions/{id}/votes"))
                .header("authorization", &voters[(n / ids.len()) % voters.len()])
                .json(&json!({ "vote": vote }))
                .send()
                .await?;
            anyhow::ensure!(
                response.status().is_success(),
                "vote answered {}",
                response.status()
            );
            latencies
                .lock()
                .await
                .push(sent.elapsed().as_secs_f64() * 1000.0);
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let achieved = n as f64 / started.elapsed().as_secs_f64();
    let latencies = latencies.lock().await.clone();
    Ok((achieved, latencies))
}

/// 100 voters at once on one action that needs 100 approvals: (all recorded, decided once).
async fn concurrent_votes(service: &Service, url: &str) -> anyhow::Result<(usize, usize)> {
    let id = open_actions(service, 1, 100).await?.remove(0);
    let http = client()?;
    let tasks: Vec<_> = (0..100)
        .map(|v| {
            let (http, url, bearer) = (
                http.clone(),
                format!("{}/v1/actions/{id}/votes", service.base),
                token(&format!("crowd-{v}"), "votes", &["approver"]),
            );
            tokio::spawn(async move {
                anyhow::Ok(
                    http.post(url)
                        .header("authorization", format!("Bearer {}", bearer?))
                        .json(&json!({ "vote": "approve" }))
                        .send()
                        .await?
                        .status(),
                )
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        ok += usize::from(task.await??.is_success());
    }
    let mut connection = PgConnection::connect(url).await?;
    let decisions: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE aggregate_id = $1 AND event_type = 'ActionApproved'",
    )
    .bind(&id)
    .fetch_one(&mut connection)
    .await?;
    Ok((ok, usize::try_from(decisions).unwrap_or_default()))
}

/// Inbox queries (first page, newest first) for one tenant's pending actions; latencies in ms.
pub(crate) async fn inbox_latency(
    service: &Service,
    tenant: &str,
    queries: usize,
) -> anyhow::Result<(usize, Vec<f64>)> {
    let http = client()?;
    let bearer = format!("Bearer {}", token("bench-owner", tenant, &["owner"])?);
    let mut latencies = Vec::with_capacity(queries);
    let mut items = 0;
    for n in 0..queries {
        let path = match n % 3 {
            0 => "/v1/actions?limit=50",
            1 => "/v1/actions?limit=50&sort=risk",
            _ => "/v1/actions?limit=50&eligible=me",
        };
        let sent = Instant::now();
        let answer: Value = http
            .get(format!("{}{path}", service.base))
            .header("authorization", &bearer)
            .send()
            .await?
            .json()
            .await?;
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
        items = items.max(answer["items"].as_array().map_or(0, Vec::len));
    }
    Ok((items, latencies))
}

/// Waits until the service's sealer has sealed the whole log; returns how long that took.
pub(crate) async fn wait_for_sealer(
    ledger: &countersign_ledger::Ledger,
    url: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let seals =
        countersign_verification::SealStore::open(&countersign_ledger::StoreConfig::Postgres {
            url: url.to_owned(),
        })
        .await?;
    let head = ledger.log_head().await?;
    let mut reported = Instant::now();
    loop {
        let sealed = seals
            .checkpoint()
            .await
            .map(|c| c.cursor)
            .unwrap_or_default();
        if sealed >= head {
            break;
        }
        if reported.elapsed() > Duration::from_secs(10) {
            progress(&format!(
                "load: waiting for the service's sealer ({} of {} events)",
                sealed.position, head.position
            ));
            reported = Instant::now();
        }
        if started.elapsed() > Duration::from_secs(900) {
            bail!("the service's sealer did not catch up in 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    seals.close().await;
    Ok(started.elapsed())
}

/// `countersign verify` over the whole log the service sealed (no signed heads: the bench runs
/// the service without a signing key); returns events per second.
async fn verify_everything(url: &str) -> anyhow::Result<f64> {
    let config = countersign_ledger::StoreConfig::Postgres {
        url: url.to_owned(),
    };
    let ledger = countersign_ledger::Ledger::open(&config).await?;
    let seals = countersign_verification::SealStore::open(&config).await?;
    let report = countersign_verification::verify::verify(
        &ledger,
        &seals,
        &countersign_verification::verify::VerifyOptions::default(),
        |_, _| {},
    )
    .await?;
    anyhow::ensure!(report.is_ok(), "verify found {:?}", report.divergences);
    seals.close().await;
    ledger.close().await;
    Ok(report.rate())
}

/// Adds `count` pending actions (one event each) for `tenants`, many rows per INSERT.
pub(crate) async fn seed_pending(
    url: &str,
    count: usize,
    tenants: &[String],
) -> anyhow::Result<usize> {
    use countersign_domain::action::Action;
    let mut connection = PgConnection::connect(url).await?;
    let requester = countersign_domain::Principal::new(
        countersign_domain::UserId::parse("bench-requester")?,
        [countersign_domain::Role::parse("requester")?],
    );
    let policy = countersign_domain::policy::PolicySnapshot::tenant_default(
        countersign_domain::policy::Requirements::builtin_default(),
    );
    let mut rows: Vec<(String, Value, Value)> = Vec::new();
    for n in 0..count {
        let tenant = countersign_domain::TenantId::parse(tenants[n % tenants.len()].as_str())?;
        let id = countersign_domain::ActionId::from_uuid(uuid::Uuid::now_v7());
        let command = crate::ledger::submit_command(
            &tenant,
            &requester,
            id,
            serde_json::from_value(submission(n))?,
            countersign_domain::TenantMode::RequireApproval,
            policy.clone(),
        );
        let events = Action::default().decide(command)?;
        for event in events {
            rows.push((
                id.to_string(),
                serde_json::to_value(&event)?,
                json!({ "tenant": tenant.as_str(), "actor": "bench-requester" }),
            ));
        }
        if rows.len() >= 2000 || n + 1 == count {
            let mut sql = String::from(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) VALUES ",
            );
            for i in 0..rows.len() {
                let b = i * 3;
                let _ = write!(
                    sql,
                    "{}('action', ${}, 1, 'ActionSubmitted', '1', ${}, ${})",
                    if i == 0 { "" } else { ", " },
                    b + 1,
                    b + 2,
                    b + 3
                );
            }
            let mut query = sqlx::query(&sql);
            for (id, payload, metadata) in rows.drain(..) {
                query = query.bind(id).bind(payload).bind(metadata);
            }
            connection.execute(query).await?;
        }
    }
    Ok(count)
}

pub async fn run(settings: &Settings) -> anyhow::Result<Section> {
    let baseline = Database::create(&settings.server).await?;
    let database = Database::create(&settings.server).await?;
    let result = measure(settings, &baseline, &database).await;
    baseline.drop_now().await?;
    database.drop_now().await?;
    result
}

async fn measure(
    settings: &Settings,
    baseline: &Database,
    database: &Database,
) -> anyhow::Result<Section> {
    // The bare baseline's table is postgres-es's own.
    let mut connection = PgConnection::connect(&baseline.url).await?;
    connection
        .execute(
            "CREATE TABLE events (aggregate_type text NOT NULL, aggregate_id text NOT NULL, sequence bigint CHECK (sequence >= 0) NOT NULL,
               event_type text NOT NULL, event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL,
               PRIMARY KEY (aggregate_type, aggregate_id, sequence))",
        )
        .await?;
    let ledger = countersign_ledger::Ledger::open(&countersign_ledger::StoreConfig::Postgres {
        url: database.url.clone(),
    })
    .await?;
    ledger.migrate().await?;
    ledger.close().await;
    let service = Service::start(&database.url)?;

    let mut submit_rows = Vec::new();
    // CPU milliseconds per command at CPU_CLIENTS: (bare in-process, bare PostgreSQL), (serve,
    // its PostgreSQL, its load generator), one entry per run.
    let (mut bare_cpu, mut our_cpu) = (Vec::new(), Vec::new());
    for clients in CONCURRENCY {
        let (mut bare, mut ours, mut p50, mut p95, mut p99) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..settings.runs {
            progress(&format!(
                "load: submit at {clients} clients, run {}/{}",
                run + 1,
                settings.runs
            ));
            let (rate, commands, cpu) = bare_rate(&baseline.url, clients, settings.seconds).await?;
            bare.push(rate);
            let (rate, latencies, cpu_ours) =
                submit_load(&service, clients, settings.seconds).await?;
            if clients == CPU_CLIENTS {
                bare_cpu.push(cpu.per(commands as f64));
                our_cpu.push(cpu_ours.per(latencies.len() as f64));
            }
            ours.push(rate);
            p50.push(percentile(&latencies, 0.50));
            p95.push(percentile(&latencies, 0.95));
            p99.push(percentile(&latencies, 0.99));
        }
        submit_rows.push((
            clients,
            Figure(bare),
            Figure(ours),
            Figure(p50),
            Figure(p95),
            Figure(p99),
        ));
    }

    // The same submissions at CPU_CLIENTS against `--role api`, its tailers in a `--role worker`
    // process of their own (one store, as a split deployment runs them). The `all` process stops
    // first: it would hold the tailer locks and leave the worker standing by.
    drop(service);
    let (mut split_rates, mut split_cpu) = (Vec::new(), Vec::new());
    {
        let api = Service::start_with(
            &database.url,
            &["--role", "api", "--executor", "false"],
            &[],
        )?;
        let worker = Service::start_with(
            &database.url,
            &["--role", "worker", "--executor", "false"],
            &[],
        )?;
        for run in 0..settings.runs {
            progress(&format!(
                "load: submit at {CPU_CLIENTS} clients to --role api beside a worker, run {}/{}",
                run + 1,
                settings.runs
            ));
            let before = CpuTimes::now(Some(worker.pid()))?;
            let (rate, latencies, cpu) = submit_load(&api, CPU_CLIENTS, settings.seconds).await?;
            let tailers = CpuTimes::now(Some(worker.pid()))?.since(&before);
            split_rates.push(rate);
            let count = latencies.len() as f64;
            split_cpu.push((cpu.per(count), tailers.per(count).service));
        }
    }
    let service = Service::start(&database.url)?;

    let (mut achieved, mut v50, mut v99) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..settings.runs {
        progress(&format!(
            "load: votes at 500/s, run {}/{}",
            run + 1,
            settings.runs
        ));
        let (rate, latencies) = vote_latency(&service, 500, settings.seconds).await?;
        achieved.push(rate);
        v50.push(percentile(&latencies, 0.50));
        v99.push(percentile(&latencies, 0.99));
    }
    progress("load: 100 concurrent votes on one action");
    let (recorded, decisions) = concurrent_votes(&service, &database.url).await?;

    // COUNTERSIGN_BENCH_SCALE shrinks the seeded log for a quick smoke run (default 1).
    let scale: f64 = std::env::var("COUNTERSIGN_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let scaled = |n: f64| (n * scale).max(1.0) as usize;
    progress("load: seeding 100,000 pending actions among 1,000,000 events");
    let tenants: Vec<String> = (0..8).map(|t| format!("inbox-{t}")).collect();
    let pending = seed_pending(&database.url, scaled(100_000.0), &tenants).await?;
    let people = people()?;
    let decided = seed(&database.url, &people, scaled(225_000.0)).await?;
    let total = pending as i64 + decided;
    drop(service);
    // The projections rebuild the seeded log (measured), then the inbox is queried.
    let store = countersign_projections::ProjectionStore::open(
        &countersign_ledger::StoreConfig::Postgres {
            url: database.url.clone(),
        },
    )
    .await?;
    let ledger = countersign_ledger::Ledger::open(&countersign_ledger::StoreConfig::Postgres {
        url: database.url.clone(),
    })
    .await?;
    let mut rebuild_rates = HashMap::new();
    for projection in countersign_projections::Projection::ALL {
        progress(&format!(
            "load: rebuilding {projection} over {total} events"
        ));
        let started = Instant::now();
        let generation =
            countersign_projections::rebuild(&ledger, &store, projection, |_, _| {}).await?;
        rebuild_rates.insert(
            projection.name(),
            generation.events as f64 / started.elapsed().as_secs_f64(),
        );
        store.drop_retired(projection).await?;
    }
    store.close().await;
    let service = Service::start(&database.url)?;
    // A fresh service seals the seeded log first; the inbox is measured at steady state.
    let catch_up = wait_for_sealer(&ledger, &database.url).await?;
    ledger.close().await;
    let (mut q50, mut q95, mut q99) = (Vec::new(), Vec::new(), Vec::new());
    let mut items = 0;
    for run in 0..settings.runs {
        progress(&format!(
            "load: inbox queries, run {}/{}",
            run + 1,
            settings.runs
        ));
        let (page, latencies) = inbox_latency(&service, &tenants[run % tenants.len()], 300).await?;
        items = items.max(page);
        q50.push(percentile(&latencies, 0.50));
        q95.push(percentile(&latencies, 0.95));
        q99.push(percentile(&latencies, 0.99));
    }
    progress(&format!(
        "load: resident memory under {CPU_CLIENTS} clients at {pending} pending / {total} events"
    ));
    let memory = memory_under_load(&service, settings.seconds).await?;
    drop(service);
    progress(&format!(
        "load: verifying the {total} events the service sealed"
    ));
    let verify_rate = verify_everything(&database.url).await?;

    let mut markdown = String::new();
    let _ = writeln!(markdown, "## The service under load\n");
    let _ = writeln!(
        markdown,
        "{} · `countersign serve` (release) and PostgreSQL on loopback, JWT authentication on · {} runs of {} s.\n",
        machine(),
        settings.runs,
        settings.seconds
    );
    let _ = writeln!(
        markdown,
        "**Submit** (`POST /v1/actions`, a ~1 KiB submission, keep-alive connections, closed loop) beside a bare cqrs-es 0.5 + postgres-es service executing a one-event command on a trivial aggregate (the `ledger-appends` section has pgbench on the same server).\n"
    );
    let _ = writeln!(
        markdown,
        "| clients | bare cqrs-es commands/s | countersign submits/s | ratio | p50 ms | p95 ms | p99 ms |"
    );
    let _ = writeln!(
        markdown,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (clients, bare, ours, p50, p95, p99) in &submit_rows {
        let _ = writeln!(
            markdown,
            "| {clients} | {} | {} | {:.2} | {} | {} | {} |",
            bare.show(0),
            ours.show(0),
            ours.median() / bare.median(),
            p50.show(1),
            p95.show(1),
            p99.show(1)
        );
    }
    let doc_dir = settings
        .report
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let chart_path = doc_dir.join("perf").join("submit-scaling.svg");
    std::fs::create_dir_all(doc_dir.join("perf"))?;
    let curve = |pick: fn(&SubmitRow) -> &Figure| {
        submit_rows
            .iter()
            .map(|row| (row.0 as f64, pick(row).median()))
            .collect::<Vec<_>>()
    };
    crate::chart::line_chart(
        &chart_path,
        &crate::chart::Chart {
            title: "Submit throughput by concurrent clients".into(),
            x_label: "clients".into(),
            y_label: "commands per second".into(),
            log_x: true,
            log_y: false,
            series: vec![
                crate::chart::Series {
                    name: "bare cqrs-es (in-process)".into(),
                    points: curve(|row| &row.1),
                },
                crate::chart::Series {
                    name: "countersign serve over HTTP".into(),
                    points: curve(|row| &row.2),
                },
            ],
        },
    )?;
    let _ = writeln!(
        markdown,
        "\n{}",
        crate::chart::markdown_image(&doc_dir, &chart_path, "submit throughput by clients")
    );
    let median =
        |values: &[CpuTimes], part: fn(&CpuTimes) -> f64| Figure(values.iter().map(part).collect());
    let total_bare = median(&bare_cpu, |c| c.bench + c.postgres).median();
    let total_ours = median(&our_cpu, |c| c.service + c.postgres + c.bench).median();
    let _ = writeln!(
        markdown,
        "\n**CPU per action at {CPU_CLIENTS} clients** (milliseconds of CPU time per command, from `/proc`: every PostgreSQL server process, exited backends included; the bare baseline runs inside the bench process, its load loop included):\n"
    );
    let _ = writeln!(
        markdown,
        "| | service | PostgreSQL | load generator | total | ratio |"
    );
    let _ = writeln!(markdown, "| --- | ---: | ---: | ---: | ---: | ---: |");
    let _ = writeln!(
        markdown,
        "| bare cqrs-es (in-process) | {} | {} | (included) | {total_bare:.2} | 1.00 |",
        median(&bare_cpu, |c| c.bench).show(2),
        median(&bare_cpu, |c| c.postgres).show(2),
    );
    let _ = writeln!(
        markdown,
        "| countersign `serve` over HTTP | {} | {} | {} | {total_ours:.2} | {:.1} |",
        median(&our_cpu, |c| c.service).show(2),
        median(&our_cpu, |c| c.postgres).show(2),
        median(&our_cpu, |c| c.bench).show(2),
        total_ours / total_bare
    );
    let bare_at_cpu_clients = submit_rows
        .iter()
        .find(|row| row.0 == CPU_CLIENTS)
        .map_or(f64::NAN, |row| row.1.median());
    let split_total = Figure(
        split_cpu
            .iter()
            .map(|(api, worker)| api.service + worker + api.postgres + api.bench)
            .collect(),
    )
    .median();
    let _ = writeln!(
        markdown,
        "| countersign `--role api` + `--role worker` | {} + {} | {} | {} | {split_total:.2} | {:.1} |",
        Figure(split_cpu.iter().map(|(api, _)| api.service).collect()).show(2),
        Figure(split_cpu.iter().map(|(_, worker)| *worker).collect()).show(2),
        Figure(split_cpu.iter().map(|(api, _)| api.postgres).collect()).show(2),
        Figure(split_cpu.iter().map(|(api, _)| api.bench).collect()).show(2),
        split_total / total_bare
    );
    let split_rates = Figure(split_rates);
    let _ = writeln!(
        markdown,
        "\n**Split roles**: submit at {CPU_CLIENTS} clients to `serve --role api` while a `serve --role worker` process runs the tailers on the same store: {} submits/s = {:.2}× the bare baseline at {CPU_CLIENTS} clients (goal ≥ 1.2×).",
        split_rates.show(0),
        split_rates.median() / bare_at_cpu_clients
    );
    let _ = writeln!(
        markdown,
        "\n**Votes at a fixed arrival rate** of 500/s (open loop) over 200 pending actions, each vote recorded and counted: achieved {} votes/s, latency p50 {} ms, p99 {} ms (target p99 < 10 ms).\n",
        Figure(achieved).show(0),
        Figure(v50).show(1),
        Figure(v99).show(1)
    );
    let _ = writeln!(
        markdown,
        "**100 concurrent votes on one action** needing 100 approvals: {recorded} of 100 recorded, {decisions} decision.\n"
    );
    let _ = writeln!(
        markdown,
        "**Inbox queries** (`GET /v1/actions`, first page of 50: newest, riskiest, eligible-for-me, in turn) with {pending} pending actions among {total} events (8 tenants), measured once the freshly started service had sealed the seeded log ({:.0} s): p50 {} ms, p95 {} ms, p99 {} ms (target p99 < 20 ms); pages of {items}.\n",
        catch_up.as_secs_f64(),
        Figure(q50).show(1),
        Figure(q95).show(1),
        Figure(q99).show(1)
    );
    let _ = writeln!(
        markdown,
        "**Resident memory of `serve`** with {pending} pending actions among {total} events, {CPU_CLIENTS} clients submitting for {} s (one run): {:.0} MiB idle before, at most {:.0} MiB sampled under the load, peak {:.0} MiB since start (sealing the seeded log and the inbox queries included; target < 256 MiB).\n",
        settings.seconds, memory.0, memory.1, memory.2
    );
    let _ = writeln!(
        markdown,
        "**Rebuild over {total} events** (one run): `actions` {:.0} events/s, `audit` {:.0} events/s (target ≥ 50,000).\n",
        rebuild_rates.get("actions").copied().unwrap_or_default(),
        rebuild_rates.get("audit").copied().unwrap_or_default()
    );
    let _ = writeln!(
        markdown,
        "**`countersign verify` over the same {total} events** as the service sealed them (one run): {verify_rate:.0} events/s (target ≥ 200,000)."
    );
    Ok(Section {
        id: "load",
        markdown,
    })
}
