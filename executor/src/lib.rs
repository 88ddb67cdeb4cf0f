//! The executor: runs approved actions exactly once through registered capabilities, fires
//! deadlines, and relays the log to NATS JetStream.
//!
//! - [`worker::Executor::process`] decides from an action's events whether it awaits execution
//!   (approved, not executed, auto-executing or requested), claims the attempt in the ledger
//!   (refused to a second claimant), calls the capability, and records the outcome. Redeliveries,
//!   replays from the start of the stream and concurrent executors find the action claimed or
//!   executed and run nothing.
//! - [`relay::Relay`] publishes the log to a JetStream stream with each event's identity as
//!   `Nats-Msg-Id`; [`sources::JetStreamSource`] is the executor's durable pull consumer;
//!   [`sources::LogSource`] is the embedded mode without NATS; [`sources::Sweeper`] catches
//!   deadlines, due retries and expired leases.
//! - [`capability`] defines capabilities; [`builtin`] has `noop.echo`, `webhook.post` and
//!   `email.send`; [`external`] reaches providers over NATS request/reply; [`outbound`] is the
//!   one HTTP client of outbound requests, closed to addresses off the public internet.

pub mod builtin;
pub mod capability;
pub mod external;
pub mod outbound;
pub mod relay;
pub mod sources;
pub mod worker;

pub use capability::{Capability, Completed, Failure, Invocation, Progress, ProgressHub, Registry};
pub use outbound::{Outbound, OutboundPolicy};
pub use relay::{Relay, StreamConfig};
pub use sources::{JetStreamSource, LogSource, Sweeper};
pub use worker::{Executor, ExecutorConfig, Processed};

use std::time::Duration;

/// The registry of a deployment: `noop.echo`; `webhook.post` signed with `webhook_key` (or
/// refusing without one); `email.send` over SMTP (or to the log without one); and every other
/// action type to the NATS providers when a client is given. Outbound requests reach no address
/// off the public internet: [`registry_with`] takes the operator's allow-list.
pub fn registry(
    webhook_key: Option<[u8; 32]>,
    smtp: Option<(&str, &str)>,
    nats: Option<async_nats::Client>,
) -> anyhow::Result<Registry> {
    registry_with(webhook_key, smtp, nats, OutboundPolicy::default())
}

/// [`registry`], with outbound requests (`webhook.post`) also allowed to reach the ranges of
/// `outbound` (`COUNTERSIGN_OUTBOUND_ALLOW`, parsed with `str::parse::<OutboundPolicy>`).
pub fn registry_with(
    webhook_key: Option<[u8; 32]>,
    smtp: Option<(&str, &str)>,
    nats: Option<async_nats::Client>,
    outbound: OutboundPolicy,
) -> anyhow::Result<Registry> {
    let mut registry = Registry::default().with("noop.echo", builtin::Echo);
    registry = match webhook_key {
        Some(key) => registry.with(
            "webhook.post",
            builtin::Webhook::new(
                key,
                Outbound::new(
                    outbound,
                    outbound::Limits {
                        timeout: Duration::from_secs(20),
                        ..outbound::Limits::default()
                    },
                )?,
            ),
        ),
        None => registry.with("webhook.post", builtin::WebhooksDisabled),
    };
    registry = match smtp {
        Some((url, from)) => registry.with("email.send", builtin::Email::new(url, from)?),
        None => registry.with("email.send", builtin::LoggedEmail),
    };
    if let Some(client) = nats {
        registry = registry.with_external(external::External::new(client, Duration::from_secs(30)));
    }
    Ok(registry)
}
