//! Capabilities: what an approved action runs, addressed by `module.capability`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use countersign_domain::action::MAX_ERROR_CHARS;
use countersign_domain::canonical::ExecutionKey;
use countersign_domain::document;
use countersign_domain::tenant::Settings;
use countersign_domain::{ActionId, ActionType, TenantId};
use serde_json::Value;

/// What a capability is asked to do.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub tenant: TenantId,
    pub action_id: ActionId,
    pub action_type: ActionType,
    pub payload: Value,
    /// Unique per capability and payload: send it as the idempotency key downstream.
    pub execution_key: ExecutionKey,
    pub attempt: u32,
    /// The tenant's settings (where its webhooks go).
    pub settings: Settings,
}

/// A finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    pub result: Value,
    /// What would reverse the run, when the capability knows better than the submitter.
    pub undo_payload: Option<Value>,
}

impl Completed {
    /// The run as the ledger can record it: a result or undo payload beyond what every reader of
    /// the log accepts (too deep, too large, `\u0000`) turns the run into a permanent failure
    /// instead of an outcome that could never be recorded. Not retried: the capability may
    /// already have acted, and it would answer the same again.
    pub fn storable(self) -> Result<Self, Failure> {
        document::check(&self.result, "result")
            .and_then(|()| {
                self.undo_payload
                    .as_ref()
                    .map_or(Ok(()), |undo| document::check(undo, "undo_payload"))
            })
            .map_err(|error| {
                Failure::permanent(format!(
                    "the capability's answer cannot be recorded: {error}"
                ))
            })?;
        Ok(self)
    }
}

/// A failed run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub message: String,
    /// Whether trying again could succeed.
    pub retryable: bool,
}

impl Failure {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    /// The message as the ledger records it: `\u0000` replaced, at most
    /// [`MAX_ERROR_CHARS`] characters (a provider's error text is not trusted to fit).
    pub fn recorded_message(&self) -> String {
        let mut message: String = self
            .message
            .chars()
            .map(|c| {
                if c == '\0' {
                    char::REPLACEMENT_CHARACTER
                } else {
                    c
                }
            })
            .take(MAX_ERROR_CHARS)
            .collect();
        if self.message.chars().count() > MAX_ERROR_CHARS {
            message.pop();
            message.push('…');
        }
        message
    }
}

pub use countersign_app::ProgressHub;

/// A capability's view of progress reporting for one run.
#[derive(Debug, Clone)]
pub struct Progress {
    hub: ProgressHub,
    action_id: ActionId,
}

impl Progress {
    pub fn new(hub: ProgressHub, action_id: ActionId) -> Self {
        Self { hub, action_id }
    }

    pub fn report(&self, progress: Value) {
        self.hub.report(self.action_id, progress);
    }
}

#[async_trait]
pub trait Capability: Send + Sync + std::fmt::Debug {
    /// Runs the action. Must be safe to call again with the same execution key.
    async fn execute(
        &self,
        invocation: &Invocation,
        progress: &Progress,
    ) -> Result<Completed, Failure>;

    /// Describes what `execute` would do, changing nothing.
    async fn preview(&self, invocation: &Invocation) -> Result<Value, Failure>;
}

/// Finds the capability of an action type: built-ins by name, then the external providers.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    builtin: HashMap<String, Arc<dyn Capability>>,
    external: Option<Arc<dyn Capability>>,
}

impl Registry {
    #[must_use]
    pub fn with(mut self, action_type: &str, capability: impl Capability + 'static) -> Self {
        self.builtin
            .insert(action_type.to_owned(), Arc::new(capability));
        self
    }

    /// Every action type without a built-in goes to this (the NATS request/reply providers).
    #[must_use]
    pub fn with_external(mut self, capability: impl Capability + 'static) -> Self {
        self.external = Some(Arc::new(capability));
        self
    }

    /// The capability for an action type; `None` means the action fails, never guessed.
    pub fn resolve(&self, action_type: &ActionType) -> Option<Arc<dyn Capability>> {
        self.builtin
            .get(action_type.as_str())
            .cloned()
            .or_else(|| self.external.clone())
    }
}
