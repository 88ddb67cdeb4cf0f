//! `countersign projections status|rebuild` and `countersign replay`.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use countersign_domain::TenantId;
use countersign_ledger::Ledger;
use countersign_projections::replay::{Until, replay};
use countersign_projections::{GenerationState, Projection, ProjectionStore, rebuild};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::store::StoreArgs;

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Each projection's generations: version, state, checkpoint and lag.
    Status(StoreArgs),
    /// Build a new generation of a projection from the start of the log beside the live one,
    /// then switch reads to it and drop the old one.
    Rebuild {
        /// `actions` or `audit`, or `all`.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("moment").required(true).args(["at", "position"])))]
pub struct ReplayArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The tenant whose views to rebuild.
    #[arg(long)]
    pub tenant: String,
    /// Show this action's state and audit timeline.
    #[arg(long)]
    pub action: Option<String>,
    /// As of this time (RFC 3339, e.g. 2026-11-17T14:02:00Z).
    #[arg(
        long,
        conflicts_with = "position",
        required_unless_present = "position"
    )]
    pub at: Option<DateTime<Utc>>,
    /// As of this global log position.
    #[arg(long)]
    pub position: Option<i64>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

fn progress_bar(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total.max(1));
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} events · {per_sec} · eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

async fn open(store: &StoreArgs) -> anyhow::Result<(Ledger, ProjectionStore)> {
    let ledger = store.open_migrated().await?;
    let projections = ProjectionStore::open(&store.config()).await?;
    Ok((ledger, projections))
}

pub async fn run(command: ProjectionsCommand) -> anyhow::Result<()> {
    match command {
        ProjectionsCommand::Status(store) => status(&store).await,
        ProjectionsCommand::Rebuild { name, store } => {
            let chosen: Vec<Projection> = match name.as_str() {
                "all" => Projection::ALL.to_vec(),
                other => vec![Projection::parse(other).with_context(|| {
                    format!("unknown projection `{other}` (expected actions, audit or all)")
                })?],
            };
            let (ledger, projections) = open(&store).await?;
            for projection in chosen {
                rebuild_one(&ledger, &projections, projection).await?;
            }
            Ok(())
        }
    }
}

async fn status(store: &StoreArgs) -> anyhow::Result<()> {
    let (ledger, projections) = open(store).await?;
    let head = ledger.log_head().await?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "{:<10} {:>10} {:>8} {:<9} {:>12} {:>10} {:>12}",
        "projection", "generation", "version", "state", "checkpoint", "events", "lag"
    )?;
    for projection in Projection::ALL {
        let generations = projections.generations(projection).await?;
        if generations.is_empty() {
            writeln!(
                out,
                "{:<10} {:>10} {:>8} {:<9}",
                projection.name(),
                "-",
                projection.version(),
                "none"
            )?;
        }
        for generation in generations {
            writeln!(
                out,
                "{:<10} {:>10} {:>8} {:<9} {:>12} {:>10} {:>12}",
                projection.name(),
                generation.generation,
                generation.version,
                generation.state.as_str(),
                generation.checkpoint.position,
                generation.events,
                (head.position - generation.checkpoint.position).max(0)
            )?;
            if generation.state == GenerationState::Retired {
                continue;
            }
            let tailer = format!("projection:{projection}:g{}", generation.generation);
            if let Some(error) = ledger.standing(&tailer, generation.checkpoint).await?.stuck {
                writeln!(
                    out,
                    "  STALLED: {tailer} cannot get past position {}: {error}",
                    generation.checkpoint.position
                )?;
            }
        }
    }
    writeln!(
        out,
        "log head: position {} (code versions: actions {}, audit {})",
        head.position,
        Projection::Actions.version(),
        Projection::Audit.version()
    )?;
    Ok(())
}

async fn rebuild_one(
    ledger: &Ledger,
    projections: &ProjectionStore,
    projection: Projection,
) -> anyhow::Result<()> {
    let total = u64::try_from(ledger.log_head().await?.position).unwrap_or_default();
    let bar = progress_bar(total, projection.name());
    let started = Instant::now();
    let mut last_log = Instant::now();
    let generation = rebuild(ledger, projections, projection, |applied, cursor| {
        bar.set_position(applied);
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            let rate = applied as f64 / started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                projection = projection.name(),
                events = applied,
                position = cursor.position,
                rate = format!("{rate:.0}/s"),
                "rebuild progress"
            );
        }
    })
    .await?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        projection = projection.name(),
        generation = generation.generation,
        events = generation.events,
        seconds = format!("{seconds:.1}"),
        rate = format!("{:.0}/s", generation.events as f64 / seconds.max(1e-3)),
        "rebuild live"
    );
    // Readers resolve the live generation per query; give those in flight a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dropped = projections.drop_retired(projection).await?;
    writeln!(
        std::io::stdout(),
        "{}: generation {} live with {} events ({:.0} events/s); {dropped} old generation(s) dropped",
        projection.name(),
        generation.generation,
        generation.events,
        generation.events as f64 / seconds.max(1e-3)
    )?;
    Ok(())
}

pub async fn replay_command(args: &ReplayArgs) -> anyhow::Result<()> {
    let tenant = TenantId::parse(args.tenant.as_str()).context("--tenant")?;
    let until = match (args.at, args.position) {
        (Some(at), _) => Until::Time(at),
        (None, Some(position)) => Until::Position(position),
        (None, None) => bail!("give --at TIME or --position N"),
    };
    let ledger = args.store.open_migrated().await?;
    let total = u64::try_from(ledger.log_head().await?.position).unwrap_or_default();
    let bar = progress_bar(total, "replay");
    let view = replay(&ledger, &tenant, until, |scanned| bar.set_position(scanned)).await?;
    bar.finish_and_clear();
    let inbox = view.inbox();
    let action = args.action.as_deref();
    let detail = action.and_then(|id| view.detail(id));
    if action.is_some() && detail.is_none() {
        bail!(
            "action {} did not exist in tenant {tenant} at that moment",
            action.unwrap_or_default()
        );
    }
    let audit = action.map(|id| view.audit(id).to_vec()).unwrap_or_default();
    let mut out = std::io::stdout();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({
                "tenant": tenant, "events": view.events, "last_position": view.last_position,
                "inbox": inbox, "action": detail, "audit": audit,
            }))?
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "Tenant {tenant} as of {} ({} events, up to position {})",
        match until {
            Until::Time(at) => at.to_rfc3339(),
            Until::Position(position) => format!("position {position}"),
        },
        view.events,
        view.last_position.unwrap_or(0)
    )?;
    writeln!(out, "\nInbox ({} open)", inbox.len())?;
    writeln!(
        out,
        "{:<36} {:<10} {:>4} {:<7} {:<20} {:<12} summary",
        "id", "status", "risk", "level", "submitted", "requested by"
    )?;
    for item in &inbox {
        writeln!(
            out,
            "{:<36} {:<10} {:>4} {:<7} {:<20} {:<12} {}",
            item.id,
            item.status.as_str(),
            item.risk_score,
            item.risk_level.as_str(),
            item.submitted_at.format("%Y-%m-%d %H:%M:%S"),
            item.requested_by,
            item.summary
        )?;
    }
    if let Some(detail) = detail {
        writeln!(
            out,
            "\nAction {} — {} ({})",
            detail.id,
            detail.request.summary,
            detail.status.as_str()
        )?;
        writeln!(
            out,
            "risk {} ({}), policy {} v{}, stage {} of {}, deadline {}",
            detail.risk.score.value(),
            detail.risk.level.as_str(),
            detail.policy.name,
            detail.policy.version,
            detail.current_stage + 1,
            detail.stages.len(),
            detail.expires_at.to_rfc3339()
        )?;
        writeln!(out, "\nAudit timeline")?;
        writeln!(out, "{:>8} {:<26} {:<20} event", "position", "at", "actor")?;
        for entry in &audit {
            writeln!(
                out,
                "{:>8} {:<26} {:<20} {}",
                entry.position,
                entry.at.to_rfc3339(),
                entry.actor,
                entry.event_type
            )?;
        }
    }
    Ok(())
}
