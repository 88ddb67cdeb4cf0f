//! A world to drive: a fresh store, its projections, and builders for action commands.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use countersign_domain::action::{
    Action, ActionCommand, CommandContext, ExpireAction, RecordExecutionFailure,
    RecordExecutionSuccess,
};
use countersign_domain::quorum::Vote;
use countersign_domain::submission::Submission;
use countersign_domain::{ActionId, Principal, TenantId, TenantMode};
use countersign_ledger::Committed;
use countersign_ledger::testing::TestStore;
use countersign_ledger::testing::actions;
pub use countersign_ledger::testing::actions::{any_of, principal, submission, tenant};
use countersign_projections::{
    Generation, GenerationState, Outcome, Projection, ProjectionStore, Runner,
};
use serde_json::{Value, json};

pub fn at(minutes: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000, 0).single().expect("time") + chrono::Duration::minutes(minutes)
}

pub struct World {
    pub store: TestStore,
    pub projections: ProjectionStore,
    pub written: i64,
}

impl World {
    pub async fn new(kind: &str) -> Self {
        let store = TestStore::of_kind(kind).await.expect("store");
        let projections = ProjectionStore::open(&store.config)
            .await
            .expect("projection store");
        Self {
            store,
            projections,
            written: 0,
        }
    }

    fn context(tenant: &TenantId, by: &Principal, minutes: i64) -> CommandContext {
        actions::context(tenant, by, at(minutes))
    }

    pub async fn run(&mut self, id: ActionId, command: ActionCommand) -> Committed<Action> {
        let committed = actions::execute(&self.store.ledger, id, command)
            .await
            .unwrap_or_else(|err| panic!("command refused: {err}"));
        self.written += committed.events.len() as i64;
        committed
    }

    pub async fn try_run(&mut self, id: ActionId, command: ActionCommand) -> bool {
        match actions::execute(&self.store.ledger, id, command).await {
            Ok(committed) => {
                self.written += committed.events.len() as i64;
                true
            }
            Err(_) => false,
        }
    }

    pub async fn submit(
        &mut self,
        tenant: &TenantId,
        requester: &Principal,
        minutes: i64,
        submission: Submission,
        requirements: Value,
    ) -> ActionId {
        let id = actions::new_id();
        self.submit_as(
            id,
            tenant,
            requester,
            minutes,
            submission,
            requirements,
            TenantMode::RequireApproval,
        )
        .await;
        id
    }

    #[expect(clippy::too_many_arguments, reason = "a test builder")]
    pub async fn submit_as(
        &mut self,
        id: ActionId,
        tenant: &TenantId,
        requester: &Principal,
        minutes: i64,
        submission: Submission,
        requirements: Value,
        mode: TenantMode,
    ) -> Committed<Action> {
        let context = Self::context(tenant, requester, minutes);
        let command = actions::submit(context, id, submission, &requirements, mode);
        self.run(id, command).await
    }

    pub fn vote_command(
        tenant: &TenantId,
        id_voter: &Principal,
        vote: Vote,
        minutes: i64,
        comment: Option<&str>,
    ) -> ActionCommand {
        actions::vote(Self::context(tenant, id_voter, minutes), vote, comment)
    }

    pub async fn vote(
        &mut self,
        tenant: &TenantId,
        id: ActionId,
        voter: &Principal,
        vote: Vote,
        minutes: i64,
        comment: Option<&str>,
    ) {
        self.run(
            id,
            Self::vote_command(tenant, voter, vote, minutes, comment),
        )
        .await;
    }

    pub fn cancel_command(tenant: &TenantId, by: &Principal, minutes: i64) -> ActionCommand {
        actions::cancel(Self::context(tenant, by, minutes))
    }

    pub fn expire_command(tenant: &TenantId, minutes: i64) -> ActionCommand {
        ActionCommand::ExpireAction(ExpireAction {
            context: Self::context(tenant, &principal("system:deadlines", &[]), minutes),
        })
    }

    pub fn request_command(tenant: &TenantId, by: &Principal, minutes: i64) -> ActionCommand {
        actions::request_execution(Self::context(tenant, by, minutes))
    }

    pub fn start_command(tenant: &TenantId, minutes: i64) -> ActionCommand {
        let executor = principal("executor:test", &[]);
        actions::start_execution(Self::context(tenant, &executor, minutes), 60)
    }

    pub fn success_command(tenant: &TenantId, attempt: u32, minutes: i64) -> ActionCommand {
        ActionCommand::RecordExecutionSuccess(RecordExecutionSuccess {
            context: Self::context(tenant, &principal("executor:test", &[]), minutes),
            attempt,
            result: json!({ "done": true }),
            undo_payload: None,
            duration_ms: 250,
        })
    }

    pub fn failure_command(
        tenant: &TenantId,
        attempt: u32,
        retryable: bool,
        minutes: i64,
    ) -> ActionCommand {
        ActionCommand::RecordExecutionFailure(RecordExecutionFailure {
            context: Self::context(tenant, &principal("executor:test", &[]), minutes),
            attempt,
            error: "upstream timeout".into(),
            retryable,
        })
    }

    /// A live generation of `projection`, created if needed.
    pub async fn live(&self, projection: Projection) -> Generation {
        match self.projections.live(projection).await.expect("registry") {
            Some(live) => live,
            None => self
                .projections
                .create_generation(projection, GenerationState::Live)
                .await
                .expect("generation"),
        }
    }

    /// Applies the log to a generation until it holds every event written so far.
    pub async fn catch_up(&self, projection: Projection, generation: i64, batch: u32) {
        let mut runner = Runner::new(
            self.store.ledger.clone(),
            self.projections.clone(),
            projection,
            generation,
        )
        .with_batch(batch);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let applied = self
                .projections
                .generation(projection, generation)
                .await
                .expect("registry")
                .map_or(0, |g| g.events);
            if applied >= self.written {
                assert_eq!(applied, self.written, "no event applied twice");
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{projection} never caught up ({applied} of {})",
                self.written
            );
            match runner.process_next().await.expect("batch applies") {
                Outcome::Applied { .. } => {}
                Outcome::Idle => tokio::time::sleep(Duration::from_millis(20)).await,
                Outcome::Retired => panic!("generation retired"),
            }
        }
    }

    /// Both projections live and caught up.
    pub async fn project(&self) {
        for projection in Projection::ALL {
            let live = self.live(projection).await;
            self.catch_up(projection, live.generation, 1000).await;
        }
    }
}
