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

/// Messages handled side by side.
pub const CONCURRENCY: usize = 64;

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
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("creating the consumer {}", self.config.consumer))
    }

    /// Checks and records one message's event; `Err(Ok(refusal))` refuses it, `Err(Err(_))` is
    /// a failure to retry.
    async fn receive(
        &self,
        subject: &str,
        payload: &[u8],
    ) -> Result<ReceiptStatus, Result<Refusal, AppError>> {
        let (tenant, event_type) = self
            .config
            .parse_subject(subject)
            .ok_or_else(|| Ok(Refusal::new("invalid_subject", "not an intake subject")))?;
        let tenant = TenantId::parse(tenant)
            .map_err(|err| Ok(Refusal::new("unknown_tenant", err.to_string())))?;
        let document = countersign_domain::document::scan(payload)
            .and_then(|()| {
                serde_json::from_slice::<serde_json::Value>(payload)
                    .map_err(|err| countersign_domain::ParseError::new("", err.to_string()))
            })
            .map_err(|err| Ok(Refusal::new("invalid_event", format!("not JSON: {err}"))))?;
        let event = CloudEvent::parse(&document)
            .map_err(|err| Ok(Refusal::new("invalid_event", err.to_string())))?;
        if event.event_type.as_str() != event_type {
            return Err(Ok(Refusal::new(
                "type_mismatch",
                format!(
                    "the subject names type {event_type}, the event {}",
                    event.event_type
                ),
            )));
        }
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
        let receipts = workflows::receive(&self.app, &actor, vec![event], "nats")
            .await
            .map_err(|err| match err {
                AppError::InvalidInput(parse) => {
                    Ok(Refusal::new("invalid_event", parse.to_string()))
                }
                other => Err(other),
            })?;
        Ok(receipts
            .first()
            .map_or(ReceiptStatus::Accepted, |receipt| receipt.status))
    }

    async fn handle(&self, message: jetstream::Message) {
        let subject = message.subject.to_string();
        match self.receive(&subject, &message.payload).await {
            Ok(status) => {
                metrics::counter!("countersign_intake_nats_total", "outcome" => match status {
                    ReceiptStatus::Accepted => "accepted",
                    ReceiptStatus::Duplicate => "duplicate",
                })
                .increment(1);
                let _ = message.ack().await;
            }
            Err(Ok(refusal)) => {
                metrics::counter!("countersign_intake_nats_total", "outcome" => refusal.code)
                    .increment(1);
                warn!(
                    subject,
                    code = refusal.code,
                    reason = refusal.reason,
                    "intake: event refused; dead-lettered"
                );
                let mut headers = HeaderMap::new();
                headers.insert(HEADER_CODE, refusal.code);
                headers.insert(HEADER_REASON, refusal.reason.as_str());
                headers.insert(HEADER_SUBJECT, subject.as_str());
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
            Err(Err(err)) => {
                warn!(
                    subject,
                    error = format!("{:#}", anyhow::Error::from(err)),
                    "intake: recording failed; redelivering"
                );
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
    }

    /// Runs until `shutdown` turns true, reconnecting with backoff when NATS goes away. Up to
    /// [`CONCURRENCY`] messages are handled side by side (events are independent: the ledger
    /// records each event id once, whichever copy comes first; their appends are committed
    /// together), each acknowledged once recorded.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(200);
        while !*shutdown.borrow() {
            let messages = match self.consumer().await {
                Ok(consumer) => consumer.messages().await.map_err(anyhow::Error::from),
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
            loop {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    Some(()) = handling.next(), if !handling.is_empty() => {}
                    next = messages.next(), if handling.len() < CONCURRENCY => match next {
                        Some(Ok(message)) => {
                            backoff = Duration::from_millis(200);
                            handling.push(self.handle(message));
                        }
                        Some(Err(err)) => {
                            warn!(error = %err, "intake: message stream error; reconnecting");
                            break;
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
