//! Fans the log out to server-sent-event subscribers: one tailer per process, from the head of
//! the log at start-up, broadcasting every event.

use std::sync::Arc;
use std::time::Duration;

use countersign_ledger::{Ledger, LoggedEvent};
use tokio::sync::{broadcast, watch};

#[derive(Debug, Clone)]
pub struct EventHub {
    sender: broadcast::Sender<Arc<LoggedEvent>>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

/// The hub's name among the process's tailers (see `countersign_ledger::health`).
const TAILER: &str = "live-hub";

impl EventHub {
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(4096).0,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LoggedEvent>> {
        self.sender.subscribe()
    }

    /// Tails the log until `shutdown` turns true, broadcasting each event.
    pub async fn run(
        self,
        ledger: Ledger,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut cursor = ledger.log_head().await?;
        let mut waker = ledger.log_waker().await?;
        while !*shutdown.borrow() {
            let batch = match ledger.read_log(cursor, 500).await {
                Ok(batch) => {
                    ledger.health().progressed(TAILER);
                    batch
                }
                Err(err) => {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "event hub: reading the log failed"
                    );
                    let pause = ledger.health().failed(TAILER, Some(cursor), &err);
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        () = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            };
            if let Some(last) = batch.last() {
                cursor = last.cursor;
                for event in batch {
                    // No subscribers is fine.
                    let _ = self.sender.send(Arc::new(event));
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                () = waker.wait(Duration::from_millis(500)) => {}
            }
        }
        Ok(())
    }
}
