//! Sustained load: `countersign serve` (release, with NATS, so the relay publishes to JetStream)
//! takes submissions over HTTP at 80% of the rate it reached closed-loop at 16 clients, for
//! `--sustained-seconds` (10 minutes by default), while every tailer's lag is sampled: the
//! projections, the sealer, and each tailer that keeps a checkpoint (relay, notifier, workflow
//! engine, …). A tailer's lag at a sample is how long it took until its checkpoint covered the
//! log's head as it was at that sample. The goal (issue 19): every lag p99 under 1 s, and not
//! growing (the second half's p99 against the first half's).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use tokio::sync::Semaphore;

use crate::ledger::{Database, Settings};
use crate::load::{Service, client, submission, submit_load, token};
use crate::projections::percentile;
use crate::report::{Section, machine, progress};

/// How close to the closed-loop maximum the open loop runs.
const LOAD_SHARE: f64 = 0.8;
/// Clients of the closed loop that finds the maximum.
const CLIENTS: usize = 16;
/// How often the tailers' checkpoints are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// Every checkpoint and the log's head, as `(label, txid, position)` rows.
const CHECKPOINTS: &str = "
SELECT 'head' AS label, txid, position FROM (
  SELECT txid::text::bigint AS txid, position FROM events
   WHERE txid < pg_snapshot_xmin(pg_current_snapshot())
   ORDER BY events.txid DESC, events.position DESC LIMIT 1) AS head
UNION ALL SELECT 'projection ' || name, checkpoint_txid, checkpoint_position
  FROM projections WHERE state = 'live'
UNION ALL SELECT 'sealer', checkpoint_txid, checkpoint_position FROM ledger_seal
UNION ALL SELECT name, txid, position FROM tailer_checkpoints";

struct Sample {
    at: Instant,
    head: (i64, i64),
    checkpoints: BTreeMap<String, (i64, i64)>,
}

pub(crate) async fn measure(settings: &Settings, database: &Database) -> anyhow::Result<Section> {
    let ledger = countersign_ledger::Ledger::open(&countersign_ledger::StoreConfig::Postgres {
        url: database.url.clone(),
    })
    .await?;
    ledger.migrate().await?;
    ledger.close().await;
    let name = format!("bench_sustained_{}", uuid::Uuid::new_v4().simple());
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let service = Service::start_with(
        &database.url,
        &["--executor", "true"],
        &[
            ("NATS_URL", nats_url.as_str()),
            ("COUNTERSIGN_NATS_STREAM", name.as_str()),
            ("COUNTERSIGN_NATS_PREFIX", name.as_str()),
        ],
    )?;
    let result = sustain(settings, database, &service).await;
    drop(service);
    if let Ok(nats) = async_nats::connect(&nats_url).await {
        let _ = async_nats::jetstream::new(nats).delete_stream(&name).await;
    }
    result
}

async fn sustain(
    settings: &Settings,
    database: &Database,
    service: &Service,
) -> anyhow::Result<Section> {
    progress(&format!(
        "sustained: the closed-loop maximum at {CLIENTS} clients"
    ));
    let (maximum, _, _) = submit_load(service, CLIENTS, settings.seconds).await?;
    let rate = (maximum * LOAD_SHARE).max(1.0);
    let seconds = settings.sustained_seconds;
    progress(&format!(
        "sustained: {rate:.0} submissions/s for {seconds} s, every tailer's lag sampled"
    ));

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(sample(database.url.clone(), stopped));
    let http = client()?;
    let bearer = format!(
        "Bearer {}",
        token("bench-service", "bench", &["requester"])?
    );
    let url = format!("{}/v1/actions", service.base);
    let in_flight = Arc::new(Semaphore::new(256));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0usize;
    let mut last_progress = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        ticker.tick().await;
        let permit = in_flight.clone().acquire_owned().await?;
        sent += 1;
        let (http, bearer, url, latencies, failures) = (
            http.clone(),
            bearer.clone(),
            url.clone(),
            latencies.clone(),
            failures.clone(),
        );
        tokio::spawn(async move {
            let begun = Instant::now();
            let answer = http
                .post(&url)
                .header("authorization", &bearer)
                .json(&submission(sent))
                .send()
                .await;
            match answer {
                Ok(response) if response.status().as_u16() == 201 => {
                    if let Ok(mut latencies) = latencies.lock() {
                        latencies.push((
                            begun.duration_since(started).as_secs_f64(),
                            begun.elapsed().as_secs_f64() * 1000.0,
                        ));
                    }
                }
                _ => {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            drop(permit);
        });
        if last_progress.elapsed() > Duration::from_secs(60) {
            last_progress = Instant::now();
            progress(&format!(
                "sustained: {:.0} of {seconds} s, {sent} sent",
                started.elapsed().as_secs_f64()
            ));
        }
    }
    // Every request answered, then the tailers get up to a minute to cover the last head.
    let _ = in_flight.acquire_many(256).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut connection = PgConnection::connect(&database.url).await?;
    loop {
        let rows = read_checkpoints(&mut connection).await?;
        let covered = rows.head.is_some_and(|head| {
            rows.checkpoints
                .values()
                .all(|checkpoint| *checkpoint >= head)
        });
        if covered || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    connection.close().await?;
    let _ = stop.send(true);
    let samples = sampler.await??;
    let latencies = Arc::try_unwrap(latencies)
        .map_err(|_| anyhow::anyhow!("requests still hold the latencies"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a request panicked"))?;
    let failures = failures.load(std::sync::atomic::Ordering::Relaxed);
    Ok(report(
        maximum, rate, elapsed, &latencies, failures, &samples,
    ))
}

struct Read {
    head: Option<(i64, i64)>,
    checkpoints: BTreeMap<String, (i64, i64)>,
}

async fn read_checkpoints(connection: &mut PgConnection) -> anyhow::Result<Read> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(CHECKPOINTS)
        .fetch_all(&mut *connection)
        .await
        .context("reading the checkpoints")?;
    let mut read = Read {
        head: None,
        checkpoints: BTreeMap::new(),
    };
    for (label, txid, position) in rows {
        if label == "head" {
            read.head = Some((txid, position));
        } else if label.starts_with("relay:") {
            // The relay's checkpoint is named after its stream, a fresh name per run.
            read.checkpoints.insert("relay".into(), (txid, position));
        } else {
            read.checkpoints.insert(label, (txid, position));
        }
    }
    Ok(read)
}

async fn sample(
    url: String,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<Sample>> {
    let mut connection = PgConnection::connect(&url).await?;
    let mut samples = Vec::new();
    while !*stopped.borrow() {
        let read = read_checkpoints(&mut connection).await?;
        if let Some(head) = read.head {
            samples.push(Sample {
                at: Instant::now(),
                head,
                checkpoints: read.checkpoints,
            });
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    connection.close().await?;
    Ok(samples)
}

/// Per tailer: each sample's lag in ms (until a later sample's checkpoint covered its head; a
/// head never covered counts until the last sample), with the sample's time since the first.
fn lags(samples: &[Sample]) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut lags: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return lags;
    };
    let tailers: Vec<String> = last.checkpoints.keys().cloned().collect();
    for tailer in tailers {
        let mut cursor = 0;
        let mut mine = Vec::with_capacity(samples.len());
        for (i, sample) in samples.iter().enumerate() {
            // Checkpoints only move forward: the covering sample of i is at or after that of i-1.
            cursor = cursor.max(i);
            while cursor < samples.len()
                && samples[cursor]
                    .checkpoints
                    .get(&tailer)
                    .is_none_or(|checkpoint| *checkpoint < sample.head)
            {
                cursor += 1;
            }
            let covered = samples.get(cursor).map_or(last.at, |s| s.at);
            mine.push((
                sample.at.duration_since(first.at).as_secs_f64(),
                covered.duration_since(sample.at).as_secs_f64() * 1000.0,
            ));
        }
        lags.insert(tailer, mine);
    }
    lags
}

fn report(
    maximum: f64,
    rate: f64,
    elapsed: f64,
    latencies: &[(f64, f64)],
    failures: u64,
    samples: &[Sample],
) -> Section {
    let lags = lags(samples);
    let half = elapsed / 2.0;
    let split = |values: &[(f64, f64)]| -> (Vec<f64>, Vec<f64>) {
        let first = values.iter().filter(|(t, _)| *t < half).map(|(_, v)| *v);
        let second = values.iter().filter(|(t, _)| *t >= half).map(|(_, v)| *v);
        (first.collect(), second.collect())
    };
    let mut markdown = String::new();
    let _ = writeln!(markdown, "## Sustained load\n");
    let _ = writeln!(
        markdown,
        "{} · `countersign serve` (release, NATS JetStream relay on) and PostgreSQL on loopback · one run of {:.0} s.\n",
        machine(),
        elapsed
    );
    let (first, second) = split(latencies);
    let share = LOAD_SHARE * 100.0;
    let _ = writeln!(
        markdown,
        "Submissions at {rate:.0}/s, open loop: {share:.0}% of the {maximum:.0}/s the service reached closed-loop at {CLIENTS} clients in the same run ({} answered 201, {failures} failed; latency p99 {:.1} ms in the first half, {:.1} ms in the second). Each tailer's lag is sampled every {} ms (the figures' resolution): the time until its checkpoint covered the log's head as read at the sample. Goal: every p99 under 1 s, the second half's no higher than the first's beyond noise.\n",
        latencies.len(),
        percentile(&first, 0.99),
        percentile(&second, 0.99),
        SAMPLE_EVERY.as_millis(),
    );
    let _ = writeln!(
        markdown,
        "| tailer | lag p50 ms | lag p99 ms | max ms | p99 first half | p99 second half |"
    );
    let _ = writeln!(markdown, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (tailer, values) in &lags {
        let all: Vec<f64> = values.iter().map(|(_, v)| *v).collect();
        let (first, second) = split(values);
        let _ = writeln!(
            markdown,
            "| {tailer} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            percentile(&all, 0.50),
            percentile(&all, 0.99),
            all.iter().copied().fold(0.0, f64::max),
            percentile(&first, 0.99),
            percentile(&second, 0.99),
        );
    }
    Section {
        id: "sustained",
        markdown,
    }
}
