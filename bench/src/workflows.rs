//! Workflows (issue 17): the time from an event accepted to its run started at 1,000 events/s;
//! 10,000 duplicates start no run; the JetStream intake beside a pipelined publish of the same
//! messages by a bare async-nats client and beside the same recording without NATS.
//!
//! "Accepted" is the commit of the event's `EventReceived` (what `POST /v1/events` and the NATS
//! intake answer after); "started" is the commit of the run's first event, `RunTriggered`; both
//! are read from the events' `recorded_at` (the database's clock). The time to the run's first
//! step submitted (`StepSubmitted`, its governed action appended) is shown beside it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::jetstream;
use countersign_app::workflows::{self, ReceiptStatus};
use countersign_app::{Actor, App, Channel};
use countersign_domain::workflow::{
    CloudEvent, IntakeEvent, IntakeEventEvent, RunEvent, WorkflowId, WorkflowRun, parse_draft,
};
use countersign_domain::{Principal, Role, TenantId, UserId};
use countersign_ledger::{Ledger, LogCursor, StoreConfig};
use countersign_workflows::{Engine, IntakeConfig, NatsIntake};
use cqrs_es::Aggregate as _;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{Semaphore, watch};

use crate::ledger::{Database, Settings};
use crate::projections::percentile;
use crate::report::{Figure, Section, machine, progress};

const NATS_URL: &str = "nats://127.0.0.1:4222";
/// Events per second offered in the latency measurement.
const RATE: u64 = 1_000;
/// Duplicates sent in one go.
const DUPLICATES: usize = 10_000;
/// Events consumed from JetStream per throughput run.
const INTAKE_EVENTS: usize = 10_000;
/// The amount above which the bench's workflow starts a run.
const THRESHOLD: u64 = 500;

fn actor(tenant: &TenantId, user: &str, role: &str) -> anyhow::Result<Actor> {
    Ok(Actor::new(
        tenant.clone(),
        Principal::new(UserId::parse(user)?, [Role::parse(role)?]),
        Channel::Api,
    ))
}

fn refund(id: &str, amount: u64) -> serde_json::Value {
    json!({
        "specversion": "1.0", "id": id, "source": "shop/orders", "type": "order.refunded",
        "subject": format!("order-{id}"), "time": "2026-11-30T08:00:00Z",
        "data": { "amount": amount, "currency": "EUR" },
    })
}

/// Reference 003's first case: a refund above 500 needs a finance approval before the webhook.
fn workflow() -> serde_json::Value {
    json!({
        "name": "Large refunds tell the ledger",
        "triggers": ["order.refunded"],
        "condition": { "data.amount": { "$gt": THRESHOLD } },
        "constants": { "system": "ledger" },
        "steps": [{
            "capability": "webhook.post",
            "summary": "Tell the {{ constants.system }} about the refund of {{ event.data.amount }} on {{ event.subject }}",
            "payload": { "order": "{{ event.subject }}", "amount": "{{ event.data.amount }}" },
            "require_approval": true,
        }],
    })
}

async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await?)
}

async fn runs_started(pool: &PgPool) -> anyhow::Result<i64> {
    count(
        pool,
        "SELECT count(*) FROM events WHERE aggregate_type = 'workflow_run' AND event_type = 'RunTriggered'",
    )
    .await
}

async fn steps_submitted(pool: &PgPool) -> anyhow::Result<i64> {
    count(
        pool,
        "SELECT count(*) FROM events WHERE aggregate_type = 'workflow_run' AND event_type = 'StepSubmitted'",
    )
    .await
}

/// Waits until `probe` reaches `target`, reporting progress; fails after `limit`.
async fn wait_for(
    what: &str,
    limit: Duration,
    target: i64,
    mut probe: impl AsyncFnMut() -> anyhow::Result<i64>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        let now = probe().await?;
        if now >= target {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "{what}: {now} of {target} after {limit:?}"
        );
        if reported.elapsed() > Duration::from_secs(10) {
            progress(&format!(
                "workflows: waiting for {what} ({now} of {target})"
            ));
            reported = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One latency round's figures, in milliseconds.
struct Round {
    offered: f64,
    started: Vec<f64>,
    submitted: Vec<f64>,
    /// From the last event accepted to the last run started / step submitted.
    drain_started: f64,
    drain_submitted: f64,
}

/// Sends `seconds × RATE` events that each start a run, 10 every 10 ms, each as its own
/// request to the intake use case (as `POST /v1/events` calls it); then reads from the log when
/// each was accepted, its run started and its first step submitted.
async fn latency_round(
    app: &App,
    pool: &PgPool,
    publisher: &Actor,
    round: usize,
    seconds: u64,
) -> anyhow::Result<(Round, Vec<String>)> {
    let ledger = app.ledger();
    let from = ledger.log_head().await?;
    let (before_started, before_submitted) =
        (runs_started(pool).await?, steps_submitted(pool).await?);
    let total = (seconds * RATE) as usize;
    let ids: Vec<String> = (0..total).map(|n| format!("r{round}-{n}")).collect();
    let limit = Arc::new(Semaphore::new(1024));
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut tasks = tokio::task::JoinSet::new();
    let began = Instant::now();
    for chunk in ids.chunks((RATE / 100) as usize) {
        tick.tick().await;
        for id in chunk {
            let permit = limit.clone().acquire_owned().await?;
            let (app, publisher) = (app.clone(), publisher.clone());
            let event = CloudEvent::parse(&refund(id, 900))?;
            tasks.spawn(async move {
                let receipts = workflows::receive(&app, &publisher, vec![event], "http").await;
                drop(permit);
                receipts
            });
        }
    }
    let offered = total as f64 / began.elapsed().as_secs_f64();
    while let Some(receipts) = tasks.join_next().await {
        let receipts = receipts??;
        anyhow::ensure!(
            receipts.iter().all(|r| r.status == ReceiptStatus::Accepted),
            "an event was not accepted"
        );
    }
    let target = before_started + total as i64;
    wait_for(
        "runs started",
        Duration::from_secs(600),
        target,
        async || runs_started(pool).await,
    )
    .await?;
    let target = before_submitted + total as i64;
    wait_for(
        "steps submitted",
        Duration::from_secs(900),
        target,
        async || steps_submitted(pool).await,
    )
    .await?;

    let mut accepted = HashMap::new();
    let mut started = HashMap::new();
    let mut submitted = HashMap::new();
    let mut run_event = HashMap::new();
    let mut cursor: LogCursor = from;
    loop {
        let batch = ledger.read_stored_log(cursor, 5000).await?;
        let Some(last) = batch.last() else { break };
        cursor = last.cursor;
        for logged in batch {
            if logged.aggregate_type == IntakeEvent::TYPE {
                let IntakeEventEvent::EventReceived { event, .. } =
                    logged.decode::<IntakeEvent>()?;
                accepted.insert(event.id, logged.recorded_at);
            } else if logged.aggregate_type == WorkflowRun::TYPE {
                match logged.decode::<WorkflowRun>()? {
                    RunEvent::RunTriggered { event, .. } => {
                        run_event.insert(logged.aggregate_id.clone(), event.id.clone());
                        started.insert(event.id, logged.recorded_at);
                    }
                    RunEvent::StepSubmitted { step: 0, .. } => {
                        if let Some(id) = run_event.get(&logged.aggregate_id) {
                            submitted.insert(id.clone(), logged.recorded_at);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let millis = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or_default() as f64 / 1000.0;
    let (mut to_start, mut to_submit) = (Vec::new(), Vec::new());
    for id in &ids {
        let at = accepted
            .get(id)
            .context("an accepted event is not in the log")?;
        let run = started.get(id).context("a run is not in the log")?;
        let step = submitted.get(id).context("a step is not in the log")?;
        to_start.push(millis(*run - *at));
        to_submit.push(millis(*step - *at));
    }
    let last_accepted = accepted.values().max().copied().unwrap_or_default();
    let last = |times: &HashMap<String, chrono::DateTime<chrono::Utc>>| {
        millis(times.values().max().copied().unwrap_or_default() - last_accepted)
    };
    Ok((
        Round {
            offered,
            drain_started: last(&started),
            drain_submitted: last(&submitted),
            started: to_start,
            submitted: to_submit,
        },
        ids,
    ))
}

fn intake_config(tag: &str) -> IntakeConfig {
    let unique = &uuid::Uuid::new_v4().simple().to_string()[..10];
    IntakeConfig {
        stream: format!("BENCH_{tag}_{unique}"),
        prefix: format!("bench{tag}{unique}"),
        consumer: "bench-intake".into(),
        ..IntakeConfig::default()
    }
}

/// Publishes the events to the intake stream, each with its `Nats-Msg-Id`, 500 acks in flight
/// at a time; answers messages per second.
async fn publish(
    context: &jetstream::Context,
    config: &IntakeConfig,
    tenant: &str,
    events: &[serde_json::Value],
) -> anyhow::Result<f64> {
    let messages = events
        .iter()
        .map(|event| {
            Ok((
                event["id"].as_str().unwrap_or_default().to_owned(),
                config.subject(tenant, event["type"].as_str().unwrap_or_default()),
                serde_json::to_vec(event)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    for window in messages.chunks(500) {
        let mut acks = Vec::with_capacity(window.len());
        for (id, subject, payload) in window {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            acks.push(
                context
                    .publish_with_headers(subject.clone(), headers, payload.clone().into())
                    .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
    }
    Ok(messages.len() as f64 / started.elapsed().as_secs_f64())
}

/// Records the events through the intake's use case directly, without NATS: parsed from their
/// bytes, in batches of the intake's size, as many side by side as the intake handles; answers
/// events per second. What the JetStream intake adds to it is the broker's share.
async fn record_directly(
    app: &App,
    publisher: &Actor,
    events: &[serde_json::Value],
) -> anyhow::Result<f64> {
    use futures::StreamExt as _;
    let payloads = events
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let mut batches = futures::stream::iter(payloads.chunks(countersign_workflows::intake::BATCH))
        .map(async |chunk| {
            let events = chunk
                .iter()
                .map(|payload| {
                    let document = serde_json::from_slice::<serde_json::Value>(payload)?;
                    Ok(CloudEvent::parse(&document)?)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let receipts = workflows::receive(app, publisher, events, "bench")
                .await
                .map_err(|err| anyhow::anyhow!("recording: {err}"))?;
            anyhow::ensure!(
                receipts
                    .iter()
                    .all(|receipt| receipt.status == ReceiptStatus::Accepted),
                "an event recorded directly was not new"
            );
            Ok(())
        })
        .buffer_unordered(countersign_workflows::intake::CONCURRENCY);
    while let Some(done) = batches.next().await {
        done?;
    }
    Ok(events.len() as f64 / started.elapsed().as_secs_f64())
}

/// Runs the intake over the messages already in the stream until its consumer has acknowledged
/// them all; answers how long that took.
async fn consume(
    app: &App,
    client: &async_nats::Client,
    config: &IntakeConfig,
    messages: usize,
) -> anyhow::Result<Duration> {
    let context = jetstream::new(client.clone());
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(
        NatsIntake {
            app: app.clone(),
            client: client.clone(),
            config: config.clone(),
        }
        .run(stopped),
    );
    let result = wait_for(
        "the intake",
        Duration::from_secs(900),
        messages as i64,
        async || {
            let Ok(stream) = context.get_stream(&config.stream).await else {
                return Ok(0);
            };
            let Ok(mut consumer) = stream
                .get_consumer::<jetstream::consumer::pull::Config>(&config.consumer)
                .await
            else {
                return Ok(0);
            };
            let info = consumer.info().await?;
            let done = info.ack_floor.stream_sequence;
            Ok(i64::try_from(done).unwrap_or(i64::MAX))
        },
    )
    .await;
    let elapsed = started.elapsed();
    let _ = stop.send(true);
    let _ = task.await;
    result.map(|_| elapsed)
}

#[expect(
    clippy::too_many_lines,
    reason = "one bench: its phases in order, then its report"
)]
pub(crate) async fn measure(settings: &Settings, database: &Database) -> anyhow::Result<Section> {
    let config = StoreConfig::Postgres {
        url: database.url.clone(),
    };
    let ledger = Ledger::open(&config).await?;
    ledger.migrate().await?;
    let projections = countersign_projections::ProjectionStore::open(&config).await?;
    let seals = countersign_verification::SealStore::open(&config).await?;
    let app = App::new(ledger.clone(), projections, seals);
    let pool = PgPool::connect(&database.url).await?;
    let client = async_nats::connect(NATS_URL)
        .await
        .context("connecting to NATS at 127.0.0.1:4222")?;
    let context = jetstream::new(client.clone());

    let tenant = TenantId::parse("bench")?;
    let owner = actor(&tenant, "olga", "owner")?;
    let publisher = actor(&tenant, "shop", "publisher")?;
    workflows::create(
        &app,
        &owner,
        WorkflowId::parse("refund-to-ledger")?,
        parse_draft(&workflow())?,
    )
    .await
    .map_err(|err| anyhow::anyhow!("creating the workflow: {err}"))?;
    let (stop, stopped) = watch::channel(false);
    let engine = tokio::spawn(Engine::new(app.clone()).run(stopped));

    // Event accepted → run started, at 1,000 events/s.
    let seconds = settings.seconds.max(1);
    let (mut p50, mut p95, mut p99, mut max) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut s50, mut s99, mut offered) = (Vec::new(), Vec::new(), Vec::new());
    let (mut drain_started, mut drain_submitted) = (Vec::new(), Vec::new());
    let mut received = Vec::new();
    for round in 0..settings.runs {
        progress(&format!(
            "workflows: {} events at {RATE}/s, run {}/{}",
            seconds * RATE,
            round + 1,
            settings.runs
        ));
        let (figures, ids) = latency_round(&app, &pool, &publisher, round, seconds).await?;
        p50.push(percentile(&figures.started, 0.5));
        p95.push(percentile(&figures.started, 0.95));
        p99.push(percentile(&figures.started, 0.99));
        max.push(percentile(&figures.started, 1.0));
        s50.push(percentile(&figures.submitted, 0.5));
        s99.push(percentile(&figures.submitted, 0.99));
        offered.push(figures.offered);
        drain_started.push(figures.drain_started);
        drain_submitted.push(figures.drain_submitted);
        received.extend(ids);
    }

    // 10,000 duplicates over JetStream: NATS has not seen these ids (they came in over the
    // use case), so every one reaches the ledger, which recognises it.
    progress(&format!(
        "workflows: {DUPLICATES} duplicates over JetStream"
    ));
    // Distinct ids (JetStream itself would drop a repeat within its window).
    let duplicates: Vec<_> = received
        .iter()
        .take(DUPLICATES)
        .map(|id| refund(id, 900))
        .collect();
    let runs_before = runs_started(&pool).await?;
    let intake_before = count(
        &pool,
        "SELECT count(*) FROM events WHERE aggregate_type = 'intake_event'",
    )
    .await?;
    let dup_config = intake_config("dup");
    dup_config.ensure(&context).await?;
    publish(&context, &dup_config, tenant.as_str(), &duplicates).await?;
    let dup_time = consume(&app, &client, &dup_config, duplicates.len()).await?;
    let head = ledger.log_head().await?;
    wait_for("the engine", Duration::from_secs(300), 1, async || {
        Ok(i64::from(
            ledger.load_checkpoint(Engine::CHECKPOINT).await? >= head,
        ))
    })
    .await?;
    let runs_after = runs_started(&pool).await?;
    let intake_after = count(
        &pool,
        "SELECT count(*) FROM events WHERE aggregate_type = 'intake_event'",
    )
    .await?;
    let _ = context.delete_stream(&dup_config.stream).await;
    anyhow::ensure!(
        runs_after == runs_before && intake_after == intake_before,
        "duplicates changed the ledger: runs {runs_before} → {runs_after}, received events {intake_before} → {intake_after}"
    );
    let dup_rate = duplicates.len() as f64 / dup_time.as_secs_f64();

    // The JetStream intake beside the pipelined publish of the same messages.
    let (mut published, mut consumed, mut direct) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..settings.runs {
        progress(&format!(
            "workflows: JetStream intake of {INTAKE_EVENTS} events, run {}/{}",
            round + 1,
            settings.runs
        ));
        let events: Vec<_> = (0..INTAKE_EVENTS)
            .map(|n| refund(&format!("t{round}-{n}"), THRESHOLD / 2))
            .collect();
        let intake = intake_config("intake");
        intake.ensure(&context).await?;
        published.push(publish(&context, &intake, tenant.as_str(), &events).await?);
        let took = consume(&app, &client, &intake, INTAKE_EVENTS).await?;
        consumed.push(INTAKE_EVENTS as f64 / took.as_secs_f64());
        let _ = context.delete_stream(&intake.stream).await;
        let events: Vec<_> = (0..INTAKE_EVENTS)
            .map(|n| refund(&format!("d{round}-{n}"), THRESHOLD / 2))
            .collect();
        direct.push(record_directly(&app, &publisher, &events).await?);
    }
    let _ = stop.send(true);
    let _ = engine.await;
    pool.close().await;
    ledger.close().await;

    let (published, consumed, direct) = (Figure(published), Figure(consumed), Figure(direct));
    let mut markdown = String::new();
    let _ = writeln!(markdown, "## Workflows\n");
    let _ = writeln!(
        markdown,
        "{} · PostgreSQL and NATS 2.9 (JetStream, file storage) on loopback · {} runs.\n",
        machine(),
        settings.runs
    );
    let _ = writeln!(
        markdown,
        "**Event accepted → run started** at {RATE} events/s: {} `order.refunded` events per run, 10 every 10 ms (offered {} events/s), each its own call of the intake use case (as `POST /v1/events` makes it), each starting a run of reference 003's refund workflow (one `webhook.post` step that requires approval). Accepted: the event's `EventReceived` committed; started: the run's first event (`RunTriggered`) committed; both times are the events' `recorded_at`. The workflow engine runs in the same process, alone (no projections, no executor). Beside it, the time to the run's first step submitted (its governed action appended, `StepSubmitted`).\n",
        seconds * RATE,
        Figure(offered).show(0),
    );
    let _ = writeln!(markdown, "| | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) |");
    let _ = writeln!(markdown, "| --- | ---: | ---: | ---: | ---: |");
    let _ = writeln!(
        markdown,
        "| accepted → run started | {} | {} | {} | {} |",
        Figure(p50).show(1),
        Figure(p95).show(1),
        Figure(p99).show(1),
        Figure(max).show(1),
    );
    let _ = writeln!(
        markdown,
        "| accepted → first step submitted | {} | | {} | |",
        Figure(s50).show(1),
        Figure(s99).show(1),
    );
    let _ = writeln!(
        markdown,
        "\nFrom the last event accepted to the last run started: {} ms; to the last step submitted: {} ms.\n",
        Figure(drain_started).show(0),
        Figure(drain_submitted).show(0),
    );
    let _ = writeln!(
        markdown,
        "**Duplicates**: {} events already received (over the use case, so JetStream's duplicate window does not hide them) published to the intake stream and consumed: runs {runs_before} before, {runs_after} after ({} new); received events {intake_before} before, {intake_after} after; consumed at {dup_rate:.0} events/s.\n",
        duplicates.len(),
        runs_after - runs_before,
    );
    let _ = writeln!(
        markdown,
        "**JetStream intake**: {INTAKE_EVENTS} `order.refunded` events below the workflow's threshold (recorded, no run) published to the intake stream, then consumed by the intake (checked, recorded in the ledger, acknowledged) until the consumer's acknowledgement floor reaches the last; the baseline is the publish of the same messages by a bare async-nats client, 500 acks in flight at a time. Beside them, the same number of other events recorded through the intake's use case directly (parsed from their bytes, in the intake's batches, as many side by side): the ledger's and the engine's share without the broker's.\n"
    );
    let _ = writeln!(markdown, "| | events/s | ratio |");
    let _ = writeln!(markdown, "| --- | ---: | ---: |");
    let _ = writeln!(
        markdown,
        "| pipelined publish (baseline) | {} | 1.00 |",
        published.show(0)
    );
    let _ = writeln!(
        markdown,
        "| JetStream intake | {} | {:.2} |",
        consumed.show(0),
        consumed.median() / published.median()
    );
    let _ = writeln!(
        markdown,
        "| recorded directly, no NATS | {} | {:.2} |",
        direct.show(0),
        direct.median() / published.median()
    );
    Ok(Section {
        id: "workflows",
        markdown,
    })
}
