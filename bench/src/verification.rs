//! Verification: the sealer's rate and `verify`'s rate beside the raw log read rate, and how far
//! the sealer trails the head of the log under a sustained write load, on one fresh PostgreSQL
//! database.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use countersign_domain::ActionId;
use countersign_domain::action::Action;
use countersign_ledger::{Ledger, Metadata, StoreConfig};
use countersign_verification::decisions::check_decisions;
use countersign_verification::{
    HeadSigner, KeyRing, Report, SealStore, Sealer, SealerConfig, VerifyOptions, verify,
};
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::Semaphore;

use crate::ledger::{Database, Settings};
use crate::projections::{People, commands, people, percentile, read_ahead_rate, read_rate, seed};
use crate::report::{Figure, Section, machine, progress, rates_beside_reading};

/// Heads are signed every this many events of a tenant.
const EVERY_EVENTS: u64 = 1000;

fn sealer_config(signer: &HeadSigner) -> SealerConfig {
    SealerConfig {
        every_events: EVERY_EVENTS,
        every_seconds: Duration::from_secs(1),
        signer: Some(signer.clone()),
        ..SealerConfig::default()
    }
}

/// Forgets everything sealed (the bench is the superuser of its own database): leaves and heads
/// are append-only, so their triggers are disabled for the TRUNCATE.
async fn unseal(url: &str) -> anyhow::Result<()> {
    let mut db = PgConnection::connect(url).await?;
    for statement in [
        "ALTER TABLE ledger_leaves DISABLE TRIGGER USER",
        "ALTER TABLE ledger_heads DISABLE TRIGGER USER",
        "TRUNCATE ledger_leaves, ledger_heads, ledger_trees",
        "ALTER TABLE ledger_leaves ENABLE TRIGGER USER",
        "ALTER TABLE ledger_heads ENABLE TRIGGER USER",
        "UPDATE ledger_seal SET checkpoint_txid = 0, checkpoint_position = 0, events = 0",
    ] {
        db.execute(statement).await?;
    }
    let _ = db.close().await;
    Ok(())
}

/// Seals the whole log from the start; events per second.
async fn seal_rate(
    ledger: &Ledger,
    store: &SealStore,
    signer: &HeadSigner,
    url: &str,
) -> anyhow::Result<f64> {
    unseal(url).await?;
    let started = Instant::now();
    let mut sealer = Sealer::new(ledger.clone(), store.clone(), sealer_config(signer));
    let sealed = sealer.run_until_idle().await?;
    sealer.sign_heads(true).await?;
    Ok(sealed as f64 / started.elapsed().as_secs_f64())
}

/// `verify` over the whole log with `signer`'s key, failing unless every check passed.
pub(crate) async fn verified(
    ledger: &Ledger,
    store: &SealStore,
    signer: &HeadSigner,
) -> anyhow::Result<Report> {
    let report = verify(
        ledger,
        store,
        &VerifyOptions {
            keys: KeyRing::new([signer.public_key()]),
            ..VerifyOptions::default()
        },
        |_, _| {},
    )
    .await?;
    anyhow::ensure!(report.is_ok(), "verify found {:?}", report.divergences);
    Ok(report)
}

async fn verify_rate(
    ledger: &Ledger,
    store: &SealStore,
    signer: &HeadSigner,
) -> anyhow::Result<f64> {
    Ok(verified(ledger, store, signer).await?.rate())
}

async fn decisions_rate(ledger: &Ledger) -> anyhow::Result<f64> {
    let report = check_decisions(ledger, None, |_, _| {}).await?;
    anyhow::ensure!(report.is_ok(), "decisions: {:?}", report.mismatches);
    Ok(report.events as f64 / report.seconds.max(1e-9))
}

/// Submits and approves actions at `pairs_per_second` for `seconds` while the sealer runs as in
/// `serve`; returns (events per second written, lag samples in milliseconds).
async fn lag_under_load(
    ledger: &Ledger,
    store: &SealStore,
    signer: &HeadSigner,
    people: &Arc<People>,
    pairs_per_second: u32,
    seconds: u64,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let base = store.checkpoint().await?.events;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sealer = {
        let mut stopped = stopped.clone();
        tokio::spawn(
            Sealer::new(ledger.clone(), store.clone(), sealer_config(signer)).run(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }),
        )
    };
    let committed = Arc::new(tokio::sync::Mutex::new(Vec::<(i64, Instant)>::new()));
    let written = Arc::new(AtomicI64::new(0));
    let sampler = {
        let store = store.clone();
        let done = stop.subscribe();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !*done.borrow() {
                if let Ok(checkpoint) = store.checkpoint().await {
                    samples.push((checkpoint.events - base, Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples
        })
    };
    let permits = Arc::new(Semaphore::new(64));
    let started = Instant::now();
    let mut ticker =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(pairs_per_second)));
    let mut n = 0usize;
    let mut tasks = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        ticker.tick().await;
        let permit = permits.clone().acquire_owned().await?;
        let (ledger, people, committed, written) = (
            ledger.clone(),
            people.clone(),
            committed.clone(),
            written.clone(),
        );
        n += 1;
        tasks.push(tokio::spawn(async move {
            let tenant = people.tenants[n % people.tenants.len()].clone();
            let id = ActionId::from_uuid(uuid::Uuid::now_v7());
            let (submit, vote) = commands(&people, &tenant, id)?;
            for command in [submit, vote] {
                let metadata = Metadata::new(tenant.clone(), command.context().by.id.clone());
                let done = ledger.execute::<Action>(&id, command, &metadata).await?;
                let total = written.fetch_add(done.events.len() as i64, Ordering::SeqCst)
                    + done.events.len() as i64;
                committed.lock().await.push((total, Instant::now()));
            }
            drop(permit);
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = written.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.checkpoint().await?.events - base < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(true);
    let samples = sampler.await?;
    sealer.await??;
    let mut commits = committed.lock().await.clone();
    commits.sort_by_key(|(count, _)| *count);
    let lags = commits
        .iter()
        .filter_map(|(count, at)| {
            let sealed = samples
                .iter()
                .find(|(events, sampled)| events >= count && sampled >= at)?;
            Some(sealed.1.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    Ok((total as f64 / elapsed, lags))
}

pub(crate) async fn measure(settings: &Settings, database: &Database) -> anyhow::Result<Section> {
    let config = StoreConfig::Postgres {
        url: database.url.clone(),
    };
    let ledger = Ledger::open(&config).await?;
    ledger.migrate().await?;
    let store = SealStore::open(&config).await?;
    let signer = HeadSigner::generate();
    let people = Arc::new(people()?);
    let actions = 5_000 * usize::try_from(settings.seconds.clamp(1, 10)).unwrap_or(1);
    progress(&format!("verification: seeding {actions} approved actions"));
    let events = seed(&database.url, &people, actions).await?;

    let (mut reads, mut aheads, mut seals, mut verifies, mut decisions) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..settings.runs {
        progress(&format!(
            "verification: rate run {}/{}",
            run + 1,
            settings.runs
        ));
        reads.push(read_rate(&ledger).await?);
        aheads.push(read_ahead_rate(&ledger).await?);
        seals.push(seal_rate(&ledger, &store, &signer, &database.url).await?);
        verifies.push(verify_rate(&ledger, &store, &signer).await?);
        decisions.push(decisions_rate(&ledger).await?);
    }
    let (reads, aheads, seals, verifies, decisions) = (
        Figure(reads),
        Figure(aheads),
        Figure(seals),
        Figure(verifies),
        Figure(decisions),
    );

    let pairs_per_second = 250;
    let (mut rates, mut p50, mut p95, mut p99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..settings.runs {
        progress(&format!(
            "verification: lag run {}/{}",
            run + 1,
            settings.runs
        ));
        let (rate, lags) = lag_under_load(
            &ledger,
            &store,
            &signer,
            &people,
            pairs_per_second,
            settings.seconds.max(1),
        )
        .await?;
        rates.push(rate);
        p50.push(percentile(&lags, 0.50));
        p95.push(percentile(&lags, 0.95));
        p99.push(percentile(&lags, 0.99));
    }
    store.close().await;
    ledger.close().await;

    let mut markdown = String::new();
    let _ = writeln!(markdown, "## Verification\n");
    let _ = writeln!(
        markdown,
        "{} · PostgreSQL, fresh database · {} runs.\n",
        machine(),
        settings.runs
    );
    let _ = writeln!(
        markdown,
        "**Rates** over a log of {events} events ({actions} actions across 8 tenants, each submitted and approved). \
         The baseline is reading the same log in batches of 1,000 without doing anything with it, one batch after another; \
         the second baseline reads them one batch ahead of the consumer, as `verify` reads. Each ratio is the median (and spread) of the runs' own ratios, every run against its own baselines. Sealing computes each \
         event's canonical leaf, writes leaves, trees and checkpoint per batch and signs a head every {EVERY_EVENTS} events \
         of a tenant; `verify` recomputes every tree, compares every leaf and checks every head and signature; the decision \
         replay decides every recorded command again.\n"
    );
    rates_beside_reading(
        &mut markdown,
        &reads,
        &aheads,
        &[
            ("sealing from the start", &seals),
            ("`countersign verify`", &verifies),
            ("`countersign verify --decisions` replay alone", &decisions),
        ],
    );
    let _ = writeln!(
        markdown,
        "\n**Sealer lag under load**: {pairs_per_second} actions per second submitted and approved through the ledger \
         (four events each) for {} s while the sealer runs as in `serve`; lag is the time from a command's commit to the \
         sealer's checkpoint covering it (sampled every 5 ms).\n",
        settings.seconds.max(1)
    );
    let _ = writeln!(
        markdown,
        "| events/s written | lag p50 (ms) | lag p95 (ms) | lag p99 (ms) |"
    );
    let _ = writeln!(markdown, "| ---: | ---: | ---: | ---: |");
    let _ = writeln!(
        markdown,
        "| {} | {} | {} | {} |",
        Figure(rates).show(0),
        Figure(p50).show(1),
        Figure(p95).show(1),
        Figure(p99).show(1)
    );
    Ok(Section {
        id: "verification",
        markdown,
    })
}
