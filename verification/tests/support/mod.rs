//! A small workload, the sealer driven to the end of the log, and raw SQL to tamper with a store
//! the way a superuser could.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::time::Duration;

use chrono::Utc;
use countersign_domain::action::{Action, ActionCommand, CastVote, CommandContext, SubmitAction};
use countersign_domain::policy::{PolicySnapshot, Requirements};
use countersign_domain::quorum::Vote;
use countersign_domain::submission::Submission;
use countersign_domain::{ActionId, Principal, Role, TenantId, TenantMode, UserId};
use countersign_ledger::testing::TestStore;
use countersign_ledger::{Ledger, Metadata, StoreConfig};
use countersign_verification::{HeadSigner, SealStore, Sealer, SealerConfig};
use serde_json::json;
use sqlx::{Connection, Executor};

pub const TENANTS: [&str; 2] = ["acme", "globex"];

fn principal(id: &str, role: &str) -> Principal {
    Principal::new(
        UserId::parse(id).expect("user"),
        [Role::parse(role).expect("role")],
    )
}

fn context(tenant: &TenantId, by: Principal) -> CommandContext {
    CommandContext {
        tenant: tenant.clone(),
        by,
        at: Utc::now(),
        correlation_id: None,
    }
}

/// One action submitted and approved by one vote: four events
/// (ActionSubmitted; VoteCast, StageApproved, ActionApproved). Returns its id.
pub async fn approved_action(ledger: &Ledger, tenant: &str, n: usize) -> String {
    let tenant = TenantId::parse(tenant).expect("tenant");
    let id = ActionId::from_uuid(uuid::Uuid::now_v7());
    let submission: Submission = serde_json::from_value(json!({
        "module": "billing", "capability": "refund",
        "payload": { "order": 1000 + n, "amount": 12.5 }, "summary": format!("Refund order {}", 1000 + n),
    }))
    .expect("submission");
    let requirements = Requirements::parse(&json!({
        "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }]
    }))
    .expect("requirements");
    let submit = ActionCommand::SubmitAction(Box::new(SubmitAction {
        context: context(&tenant, principal("rita", "requester")),
        action_id: id,
        submission,
        mode: TenantMode::RequireApproval,
        policy: PolicySnapshot::tenant_default(requirements),
        idempotency_key: None,
        rollback_of: None,
    }));
    let vote = ActionCommand::CastVote(CastVote {
        context: context(&tenant, principal("ana", "approver")),
        vote: Vote::Approve,
        comment: None,
    });
    for command in [submit, vote] {
        let metadata = Metadata::new(tenant.clone(), command.context().by.id.clone());
        ledger
            .execute::<Action>(&id, command, &metadata)
            .await
            .expect("command commits");
    }
    id.to_string()
}

/// `per_tenant` approved actions in each tenant, tenants interleaved, one after the other.
/// Returns the ids by tenant.
pub async fn workload(ledger: &Ledger, per_tenant: usize) -> Vec<(String, Vec<String>)> {
    let mut ids: Vec<(String, Vec<String>)> = TENANTS
        .iter()
        .map(|t| ((*t).to_owned(), Vec::new()))
        .collect();
    for n in 0..per_tenant {
        for (tenant, list) in &mut ids {
            list.push(approved_action(ledger, tenant, n).await);
        }
    }
    ids
}

pub fn config(signer: &HeadSigner, every_events: u64) -> SealerConfig {
    SealerConfig {
        batch: 7,
        every_events,
        every_seconds: Duration::from_secs(3600),
        signer: Some(signer.clone()),
        publishers: Vec::new(),
    }
}

/// Runs the sealer until it has sealed `events` in all (on PostgreSQL another test's open
/// transaction can hold the log's horizon back for a while).
pub async fn seal_through(sealer: &mut Sealer, events: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        sealer.run_until_idle().await.expect("seals");
        let sealed = sealer
            .store()
            .checkpoint()
            .await
            .expect("checkpoint")
            .events;
        if sealed >= events {
            assert_eq!(sealed, events, "sealed more events than were written");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {sealed} of {events} events became readable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the log reader sees `events` events (see `seal_through`).
pub async fn readable(ledger: &Ledger, events: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut cursor = countersign_ledger::LogCursor::START;
        let mut seen = 0;
        loop {
            let batch = ledger.read_log(cursor, 1000).await.expect("read");
            let Some(last) = batch.last() else { break };
            cursor = last.cursor;
            seen += batch.len();
        }
        if seen >= events {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {seen} of {events} events became readable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn seal_store(store: &TestStore) -> SealStore {
    SealStore::open(&store.config).await.expect("seal store")
}

/// Runs statements as the database's superuser with the append-only triggers out of the way:
/// `ALTER TABLE … DISABLE TRIGGER USER` on PostgreSQL, dropped triggers on SQLite.
pub async fn tamper(store: &TestStore, postgres: &[&str], sqlite: &[&str]) {
    match &store.config {
        StoreConfig::Postgres { url } => {
            let mut connection = sqlx::PgConnection::connect(url).await.expect("connect");
            connection
                .execute("ALTER TABLE events DISABLE TRIGGER USER")
                .await
                .expect("disable triggers");
            for statement in postgres {
                connection.execute(*statement).await.expect(statement);
            }
            connection
                .execute("ALTER TABLE events ENABLE TRIGGER USER")
                .await
                .expect("enable triggers");
            let _ = connection.close().await;
        }
        StoreConfig::Sqlite { path } => {
            let mut connection =
                sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .expect("connect");
            for trigger in [
                "events_refuse_update",
                "events_refuse_delete",
                "events_assign_position",
            ] {
                connection
                    .execute(format!("DROP TRIGGER IF EXISTS {trigger}").as_str())
                    .await
                    .expect("drop trigger");
            }
            for statement in sqlite {
                connection.execute(*statement).await.expect(statement);
            }
            let _ = connection.close().await;
        }
    }
}

/// Runs `check` on a fresh PostgreSQL database and on a fresh SQLite file.
#[macro_export]
macro_rules! on_both_stores {
    ($name:ident, $check:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let store = countersign_ledger::testing::TestStore::postgres()
                    .await
                    .expect("test database");
                super::$check(&store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let store = countersign_ledger::testing::TestStore::sqlite()
                    .await
                    .expect("test file");
                super::$check(&store).await;
            }
        }
    };
}
