//! Ledger append throughput beside pgbench's single-row INSERT rate on the same database.

use std::fmt::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use countersign_domain::action::{Action, ActionCommand, CommandContext, SubmitAction};
use countersign_domain::policy::{PolicySnapshot, Requirements};
use countersign_domain::submission::Submission;
use countersign_domain::{ActionId, Principal, Role, TenantId, TenantMode, UserId};
use countersign_ledger::{Ledger, Metadata, StoreConfig};
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

use crate::report::{Figure, Section, machine, progress};

pub(crate) struct Settings {
    pub server: String,
    pub seconds: u64,
    pub runs: usize,
    /// The report being written: charts go to `perf/` beside it.
    pub report: std::path::PathBuf,
    /// How long the sustained section holds its load.
    pub sustained_seconds: u64,
}

const CONCURRENCY: [usize; 3] = [1, 16, 64];

/// The command submitting `submission` as `action_id`, as the gateway builds it.
pub(crate) fn submit_command(
    tenant: &TenantId,
    by: &Principal,
    action_id: ActionId,
    submission: Submission,
    mode: TenantMode,
    policy: PolicySnapshot,
) -> ActionCommand {
    ActionCommand::SubmitAction(Box::new(SubmitAction {
        context: CommandContext {
            tenant: tenant.clone(),
            by: by.clone(),
            at: chrono::Utc::now(),
            correlation_id: None,
        },
        action_id,
        submission,
        mode,
        policy,
        idempotency_key: None,
        rollback_of: None,
    }))
}

/// A submission the size of a typical one (about 1 KiB stored).
pub(crate) fn submission() -> anyhow::Result<Submission> {
    Ok(serde_json::from_value(json!({
        "module": "billing", "capability": "refund",
        "payload": { "order": 1042, "amount": { "value": 25.5, "currency": "EUR" }, "reason": "damaged in transit" },
        "summary": "Refund order 1042 (damaged in transit)",
        "connectors": ["stripe"], "impact": "one customer refunded", "scope": "one order",
        "flags": ["financial"], "source": "billing-service",
    }))?)
}

pub(crate) struct Database {
    server: String,
    pub(crate) name: String,
    pub(crate) url: String,
}

impl Database {
    pub(crate) async fn create(server: &str) -> anyhow::Result<Self> {
        let name = format!("countersign_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(server)
            .await
            .context("connecting to the bench server")?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        let _ = admin.close().await;
        let Some((base, _)) = server.rsplit_once('/') else {
            bail!("the server URL has no database name");
        };
        Ok(Self {
            server: server.to_owned(),
            url: format!("{base}/{name}"),
            name,
        })
    }

    /// Drops the database, unless `COUNTERSIGN_BENCH_KEEP` is set (to look into it afterwards).
    pub(crate) async fn drop_now(self) -> anyhow::Result<()> {
        if std::env::var_os("COUNTERSIGN_BENCH_KEEP").is_some() {
            progress(&format!("kept database {}", self.name));
            return Ok(());
        }
        let mut admin = PgConnection::connect(&self.server).await?;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await?;
        Ok(())
    }
}

/// pgbench: `clients` connections each committing single-row INSERTs of an event-sized row into a
/// table shaped like `events` (same columns and indexes, no triggers).
fn pgbench(
    url: &str,
    clients: usize,
    seconds: u64,
    script: &std::path::Path,
) -> anyhow::Result<f64> {
    let output = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-f"])
        .arg(script)
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(4).to_string(),
            "-T",
            &seconds.to_string(),
        ])
        .arg(url)
        .output()
        .context("running pgbench (Debian package postgresql-client)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    text.lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .context("pgbench printed no tps")
}

/// `writers` tasks submitting actions through the ledger for `seconds`; commands per second.
async fn ledger_appends(ledger: &Ledger, writers: usize, seconds: u64) -> anyhow::Result<f64> {
    let submission = submission()?;
    let tenant = TenantId::parse("bench")?;
    let requester = Principal::new(UserId::parse("bench-service")?, [Role::parse("requester")?]);
    let policy = PolicySnapshot::tenant_default(Requirements::builtin_default());
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (ledger, submission, tenant, requester, policy, done) = (
                ledger.clone(),
                submission.clone(),
                tenant.clone(),
                requester.clone(),
                policy.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                let metadata = Metadata::new(tenant.clone(), requester.id.clone());
                while Instant::now() < deadline {
                    let id = ActionId::from_uuid(uuid::Uuid::now_v7());
                    let command = submit_command(
                        &tenant,
                        &requester,
                        id,
                        submission.clone(),
                        TenantMode::RequireApproval,
                        policy.clone(),
                    );
                    ledger.execute::<Action>(&id, command, &metadata).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

pub(crate) async fn measure(settings: &Settings, database: &Database) -> anyhow::Result<Section> {
    let ledger = Ledger::open(&StoreConfig::Postgres {
        url: database.url.clone(),
    })
    .await?;
    ledger.migrate().await?;
    let mut connection = PgConnection::connect(&database.url).await?;
    connection
        .execute("CREATE TABLE bench_events (LIKE events INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING INDEXES INCLUDING IDENTITY)")
        .await
        .context("creating the pgbench table")?;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut connection)
        .await?;
    let payload =
        serde_json::to_string(&json!({ "ActionSubmitted": { "submission": submission()? } }))?
            .replace('\'', "''");
    let script = std::env::temp_dir().join(format!("{}.sql", database.name));
    std::fs::write(
        &script,
        format!(
            "INSERT INTO bench_events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             VALUES ('action', gen_random_uuid()::text, 1, 'ActionSubmitted', '1', '{payload}', '{{\"tenant\": \"bench\"}}');\n"
        ),
    )?;

    let sqlite_dir = std::env::temp_dir().join(format!("{}-sqlite", database.name));
    let embedded = Ledger::open(&StoreConfig::Sqlite {
        path: sqlite_dir.join("bench.db"),
    })
    .await?;
    embedded.migrate().await?;

    let mut rows = Vec::new();
    for clients in CONCURRENCY {
        let (mut baseline, mut ours, mut sqlite) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..settings.runs {
            progress(&format!(
                "ledger: {clients} writers, run {}/{}",
                run + 1,
                settings.runs
            ));
            baseline.push(pgbench(&database.url, clients, settings.seconds, &script)?);
            ours.push(ledger_appends(&ledger, clients, settings.seconds).await?);
            sqlite.push(ledger_appends(&embedded, clients, settings.seconds).await?);
        }
        rows.push((clients, Figure(baseline), Figure(ours), Figure(sqlite)));
    }
    ledger.close().await;
    embedded.close().await;
    let _ = std::fs::remove_file(&script);
    let _ = std::fs::remove_dir_all(&sqlite_dir);

    let mut markdown = String::new();
    let _ = writeln!(markdown, "## Ledger appends\n");
    let _ = writeln!(
        markdown,
        "{} · PostgreSQL {version} on loopback · {} runs of {} s each.\n",
        machine(),
        settings.runs,
        settings.seconds
    );
    let _ = writeln!(
        markdown,
        "Each countersign command is a submission through `Ledger::execute`: decided on the empty \
         aggregate (a submission starts a new stream, so its first try reads nothing), and appended \
         by the group committer, which writes the events of all commands waiting at that moment \
         with one `INSERT … SELECT FROM UNNEST(…) RETURNING` statement (one round trip and one WAL \
         flush per group) and hands each command its positions. The baseline is pgbench committing \
         one INSERT of the same ~1 KiB row per transaction into a copy of the `events` table \
         (prepared statements, no triggers).\n"
    );
    let _ = writeln!(
        markdown,
        "| writers | pgbench INSERT/s | countersign commands/s (PostgreSQL) | ratio | countersign commands/s (embedded SQLite) |"
    );
    let _ = writeln!(markdown, "| ---: | ---: | ---: | ---: | ---: |");
    for (clients, baseline, ours, sqlite) in &rows {
        let _ = writeln!(
            markdown,
            "| {clients} | {} | {} | {:.2} | {} |",
            baseline.show(0),
            ours.show(0),
            ours.median() / baseline.median(),
            sqlite.show(0)
        );
    }
    let _ = writeln!(
        markdown,
        "\nThe rest of the gap is work the baseline does not do, on the same two cores as the \
         database and the load: deciding the command, serializing the event (twice: JSON for the \
         payload, then the statement's parameters), the append-only and notify triggers, and the \
         bench's own writers."
    );
    Ok(Section {
        id: "ledger-appends",
        markdown,
    })
}
