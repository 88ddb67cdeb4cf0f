//! How cost grows with the log: reading, the rebuild of each projection and `countersign verify`
//! at 100k, 1M and 5M events, and the inbox's first page at 10k, 100k and 1M pending actions.
//! One database grows step by step (each step adds pending actions, one event each, and
//! submitted-and-approved actions, four events each); at each size every figure is taken over the
//! whole log, beside reading that same log. Written as tables and as SVG charts under `perf/`
//! beside the report.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use countersign_ledger::{Ledger, StoreConfig};
use countersign_projections::{Projection, ProjectionStore};
use countersign_verification::{HeadSigner, SealStore, Sealer, SealerConfig};

use crate::chart::{Chart, Series, line_chart, markdown_image};
use crate::ledger::{Database, Settings};
use crate::load::{Service, inbox_latency, seed_pending};
use crate::projections::{people, percentile, read_rate, seed};
use crate::report::{Section, machine, progress};
use crate::verification::verified;

/// The sizes measured: (pending actions, submitted-and-approved actions) in the log after each
/// step — 100k, 1M and 5M events, a tenth, a tenth and a fifth of them pending.
const STEPS: [(usize, usize); 3] = [(10_000, 22_500), (100_000, 225_000), (1_000_000, 1_000_000)];

/// Inbox queries per size (newest, riskiest and eligible-for-me pages in turn).
const QUERIES: usize = 300;

/// What one size measured.
struct Step {
    events: u64,
    pending: usize,
    /// Reading the whole log in batches of 1,000: seconds.
    read: f64,
    /// Rebuilding `actions` and `audit` from the start: seconds each, in `Projection::ALL` order.
    rebuilds: Vec<(&'static str, f64)>,
    /// Sealing the events the step added (the sealer carries on from the last step): seconds.
    seal: f64,
    sealed: u64,
    /// `verify` over the whole log: seconds.
    verify: f64,
    /// Inbox latencies, milliseconds.
    inbox_p50: f64,
    inbox_p99: f64,
}

pub(crate) async fn measure(settings: &Settings, database: &Database) -> anyhow::Result<Section> {
    let config = StoreConfig::Postgres {
        url: database.url.clone(),
    };
    let ledger = Ledger::open(&config).await?;
    ledger.migrate().await?;
    let projections = ProjectionStore::open(&config).await?;
    let seals = SealStore::open(&config).await?;
    let signer = HeadSigner::generate();
    let mut sealer = Sealer::new(
        ledger.clone(),
        seals.clone(),
        SealerConfig {
            signer: Some(signer.clone()),
            ..SealerConfig::default()
        },
    );
    let people = people()?;
    let tenants: Vec<String> = (0..8).map(|t| format!("inbox-{t}")).collect();
    let (mut pending, mut decided, mut events) = (0usize, 0usize, 0u64);
    let mut steps = Vec::new();
    // COUNTERSIGN_BENCH_SCALE shrinks the log for a smoke run, as in the `load` section.
    let scale: f64 = std::env::var("COUNTERSIGN_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let scaled = |n: usize| ((n as f64 * scale) as usize).max(1);
    for (want_pending, want_decided) in STEPS {
        let (want_pending, want_decided) = (scaled(want_pending), scaled(want_decided));
        let target = want_pending + 4 * want_decided;
        progress(&format!("scaling: growing the log to {target} events"));
        seed_pending(&database.url, want_pending - pending, &tenants).await?;
        let added = seed(&database.url, &people, want_decided - decided).await?;
        events += (want_pending - pending) as u64 + u64::try_from(added)?;
        (pending, decided) = (want_pending, want_decided);

        progress(&format!("scaling: reading {events} events"));
        let read = events as f64 / read_rate(&ledger).await?;
        let mut rebuilds = Vec::new();
        for projection in Projection::ALL {
            progress(&format!(
                "scaling: rebuilding {projection} over {events} events"
            ));
            let started = Instant::now();
            let generation =
                countersign_projections::rebuild(&ledger, &projections, projection, |_, _| {})
                    .await?;
            let seconds = started.elapsed().as_secs_f64();
            anyhow::ensure!(
                u64::try_from(generation.events).ok() == Some(events),
                "the rebuild of {projection} applied {} of {events} events",
                generation.events
            );
            projections.drop_retired(projection).await?;
            rebuilds.push((projection.name(), seconds));
        }
        progress(&format!("scaling: sealing up to {events} events"));
        let started = Instant::now();
        let sealed = sealer.run_until_idle().await?;
        sealer.sign_heads(true).await?;
        let seal = started.elapsed().as_secs_f64();
        progress(&format!("scaling: verifying {events} events"));
        let report = verified(&ledger, &seals, &signer).await?;
        anyhow::ensure!(
            report.events == events,
            "verify checked {} of {events} events",
            report.events
        );
        progress(&format!("scaling: inbox queries at {pending} pending"));
        // The api role alone: the projections it reads were just rebuilt, and no tailer of its
        // own competes with the queries (a full `serve` would first run its notifier and
        // workflow engine over the whole grown log).
        let service = Service::start_with(
            &database.url,
            &["--role", "api", "--executor", "false"],
            &[],
        )?;
        let (_, latencies) = inbox_latency(&service, &tenants[0], QUERIES).await?;
        drop(service);
        steps.push(Step {
            events,
            pending,
            read,
            rebuilds,
            seal,
            sealed,
            verify: report.seconds,
            inbox_p50: percentile(&latencies, 0.50),
            inbox_p99: percentile(&latencies, 0.99),
        });
    }
    seals.close().await;
    projections.close().await;
    ledger.close().await;
    report(settings, &steps)
}

fn report(settings: &Settings, steps: &[Step]) -> anyhow::Result<Section> {
    let rate = |seconds: f64, events: u64| events as f64 / seconds.max(1e-9);
    let mut markdown = String::new();
    let _ = writeln!(markdown, "## Scaling\n");
    let _ = writeln!(
        markdown,
        "{} · PostgreSQL on loopback, one database grown step by step · one run per size.\n",
        machine()
    );
    let _ = writeln!(
        markdown,
        "Each size is the whole log after a step: pending actions (one event each, 8 tenants) and submitted-and-approved actions (four events each). Every figure is over the whole log at that size, beside reading that same log in batches of 1,000 (the baseline); the sealer carries on from the previous size, so its column is the time to seal what the step added. The inbox is the first page of 50 (newest, riskiest, eligible-for-me in turn, {QUERIES} queries) for one tenant, an eighth of the pending actions, through a freshly started `serve --role api` (no tailer of its own running beside the queries). Reading, rebuilding and verifying should grow linearly with the log (a flat rate); the inbox should stay flat.\n"
    );
    let _ = writeln!(
        markdown,
        "| events | reading s (events/s) | rebuild `actions` s (ratio to reading) | rebuild `audit` s (ratio) | sealing the step s (events/s) | `verify` s (ratio) | pending | inbox p50 ms | inbox p99 ms |"
    );
    let _ = writeln!(
        markdown,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for step in steps {
        let rebuild = |name: &str| {
            step.rebuilds
                .iter()
                .find(|(projection, _)| *projection == name)
                .map_or_else(
                    || "—".to_owned(),
                    |(_, seconds)| format!("{seconds:.1} ({:.2})", step.read / seconds),
                )
        };
        let _ = writeln!(
            markdown,
            "| {} | {:.1} ({:.0}) | {} | {} | {:.1} ({:.0}) | {:.1} ({:.2}) | {} | {:.1} | {:.1} |",
            step.events,
            step.read,
            rate(step.read, step.events),
            rebuild("actions"),
            rebuild("audit"),
            step.seal,
            rate(step.seal, step.sealed),
            step.verify,
            step.read / step.verify.max(1e-9),
            step.pending,
            step.inbox_p50,
            step.inbox_p99,
        );
    }
    let doc_dir = settings
        .report
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    std::fs::create_dir_all(doc_dir.join("perf"))?;
    let by_events = |seconds: &dyn Fn(&Step) -> Option<f64>| {
        steps
            .iter()
            .filter_map(|step| Some((step.events as f64, seconds(step)?)))
            .collect::<Vec<_>>()
    };
    let mut series = vec![Series {
        name: "reading the log (baseline)".into(),
        points: by_events(&|step| Some(step.read)),
    }];
    for projection in Projection::ALL {
        let name = projection.name();
        series.push(Series {
            name: format!("rebuild {name}"),
            points: by_events(&|step| {
                step.rebuilds
                    .iter()
                    .find(|(rebuilt, _)| *rebuilt == name)
                    .map(|(_, seconds)| *seconds)
            }),
        });
    }
    series.push(Series {
        name: "countersign verify".into(),
        points: by_events(&|step| Some(step.verify)),
    });
    let times = doc_dir.join("perf").join("scaling-log.svg");
    line_chart(
        &times,
        &Chart {
            title: "Time over the whole log by its size".into(),
            x_label: "events in the log".into(),
            y_label: "seconds".into(),
            log_x: true,
            log_y: true,
            series,
        },
    )?;
    let inbox = doc_dir.join("perf").join("scaling-inbox.svg");
    let by_pending = |pick: fn(&Step) -> f64| {
        steps
            .iter()
            .map(|step| (step.pending as f64, pick(step)))
            .collect::<Vec<_>>()
    };
    line_chart(
        &inbox,
        &Chart {
            title: "Inbox first page by pending actions".into(),
            x_label: "pending actions (8 tenants)".into(),
            y_label: "milliseconds".into(),
            log_x: true,
            log_y: false,
            series: vec![
                Series {
                    name: "p50".into(),
                    points: by_pending(|step| step.inbox_p50),
                },
                Series {
                    name: "p99".into(),
                    points: by_pending(|step| step.inbox_p99),
                },
            ],
        },
    )?;
    let _ = writeln!(
        markdown,
        "\n{}\n\n{}",
        markdown_image(&doc_dir, &times, "time over the whole log by its size"),
        markdown_image(&doc_dir, &inbox, "inbox latency by pending actions")
    );
    Ok(Section {
        id: "scaling",
        markdown,
    })
}
