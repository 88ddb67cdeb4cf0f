//! Where the executor hears about work: a durable JetStream consumer (server mode), the log
//! itself (embedded mode), and a periodic sweep that catches deadlines, due retries and expired
//! leases whatever the transport did.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer};
use countersign_domain::ActionId;
use countersign_domain::action::{Action, ActionEvent};
use countersign_ledger::LogCursor;
use countersign_projections::ProjectionStore;
use cqrs_es::Aggregate as _;
use futures::StreamExt;
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::relay::{HEADER_AGGREGATE_ID, StreamConfig};
use crate::worker::{Executor, Processed};

/// Whether a logged or published event of this aggregate and type may leave an action awaiting
/// execution.
fn may_need_work(aggregate_type: &str, event_type: &str) -> bool {
    aggregate_type == Action::TYPE && ActionEvent::may_need_execution_type(event_type)
}

fn aggregate_and_type(subject: &str, prefix: &str) -> Option<(String, String)> {
    // <prefix>.events.<tenant>.<aggregate type>.<event type>
    let rest = subject.strip_prefix(prefix)?.strip_prefix(".events.")?;
    let mut parts = rest.split('.');
    let (_tenant, aggregate, event_type) = (parts.next()?, parts.next()?, parts.next()?);
    Some((aggregate.to_owned(), event_type.to_owned()))
}

/// Consumes the event stream through a durable pull consumer shared by every executor process:
/// JetStream gives each message to one of them (each pulls no more than it can work on at once);
/// a message is acknowledged only after the action's outcome is recorded.
#[derive(Debug, Clone)]
pub struct JetStreamSource {
    pub executor: Executor,
    pub client: async_nats::Client,
    pub stream: StreamConfig,
    /// The durable consumer's name (shared by the executor processes).
    pub consumer: String,
    /// Deliveries of one message before it goes to the dead-letter subject.
    pub max_deliver: i64,
    pub concurrency: usize,
}

impl JetStreamSource {
    async fn consumer(&self) -> anyhow::Result<consumer::Consumer<consumer::pull::Config>> {
        let jetstream = jetstream::new(self.client.clone());
        let stream = self.stream.ensure(&jetstream).await?;
        stream
            .get_or_create_consumer(
                &self.consumer,
                consumer::pull::Config {
                    durable_name: Some(self.consumer.clone()),
                    filter_subject: self.stream.filter(Action::TYPE),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(120),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("creating the consumer {}", self.consumer))
    }

    async fn handle(&self, message: jetstream::Message) {
        let subject = message.subject.to_string();
        let Some((aggregate, event_type)) = aggregate_and_type(&subject, &self.stream.prefix)
        else {
            let _ = message.ack().await;
            return;
        };
        // A header that names no action names nothing to do, like an unknown action.
        let id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(HEADER_AGGREGATE_ID))
            .and_then(|value| ActionId::parse(value.as_str()).ok());
        let (Some(id), true) = (id, may_need_work(&aggregate, &event_type)) else {
            let _ = message.ack().await;
            return;
        };
        match self.executor.process(&id).await {
            Ok(Processed::RetryAt(due)) => {
                let delay = (due - chrono::Utc::now()).to_std().unwrap_or_default();
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            }
            Ok(_) => {
                let _ = message.ack().await;
            }
            Err(err) => {
                let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
                if delivered >= self.max_deliver {
                    warn!(action_id = %id, error = format!("{err:#}"), delivered, "giving up on a message: dead-lettered");
                    let body = serde_json::json!({ "subject": subject, "action_id": id, "error": format!("{err:#}"), "delivered": delivered });
                    let _ = self
                        .client
                        .publish(self.stream.dead_letter_subject(), body.to_string().into())
                        .await;
                    let _ = message.ack_with(AckKind::Term).await;
                } else {
                    warn!(action_id = %id, error = format!("{err:#}"), delivered, "processing failed; redelivering");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
            }
        }
    }

    /// Runs until `shutdown` turns true, reconnecting with backoff when NATS goes away.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let permits = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut backoff = Duration::from_millis(200);
        while !*shutdown.borrow() {
            let mut messages = match self.consumer().await {
                Ok(consumer) => match consumer
                    .stream()
                    .max_messages_per_batch(self.concurrency.max(1))
                    .messages()
                    .await
                {
                    Ok(messages) => messages,
                    Err(err) => {
                        warn!(
                            error = format!("{err:#}"),
                            "executor: no message stream yet"
                        );
                        tokio::select! { _ = shutdown.changed() => {}, () = tokio::time::sleep(backoff) => {} }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                },
                Err(err) => {
                    warn!(error = format!("{err:#}"), "executor: consumer unavailable");
                    tokio::select! { _ = shutdown.changed() => {}, () = tokio::time::sleep(backoff) => {} }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            info!(consumer = self.consumer, "executor consuming");
            loop {
                let next = tokio::select! {
                    _ = shutdown.changed() => break,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        backoff = Duration::from_millis(200);
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            break;
                        };
                        let source = self.clone();
                        tokio::spawn(async move {
                            source.handle(message).await;
                            drop(permit);
                        });
                    }
                    Some(Err(err)) => {
                        warn!(error = %err, "executor: message stream error; reconnecting");
                        break;
                    }
                    None => break,
                }
            }
            if !*shutdown.borrow() {
                tokio::select! { _ = shutdown.changed() => {}, () = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
        Ok(())
    }
}

/// Embedded mode: the executor tails the log itself (one instance, tailer lock), processing the
/// actions whose events may have made them runnable, then saving its checkpoint.
#[derive(Debug, Clone)]
pub struct LogSource {
    pub executor: Executor,
}

impl LogSource {
    const CHECKPOINT: &'static str = "executor";

    /// Processes the next batch; returns the number of events read. `checkpoint` is where this
    /// instance has saved its checkpoint, read from the store only when unknown (only the holder
    /// of the tailer lock moves it).
    async fn process_next(&self, checkpoint: &mut Option<LogCursor>) -> anyhow::Result<usize> {
        let ledger = self.executor.ledger();
        let after = match *checkpoint {
            Some(after) => after,
            None => ledger.load_checkpoint(Self::CHECKPOINT).await?,
        };
        *checkpoint = Some(after);
        let events = ledger.read_log(after, 200).await?;
        let Some(last) = events.last().map(|event| event.cursor) else {
            return Ok(0);
        };
        let ids: BTreeSet<ActionId> = events
            .iter()
            .filter(|event| may_need_work(&event.aggregate_type, &event.event_type))
            .filter_map(|event| match ActionId::parse(&event.aggregate_id) {
                Ok(id) => Some(id),
                Err(err) => {
                    warn!(aggregate_id = event.aggregate_id, error = %err, "an action event names no action; skipped");
                    None
                }
            })
            .collect();
        for id in &ids {
            if let Err(err) = self.executor.process(id).await {
                // The sweep retries what failed here; the checkpoint still moves on.
                warn!(action_id = %id, error = format!("{err:#}"), "processing failed");
            }
        }
        ledger.save_checkpoint(Self::CHECKPOINT, last).await?;
        *checkpoint = Some(last);
        Ok(events.len())
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let ledger = self.executor.ledger().clone();
        let lock = loop {
            if let Some(lock) = ledger.lock_tailer(Self::CHECKPOINT).await? {
                break lock;
            }
            tokio::select! { _ = shutdown.changed() => return Ok(()), () = tokio::time::sleep(Duration::from_secs(2)) => {} }
        };
        let mut waker = ledger.log_waker().await?;
        let mut checkpoint = None;
        info!("executor tailing the log (embedded mode)");
        while !*shutdown.borrow() {
            let step = self.process_next(&mut checkpoint).await;
            if step.is_ok() {
                ledger.health().progressed(Self::CHECKPOINT);
            }
            match step {
                Ok(0) => {
                    tokio::select! { _ = shutdown.changed() => {}, () = waker.wait(Duration::from_secs(1)) => {} }
                }
                Ok(_) => {}
                Err(err) => {
                    warn!(
                        error = format!("{err:#}"),
                        "executor: reading the log failed"
                    );
                    let pause = ledger.health().failed(Self::CHECKPOINT, checkpoint, &err);
                    tokio::select! { _ = shutdown.changed() => {}, () = tokio::time::sleep(pause) => {} }
                }
            }
        }
        lock.release().await;
        Ok(())
    }

    /// Where the embedded executor has read up to.
    pub async fn checkpoint(&self) -> anyhow::Result<LogCursor> {
        self.executor
            .ledger()
            .load_checkpoint(Self::CHECKPOINT)
            .await
    }
}

/// Every `interval`, looks at every action past its deadline or approved or executing, and lets
/// the executor fire the deadline, run, retry or reclaim it. Several instances may sweep: the
/// ledger refuses whatever another instance already did.
#[derive(Debug, Clone)]
pub struct Sweeper {
    pub executor: Executor,
    pub projections: ProjectionStore,
    pub interval: Duration,
}

impl Sweeper {
    /// One sweep; returns what was done to each action that needed something.
    pub async fn sweep(&self) -> anyhow::Result<Vec<(ActionId, Processed)>> {
        let ids = self
            .projections
            .actions_needing_attention(chrono::Utc::now(), 500)
            .await?;
        let mut done = Vec::new();
        for id in ids {
            match self.executor.process(&id).await {
                Ok(Processed::Nothing | Processed::RetryAt(_)) => {}
                Ok(outcome) => done.push((id, outcome)),
                Err(err) => {
                    warn!(action_id = %id, error = format!("{err:#}"), "sweep: processing failed");
                }
            }
        }
        Ok(done)
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        while !*shutdown.borrow() {
            if let Err(err) = self.sweep().await {
                warn!(error = format!("{err:#}"), "sweep failed");
            }
            tokio::select! { _ = shutdown.changed() => {}, () = tokio::time::sleep(self.interval) => {} }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_the_aggregate_and_event_type() {
        assert_eq!(
            aggregate_and_type(
                "countersign.events.acme.action.ActionApproved",
                "countersign"
            ),
            Some(("action".into(), "ActionApproved".into()))
        );
        assert_eq!(
            aggregate_and_type("countersign.capability.billing.refund", "countersign"),
            None
        );
    }
}
