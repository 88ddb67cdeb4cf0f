//! Slack: a tenant's incoming-webhook URL and signing secret (stored apart from the log, like a
//! webhook URL's credentials), and the interactions use case behind `POST
//! /v1/slack/interactions`: Slack's request signature is checked (`v0=` HMAC-SHA256 of
//! `v0:<timestamp>:<body>` under the tenant's signing secret; a timestamp more than 5 minutes
//! away is refused), the Slack user is mapped to a member, and the button's signed vote is cast
//! as that member through the vote use case (every eligibility rule applies). The answer is the
//! text that replaces the message. After a recorded vote, the same replacement is also queued
//! for the interaction's `response_url` (when Slack's payload carries one) as a pending Slack
//! row of kind [`RESPONSE_KIND`], which the dispatcher's Slack sender posts through the
//! SSRF-safe outbound client, with the retries and delivery record of any notification.

use countersign_domain::UserId;
use countersign_domain::members::MemberDirectory;
use countersign_domain::tenant::WebhookUrl;
use hmac::{Hmac, Mac};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::links::{self, LinkRefusal};
use crate::{Actor, App, AppError, roles};

/// The tenant secret holding the incoming-webhook URL.
pub const WEBHOOK_SECRET: &str = "slack_webhook_url";
/// The tenant secret holding the signing secret.
pub const SIGNING_SECRET: &str = "slack_signing_secret";
/// How far a request's timestamp may be from now.
pub const MAX_SKEW_SECONDS: i64 = 300;
/// The voter of a button's token: whoever clicks, once mapped to a member.
pub const ANY_MEMBER: &str = "*";
/// The kind of the row that posts a replacement message to an interaction's `response_url`
/// (its `address`; its `body` is the text).
pub const RESPONSE_KIND: &str = "slack_response";

/// What an owner or admin configures.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    /// The incoming webhook (`https://hooks.slack.com/services/…`).
    pub webhook_url: WebhookUrl,
    /// The Slack app's signing secret: 8 to 200 characters, no whitespace.
    #[schemars(extend(
        "pattern" = r"^[^\u0000\t-\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]{8,200}$"
    ))]
    pub signing_secret: String,
}

/// Whether Slack is configured (the secrets are never shown).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SlackStatus {
    pub configured: bool,
}

/// Stores the tenant's Slack webhook URL and signing secret (owner, admin).
pub async fn configure(
    app: &App,
    actor: &Actor,
    settings: SlackSettings,
) -> Result<SlackStatus, AppError> {
    actor.require(&[roles::OWNER, roles::ADMIN], "configuring Slack")?;
    let url = settings.webhook_url;
    url.check_destination()?;
    let secret = settings.signing_secret.as_str();
    let length = secret.chars().count();
    if !(8..=200).contains(&length) || secret.chars().any(|c| c.is_whitespace() || c == '\0') {
        return Err(AppError::InvalidInput(countersign_domain::ParseError::new(
            "signing_secret",
            "must be Slack's signing secret (8 to 200 characters, no spaces)",
        )));
    }
    let tenant = actor.tenant.as_str();
    app.ledger
        .put_secret(tenant, WEBHOOK_SECRET, url.as_str())
        .await?;
    app.ledger
        .put_secret(tenant, SIGNING_SECRET, secret)
        .await?;
    Ok(SlackStatus { configured: true })
}

/// Whether the tenant configured Slack (owner, admin, auditor).
pub async fn status(app: &App, actor: &Actor) -> Result<SlackStatus, AppError> {
    actor.require(
        &[roles::OWNER, roles::ADMIN, roles::AUDITOR],
        "reading the Slack settings",
    )?;
    let configured = app
        .ledger
        .secret(actor.tenant.as_str(), WEBHOOK_SECRET)
        .await?
        .is_some();
    Ok(SlackStatus { configured })
}

/// Slack's signature of a request: `v0=` and the hex of HMAC-SHA256 over `v0:<ts>:<body>`.
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::from("v0=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Why an interaction was refused before anything was considered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackRefusal {
    /// Handling: 401 `invalid_signature`.
    #[error("the request's Slack signature does not verify")]
    BadSignature,
    /// Handling: 401 `stale_signature`.
    #[error("the request's timestamp is more than 5 minutes away")]
    Stale,
    /// Handling: 400 `invalid_payload`.
    #[error("the interaction payload is not one countersign sent: {0}")]
    Payload(&'static str),
}

/// One interaction, as the front door parsed it.
#[derive(Debug, Clone)]
pub struct Interaction<'a> {
    pub timestamp: &'a str,
    pub signature: &'a str,
    pub body: &'a [u8],
    /// The button's value (a signed vote token).
    pub value: &'a str,
    /// The Slack user who clicked.
    pub user: &'a str,
}

/// Handles a button click: verifies the request, maps the user, casts the vote. `Ok` carries
/// the text that replaces the message (also when the vote was refused, saying why).
pub async fn interact(app: &App, interaction: Interaction<'_>) -> Result<String, SlackRefusal> {
    let now = chrono::Utc::now().timestamp();
    let sent: i64 = interaction
        .timestamp
        .parse()
        .map_err(|_| SlackRefusal::BadSignature)?;
    // The claims are read before the signature is checked only to know whose secret to use;
    // nothing else is trusted until both the request and the token verify.
    let claims = links::peek(interaction.value).ok_or(SlackRefusal::Payload("unknown button"))?;
    let secret = app
        .ledger
        .secret(&claims.tenant, SIGNING_SECRET)
        .await
        .ok()
        .flatten()
        .ok_or(SlackRefusal::BadSignature)?;
    let expected = signature(&secret, interaction.timestamp, interaction.body);
    if !constant_time_eq(expected.as_bytes(), interaction.signature.as_bytes()) {
        warn_refused(&claims.tenant, "invalid_signature");
        return Err(SlackRefusal::BadSignature);
    }
    if (now - sent).abs() > MAX_SKEW_SECONDS {
        warn_refused(&claims.tenant, "stale_signature");
        return Err(SlackRefusal::Stale);
    }
    let tenant = countersign_domain::TenantId::parse(claims.tenant.as_str())
        .map_err(|_| SlackRefusal::Payload("unknown tenant"))?;
    let directory = app
        .ledger
        .load::<MemberDirectory>(&tenant)
        .await
        .map(|(directory, _)| directory)
        .unwrap_or_default();
    let Some(member) = directory.members.values().find(|member| {
        member.slack_user_id.as_ref().map(|id| id.as_str()) == Some(interaction.user)
    }) else {
        return Ok(format!(
            "Nothing was changed: your Slack account is not linked to a member of {}.",
            claims.tenant
        ));
    };
    let voter: UserId = member.user_id.clone();
    Ok(
        match links::confirm_as(
            app,
            interaction.value,
            Some(voter.clone()),
            crate::Channel::Slack,
        )
        .await
        {
            Ok(claims) => {
                let text = format!(
                    "{} voted {} on action {}.",
                    voter,
                    links::vote_word(claims.vote),
                    claims.action
                );
                if let Some(url) = response_url(interaction.body) {
                    queue_response(app, &claims.tenant, &claims.action, &voter, &url, &text).await;
                }
                text
            }
            Err(refusal @ (LinkRefusal::Forged | LinkRefusal::Disabled)) => {
                return Err(SlackRefusal::Payload(refusal.code()));
            }
            Err(refusal) => format!("Nothing was changed: {refusal}"),
        },
    )
}

/// The `response_url` of the form body's `payload` (`application/x-www-form-urlencoded`).
fn response_url(body: &[u8]) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    let payload = body
        .split('&')
        .find_map(|pair| pair.strip_prefix("payload="))?;
    let payload: serde_json::Value = serde_json::from_str(&form_decode(payload)?).ok()?;
    payload["response_url"]
        .as_str()
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
}

/// Undoes form encoding: `+` is a space, `%XX` a byte.
fn form_decode(value: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(value.len());
    let mut input = value.bytes();
    while let Some(byte) = input.next() {
        match byte {
            b'+' => bytes.push(b' '),
            b'%' => {
                let high = char::from(input.next()?).to_digit(16)?;
                let low = char::from(input.next()?).to_digit(16)?;
                bytes.push(u8::try_from(high * 16 + low).ok()?);
            }
            byte => bytes.push(byte),
        }
    }
    String::from_utf8(bytes).ok()
}

/// Queues `text` for the interaction's `response_url`: one pending Slack row per interaction
/// (keyed by it), delivered by the dispatcher. A failure to queue is logged: the answer in the
/// response body already replaces the message.
async fn queue_response(
    app: &App,
    tenant: &str,
    action: &str,
    voter: &UserId,
    url: &str,
    text: &str,
) {
    let created_us = chrono::Utc::now().timestamp_micros();
    let source = format!("slack-response/{}", blake3::hash(url.as_bytes()).to_hex());
    let row = super::store::NewNotification {
        key: super::notifier::key(
            tenant,
            &source,
            voter.as_str(),
            countersign_domain::members::NotificationChannel::Slack,
        ),
        tenant: tenant.to_owned(),
        recipient: voter.as_str().to_owned(),
        channel: countersign_domain::members::NotificationChannel::Slack
            .as_str()
            .to_owned(),
        kind: RESPONSE_KIND.to_owned(),
        source,
        action_id: Some(action.to_owned()),
        title: text.to_owned(),
        body: text.to_owned(),
        address: Some(url.to_owned()),
        position: 0,
        created_us,
        status: "pending",
    };
    if let Err(error) = super::store::apply(
        app.ledger.backend(),
        vec![super::store::Change::Notify(row)],
    )
    .await
    {
        tracing::warn!(
            tenant,
            action,
            error = %error,
            "the Slack message update for response_url was not queued"
        );
    }
}

fn warn_refused(tenant: &str, code: &'static str) {
    tracing::warn!(
        audit = true,
        tenant,
        code,
        "a Slack interaction was refused"
    );
    metrics::counter!("countersign_slack_interactions_refused_total", "code" => code).increment(1);
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::response_url;

    #[test]
    fn the_response_url_is_read_from_the_form_encoded_payload() {
        let body = "payload=%7B%22type%22%3A%22block_actions%22%2C%22response_url%22%3A%22https%3A%2F%2Fhooks.slack.com%2Factions%2FT1%2F2%2Fab%2Bc%22%7D&x=1";
        assert_eq!(
            response_url(body.as_bytes()).as_deref(),
            Some("https://hooks.slack.com/actions/T1/2/ab+c")
        );
        for without in [
            "payload=%7B%22type%22%3A%22block_actions%22%7D",
            "payload=%7B%22response_url%22%3A%22%22%7D",
            "payload=%7Bnot+json",
            "payload=%ZZ",
            "other=1",
            "",
        ] {
            assert_eq!(response_url(without.as_bytes()), None, "{without}");
        }
    }
}
