//! The JetStream intake of CloudEvents: `<prefix>.intake.<tenant>.<type>`.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use countersign_app::workflows::{self, ReceiptStatus};
use countersign_app::{App, AppError};
use countersign_domain::TenantId;
use countersign_domain::workflow::CloudEvent;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use tracing::{info, warn};

/// Batches handled side by side.
pub const CONCURRENCY: usize = 4;

/// The most messages handled as one batch: what the consumer has ready, up to this many.
pub const BATCH: usize = 500;

/// Messages delivered and not yet acknowledged, at most: every batch being handled and one pull
/// ahead.
const MAX_ACK_PENDING: i64 = ((CONCURRENCY + 1) * BATCH) as i64;

/// Where events come in.
#[derive(Debug, Clone)]
pub struct IntakeConfig {
    /// The JetStream stream's name.
    pub stream: String,
    /// Subjects are `<prefix>.intake.<tenant>.<type>`.
    pub prefix: String,
    /// The durable consumer's name, shared by every worker.
    pub consumer: String,
    /// How long JetStream drops a repeated `Nats-Msg-Id` by itself (older repeats are recognised
    /// by the ledger).
    pub duplicate_window: Duration,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        Self {
            stream: "COUNTERSIGN_INTAKE".into(),
            prefix: "countersign".into(),
            consumer: "countersign-intake".into(),
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// Header on a dead-lettered event: the stable code of the refusal.
pub const HEADER_CODE: &str = "Countersign-Code";
/// Header on a dead-lettered event: why it was refused.
pub const HEADER_REASON: &str = "Countersign-Reason";
/// Header on a dead-lettered event: the subject it was published to.
pub const HEADER_SUBJECT: &str = "Countersign-Subject";

impl IntakeConfig {
    /// The same settings for subjects under `prefix`: a stream named after the prefix unless one
    /// was chosen (`COUNTERSIGN_INTAKE` for the default prefix `countersign`, else
    /// `<PREFIX>_INTAKE`), since one stream cannot serve two prefixes.
    #[must_use]
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        if self.stream == Self::default().stream {
            self.stream = format!(
                "{}_INTAKE",
                prefix.to_uppercase().replace(['.', '-', '*', '>'], "_")
            );
        }
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// The subject an event of `tenant` and `event_type` is published to.
    pub fn subject(&self, tenant: &str, event_type: &str) -> String {
        format!("{}.intake.{tenant}.{event_type}", self.prefix)
    }

    /// Where refused events go, with their reason in the headers.
    pub fn dead_letter_subject(&self) -> String {
        format!("{}.intake.dlq", self.prefix)
    }

    /// Creates the stream when it does not exist.
    pub async fn ensure(&self, jetstream: &jetstream::Context) -> anyhow::Result<stream::Stream> {
        jetstream
            .get_or_create_stream(stream::Config {
                name: self.stream.clone(),
                subjects: vec![format!("{}.intake.>", self.prefix)],
                storage: stream::StorageType::File,
                duplicate_window: self.duplicate_window,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating the JetStream stream {}", self.stream))
    }

    /// The tenant and the event type a subject names.
    fn parse_subject<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".intake.")?;
        rest.split_once('.')
    }
}

/// A refusal: a stable code and a reason.
struct Refusal {
    code: &'static str,
    reason: String,
}

impl Refusal {
    fn new(code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

/// Consumes the intake stream through a durable pull consumer shared by every worker.
#[derive(Debug, Clone)]
pub struct NatsIntake {
    pub app: App,
    pub client: async_nats::Client,
    pub config: IntakeConfig,
}

impl NatsIntake {
    async fn consumer(&self) -> anyhow::Result<consumer::Consumer<consumer::pull::Config>> {
        let jetstream = jetstream::new(self.client.clone());
        let stream = self.config.ensure(&jetstream).await?;
        stream
            .get_or_create_consumer(
                &self.config.consumer,
                consumer::pull::Config {
                    durable_name: Some(self.config.consumer.clone()),
                    filter_subject: format!("{}.intake.*.>", self.config.prefix),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(60),
                    // Room for every batch handled side by side and the next pull's worth (the
                    // server's default, 1,000, would hold the intake to two batches at a time).
                    max_ack_pending: MAX_ACK_PENDING,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("creating the consumer {}", self.config.consumer))
    }

    /// Checks one message: the tenant its subject names and its event, or a refusal.
    fn check(&self, subject: &str, payload: &[u8]) -> Result<(TenantId, CloudEvent), Refusal> {
        let (tenant, event_type) = self
            .config
            .parse_subject(subject)
            .ok_or_else(|| Refusal::new("invalid_subject", "not an intake subject"))?;
        let tenant = TenantId::parse(tenant)
            .map_err(|err| Refusal::new("unknown_tenant", err.to_string()))?;
        let document = countersign_domain::document::scan(payload)
            .and_then(|()| {
                serde_json::from_slice::<serde_json::Value>(payload)
                    .map_err(|err| countersign_domain::ParseError::new("", err.to_string()))
            })
            .map_err(|err| Refusal::new("invalid_event", format!("not JSON: {err}")))?;
        let event = CloudEvent::parse(&document)
            .map_err(|err| Refusal::new("invalid_event", err.to_string()))?;
        if event.event_type.as_str() != event_type {
            return Err(Refusal::new(
                "type_mismatch",
                format!(
                    "the subject names type {event_type}, the event {}",
                    event.event_type
                ),
            ));
        }
        Ok((tenant, event))
    }

    /// Records one tenant's checked events together; `Err(Ok(refusal))` is a refusal (of them all
    /// for an unknown tenant, else of some event: the caller tries each alone), `Err(Err(_))` a
    /// failure to retry later.
    async fn receive(
        &self,
        tenant: TenantId,
        events: Vec<CloudEvent>,
    ) -> Result<Vec<ReceiptStatus>, Result<Refusal, AppError>> {
        if !workflows::tenant_known(&self.app, &tenant)
            .await
            .map_err(Err)?
        {
            return Err(Ok(Refusal::new(
                "unknown_tenant",
                format!("no tenant {tenant}"),
            )));
        }
        let actor = workflows::intake_actor(tenant).map_err(Err)?;
        let receipts = workflows::receive(&self.app, &actor, events, "nats")
            .await
            .map_err(|err| match err {
                AppError::InvalidInput(parse) => {
                    Ok(Refusal::new("invalid_event", parse.to_string()))
                }
                other => Err(other),
            })?;
        Ok(receipts.iter().map(|receipt| receipt.status).collect())
    }

    /// Handles a batch of messages as they came: each is checked, the valid ones are recorded
    /// together per tenant (one statement starts their streams), and each is acknowledged once
    /// recorded, or dead-lettered with its refusal. When one of a tenant's events is refused as
    /// input, each is tried alone, so that the bad one refuses only itself; when the store
    /// fails, the tenant's messages are redelivered.
    async fn handle_batch(&self, messages: Vec<jetstream::Message>) {
        let mut tenants: std::collections::BTreeMap<
            TenantId,
            Vec<(jetstream::Message, CloudEvent)>,
        > = std::collections::BTreeMap::new();
        for message in messages {
            match self.check(message.subject.as_str(), &message.payload) {
                Ok((tenant, event)) => tenants.entry(tenant).or_default().push((message, event)),
                Err(refusal) => self.refuse(&message, &refusal).await,
            }
        }
        for (tenant, received) in tenants {
            let (messages, events): (Vec<_>, Vec<_>) = received.into_iter().unzip();
            match self.receive(tenant.clone(), events).await {
                Ok(statuses) => {
                    for (message, status) in messages.iter().zip(statuses) {
                        Self::accepted(message, status).await;
                    }
                }
                Err(Ok(refusal)) if refusal.code == "unknown_tenant" => {
                    for message in &messages {
                        self.refuse(message, &refusal).await;
                    }
                }
                Err(Err(err)) => {
                    // The store failed (the ledger already tried each event alone): the whole
                    // batch comes back later rather than failing again event by event now.
                    warn!(
                        tenant = %tenant,
                        messages = messages.len(),
                        error = format!("{:#}", anyhow::Error::from(err)),
                        "intake: recording failed; redelivering"
                    );
                    for message in &messages {
                        let _ = message
                            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                            .await;
                    }
                }
                Err(Ok(_)) => {
                    // An event the ledger refused as input: each alone, checked again from its
                    // message (the batch's events were moved into the attempt), so that only
                    // the bad one is refused.
                    for message in messages {
                        match self.check(message.subject.as_str(), &message.payload) {
                            Ok((tenant, event)) => self.handle_alone(&tenant, message, event).await,
                            Err(refusal) => self.refuse(&message, &refusal).await,
                        }
                    }
                }
            }
        }
    }

    /// Records one checked event alone: acknowledged, dead-lettered or redelivered later.
    async fn handle_alone(
        &self,
        tenant: &TenantId,
        message: jetstream::Message,
        event: CloudEvent,
    ) {
        match self.receive(tenant.clone(), vec![event]).await {
            Ok(statuses) => {
                let status = statuses.first().copied().unwrap_or(ReceiptStatus::Accepted);
                Self::accepted(&message, status).await;
            }
            Err(Ok(refusal)) => self.refuse(&message, &refusal).await,
            Err(Err(err)) => {
                warn!(
                    subject = message.subject.as_str(),
                    error = format!("{:#}", anyhow::Error::from(err)),
                    "intake: recording failed; redelivering"
                );
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
    }

    async fn accepted(message: &jetstream::Message, status: ReceiptStatus) {
        metrics::counter!("countersign_intake_nats_total", "outcome" => match status {
            ReceiptStatus::Accepted => "accepted",
            ReceiptStatus::Duplicate => "duplicate",
        })
        .increment(1);
        let _ = message.ack().await;
    }

    /// Dead-letters a refused message with its reason and stops its redelivery.
    async fn refuse(&self, message: &jetstream::Message, refusal: &Refusal) {
        let subject = message.subject.as_str();
        metrics::counter!("countersign_intake_nats_total", "outcome" => refusal.code).increment(1);
        warn!(
            subject,
            code = refusal.code,
            reason = refusal.reason,
            "intake: event refused; dead-lettered"
        );
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_CODE, refusal.code);
        headers.insert(HEADER_REASON, refusal.reason.as_str());
        headers.insert(HEADER_SUBJECT, subject);
        let _ = self
            .client
            .publish_with_headers(
                self.config.dead_letter_subject(),
                headers,
                message.payload.clone(),
            )
            .await;
        let _ = message.ack_with(AckKind::Term).await;
    }

    /// Runs until `shutdown` turns true, reconnecting with backoff when NATS goes away. What the
    /// consumer has ready is taken as one batch (up to [`BATCH`] messages), up to
    /// [`CONCURRENCY`] batches side by side (events are independent: the ledger records each
    /// event id once, whichever copy comes first), each message acknowledged once recorded.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(200);
        while !*shutdown.borrow() {
            let messages = match self.consumer().await {
                // Pulled in batches as large as the handler's, so that a burst arrives ready.
                Ok(consumer) => consumer
                    .stream()
                    .max_messages_per_batch(BATCH)
                    .messages()
                    .await
                    .map_err(anyhow::Error::from),
                Err(err) => Err(err),
            };
            let mut messages = match messages {
                Ok(messages) => messages,
                Err(err) => {
                    warn!(error = format!("{err:#}"), "intake: consumer unavailable");
                    tokio::select! { _ = shutdown.changed() => {}, () = tokio::time::sleep(backoff) => {} }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            info!(consumer = self.config.consumer, "intake consuming");
            let mut handling = FuturesUnordered::new();
            let mut batches = (&mut messages).ready_chunks(BATCH);
            loop {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    Some(()) = handling.next(), if !handling.is_empty() => {}
                    // Unconstrained: tokio's cooperative budget would end a batch after 128
                    // messages however many were ready, and a batch's cost is mostly per batch.
                    next = tokio::task::unconstrained(batches.next()), if handling.len() < CONCURRENCY => match next {
                        Some(batch) => {
                            let (taken, failed): (Vec<_>, Vec<_>) =
                                batch.into_iter().partition(Result::is_ok);
                            let taken: Vec<jetstream::Message> =
                                taken.into_iter().filter_map(Result::ok).collect();
                            if !taken.is_empty() {
                                backoff = Duration::from_millis(200);
                                handling.push(self.handle_batch(taken));
                            }
                            if let Some(Err(err)) = failed.into_iter().next() {
                                warn!(error = %err, "intake: message stream error; reconnecting");
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
            // Messages taken are handled (and acknowledged) before leaving.
            while handling.next().await.is_some() {}
            if !*shutdown.borrow() {
                tokio::select! { _ = shutdown.changed() => {}, () = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
        Ok(())
    }
}
