//! `countersign`: one binary for the approval ledger's service, workers and tools.

mod actions;
mod auth;
mod backtest;
mod demo;
mod doctor;
mod events;
mod members;
mod projections;
mod schemas;
mod serve;
mod simulate;
mod store;
mod telemetry;
mod tour;
mod verify;
mod vote_keys;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::serve::ServeArgs;
use crate::store::StoreArgs;
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "countersign", version, about, long_about = None)]
struct Cli {
    /// Log format on standard error (auto: text on a terminal, else JSON).
    #[arg(
        long,
        env = "COUNTERSIGN_LOG_FORMAT",
        value_enum,
        default_value = "auto",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP service (migrates the store first). Embedded SQLite unless DATABASE_URL is set.
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate(StoreArgs),
    /// Mint a development JWT (HS256) for a user.
    Token(auth::TokenArgs),
    /// Create, list or revoke a tenant's API keys.
    #[command(subcommand)]
    ApiKeys(auth::ApiKeysCommand),
    /// Add, list, update or remove a tenant's members (who is notified, and how).
    #[command(subcommand)]
    Members(members::MembersCommand),
    /// Inspect or rebuild the read models.
    #[command(subcommand)]
    Projections(projections::ProjectionsCommand),
    /// Show a tenant's inbox, an action's state and its audit timeline as of a past moment,
    /// folded from the log (live tables are not touched).
    Replay(projections::ReplayArgs),
    /// Load the demo tenant (pending, executing, executed, rejected and expired actions).
    Demo(StoreArgs),
    /// Walk through approvals in memory: reference 002's policies, votes, stages, escalation,
    /// auto-approval and execution, printed as a timeline of events.
    Tour {
        /// Print the events as JSON lines instead of a timeline.
        #[arg(long)]
        json: bool,
    },
    /// Score a submission and show which policy would govern it.
    Simulate {
        /// A JSON array of policies (see docs/examples/policies.json).
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Who submits (matched by `requested_by` criteria).
        #[arg(long, default_value = "api")]
        requester: String,
        /// The submission as JSON; `-` reads standard input.
        submission: PathBuf,
    },
    /// Write the JSON Schemas of commands, events and views to a directory.
    Schemas {
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
        /// Compare instead of writing; fail when a file differs.
        #[arg(long)]
        check: bool,
    },
    /// Recompute every tenant's ledger tree from the events and check every sealed leaf, head and
    /// signature; name the first divergent event. `--decisions` also re-decides every action.
    Verify(verify::VerifyArgs),
    /// Seal the log to its end now and sign a head for every tenant (what `serve` does
    /// continuously).
    Seal(verify::SealCommand),
    /// Export a tenant's events with proofs, or verify such an export offline.
    #[command(subcommand)]
    Audit(verify::AuditCommand),
    /// Check the store and every tailer: whether each can get past the next event after its
    /// checkpoint. Exits 1 when one cannot (docs/operations.md, "A stalled tailer").
    Doctor(StoreArgs),
    /// Manage the keys that sign ledger heads.
    #[command(subcommand)]
    Keys(verify::KeysCommand),
    /// Publish domain events to the workflow intake (`events publish`).
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Work with approval policies on the store: `backtest` a draft over a tenant's history.
    #[command(subcommand)]
    Policies(backtest::PoliciesCommand),
    /// Work with actions on the store: `execute` every approved action matching a filter
    /// (batch execution, with `--dry-run`).
    #[command(subcommand)]
    Actions(actions::ActionsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Tour { json } => tour::run(json),
        Command::Simulate {
            policies,
            requester,
            submission,
        } => simulate::run(policies.as_deref(), &requester, &submission),
        Command::Schemas { out, check } => schemas::run(&out, check),
        Command::Serve(args) => block_on(serve::run(&args)),
        Command::Migrate(store) => block_on(store::migrate(&store)),
        Command::Demo(store) => block_on(demo::run(&store)),
        Command::Projections(command) => block_on(projections::run(command)),
        Command::Token(args) => auth::token_command(&args),
        Command::ApiKeys(command) => block_on(auth::api_keys_command(command)),
        Command::Members(command) => block_on(members::run(command)),
        Command::Replay(args) => block_on(projections::replay_command(&args)),
        Command::Verify(args) => block_on(verify::run_verify(&args)),
        Command::Seal(command) => block_on(verify::seal(&command)),
        Command::Audit(command) => block_on(verify::run_audit(command)),
        Command::Keys(command) => verify::run_keys(command),
        Command::Policies(command) => block_on(backtest::run(command)),
        Command::Actions(command) => block_on(actions::run(command)),
        Command::Doctor(store) => block_on(doctor::run(&store)),
        Command::Events(command) => block_on(events::run(command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "command failed");
            // The one place errors reach a person at the terminal: the chain, outermost first.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!("countersign: {err:#}\n"),
            );
            ExitCode::FAILURE
        }
    }
}

fn block_on<F: Future<Output = anyhow::Result<()>>>(future: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(future)
}
