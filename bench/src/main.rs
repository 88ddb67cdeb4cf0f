//! `countersign-bench`: measures countersign beside a baseline taken in the same run on the same
//! database, and writes the figures into `docs/performance.md`. Loopback only, bounded in time.

mod backtest;
mod chaos;
mod console;
mod executor;
mod ledger;
mod load;
mod notify;
mod projections;
mod report;
mod verification;
mod workflows;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "countersign-bench", about)]
struct Cli {
    /// A PostgreSQL server; each bench creates and drops its own database there.
    #[arg(
        long,
        env = "BENCH_SERVER_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    server: String,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Runs per figure (the report gives the median and the spread).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The report to update (only this bench's section is replaced).
    #[arg(long, default_value = "docs/performance.md")]
    out: PathBuf,
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Clone, Copy, Subcommand)]
enum Bench {
    /// Append throughput of the ledger at 1, 16 and 64 writers, beside pgbench single-row INSERTs.
    Ledger,
    /// Projection rebuild rate beside the log read rate, and projection lag under load.
    Projections,
    /// Sealing and verify rates beside the log read rate, and the sealer's lag under load.
    Verification,
    /// Relay throughput beside a bare pipelined publish, and approval-to-execution latency.
    Executor,
    /// The service over HTTP: submits beside bare cqrs-es, votes at 500/s, 100 concurrent votes,
    /// inbox queries with 100k pending among 1M events, rebuilds over 1M events.
    Load,
    /// The web console: inbox page at 100k pending, a drawer with 200 votes, 200 live sessions.
    Console,
    /// Notifications: in-app fan-out lag at 1,000 events/s, email throughput to an SMTP sink.
    Notify,
    /// Workflows: event to run latency at 1,000 events/s, duplicates, intake over JetStream.
    Workflows,
    /// Policy backtesting over 1M events beside reading the log.
    Backtest,
    /// Every bench above, in order.
    All,
    /// The service under load while its parts fail (`make chaos`; `--short`: one round).
    Chaos {
        #[arg(long)]
        short: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!("countersign-bench: {err}\n"),
            );
            return ExitCode::FAILURE;
        }
    };
    let settings = ledger::Settings {
        server: cli.server.clone(),
        seconds: cli.seconds,
        runs: cli.runs,
    };
    let result = runtime.block_on(async {
        let sections = match cli.bench {
            Bench::Ledger => vec![ledger::run(&settings).await?],
            Bench::Projections => vec![projections::run(&settings).await?],
            Bench::Verification => vec![verification::run(&settings).await?],
            Bench::Executor => vec![executor::run(&settings).await?],
            Bench::Load => vec![load::run(&settings).await?],
            Bench::Console => vec![console::run(&settings).await?],
            Bench::Notify => vec![notify::run(&settings).await?],
            Bench::Workflows => vec![workflows::run(&settings).await?],
            Bench::Backtest => vec![backtest::run(&settings).await?],
            Bench::Chaos { short } => {
                chaos::command(short).await?;
                Vec::new()
            }
            Bench::All => vec![
                ledger::run(&settings).await?,
                projections::run(&settings).await?,
                verification::run(&settings).await?,
                executor::run(&settings).await?,
                load::run(&settings).await?,
                console::run(&settings).await?,
                notify::run(&settings).await?,
                workflows::run(&settings).await?,
                backtest::run(&settings).await?,
            ],
        };
        for section in &sections {
            report::write_section(&cli.out, section)?;
        }
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!("countersign-bench: {err:#}\n"),
            );
            ExitCode::FAILURE
        }
    }
}
