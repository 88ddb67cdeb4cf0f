//! The relay: tails the ledger's log and publishes every event to a JetStream stream, on
//! `<prefix>.events.<tenant>.<aggregate type>.<event type>`, with `Nats-Msg-Id` set to the
//! event's identity so that JetStream drops a re-published event. Publishing is pipelined: a
//! whole batch is in flight before the acks are awaited, and the checkpoint moves only once every
//! ack has arrived. A NATS outage stops the relay, which retries with backoff from its checkpoint.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use countersign_ledger::{Ledger, LoggedEvent};
use tracing::{info, warn};

/// Where events go.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The JetStream stream's name.
    pub stream: String,
    /// Subjects are `<prefix>.events.…`.
    pub prefix: String,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            stream: "COUNTERSIGN_EVENTS".into(),
            prefix: "countersign".into(),
        }
    }
}

impl StreamConfig {
    pub fn subject(&self, event: &LoggedEvent) -> String {
        format!(
            "{}.events.{}.{}.{}",
            self.prefix, event.tenant, event.aggregate_type, event.event_type
        )
    }

    /// The subjects of one aggregate type's events, all tenants.
    pub fn filter(&self, aggregate_type: &str) -> String {
        format!("{}.events.*.{aggregate_type}.*", self.prefix)
    }

    pub fn dead_letter_subject(&self) -> String {
        format!("{}.deadletter", self.prefix)
    }

    /// Creates the stream when it does not exist.
    pub async fn ensure(&self, jetstream: &jetstream::Context) -> anyhow::Result<stream::Stream> {
        jetstream
            .get_or_create_stream(stream::Config {
                name: self.stream.clone(),
                subjects: vec![
                    format!("{}.events.>", self.prefix),
                    self.dead_letter_subject(),
                ],
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating the JetStream stream {}", self.stream))
    }
}

/// An event's identity: unique, stable across re-publishing.
pub fn message_id(event: &LoggedEvent) -> String {
    format!(
        "{}:{}:{}",
        event.aggregate_type, event.aggregate_id, event.sequence
    )
}

pub const HEADER_AGGREGATE_ID: &str = "Countersign-Aggregate-Id";
pub const HEADER_POSITION: &str = "Countersign-Position";

/// Publishes the log to JetStream.
#[derive(Debug, Clone)]
pub struct Relay {
    ledger: Ledger,
    jetstream: jetstream::Context,
    config: StreamConfig,
    checkpoint: String,
    batch: u32,
    /// The batch after a cursor, read while the previous batch's acks were awaited.
    ahead: Option<(countersign_ledger::LogCursor, Vec<LoggedEvent>)>,
}

impl Relay {
    pub fn new(ledger: Ledger, client: async_nats::Client, config: StreamConfig) -> Self {
        let checkpoint = format!("relay:{}", config.stream);
        Self {
            ledger,
            jetstream: jetstream::new(client),
            config,
            checkpoint,
            batch: 1000,
            ahead: None,
        }
    }

    /// Publishes the next batch; returns how many events were published and acknowledged.
    pub async fn process_next(&mut self) -> anyhow::Result<usize> {
        // After a success the checkpoint is the cursor this relay saved (one instance runs,
        // under the tailer lock), with the batch read after it; otherwise it is read back.
        let (checkpoint, ahead) = match self.ahead.take() {
            Some(ahead) => ahead,
            None => (
                self.ledger.load_checkpoint(&self.checkpoint).await?,
                Vec::new(),
            ),
        };
        let events = if ahead.is_empty() {
            self.ledger.read_log(checkpoint, self.batch).await?
        } else {
            ahead
        };
        let Some(last) = events.last().map(|event| event.cursor) else {
            return Ok(0);
        };
        let mut acks = Vec::with_capacity(events.len());
        for event in &events {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", message_id(event).as_str());
            headers.insert(HEADER_AGGREGATE_ID, event.aggregate_id.as_str());
            headers.insert(HEADER_POSITION, event.cursor.position.to_string().as_str());
            let payload = serde_json::to_vec(&event.payload)?;
            acks.push(
                self.jetstream
                    .publish_with_headers(self.config.subject(event), headers, payload.into())
                    .await
                    .context("publishing")?,
            );
        }
        // The next batch is read while this one's acks come back.
        let acknowledged = async {
            for ack in acks {
                ack.await.context("awaiting a publish ack")?;
            }
            anyhow::Ok(())
        };
        let (acknowledged, next) =
            tokio::join!(acknowledged, self.ledger.read_log(last, self.batch));
        acknowledged?;
        self.ledger.save_checkpoint(&self.checkpoint, last).await?;
        self.ahead = Some((last, next.unwrap_or_default()));
        metrics::counter!("countersign_relay_events_total").increment(events.len() as u64);
        Ok(events.len())
    }

    /// Runs until `shutdown` resolves, one instance at a time (tailer lock).
    pub async fn run(
        mut self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let lock = loop {
            if let Some(lock) = self.ledger.lock_tailer(&self.checkpoint).await? {
                break lock;
            }
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        };
        if let Err(err) = self.config.ensure(&self.jetstream).await {
            warn!(
                error = format!("{err:#}"),
                "relay: the stream is not ready yet"
            );
        }
        let mut waker = self.ledger.log_waker().await?;
        let mut backoff = Duration::from_millis(100);
        info!(stream = self.config.stream, "relay started");
        while !*shutdown.borrow() {
            let step = self.process_next().await;
            if step.is_ok() {
                self.ledger.health().progressed(&self.checkpoint);
            }
            match step {
                Ok(0) => {
                    backoff = Duration::from_millis(100);
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        () = waker.wait(Duration::from_secs(1)) => {}
                    }
                }
                Ok(_) => backoff = Duration::from_millis(100),
                Err(err) => {
                    warn!(error = format!("{err:#}"), retry_in = ?backoff, "relay: publishing failed; retrying from the checkpoint");
                    let stuck_after = self.ledger.load_checkpoint(&self.checkpoint).await.ok();
                    self.ledger
                        .health()
                        .failed(&self.checkpoint, stuck_after, &err);
                    let _ = self.config.ensure(&self.jetstream).await;
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        lock.release().await;
        Ok(())
    }
}
