//! The ways out of notifications, as [`NotificationSender`]s for the dispatcher of
//! `countersign_app::notify`: email over SMTP (`lettre`: plain-text and HTML parts, the action's
//! summary, risk and link, one-click approval links, a `Message-ID` derived from the
//! notification's key so a repeated send is recognisable), and a signed JSON POST to the
//! tenant's webhook URL (the signature scheme of `webhook.post`, through the executor's
//! SSRF-safe outbound client).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use countersign_app::App;
use countersign_app::notify::links::{self, LinkClaims};
use countersign_app::notify::{NotificationRow, NotificationSender, SendError};
use countersign_domain::TenantId;
use countersign_domain::members::NotificationChannel;
use countersign_domain::quorum::Vote;
use countersign_domain::tenant::TenantSettings;
use countersign_executor::builtin::{SIGNATURE_HEADER, Webhook};
use countersign_executor::outbound::{Limits, OutboundError};
use countersign_executor::{Outbound, OutboundPolicy};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{Value, json};

/// HTML-escapes text for the email's HTML part.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The stable `Message-ID` of a notification's email: the same notification always carries the
/// same one, so a repeat after a crash between sending and recording is recognisable.
pub fn message_id(row: &NotificationRow) -> String {
    format!("<{}@notifications.countersign>", row.key)
}

/// Email over SMTP.
#[derive(Debug, Clone)]
pub struct EmailSender {
    app: App,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The service's public address (`https://approvals.example.com`): links in emails are
    /// absolute; without it, emails carry no links.
    public_url: Option<String>,
}

impl EmailSender {
    /// `smtp://host:port` (plain, a local relay), `smtp://user:pass@host?tls=required`
    /// (STARTTLS) or `smtps://host` (TLS); connections are pooled (`lettre`'s `pool` feature:
    /// up to 10, closed after 60 s idle) and shared by the dispatcher's concurrent deliveries.
    pub fn new(
        app: App,
        smtp_url: &str,
        from: &str,
        public_url: Option<String>,
    ) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
            .map_err(|_| anyhow::anyhow!("SMTP_URL is not an SMTP URL lettre accepts"))?
            .timeout(Some(Duration::from_secs(20)))
            .build();
        let from = from
            .parse()
            .with_context(|| format!("the sender address {from}"))?;
        Ok(Self {
            app,
            transport,
            from,
            public_url: public_url.map(|url| url.trim_end_matches('/').to_owned()),
        })
    }

    /// Approve and reject links for an approval request, when links are enabled.
    fn approval_links(&self, row: &NotificationRow, details: &Value) -> Option<(String, String)> {
        if !matches!(row.kind.as_str(), "assigned" | "reminder" | "escalated") {
            return None;
        }
        let base = self.public_url.as_ref()?;
        let expires_at = details["expires_at"]
            .as_str()
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())?;
        let expires = (chrono::Utc::now() + links::LINK_LIFETIME)
            .timestamp()
            .min(expires_at.timestamp());
        let claims = |vote| LinkClaims {
            tenant: row.tenant.clone(),
            action: row.action_id.clone().unwrap_or_default(),
            voter: row.recipient.clone(),
            vote,
            stage: details["stage"]
                .as_u64()
                .and_then(|stage| u32::try_from(stage).ok())
                .unwrap_or_default(),
            execution_key: details["execution_key"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            expires,
        };
        let approve = links::sign(&self.app, &claims(Vote::Approve))?;
        let reject = links::sign(&self.app, &claims(Vote::Reject))?;
        Some((
            format!("{base}/approve/{approve}"),
            format!("{base}/approve/{reject}"),
        ))
    }

    /// The message for one notification: plain-text and HTML parts with the same content.
    pub fn message(&self, row: &NotificationRow) -> Result<Message, SendError> {
        let permanent = |message: String| SendError {
            message,
            retryable: false,
        };
        let to: Mailbox = row
            .address
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|err| permanent(format!("the recipient's address: {err}")))?;
        let details: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
        if row.kind == "digest" {
            return self.digest(row, to, &details);
        }
        let text_of = |field: &str| details[field].as_str().unwrap_or_default().to_owned();
        let risk = format!(
            "{} ({}/100)",
            details["risk"]["level"].as_str().unwrap_or_default(),
            details["risk"]["score"].as_u64().unwrap_or_default()
        );
        let open = self
            .public_url
            .as_ref()
            .map(|base| format!("{base}{}", text_of("link")));
        let links = self.approval_links(row, &details);
        let fields = [
            ("Action", text_of("summary")),
            ("Type", text_of("action_type")),
            ("Risk", risk),
            ("Status", text_of("status")),
            ("Requested by", text_of("requested_by")),
            ("Deadline", text_of("expires_at")),
        ];
        let mut plain = format!("{}\n\n", row.title);
        let mut html = format!("<h2>{}</h2><table>", escape(&row.title));
        for (name, value) in &fields {
            plain.push_str(&format!("{name}: {value}\n"));
            html.push_str(&format!(
                "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
                escape(name),
                escape(value)
            ));
        }
        html.push_str("</table>");
        if let Some(open) = &open {
            plain.push_str(&format!("\nOpen: {open}\n"));
            html.push_str(&format!(
                "<p><a href=\"{}\">Open the action</a></p>",
                escape(open)
            ));
        }
        if let Some((approve, reject)) = &links {
            plain.push_str(&format!(
                "\nApprove: {approve}\nReject: {reject}\n(Each link asks you to confirm before anything is recorded.)\n"
            ));
            html.push_str(&format!(
                "<p><a href=\"{}\">Approve</a> &middot; <a href=\"{}\">Reject</a></p>\
                 <p><small>Each link asks you to confirm before anything is recorded.</small></p>",
                escape(approve),
                escape(reject)
            ));
        }
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(row.title.clone())
            .message_id(Some(message_id(row)))
            .multipart(MultiPart::alternative_plain_html(plain, html))
            .map_err(|err| permanent(format!("building the message: {err}")))
    }
}

impl EmailSender {
    /// A daily digest: one line per notification, with its link.
    fn digest(
        &self,
        row: &NotificationRow,
        to: Mailbox,
        details: &Value,
    ) -> Result<Message, SendError> {
        let mut plain = format!("{}\n\n", row.title);
        let mut html = format!("<h2>{}</h2><ul>", escape(&row.title));
        for item in details["items"].as_array().into_iter().flatten() {
            let title = item["title"].as_str().unwrap_or_default();
            let link = self.public_url.as_ref().map(|base| {
                format!(
                    "{base}{}",
                    item["details"]["link"].as_str().unwrap_or_default()
                )
            });
            match &link {
                Some(link) => {
                    plain.push_str(&format!("- {title}\n  {link}\n"));
                    html.push_str(&format!(
                        "<li><a href=\"{}\">{}</a></li>",
                        escape(link),
                        escape(title)
                    ));
                }
                None => {
                    plain.push_str(&format!("- {title}\n"));
                    html.push_str(&format!("<li>{}</li>", escape(title)));
                }
            }
        }
        html.push_str("</ul>");
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(row.title.clone())
            .message_id(Some(message_id(row)))
            .multipart(MultiPart::alternative_plain_html(plain, html))
            .map_err(|err| SendError {
                message: format!("building the digest: {err}"),
                retryable: false,
            })
    }
}

#[async_trait]
impl NotificationSender for EmailSender {
    fn channel(&self) -> NotificationChannel {
        NotificationChannel::Email
    }

    async fn send(&self, row: &NotificationRow) -> Result<(), SendError> {
        let message = self.message(row)?;
        self.transport
            .send(message)
            .await
            .map(drop)
            .map_err(|err| SendError {
                retryable: !err.is_permanent(),
                message: format!("SMTP: {err}"),
            })
    }
}

/// A signed JSON POST to the tenant's webhook URL (its settings' `webhook_url`), signed like
/// `webhook.post`: `x-countersign-timestamp` and `x-countersign-signature` (HMAC-SHA256 of
/// `<timestamp>.<body>` under the tenant's secret), with `idempotency-key` the notification's key.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    app: App,
    signing_key: [u8; 32],
    client: Outbound,
}

impl WebhookSender {
    pub fn new(app: App, signing_key: [u8; 32], policy: OutboundPolicy) -> anyhow::Result<Self> {
        let client = Outbound::new(policy, Limits::default()).context("the outbound client")?;
        Ok(Self {
            app,
            signing_key,
            client,
        })
    }

    /// The JSON a tenant's webhook receives for one notification.
    pub fn payload(row: &NotificationRow) -> Value {
        json!({
            "type": "notification",
            "id": row.key,
            "kind": row.kind,
            "recipient": row.recipient,
            "title": row.title,
            "details": serde_json::from_str::<Value>(&row.body).unwrap_or(Value::Null),
        })
    }
}

#[async_trait]
impl NotificationSender for WebhookSender {
    fn channel(&self) -> NotificationChannel {
        NotificationChannel::Webhook
    }

    async fn send(&self, row: &NotificationRow) -> Result<(), SendError> {
        let retryable = |message: String| SendError {
            message,
            retryable: true,
        };
        let permanent = |message: String| SendError {
            message,
            retryable: false,
        };
        let tenant = TenantId::parse(row.tenant.as_str())
            .map_err(|err| permanent(format!("the tenant: {err}")))?;
        let ledger = self.app.ledger();
        let (settings, _) = ledger
            .load::<TenantSettings>(&tenant)
            .await
            .map_err(|err| retryable(format!("reading the tenant's settings: {err}")))?;
        let Some(mut url) = settings.settings.webhook_url else {
            return Err(permanent("the tenant has no webhook_url any more".into()));
        };
        if url.has_stored_credentials()
            && let Some(credentials) = ledger
                .secret(tenant.as_str(), &url.secret_name())
                .await
                .map_err(|err| retryable(format!("reading the webhook credentials: {err:#}")))?
        {
            url = url.with_credentials(&credentials);
        }
        let body =
            serde_json::to_vec(&Self::payload(row)).map_err(|err| permanent(err.to_string()))?;
        let timestamp = chrono::Utc::now().timestamp();
        let secret = Webhook::tenant_secret(&self.signing_key, tenant.as_str());
        let signature = Webhook::signature(&secret, timestamp, &body);
        let answer = self
            .client
            .post(
                url.as_str(),
                |request| {
                    request
                        .header("content-type", "application/json")
                        .header("idempotency-key", row.key.as_str())
                        .header("x-countersign-notification", row.kind.as_str())
                        .header("x-countersign-timestamp", timestamp.to_string())
                        .header(SIGNATURE_HEADER, signature)
                },
                body,
            )
            .await
            .map_err(|err| match err {
                OutboundError::Transport(_) => retryable(format!("posting: {err}")),
                other => permanent(format!("the webhook_url cannot be posted to: {other}")),
            })?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(SendError {
                retryable: answer.status.is_server_error() || answer.status.as_u16() == 429,
                message: format!("the webhook answered {}", answer.status),
            })
        }
    }
}

/// Slack: a Block Kit message to the tenant's incoming webhook, mentioning the member, with
/// Approve and Reject buttons on approval requests (their values are signed vote tokens for
/// whichever member clicks; `POST /v1/slack/interactions` maps the clicker to a member).
#[derive(Debug, Clone)]
pub struct SlackSender {
    app: App,
    client: Outbound,
    public_url: Option<String>,
}

/// Escapes `&`, `<` and `>` as Slack's text formats require.
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl SlackSender {
    pub fn new(
        app: App,
        policy: OutboundPolicy,
        public_url: Option<String>,
    ) -> anyhow::Result<Self> {
        let client = Outbound::new(policy, Limits::default()).context("the outbound client")?;
        Ok(Self {
            app,
            client,
            public_url: public_url.map(|url| url.trim_end_matches('/').to_owned()),
        })
    }

    /// The Block Kit message for one notification.
    pub fn message(&self, row: &NotificationRow) -> Value {
        let details: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
        let mention = row
            .address
            .as_deref()
            .map(|user| format!("<@{user}> "))
            .unwrap_or_default();
        let text = format!("{mention}{}", slack_escape(&row.title));
        let mut blocks = vec![json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": format!(
                "{text}\n*Risk:* {} ({}/100) · *Type:* {} · *Requested by:* {}",
                slack_escape(details["risk"]["level"].as_str().unwrap_or_default()),
                details["risk"]["score"].as_u64().unwrap_or_default(),
                slack_escape(details["action_type"].as_str().unwrap_or_default()),
                slack_escape(details["requested_by"].as_str().unwrap_or_default()),
            ) }
        })];
        let asks = matches!(row.kind.as_str(), "assigned" | "reminder" | "escalated");
        if asks {
            let expires = details["expires_at"]
                .as_str()
                .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                .map_or(0, |at| {
                    (chrono::Utc::now() + links::LINK_LIFETIME)
                        .timestamp()
                        .min(at.timestamp())
                });
            let token = |vote| {
                links::sign(
                    &self.app,
                    &LinkClaims {
                        tenant: row.tenant.clone(),
                        action: row.action_id.clone().unwrap_or_default(),
                        voter: countersign_app::notify::slack::ANY_MEMBER.to_owned(),
                        vote,
                        stage: details["stage"]
                            .as_u64()
                            .and_then(|stage| u32::try_from(stage).ok())
                            .unwrap_or_default(),
                        execution_key: details["execution_key"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        expires,
                    },
                )
            };
            if let (Some(approve), Some(reject)) = (token(Vote::Approve), token(Vote::Reject)) {
                blocks.push(json!({
                    "type": "actions",
                    "block_id": "countersign_vote",
                    "elements": [
                        { "type": "button", "action_id": "approve", "style": "primary",
                          "text": { "type": "plain_text", "text": "Approve" }, "value": approve },
                        { "type": "button", "action_id": "reject", "style": "danger",
                          "text": { "type": "plain_text", "text": "Reject" }, "value": reject },
                    ]
                }));
            }
        }
        if let Some(base) = &self.public_url {
            blocks.push(json!({
                "type": "context",
                "elements": [{ "type": "mrkdwn", "text": format!(
                    "<{base}{}|Open in countersign>",
                    details["link"].as_str().unwrap_or_default()
                ) }]
            }));
        }
        json!({ "text": text, "blocks": blocks })
    }

    /// Posts a replacement message to an interaction's `response_url` (the row's address)
    /// through the outbound client, so its policy decides what may be reached.
    async fn respond(&self, row: &NotificationRow) -> Result<(), SendError> {
        let url = row.address.as_deref().ok_or_else(|| SendError {
            message: "the Slack update has no response_url".into(),
            retryable: false,
        })?;
        let body = serde_json::to_vec(&json!({ "replace_original": true, "text": row.body }))
            .map_err(|err| SendError {
                message: err.to_string(),
                retryable: false,
            })?;
        self.post(url, body).await
    }

    async fn post(&self, url: &str, body: Vec<u8>) -> Result<(), SendError> {
        let answer = self
            .client
            .post(
                url,
                |request| request.header("content-type", "application/json"),
                body,
            )
            .await
            .map_err(|err| SendError {
                retryable: matches!(err, OutboundError::Transport(_)),
                message: format!("posting to Slack: {err}"),
            })?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(SendError {
                retryable: answer.status.is_server_error() || answer.status.as_u16() == 429,
                message: format!("Slack answered {}", answer.status),
            })
        }
    }
}

#[async_trait]
impl NotificationSender for SlackSender {
    fn channel(&self) -> NotificationChannel {
        NotificationChannel::Slack
    }

    async fn send(&self, row: &NotificationRow) -> Result<(), SendError> {
        if row.kind == countersign_app::notify::slack::RESPONSE_KIND {
            return self.respond(row).await;
        }
        let url = self
            .app
            .ledger()
            .secret(&row.tenant, countersign_app::notify::slack::WEBHOOK_SECRET)
            .await
            .map_err(|err| SendError {
                message: format!("reading the Slack webhook: {err:#}"),
                retryable: true,
            })?
            .ok_or_else(|| SendError {
                message: "the tenant has no Slack webhook any more".into(),
                retryable: false,
            })?;
        let body = serde_json::to_vec(&self.message(row)).map_err(|err| SendError {
            message: err.to_string(),
            retryable: false,
        })?;
        self.post(&url, body).await
    }
}

/// The senders a deployment can offer: email with SMTP settings, webhooks with a signing key.
pub fn senders(
    app: &App,
    smtp: Option<(&str, &str)>,
    public_url: Option<String>,
    webhook_key: Option<[u8; 32]>,
    outbound: OutboundPolicy,
) -> anyhow::Result<Vec<Arc<dyn NotificationSender>>> {
    let mut senders: Vec<Arc<dyn NotificationSender>> = Vec::new();
    if let Some((url, from)) = smtp {
        senders.push(Arc::new(EmailSender::new(
            app.clone(),
            url,
            from,
            public_url.clone(),
        )?));
    }
    senders.push(Arc::new(SlackSender::new(
        app.clone(),
        outbound.clone(),
        public_url.clone(),
    )?));
    if let Some(key) = webhook_key {
        senders.push(Arc::new(WebhookSender::new(app.clone(), key, outbound)?));
    }
    Ok(senders)
}
