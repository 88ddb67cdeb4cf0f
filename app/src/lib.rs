//! The application layer: one function per use case — submit, vote, cancel, request execution,
//! preview, roll back, policies, settings, API keys, and the views of one action — each taking a
//! typed [`Actor`] (who, which tenant, which roles, through which front door) and returning a
//! typed outcome or an [`AppError`].
//!
//! Every front door (the HTTP API, the CLI, and the console, Slack and email approvals and
//! workflows to come) parses its own input and calls these functions; none of them checks a role
//! or a state itself. Role rules ("managing API keys requires owner or admin") live here, in
//! [`Actor::require`]; state and permission rules the history must witness ("the requester or an
//! admin may execute", "only an owner grants owner") live in the domain and arrive as its errors.
//!
//! Reads of one resource (an action's detail, its audit trail) are built from the ledger, so they
//! answer at least as new as the latest write to that resource, whichever process wrote it and
//! however far the read models lag. Lists read the projections; `consistent_with` makes them wait
//! for a write ([`App::wait_for`]).

pub mod actions;
mod actor;
pub mod backtest;
pub mod batch;
pub mod delegations;
mod error;
pub mod evidence;
pub mod keys;
pub mod members;
pub mod notify;
pub mod policies;
mod ports;
pub mod reads;
pub mod settings;
pub mod signed_votes;
mod tenant;
pub mod workflows;

use std::sync::Arc;

use countersign_ledger::{Ledger, LogCursor};
use countersign_projections::{Projection, ProjectionStore};
use countersign_verification::SealStore;

pub use actor::{Actor, Channel, roles};
pub use error::AppError;
pub use ports::{CapabilityPreview, ProgressHub};

/// What every use case reaches: the ledger, the read models, the seals, and the ports the
/// executor fills (capability previews, progress of running actions).
#[derive(Clone)]
pub struct App {
    ledger: Ledger,
    projections: ProjectionStore,
    seals: SealStore,
    progress: ProgressHub,
    previewer: Option<Arc<dyn CapabilityPreview>>,
    api_key_secret: Option<[u8; 32]>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("store", &self.ledger.kind())
            .field("previews", &self.previewer.is_some())
            .field("api_keys", &self.api_key_secret.is_some())
            .finish_non_exhaustive()
    }
}

impl App {
    pub fn new(ledger: Ledger, projections: ProjectionStore, seals: SealStore) -> Self {
        Self {
            ledger,
            projections,
            seals,
            progress: ProgressHub::default(),
            previewer: None,
            api_key_secret: None,
        }
    }

    /// Dry runs ask `previewer` what a capability would do (the executor implements it).
    #[must_use]
    pub fn with_previewer(mut self, previewer: Arc<dyn CapabilityPreview>) -> Self {
        self.previewer = Some(previewer);
        self
    }

    /// Progress reports of running actions, shared with the executor of this process.
    #[must_use]
    pub fn with_progress(mut self, progress: ProgressHub) -> Self {
        self.progress = progress;
        self
    }

    /// The key API key secrets are digested under; without it, creating keys is refused.
    #[must_use]
    pub fn with_api_key_secret(mut self, secret: Option<[u8; 32]>) -> Self {
        self.api_key_secret = secret;
        self
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn projections(&self) -> &ProjectionStore {
        &self.projections
    }

    pub fn seals(&self) -> &SealStore {
        &self.seals
    }

    pub fn progress(&self) -> &ProgressHub {
        &self.progress
    }

    /// Closes the stores' connections.
    pub async fn close(&self) {
        self.seals.close().await;
        self.projections.close().await;
        self.ledger.close().await;
    }

    /// Waits (up to 5 s) until `projection`'s live generation reflects the write at `wanted`; a
    /// cursor for a write the log does not hold is refused at once.
    pub async fn wait_for(
        &self,
        projection: Projection,
        wanted: Option<LogCursor>,
    ) -> Result<(), AppError> {
        let Some(wanted) = wanted else { return Ok(()) };
        self.require_written(Some(wanted)).await?;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let reached = self
                .projections
                .live_checkpoint(projection)
                .await?
                .is_some_and(|checkpoint| checkpoint >= wanted);
            if reached {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AppError::NotCaughtUp);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Refuses a cursor for a write the log does not hold: one above the readable head that is
    /// not the place of a stored event (on PostgreSQL a committed write can be briefly above the
    /// readable head while an older transaction is still open). Waiting for it could only end in
    /// `not_caught_up`, so it is refused at once.
    pub async fn require_written(&self, wanted: Option<LogCursor>) -> Result<(), AppError> {
        let Some(wanted) = wanted else { return Ok(()) };
        if wanted <= self.ledger.log_head().await? {
            return Ok(());
        }
        let stored = self.ledger.read_positions(&[wanted.position]).await?;
        if stored.iter().any(|event| event.cursor >= wanted) {
            return Ok(());
        }
        Err(AppError::CursorAhead)
    }
}

/// The keyed blake3 digest under which an API key secret is stored.
pub fn digest(key: &[u8; 32], secret: &str) -> blake3::Hash {
    blake3::keyed_hash(key, secret.as_bytes())
}

/// Whether this process can take traffic.
#[derive(Debug)]
pub enum Readiness {
    Ready,
    /// Not now, and why (`database unreachable`, `N migrations not applied`, `stalled: …`).
    Unavailable {
        reason: String,
        stalled: Vec<countersign_ledger::health::Stall>,
    },
}

impl App {
    /// Ready when the database answers and is migrated, and none of this process's tailers is
    /// stalled (see `countersign_ledger::health`).
    pub async fn readiness(&self) -> Readiness {
        let unavailable = |reason: String| Readiness::Unavailable {
            reason,
            stalled: Vec::new(),
        };
        if let Err(err) = self.ledger.ping().await {
            tracing::warn!(
                error = format!("{err:#}"),
                "readiness: database unreachable"
            );
            return unavailable("database unreachable".into());
        }
        match self.ledger.pending_migrations().await {
            Ok(0) => {}
            Ok(pending) => return unavailable(format!("{pending} migrations not applied")),
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "readiness: cannot read migrations"
                );
                return unavailable("migrations unreadable".into());
            }
        }
        let stalled = self.ledger.health().stalled();
        if stalled.is_empty() {
            return Readiness::Ready;
        }
        let names: Vec<&str> = stalled.iter().map(|stall| stall.tailer.as_str()).collect();
        Readiness::Unavailable {
            reason: format!("stalled: {}", names.join(", ")),
            stalled,
        }
    }
}
