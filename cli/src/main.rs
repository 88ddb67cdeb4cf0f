//! `countersign`: one binary for the approval ledger's service, workers and tools.

mod demo;
mod schemas;
mod simulate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// countersign — an event-sourced approval ledger.
#[derive(Debug, Parser)]
#[command(name = "countersign", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Walk through approvals in memory: reference 002's three policies, votes, stages,
    /// escalation, auto-approval and execution, printed as a timeline of events.
    Demo {
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { json } => demo::run(json),
        Command::Simulate {
            policies,
            requester,
            submission,
        } => simulate::run(policies.as_deref(), &requester, &submission),
        Command::Schemas { out, check } => schemas::run(&out, check),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The one place errors reach the terminal: the chain, outermost first.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!("countersign: {err:#}\n"),
            );
            ExitCode::FAILURE
        }
    }
}
