//! What the application needs from the executor, as traits and channels it owns: previews of a
//! capability for dry runs, and progress reports of running actions for their streams.

use countersign_domain::ActionId;
use serde_json::Value;
use tokio::sync::broadcast;

/// Asks the capability of an action what it would do, changing nothing. The executor
/// implements it; a process without an executor previews nothing.
#[async_trait::async_trait]
pub trait CapabilityPreview: Send + Sync {
    /// `Ok(Ok(preview))` what would run, `Ok(Err(reason))` why the capability would not run it,
    /// `Err` when the preview itself failed.
    async fn preview(&self, id: &ActionId) -> anyhow::Result<Result<Value, String>>;
}

/// Progress messages of running actions, fanned out to whoever streams them.
#[derive(Debug, Clone)]
pub struct ProgressHub {
    sender: broadcast::Sender<(ActionId, Value)>,
}

impl Default for ProgressHub {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(1024).0,
        }
    }
}

impl ProgressHub {
    pub fn subscribe(&self) -> broadcast::Receiver<(ActionId, Value)> {
        self.sender.subscribe()
    }

    pub fn report(&self, action_id: ActionId, progress: Value) {
        // Nobody listening is fine.
        let _ = self.sender.send((action_id, progress));
    }
}
