//! `countersign-bench`: measures countersign beside a baseline taken in the same run on the same
//! database, and writes the figures into `docs/performance.md`. Loopback only, bounded in time.

mod backtest;
mod chaos;
mod chart;
mod console;
mod executor;
mod ledger;
mod load;
mod notify;
mod projections;
mod report;
mod scaling;
mod sustained;
mod usage;
mod verification;
mod workflows;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

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
    /// The report to update (only this bench's section is replaced); `docs/performance.md`, or
    /// with `--quick` `target/performance-quick.md` so a quick look never replaces a full run.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A quick look: one run of 2 s per figure, a one-minute sustained run, and `all` limited to
    /// the sections that do not seed a million events (ledger, projections, verification,
    /// executor, notify, workflows, sustained).
    #[arg(long)]
    quick: bool,
    /// How long the sustained section holds its load (issue 19 asks for 10 minutes).
    #[arg(long, default_value_t = 600)]
    sustained_seconds: u64,
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
    /// How cost grows with the log: reading, rebuilds and `verify` at 100k, 1M and 5M events, the
    /// inbox at 10k, 100k and 1M pending (tables and SVG charts).
    Scaling,
    /// The service at 80% of its maximum submit rate for `--sustained-seconds`, every tailer's
    /// lag sampled (projections, sealer, relay, notifier, workflows).
    Sustained,
    /// Every bench above, in order.
    All,
    /// The service under load while its parts fail (`make chaos`; `--short`: one round).
    Chaos {
        #[arg(long)]
        short: bool,
    },
}

const REPORT: &str = "docs/performance.md";
const QUICK_REPORT: &str = "target/performance-quick.md";

/// Every section, in the order `all` runs them.
const ALL: [Bench; 11] = [
    Bench::Ledger,
    Bench::Projections,
    Bench::Verification,
    Bench::Executor,
    Bench::Load,
    Bench::Console,
    Bench::Notify,
    Bench::Workflows,
    Bench::Backtest,
    Bench::Scaling,
    Bench::Sustained,
];

/// What `all --quick` runs: the sections without a million-event log to seed.
const QUICK: [Bench; 7] = [
    Bench::Ledger,
    Bench::Projections,
    Bench::Verification,
    Bench::Executor,
    Bench::Notify,
    Bench::Workflows,
    Bench::Sustained,
];

/// Runs a section's `measure` on a database of its own, dropped however the section ends.
async fn on_fresh_database(
    settings: &ledger::Settings,
    measure: impl AsyncFnOnce(&ledger::Settings, &ledger::Database) -> anyhow::Result<report::Section>,
) -> anyhow::Result<report::Section> {
    let database = ledger::Database::create(&settings.server).await?;
    let result = measure(settings, &database).await;
    database.drop_now().await?;
    result
}

async fn run_section(bench: Bench, settings: &ledger::Settings) -> anyhow::Result<report::Section> {
    match bench {
        Bench::Ledger => on_fresh_database(settings, ledger::measure).await,
        Bench::Projections => on_fresh_database(settings, projections::measure).await,
        Bench::Verification => on_fresh_database(settings, verification::measure).await,
        Bench::Executor => on_fresh_database(settings, executor::measure).await,
        Bench::Load => load::run(settings).await,
        Bench::Console => on_fresh_database(settings, console::measure).await,
        Bench::Notify => on_fresh_database(settings, notify::measure).await,
        Bench::Workflows => on_fresh_database(settings, workflows::measure).await,
        Bench::Backtest => on_fresh_database(settings, backtest::measure).await,
        Bench::Scaling => on_fresh_database(settings, scaling::measure).await,
        Bench::Sustained => on_fresh_database(settings, sustained::measure).await,
        Bench::All | Bench::Chaos { .. } => {
            anyhow::bail!("`all` and `chaos` are not sections of the report")
        }
    }
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
    let quick = cli.quick;
    let out = match (&cli.out, quick) {
        (Some(out), _) => out.clone(),
        (None, true) => PathBuf::from(QUICK_REPORT),
        (None, false) => PathBuf::from(REPORT),
    };
    let settings = ledger::Settings {
        server: cli.server.clone(),
        seconds: if quick {
            cli.seconds.min(2)
        } else {
            cli.seconds
        },
        runs: if quick { 1 } else { cli.runs },
        report: out.clone(),
        sustained_seconds: if quick {
            cli.sustained_seconds.min(60)
        } else {
            cli.sustained_seconds
        },
    };
    let result = runtime.block_on(async {
        let sections: &[Bench] = match cli.bench {
            Bench::Chaos { short } => return chaos::command(short).await,
            Bench::All if quick => &QUICK,
            Bench::All => &ALL,
            one => &[one],
        };
        let started = Instant::now();
        for &bench in sections {
            let began = Instant::now();
            let section = run_section(bench, &settings).await?;
            // Written as each section ends: a failure later in `all` keeps what was measured.
            report::write_section(&out, &section)?;
            report::progress(&format!(
                "section {} took {:.0} s ({:.0} s in all)",
                section.id,
                began.elapsed().as_secs_f64(),
                started.elapsed().as_secs_f64()
            ));
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
