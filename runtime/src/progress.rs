//! Progress of running actions across processes. A capability reports progress to the
//! `ProgressHub` of the process running it; with split roles the streams that show it run in api
//! processes. Over NATS core (at most once, like the in-process channel: progress is a hint, not
//! a record), a process running the executor publishes each report on
//! `<prefix>.progress.<action id>`, and an api process running none subscribes and hands the
//! reports to its own hub.

use anyhow::Context;
use countersign_app::ProgressHub;
use countersign_domain::ActionId;
use futures::StreamExt;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tracing::{debug, warn};

/// The subject progress reports of `action` travel on.
fn subject(prefix: &str, action: &ActionId) -> String {
    format!("{prefix}.progress.{action}")
}

/// Publishes this process's progress reports until the stop.
pub(crate) async fn publish(
    client: async_nats::Client,
    hub: ProgressHub,
    prefix: String,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut reports = hub.subscribe();
    loop {
        let report = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return Ok(()),
            report = reports.recv() => report,
        };
        match report {
            Ok((action, progress)) => {
                let payload =
                    serde_json::to_vec(&progress).context("encoding a progress report")?;
                client
                    .publish(subject(&prefix, &action), payload.into())
                    .await
                    .context("publishing a progress report")?;
            }
            Err(RecvError::Lagged(missed)) => {
                warn!(
                    missed,
                    "progress reports dropped before they were published"
                );
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// Hands the progress reports other processes publish to this process's hub until the stop.
pub(crate) async fn receive(
    client: async_nats::Client,
    hub: ProgressHub,
    prefix: String,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut reports = client
        .subscribe(format!("{prefix}.progress.*"))
        .await
        .context("subscribing to progress reports")?;
    loop {
        let message = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return Ok(()),
            message = reports.next() => message,
        };
        let Some(message) = message else {
            anyhow::bail!("the progress subscription ended");
        };
        let action = message
            .subject
            .rsplit('.')
            .next()
            .and_then(|id| ActionId::parse(id).ok());
        match (action, serde_json::from_slice(&message.payload)) {
            (Some(action), Ok(progress)) => hub.report(action, progress),
            _ => debug!(subject = %message.subject, "a progress report that is not one; ignored"),
        }
    }
}
