//! Relay throughput to JetStream beside a pipelined publish of the same messages by a bare
//! async-nats client, and the time from approval to execution start, over NATS and embedded.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::jetstream;
use countersign_domain::action::{Action, ActionEvent};
use countersign_domain::policy::PolicySnapshot;
use countersign_domain::{ActionId, TenantMode};
use countersign_executor::{
    Executor, ExecutorConfig, JetStreamSource, LogSource, ProgressHub, Relay, StreamConfig,
};
use countersign_ledger::{Ledger, LogCursor, Metadata, StoreConfig};
use tokio::sync::watch;

use crate::ledger::{Database, Settings, submission, submit_command};
use crate::projections::{People, people, percentile, seed};
use crate::report::{Figure, Section, machine, progress};

const NATS_URL: &str = "nats://127.0.0.1:4222";

fn stream_config(tag: &str) -> StreamConfig {
    let unique = &uuid::Uuid::new_v4().simple().to_string()[..10];
    StreamConfig {
        stream: format!("BENCH_{tag}_{unique}"),
        prefix: format!("bench{tag}{unique}"),
    }
}

async fn drop_stream(client: &async_nats::Client, stream: &StreamConfig) {
    let _ = jetstream::new(client.clone())
        .delete_stream(&stream.stream)
        .await;
}

/// The relay publishing the whole seeded log; events per second.
async fn relay_rate(ledger: &Ledger, client: &async_nats::Client) -> anyhow::Result<f64> {
    let stream = stream_config("relay");
    stream.ensure(&jetstream::new(client.clone())).await?;
    let mut relay = Relay::new(ledger.clone(), client.clone(), stream.clone());
    let started = Instant::now();
    let mut published = 0;
    loop {
        let batch = relay.process_next().await?;
        if batch == 0 {
            break;
        }
        published += batch;
    }
    let rate = published as f64 / started.elapsed().as_secs_f64();
    drop_stream(client, &stream).await;
    Ok(rate)
}

/// The same events published by a bare client, pipelined in windows of 500 acks.
async fn publish_rate(ledger: &Ledger, client: &async_nats::Client) -> anyhow::Result<f64> {
    let stream = stream_config("publish");
    let context = jetstream::new(client.clone());
    stream.ensure(&context).await?;
    let mut messages = Vec::new();
    let mut cursor = LogCursor::START;
    loop {
        let batch = ledger.read_log(cursor, 5000).await?;
        let Some(last) = batch.last() else { break };
        cursor = last.cursor;
        for event in batch {
            messages.push((
                stream.subject(&event),
                countersign_executor::relay::message_id(&event),
                serde_json::to_vec(&event.payload)?,
            ));
        }
    }
    let started = Instant::now();
    for window in messages.chunks(500) {
        let mut acks = Vec::with_capacity(window.len());
        for (subject, id, payload) in window {
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
    let rate = messages.len() as f64 / started.elapsed().as_secs_f64();
    drop_stream(client, &stream).await;
    Ok(rate)
}

/// Submits auto-approved, auto-executing `noop.echo` actions one after another at a steady pace
/// and reads, from their events, the time from approval to the execution claim.
async fn approval_to_start(
    ledger: &Ledger,
    people: &People,
    actions: usize,
) -> anyhow::Result<Vec<f64>> {
    let policy = PolicySnapshot::tenant_default(serde_json::from_value(serde_json::json!({
        "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }], "auto_approve": true, "auto_execute": true
    }))?);
    let mut ids = Vec::new();
    for n in 0..actions {
        let tenant = people.tenants[n % people.tenants.len()].clone();
        let id = ActionId::from_uuid(uuid::Uuid::now_v7());
        let mut submission = submission()?;
        submission.module = countersign_domain::ModuleSlug::parse("noop")?;
        submission.capability = countersign_domain::CapabilityName::parse("echo")?;
        let command = submit_command(
            &tenant,
            &people.requester,
            id,
            submission,
            TenantMode::Auto,
            policy.clone(),
        );
        ledger
            .execute::<Action>(
                &id,
                command,
                &Metadata::new(tenant, people.requester.id.clone()),
            )
            .await?;
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut latencies = Vec::new();
    for id in ids {
        loop {
            let mut approved = None;
            let mut started = None;
            for logged in ledger.stream_of::<Action>(&id).await? {
                match logged.decode::<Action>()? {
                    ActionEvent::ActionApproved(event) => approved = Some(event.context.at),
                    ActionEvent::ExecutionStarted(event) => {
                        started = started.or(Some(event.context.at))
                    }
                    _ => {}
                }
            }
            if let (Some(approved), Some(started)) = (approved, started) {
                latencies.push(
                    (started - approved).num_microseconds().unwrap_or_default() as f64 / 1000.0,
                );
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "action {id} never started executing"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(latencies)
}

pub(crate) async fn measure(settings: &Settings, database: &Database) -> anyhow::Result<Section> {
    let config = StoreConfig::Postgres {
        url: database.url.clone(),
    };
    let ledger = Ledger::open(&config).await?;
    ledger.migrate().await?;
    let client = async_nats::connect(NATS_URL)
        .await
        .context("connecting to NATS at 127.0.0.1:4222")?;
    let people = people()?;
    let actions = 10_000;
    progress(&format!("executor: seeding {actions} approved actions"));
    let events = seed(&database.url, &people, actions).await?;
    let (mut relay, mut bare) = (Vec::new(), Vec::new());
    for run in 0..settings.runs {
        progress(&format!(
            "executor: relay run {}/{}",
            run + 1,
            settings.runs
        ));
        bare.push(publish_rate(&ledger, &client).await?);
        relay.push(relay_rate(&ledger, &client).await?);
    }
    let (relay, bare) = (Figure(relay), Figure(bare));

    let samples = 100;
    let executor = Executor::new(
        ledger.clone(),
        countersign_executor::registry(None, None, None)?,
        ProgressHub::default(),
        ExecutorConfig::default(),
    );
    let mut transports = Vec::new();
    for transport in ["nats", "embedded"] {
        let (stop, stopped) = watch::channel(false);
        let stream = stream_config("latency");
        // Start from the end of the seeded log: only the new actions matter here.
        let mut tasks = Vec::new();
        if transport == "nats" {
            ledger
                .save_checkpoint(
                    &format!("relay:{}", stream.stream),
                    ledger.log_head().await?,
                )
                .await?;
            tasks.push(tokio::spawn(
                Relay::new(ledger.clone(), client.clone(), stream.clone()).run(stopped.clone()),
            ));
            tasks.push(tokio::spawn(
                JetStreamSource {
                    executor: executor.clone(),
                    client: client.clone(),
                    stream: stream.clone(),
                    consumer: "bench".into(),
                    max_deliver: 5,
                    concurrency: 8,
                }
                .run(stopped.clone()),
            ));
        } else {
            ledger
                .save_checkpoint("executor", ledger.log_head().await?)
                .await?;
            tasks.push(tokio::spawn(
                LogSource {
                    executor: executor.clone(),
                }
                .run(stopped.clone()),
            ));
        }
        let mut p50 = Vec::new();
        let mut p95 = Vec::new();
        for run in 0..settings.runs {
            progress(&format!(
                "executor: approval-to-start over {transport}, run {}/{}",
                run + 1,
                settings.runs
            ));
            let latencies = approval_to_start(&ledger, &people, samples).await?;
            p50.push(percentile(&latencies, 0.5));
            p95.push(percentile(&latencies, 0.95));
        }
        let _ = stop.send(true);
        for task in tasks {
            let _ = task.await;
        }
        drop_stream(&client, &stream).await;
        transports.push((transport, Figure(p50), Figure(p95)));
    }
    ledger.close().await;

    let mut markdown = String::new();
    let _ = writeln!(markdown, "## Executor and relay\n");
    let _ = writeln!(
        markdown,
        "{} · PostgreSQL and NATS 2.9 (JetStream, file storage) on loopback · {} runs.\n",
        machine(),
        settings.runs
    );
    let _ = writeln!(
        markdown,
        "**Relay**: publishing a log of {events} events to a JetStream stream, each with its `Nats-Msg-Id`, checkpointing after the acks; the baseline publishes the same messages with a bare async-nats client, 500 acks in flight at a time.\n"
    );
    let _ = writeln!(markdown, "| | events/s | ratio |");
    let _ = writeln!(markdown, "| --- | ---: | ---: |");
    let _ = writeln!(
        markdown,
        "| pipelined publish (baseline) | {} | 1.00 |",
        bare.show(0)
    );
    let _ = writeln!(
        markdown,
        "| relay | {} | {:.2} |",
        relay.show(0),
        relay.median() / bare.median()
    );
    let _ = writeln!(
        markdown,
        "\n**Approval to execution start**: {samples} auto-approved `noop.echo` actions submitted 20 ms apart; the time from `ActionApproved` to the executor's `ExecutionStarted` (event times).\n"
    );
    let _ = writeln!(markdown, "| transport | p50 (ms) | p95 (ms) |");
    let _ = writeln!(markdown, "| --- | ---: | ---: |");
    for (transport, p50, p95) in transports {
        let name = if transport == "nats" {
            "NATS JetStream (relay + durable consumer)"
        } else {
            "embedded (the executor tails the store)"
        };
        let _ = writeln!(markdown, "| {name} | {} | {} |", p50.show(1), p95.show(1));
    }
    Ok(Section {
        id: "executor",
        markdown,
    })
}
