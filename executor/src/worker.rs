//! Running one action: decide from its events whether it awaits execution, claim the attempt,
//! call the capability, record the outcome. Everything goes through the ledger, so concurrent
//! executors, redeliveries and replays can never run an action twice: the claim
//! (`ExecutionStarted`) is refused to a second claimant, and an executed action is never
//! claimed again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use countersign_domain::action::{
    Action, ActionCommand, ActionError, ActionEvent, ActionStatus, AttemptOutcome, BreakGlass,
    CommandContext, EscalateBreakGlassReview, ExpireAction, RecordExecutionFailure,
    RecordExecutionSuccess, StartExecution,
};
use countersign_domain::tenant::{Settings, TenantSettings};
use countersign_domain::{ActionId, Principal, UserId};
use countersign_ledger::{Committed, Ledger, LedgerError, Metadata};
use tracing::{Instrument, info, info_span, warn};

use crate::capability::{Completed, Failure, Invocation, Progress, ProgressHub, Registry};

/// What processing an action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// Nothing to do (not approved, already executed, someone else holds it, …).
    Nothing,
    /// The capability ran: attempt and whether it succeeded.
    Ran { attempt: u32, succeeded: bool },
    /// Approved in safe mode: a skip was recorded.
    Skipped,
    /// A retry is due later.
    RetryAt(chrono::DateTime<chrono::Utc>),
    /// The deadline passed: escalated, expired or rejected.
    Expired,
    /// A break-glass approval's review was not recorded in time: escalated (once).
    ReviewOverdue,
}

/// Tuning of the executor.
#[derive(Debug, Clone, Copy)]
pub struct ExecutorConfig {
    /// How long a claim lasts; another executor may take over an attempt whose lease ran out.
    pub lease: Duration,
    /// First retry delay; doubles per attempt.
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(60),
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
        }
    }
}

/// Runs approved actions through capabilities.
#[derive(Debug, Clone)]
pub struct Executor {
    ledger: Ledger,
    registry: Arc<Registry>,
    progress: ProgressHub,
    config: ExecutorConfig,
    identity: Principal,
}

impl Executor {
    pub fn new(
        ledger: Ledger,
        registry: Registry,
        progress: ProgressHub,
        config: ExecutorConfig,
    ) -> Self {
        let name = format!(
            "executor:{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        Self {
            ledger,
            registry: Arc::new(registry),
            progress,
            config,
            identity: Principal::new(
                UserId::parse(name).unwrap_or_else(|_| unreachable!("a valid user id")),
                [],
            ),
        }
    }

    pub fn identity(&self) -> &UserId {
        &self.identity.id
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The delay before retrying after `attempt` failed.
    fn backoff(&self, attempt: u32) -> chrono::Duration {
        let delay = self
            .config
            .retry_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.config.retry_max);
        chrono::Duration::from_std(delay).unwrap_or_default()
    }

    fn context(&self, state: &countersign_domain::action::ActionState) -> CommandContext {
        CommandContext {
            tenant: state.tenant.clone(),
            by: self.identity.clone(),
            at: chrono::Utc::now(),
            correlation_id: state.correlation_id.clone(),
        }
    }

    async fn command(
        &self,
        id: &ActionId,
        state: &countersign_domain::action::ActionState,
        command: ActionCommand,
    ) -> Result<Committed<Action>, LedgerError<ActionError>> {
        let metadata = Metadata {
            correlation_id: state.correlation_id.clone(),
            ..Metadata::new(state.tenant.clone(), self.identity.id.clone())
        };
        self.ledger.execute::<Action>(id, command, &metadata).await
    }

    /// Runs the action if it awaits execution now; fires its deadline if that has passed.
    pub async fn process(&self, id: &ActionId) -> anyhow::Result<Processed> {
        let (action, _) = self.ledger.load::<Action>(id).await?;
        let Some(state) = action.state() else {
            return Ok(Processed::Nothing);
        };
        let span = info_span!("execute", tenant = %state.tenant, action_id = %id, correlation_id = state.correlation_id.as_ref().map(|c| c.as_str()).unwrap_or(""));
        self.process_state(id, state).instrument(span).await
    }

    /// Escalates an overdue break-glass review first (the ledger refuses a second escalation,
    /// so concurrent sweeps and restarts record it once), then does whatever else is due.
    async fn process_state(
        &self,
        id: &ActionId,
        state: &countersign_domain::action::ActionState,
    ) -> anyhow::Result<Processed> {
        let overdue = state
            .break_glass
            .as_ref()
            .and_then(BreakGlass::escalation_due)
            .is_some_and(|due| due <= chrono::Utc::now());
        if !overdue {
            return self.process_work(id, state).await;
        }
        let escalate = ActionCommand::EscalateBreakGlassReview(EscalateBreakGlassReview {
            context: self.context(state),
        });
        let committed = match self.command(id, state, escalate).await {
            Ok(committed) if !committed.events.is_empty() => committed,
            Ok(_) | Err(LedgerError::Rejected(_)) => return self.process_work(id, state).await,
            Err(err) => return Err(err.into()),
        };
        info!("break-glass review overdue: escalated");
        let after = committed.aggregate.state().unwrap_or(state);
        Ok(match self.process_work(id, after).await? {
            Processed::Nothing => Processed::ReviewOverdue,
            outcome => outcome,
        })
    }

    async fn process_work(
        &self,
        id: &ActionId,
        state: &countersign_domain::action::ActionState,
    ) -> anyhow::Result<Processed> {
        let now = chrono::Utc::now();
        if state.status.is_open() {
            if now < state.expires_at {
                return Ok(Processed::Nothing);
            }
            return match self
                .command(
                    id,
                    state,
                    ActionCommand::ExpireAction(ExpireAction {
                        context: self.context(state),
                    }),
                )
                .await
            {
                Ok(committed) if !committed.events.is_empty() => Ok(Processed::Expired),
                Ok(_) | Err(LedgerError::Rejected(_)) => Ok(Processed::Nothing),
                Err(err) => Err(err.into()),
            };
        }
        let reclaimable = state.status == ActionStatus::Executing
            && state
                .execution
                .running
                .as_ref()
                .is_some_and(|running| running.lease_until <= now);
        if !state.awaits_execution() && !reclaimable {
            return Ok(Processed::Nothing);
        }
        // A retry waits its backoff after the failed attempt.
        if let Some(last) = state.execution.history.last()
            && matches!(last.outcome, AttemptOutcome::Failed { .. })
            && let Some(finished) = last.finished_at
        {
            let due = finished + self.backoff(last.attempt);
            if now < due {
                return Ok(Processed::RetryAt(due));
            }
        }
        // The tenant's settings now: their mode goes into the claim (safe mode always wins,
        // whatever the mode at submission), and the attempt runs with them.
        let settings = match self.ledger.load::<TenantSettings>(&state.tenant).await {
            Ok((settings, _)) => settings.settings,
            Err(err) => {
                let err = anyhow::Error::from(err);
                warn!(
                    error = format!("{err:#}"),
                    "could not load the tenant's settings; the attempt will be retried"
                );
                return Ok(Processed::Nothing);
            }
        };
        let lease_seconds = u32::try_from(self.config.lease.as_secs())
            .unwrap_or(u32::MAX)
            .max(1);
        let claim = ActionCommand::StartExecution(StartExecution {
            context: self.context(state),
            lease_seconds,
            mode: settings.mode,
        });
        let claimed = match self.command(id, state, claim).await {
            Ok(committed) => committed,
            // Another executor holds it, finished it, or it was never requested: not ours.
            Err(LedgerError::Rejected(_)) => return Ok(Processed::Nothing),
            Err(err) => return Err(err.into()),
        };
        let Some(attempt) = claimed.events.iter().find_map(|event| match &event.event {
            ActionEvent::ExecutionStarted(started) => Some(started.attempt),
            _ => None,
        }) else {
            return Ok(
                if claimed
                    .events
                    .iter()
                    .any(|event| matches!(event.event, ActionEvent::ExecutionSkipped(_)))
                {
                    info!("safe mode: execution skipped");
                    Processed::Skipped
                } else {
                    Processed::Nothing
                },
            );
        };
        // The action as the claim left it (the ledger returns the aggregate after the command).
        let Some(claimed) = claimed.aggregate.state() else {
            return Ok(Processed::Nothing);
        };
        Ok(self.run(id, claimed, attempt, settings).await)
    }

    async fn run(
        &self,
        id: &ActionId,
        state: &countersign_domain::action::ActionState,
        attempt: u32,
        settings: Settings,
    ) -> Processed {
        let started = Instant::now();
        let settings = match self
            .with_stored_credentials(state.tenant.as_str(), settings)
            .await
        {
            Ok(settings) => settings,
            Err(err) => {
                warn!(
                    error = format!("{err:#}"),
                    "could not read the tenant's secrets; the attempt will be retried"
                );
                return Processed::Nothing;
            }
        };
        let invocation = invocation(state, attempt, settings);
        let outcome = match self.registry.resolve(&state.action_type) {
            None => Err(Failure::permanent(format!(
                "unknown capability {}: no built-in and no external provider",
                state.action_type
            ))),
            Some(capability) => {
                let progress = Progress::new(self.progress.clone(), state.id);
                let budget = self
                    .config
                    .lease
                    .saturating_sub(Duration::from_secs(1))
                    .max(Duration::from_millis(100));
                match tokio::time::timeout(budget, capability.execute(&invocation, &progress)).await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Err(Failure::retryable(format!(
                        "{} did not finish within the lease ({budget:?})",
                        state.action_type
                    ))),
                }
            }
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let outcome = outcome.and_then(Completed::storable);
        let succeeded = outcome.is_ok();
        metrics::counter!("countersign_executions_total", "capability" => state.action_type.to_string(), "outcome" => if succeeded { "succeeded" } else { "failed" }).increment(1);
        let command = match outcome {
            Ok(completed) => ActionCommand::RecordExecutionSuccess(RecordExecutionSuccess {
                context: self.context(state),
                attempt,
                result: completed.result,
                undo_payload: completed.undo_payload,
                duration_ms,
            }),
            Err(failure) => {
                warn!(attempt, error = %failure.message, retryable = failure.retryable, "execution failed");
                ActionCommand::RecordExecutionFailure(RecordExecutionFailure {
                    context: self.context(state),
                    attempt,
                    error: failure.recorded_message(),
                    retryable: failure.retryable,
                })
            }
        };
        match self.command(id, state, command).await {
            Ok(_) => info!(attempt, succeeded, duration_ms, "execution recorded"),
            // Our lease was reclaimed meanwhile: that attempt's outcome is not ours to record.
            Err(err) => warn!(
                error = format!("{:#}", anyhow::Error::from(err)),
                attempt, "the outcome could not be recorded"
            ),
        }
        Processed::Ran { attempt, succeeded }
    }

    /// The settings as a capability needs them: a webhook URL whose credentials were stored
    /// apart from the log (`https://***@host/…`) gets them back. Missing credentials leave the
    /// marker, and the receiver refuses the request as it would a wrong password.
    async fn with_stored_credentials(
        &self,
        tenant: &str,
        mut settings: Settings,
    ) -> anyhow::Result<Settings> {
        if let Some(url) = settings
            .webhook_url
            .as_ref()
            .filter(|url| url.has_stored_credentials())
        {
            match self.ledger.secret(tenant, &url.secret_name()).await? {
                Some(credentials) => {
                    settings.webhook_url = Some(url.with_credentials(&credentials));
                }
                None => warn!("the webhook URL's credentials are missing; set webhook_url again"),
            }
        }
        Ok(settings)
    }

    /// Previews what running the action would do (dry run): changes nothing.
    pub async fn preview(
        &self,
        id: &ActionId,
    ) -> anyhow::Result<Result<serde_json::Value, Failure>> {
        let (action, _) = self.ledger.load::<Action>(id).await?;
        let Some(state) = action.state() else {
            anyhow::bail!("no such action")
        };
        let (settings, _) = self.ledger.load::<TenantSettings>(&state.tenant).await?;
        let invocation = invocation(state, state.execution.attempts + 1, settings.settings);
        Ok(match self.registry.resolve(&state.action_type) {
            None => Err(Failure::permanent(format!(
                "unknown capability {}",
                state.action_type
            ))),
            Some(capability) => capability.preview(&invocation).await,
        })
    }
}

/// What a capability is asked to do for attempt `attempt` of the action.
fn invocation(
    state: &countersign_domain::action::ActionState,
    attempt: u32,
    settings: Settings,
) -> Invocation {
    Invocation {
        tenant: state.tenant.clone(),
        action_id: state.id,
        action_type: state.action_type.clone(),
        payload: state.submission.payload.clone(),
        execution_key: state.execution_key.clone(),
        attempt,
        settings,
    }
}

/// Dry runs of the API reach capabilities through the application's port.
#[async_trait::async_trait]
impl countersign_app::CapabilityPreview for Executor {
    async fn preview(&self, id: &ActionId) -> anyhow::Result<Result<serde_json::Value, String>> {
        Ok(Executor::preview(self, id)
            .await?
            .map_err(|failure| failure.message))
    }
}
