//! `countersign policies backtest`: what a draft policy set would have done to a tenant's
//! actions submitted in a time range, replayed on the store (see `countersign_app::backtest`).
//! Read-only.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use countersign_app::backtest::{BacktestReport, BacktestRequest, Ceiling, backtest_watched};
use countersign_app::{Actor, App, Channel};
use countersign_domain::{Principal, Role, TenantId, UserId};
use serde_json::{Value, json};

use crate::store::StoreArgs;

#[derive(Debug, Subcommand)]
pub enum PoliciesCommand {
    /// Replay the actions submitted in a range under the current policies with a draft's changes:
    /// which would get another policy, which decisions would differ, approval load, time to
    /// decision. Changes nothing.
    Backtest(BacktestArgs),
}

#[derive(Debug, Args)]
pub struct BacktestArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long)]
    pub tenant: String,
    /// Actions submitted at or after this moment (RFC 3339).
    #[arg(long)]
    pub from: chrono::DateTime<chrono::Utc>,
    /// Actions submitted before this moment (RFC 3339; default: now).
    #[arg(long)]
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// A JSON file `{"changes": [{"op": "add"|"change"|"remove", "id": …, "policy": {…}}],
    /// "default_requirements": {…}}`; without it, the current policies as they are.
    #[arg(long)]
    pub draft: Option<PathBuf>,
    /// The most actions to replay, newest first (default 10000; the CLI allows up to 10000000,
    /// more than the API's 100000).
    #[arg(long)]
    pub max_actions: Option<u32>,
    /// Seconds the replay may take (default 20; the CLI allows up to 3600, the API 25).
    #[arg(long)]
    pub time_limit_seconds: Option<u32>,
    /// Print the whole report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(command: PoliciesCommand) -> anyhow::Result<()> {
    match command {
        PoliciesCommand::Backtest(args) => run_backtest(&args).await,
    }
}

fn request(args: &BacktestArgs) -> anyhow::Result<BacktestRequest> {
    let mut body = match &args.draft {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str::<Value>(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?
        }
        None => json!({}),
    };
    let Some(fields) = body.as_object_mut() else {
        anyhow::bail!("--draft must hold a JSON object");
    };
    fields.insert("from".into(), json!(args.from));
    fields.insert("to".into(), json!(args.to.unwrap_or_else(chrono::Utc::now)));
    if let Some(max) = args.max_actions {
        fields.insert("max_actions".into(), json!(max));
    }
    if let Some(seconds) = args.time_limit_seconds {
        fields.insert("time_limit_seconds".into(), json!(seconds));
    }
    serde_path_to_error::deserialize(body).map_err(|err| {
        let path = err.path().to_string();
        anyhow::Error::new(err.into_inner()).context(format!("--draft: at `{path}`"))
    })
}

async fn run_backtest(args: &BacktestArgs) -> anyhow::Result<()> {
    let request = request(args)?;
    let tenant = TenantId::parse(args.tenant.as_str()).context("--tenant")?;
    let ledger = args.store.open_migrated().await?;
    let (projections, seals) =
        countersign_runtime::open_projections_and_seals(&args.store.config()).await?;
    let app = App::new(ledger, projections, seals);
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
    let operator =
        UserId::parse(format!("cli:{user}")).or_else(|_| UserId::parse("cli:operator"))?;
    let actor = Actor::new(
        tenant,
        Principal::new(operator, [Role::owner()]),
        Channel::Cli,
    );
    let report = backtest_watched(&app, &actor, &request, None, Ceiling::OPERATOR, None)
        .await
        .map_err(|err| anyhow::anyhow!("{} ({})", err, err.code()));
    app.close().await;
    let report = report?;
    let mut out = std::io::stdout();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print(&mut out, &report)?;
    }
    Ok(())
}

fn print(out: &mut impl Write, report: &BacktestReport) -> anyhow::Result<()> {
    writeln!(
        out,
        "Backtest of actions submitted {} – {} (deadlines followed to {})",
        report.from.to_rfc3339(),
        report.to.to_rfc3339(),
        report.as_of.to_rfc3339()
    )?;
    writeln!(
        out,
        "{} replayed{}; {} under another policy, {} under other requirements, {} decided differently",
        report.replayed,
        match report.cutoff {
            None => String::new(),
            Some(cutoff) => format!(" (cut short: {cutoff:?})"),
        },
        report.policy_changed,
        report.requirements_changed,
        report.outcome_changed
    )?;
    for (transition, count) in &report.transitions {
        writeln!(out, "  {transition}: {count}")?;
    }
    let times = |t: &countersign_app::backtest::DecisionTimes| {
        format!(
            "{} decided, median {}s, p90 {}s",
            t.decided,
            t.median_seconds.map_or("-".into(), |s| s.to_string()),
            t.p90_seconds.map_or("-".into(), |s| s.to_string())
        )
    };
    writeln!(
        out,
        "Time to decision: recorded {}; draft {}",
        times(&report.time_to_decision_recorded),
        times(&report.time_to_decision_draft)
    )?;
    writeln!(out, "\nLoad per role (actions: recorded → draft)")?;
    for (role, load) in &report.load.roles {
        writeln!(out, "  {role:<20} {:>6} → {}", load.recorded, load.draft)?;
    }
    writeln!(out, "Load per member (counted votes: recorded → draft)")?;
    for (member, load) in &report.load.members {
        writeln!(out, "  {member:<20} {:>6} → {}", load.recorded, load.draft)?;
    }
    writeln!(out, "\nChanged actions")?;
    for diff in &report.actions {
        writeln!(
            out,
            "  {} {:<24} {} ({} v{}) → {} ({} v{}){}",
            diff.action_id,
            diff.action_type,
            diff.recorded.outcome.as_str(),
            diff.recorded.policy_id,
            diff.recorded.policy_version,
            diff.draft.outcome.as_str(),
            diff.draft.policy_id,
            diff.draft.policy_version,
            diff.draft
                .decided_at
                .map_or(String::new(), |at| format!(" at {}", at.to_rfc3339()))
        )?;
    }
    Ok(())
}
