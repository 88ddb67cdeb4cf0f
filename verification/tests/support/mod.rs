//! A small workload, the sealer driven to the end of the log, and raw SQL to tamper with a store
//! the way a superuser could.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::time::Duration;

use chrono::Utc;
use countersign_domain::TenantMode;
use countersign_domain::quorum::Vote;
use countersign_ledger::testing::actions::{self, principal};
use countersign_ledger::testing::{TestStore, eventually, readable_log, within};
use countersign_ledger::{Ledger, StoreConfig};
use countersign_verification::{HeadSigner, SealStore, Sealer, SealerConfig};
use serde_json::json;
use sqlx::{Connection, Executor};

pub const TENANTS: [&str; 2] = ["acme", "globex"];

/// One action submitted and approved by one vote: four events
/// (ActionSubmitted; VoteCast, StageApproved, ActionApproved). Returns its id.
pub async fn approved_action(ledger: &Ledger, tenant: &str, n: usize) -> String {
    let tenant = actions::tenant(tenant);
    let id = actions::new_id();
    let submission = actions::submission(
        "billing",
        "refund",
        &format!("Refund order {}", 1000 + n),
        json!({ "payload": { "order": 1000 + n, "amount": 12.5 } }),
    );
    let submit = actions::submit(
        actions::context(&tenant, &principal("rita", &["requester"]), Utc::now()),
        id,
        submission,
        &actions::any_of(1),
        TenantMode::RequireApproval,
    );
    let vote = actions::vote(
        actions::context(&tenant, &principal("ana", &["approver"]), Utc::now()),
        Vote::Approve,
        None,
    );
    for command in [submit, vote] {
        actions::execute(ledger, id, command)
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
    eventually(within(Duration::from_secs(60)), async || {
        sealer.run_until_idle().await.expect("seals");
        let sealed = sealer
            .store()
            .checkpoint()
            .await
            .expect("checkpoint")
            .events;
        if sealed >= events {
            assert_eq!(sealed, events, "sealed more events than were written");
            return Ok(());
        }
        Err(format!("only {sealed} of {events} events became readable"))
    })
    .await;
}

/// Waits until the log reader sees `events` events (see `seal_through`).
pub async fn readable(ledger: &Ledger, events: usize) {
    eventually(within(Duration::from_secs(60)), async || {
        let seen = readable_log(ledger).await.len();
        if seen >= events {
            return Ok(());
        }
        Err(format!("only {seen} of {events} events became readable"))
    })
    .await;
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
