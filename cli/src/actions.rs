//! `countersign actions execute`: batch execution (reference 004, "apply all approved") on the
//! store, as its operator (an owner, through the CLI), through the same use case as
//! `POST /v1/actions/execute` (`countersign_app::batch`): request execution of every approved
//! action matching a filter, or of the named ones, or (`--dry-run`) only decide each request and
//! record nothing. The executor of a running `serve` then runs what was requested.

use std::io::Write;

use anyhow::Context;
use clap::{Args, Subcommand};
use countersign_app::batch::{BatchExecution, BatchSelection, execute_batch};
use countersign_app::{Actor, App, AppError, Channel};
use countersign_domain::risk::RiskLevel;
use countersign_domain::{ActionId, CapabilityName, ModuleSlug, Principal, Role, TenantId, UserId};

use crate::store::StoreArgs;

#[derive(Debug, Subcommand)]
pub enum ActionsCommand {
    /// Request execution of every approved action matching a filter (newest first), or of the
    /// named ones; `--dry-run` previews each without recording anything. One result per action.
    Execute(ExecuteArgs),
}

#[derive(Debug, Args)]
pub struct ExecuteArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long)]
    pub tenant: String,
    /// An action to run, by id (repeatable, at most 100); not with a filter.
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// Only approved actions of this module.
    #[arg(long)]
    pub module: Option<String>,
    /// Only approved actions of this capability.
    #[arg(long)]
    pub capability: Option<String>,
    /// Only approved actions of these risk levels (comma-separated: low, medium, high).
    #[arg(long, value_delimiter = ',')]
    pub risk: Vec<String>,
    /// The most matching actions to reach (1-100, default 50).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Decide each request without recording it.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the whole answer as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(command: ActionsCommand) -> anyhow::Result<()> {
    match command {
        ActionsCommand::Execute(args) => run_execute(&args).await,
    }
}

fn selection(args: &ExecuteArgs) -> anyhow::Result<BatchSelection> {
    let ids = args
        .ids
        .iter()
        .map(|id| ActionId::parse(id).with_context(|| format!("--id {id}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let risk_levels = args
        .risk
        .iter()
        .map(|level| {
            RiskLevel::parse(level.trim()).with_context(|| {
                format!("--risk: unknown level `{level}` (expected low, medium or high)")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let selection = BatchSelection {
        ids,
        module: args
            .module
            .as_deref()
            .map(ModuleSlug::parse)
            .transpose()
            .context("--module")?,
        capability: args
            .capability
            .as_deref()
            .map(CapabilityName::parse)
            .transpose()
            .context("--capability")?,
        risk_levels,
        limit: args.limit,
    };
    // The use case checks it again; here its refusal names the flag.
    selection.check().map_err(|error| {
        let flag = if error.field == "ids" {
            "id"
        } else {
            &error.field
        };
        anyhow::anyhow!("--{flag}: {}", error.message)
    })?;
    Ok(selection)
}

async fn run_execute(args: &ExecuteArgs) -> anyhow::Result<()> {
    let selection = selection(args)?;
    let tenant = TenantId::parse(args.tenant.as_str()).context("--tenant")?;
    let ledger = args.store.open_migrated().await?;
    // A filter reads the actions read model: it has to reflect every event recorded so far.
    let head = ledger.log_head().await?;
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
    let done = execute_batch(&app, &actor, &selection, args.dry_run, Some(head)).await;
    app.close().await;
    let (done, _) = done.map_err(|error| match error {
        AppError::NotCaughtUp => anyhow::anyhow!(
            "the actions read model is behind the log: start `countersign serve`, or run \
             `countersign projections rebuild actions`, then try again (not_caught_up)"
        ),
        other => anyhow::anyhow!("{other} ({})", other.code()),
    })?;
    let mut out = std::io::stdout();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&done)?)?;
    } else {
        print(&mut out, &done)?;
    }
    Ok(())
}

fn print(out: &mut impl Write, done: &BatchExecution) -> anyhow::Result<()> {
    writeln!(
        out,
        "{} action(s) reached; {} {}{}",
        done.matched,
        done.requested,
        if done.dry_run {
            "would be asked to run (dry run: nothing recorded)"
        } else {
            "asked to run"
        },
        if done.more {
            "; more match (run it again for the rest)"
        } else {
            ""
        }
    )?;
    for item in &done.results {
        writeln!(
            out,
            "  {} {:<18} {:<10} {}",
            item.id,
            item.result,
            item.status.map_or("-", |status| status.as_str()),
            item.detail.as_deref().unwrap_or_default()
        )?;
    }
    Ok(())
}
