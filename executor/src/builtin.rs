//! Built-in capabilities: `noop.echo`, `webhook.post` and `email.send`.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use hmac::{Hmac, Mac};
use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::capability::{Capability, Completed, Failure, Invocation, Progress};
use crate::outbound::{Outbound, OutboundError};

/// `noop.echo`: answers its payload. For demos and tests.
#[derive(Debug, Clone, Default)]
pub struct Echo;

#[async_trait]
impl Capability for Echo {
    async fn execute(
        &self,
        invocation: &Invocation,
        progress: &Progress,
    ) -> Result<Completed, Failure> {
        progress.report(json!({ "step": "echoing" }));
        Ok(Completed {
            result: json!({ "echo": invocation.payload }),
            undo_payload: None,
        })
    }

    async fn preview(&self, invocation: &Invocation) -> Result<Value, Failure> {
        Ok(json!({ "would_echo": invocation.payload }))
    }
}

/// `webhook.post`: POSTs the payload to the tenant's webhook URL, signed with HMAC-SHA256, with
/// the execution key as `Idempotency-Key` so that the receiver can drop repeats. Through the
/// [`Outbound`] client: a URL it refuses (loopback, private, metadata… unless allowed) fails for
/// good and posts nothing.
#[derive(Debug, Clone)]
pub struct Webhook {
    client: Outbound,
    /// Per-tenant signing secrets are derived from this key.
    signing_key: [u8; 32],
}

pub const SIGNATURE_HEADER: &str = "x-countersign-signature";

impl Webhook {
    pub fn new(signing_key: [u8; 32], client: Outbound) -> Self {
        Self {
            client,
            signing_key,
        }
    }

    /// The tenant's HMAC secret: blake3 keyed with the service's webhook key, over the tenant.
    pub fn tenant_secret(signing_key: &[u8; 32], tenant: &str) -> String {
        blake3::keyed_hash(
            signing_key,
            format!("countersign webhook secret for {tenant}").as_bytes(),
        )
        .to_hex()
        .to_string()
    }

    /// `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
    pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

#[async_trait]
impl Capability for Webhook {
    async fn execute(
        &self,
        invocation: &Invocation,
        progress: &Progress,
    ) -> Result<Completed, Failure> {
        let Some(url) = &invocation.settings.webhook_url else {
            return Err(Failure::permanent(
                "the tenant has no webhook_url in its settings",
            ));
        };
        let body = serde_json::to_vec(&invocation.payload)
            .map_err(|err| Failure::permanent(err.to_string()))?;
        let timestamp = chrono::Utc::now().timestamp();
        let secret = Self::tenant_secret(&self.signing_key, invocation.tenant.as_str());
        let signature = Self::signature(&secret, timestamp, &body);
        progress.report(json!({ "step": "posting", "url": url.as_str() }));
        let answer = self
            .client
            .post(
                url.as_str(),
                |request| {
                    request
                        .header("content-type", "application/json")
                        .header("idempotency-key", invocation.execution_key.as_str())
                        .header("x-countersign-action", invocation.action_id.to_string())
                        .header("x-countersign-timestamp", timestamp.to_string())
                        .header(SIGNATURE_HEADER, signature)
                },
                body,
            )
            .await
            .map_err(|err| match err {
                OutboundError::Refused(refused) => Failure::permanent(refused.to_string()),
                OutboundError::InvalidUrl(_) => {
                    Failure::permanent(format!("the webhook_url cannot be posted to: {err}"))
                }
                OutboundError::Transport(_) => {
                    Failure::retryable(format!("posting to the webhook: {err}"))
                }
            })?;
        let status = answer.status;
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        let truncated = answer.truncated;
        // A body cut at the client's bound is kept as text: what was read, not a guess.
        let answer = if truncated {
            Value::String(text)
        } else {
            serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            let mut result = json!({ "status": status.as_u16(), "body": answer });
            if truncated {
                result["body_truncated"] = Value::Bool(true);
            }
            Ok(Completed {
                result,
                undo_payload: None,
            })
        } else if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            Err(Failure::retryable(format!("the webhook answered {status}")))
        } else {
            Err(Failure::permanent(format!(
                "the webhook answered {status}: {answer}"
            )))
        }
    }

    async fn preview(&self, invocation: &Invocation) -> Result<Value, Failure> {
        Ok(json!({
            // Credentials in the URL stay out of what a requester may read.
            "would_post_to": invocation
                .settings
                .webhook_url
                .as_ref()
                .map(|url| url.redacted().as_str().to_owned()),
            "idempotency_key": invocation.execution_key.as_str(),
            "body": invocation.payload,
        }))
    }
}

/// `email.send`: `{"to": ["…"], "subject": "…", "text": "…", "cc": ["…"]}` over SMTP.
#[derive(Debug, Clone)]
pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailPayload {
    to: Vec<String>,
    #[serde(default)]
    cc: Vec<String>,
    subject: String,
    text: String,
}

impl EmailPayload {
    /// The payload with at least one recipient and every address valid: `Email` and
    /// `LoggedEmail` accept and refuse the same payloads.
    fn parse(payload: &Value) -> Result<(Self, Vec<Mailbox>, Vec<Mailbox>), Failure> {
        let payload: Self = serde_json::from_value(payload.clone())
            .map_err(|err| Failure::permanent(format!("email.send payload: {err}")))?;
        if payload.to.is_empty() {
            return Err(Failure::permanent("email.send payload: `to` is empty"));
        }
        let mailboxes = |addresses: &[String]| {
            addresses
                .iter()
                .map(|address| {
                    address.parse::<Mailbox>().map_err(|err| {
                        Failure::permanent(format!("email.send: `{address}`: {err}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let to = mailboxes(&payload.to)?;
        let cc = mailboxes(&payload.cc)?;
        Ok((payload, to, cc))
    }
}

impl Email {
    /// `smtp://host:port` (plain, for a local relay), `smtp://host?tls=required` or `smtps://host`.
    pub fn new(smtp_url: &str, from: &str) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
            .with_context(|| {
                // Named without its userinfo, which may hold the password.
                let shown = url::Url::parse(smtp_url).map_or_else(
                    |_| "<redacted>".to_owned(),
                    |mut url| {
                        let _ = url.set_username("");
                        let _ = url.set_password(None);
                        url.to_string()
                    },
                );
                format!("SMTP_URL {shown}")
            })?
            .timeout(Some(Duration::from_secs(20)))
            .build();
        let from = from
            .parse()
            .with_context(|| format!("the sender address {from}"))?;
        Ok(Self { transport, from })
    }

    fn message(&self, invocation: &Invocation) -> Result<Message, Failure> {
        let (payload, to, cc) = EmailPayload::parse(&invocation.payload)?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(payload.subject)
            .message_id(Some(format!("<{}@countersign>", invocation.execution_key)))
            .header(ContentType::TEXT_PLAIN);
        for to in to {
            builder = builder.to(to);
        }
        for cc in cc {
            builder = builder.cc(cc);
        }
        builder
            .body(payload.text)
            .map_err(|err| Failure::permanent(format!("email.send: {err}")))
    }
}

#[async_trait]
impl Capability for Email {
    async fn execute(
        &self,
        invocation: &Invocation,
        progress: &Progress,
    ) -> Result<Completed, Failure> {
        let message = self.message(invocation)?;
        progress.report(json!({ "step": "sending" }));
        let response = self.transport.send(message).await.map_err(|err| {
            if err.is_permanent() {
                Failure::permanent(format!("SMTP refused the message: {err}"))
            } else {
                Failure::retryable(format!("SMTP: {err}"))
            }
        })?;
        Ok(Completed {
            result: json!({ "smtp": response.code().to_string(), "message": response.message().collect::<Vec<_>>().join(" ") }),
            undo_payload: None,
        })
    }

    async fn preview(&self, invocation: &Invocation) -> Result<Value, Failure> {
        let message = self.message(invocation)?;
        Ok(json!({ "would_send": String::from_utf8_lossy(&message.formatted()) }))
    }
}

/// `email.send` without an SMTP server (the embedded default): the message goes to the log, and
/// the result says so.
#[derive(Debug, Clone, Default)]
pub struct LoggedEmail;

#[async_trait]
impl Capability for LoggedEmail {
    async fn execute(
        &self,
        invocation: &Invocation,
        _progress: &Progress,
    ) -> Result<Completed, Failure> {
        let (payload, _, _) = EmailPayload::parse(&invocation.payload)?;
        tracing::info!(to = ?payload.to, subject = payload.subject, action_id = %invocation.action_id, "email.send (no SMTP_URL: logged, not sent)");
        Ok(Completed {
            result: json!({ "delivered": "log", "to": payload.to }),
            undo_payload: None,
        })
    }

    async fn preview(&self, invocation: &Invocation) -> Result<Value, Failure> {
        EmailPayload::parse(&invocation.payload)?;
        Ok(json!({ "would_log": invocation.payload }))
    }
}

/// `webhook.post` when no signing key is configured: fails, never posts unsigned.
#[derive(Debug, Clone, Default)]
pub struct WebhooksDisabled;

#[async_trait]
impl Capability for WebhooksDisabled {
    async fn execute(
        &self,
        _invocation: &Invocation,
        _progress: &Progress,
    ) -> Result<Completed, Failure> {
        Err(Failure::permanent(
            "webhook.post needs COUNTERSIGN_WEBHOOK_SECRET to be configured",
        ))
    }

    async fn preview(&self, _invocation: &Invocation) -> Result<Value, Failure> {
        Err(Failure::permanent(
            "webhook.post needs COUNTERSIGN_WEBHOOK_SECRET to be configured",
        ))
    }
}
