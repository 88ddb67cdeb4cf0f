//! `countersign actions execute` on a store the demo loaded: a dry run previews every approved
//! action and records nothing; the run asks each to execute once (an `ExecutionRequested` event
//! per action, nothing else); asked again by id, each is `already_requested`; a filter over a
//! read model behind the log is refused (`not_caught_up`); bad selections fail naming the flag.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use countersign_ledger::testing::{TestStore, settled_log};
use countersign_ledger::{Ledger, StoreConfig};
use serde_json::{Value, json};
use support::{countersign, failed, succeeded};

fn ids_with(answer: &Value, result: &str) -> Vec<String> {
    let mut ids: Vec<String> = answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|item| item["result"] == result)
        .map(|item| item["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

async fn check_batch(store: &[&str], envs: &[(&str, &str)], config: StoreConfig) {
    let run = |args: &[&str]| {
        let args: Vec<&str> = args.iter().chain(store).copied().collect();
        countersign(&args, envs)
    };
    let execute = |extra: &[&str]| {
        let mut args = vec!["actions", "execute", "--tenant", "demo", "--json"];
        args.extend(extra);
        run(&args)
    };
    succeeded(&run(&["demo"]));
    succeeded(&run(&["projections", "rebuild", "actions"]));
    let ledger = Ledger::open(&config).await.expect("store");
    let before = settled_log(&ledger).await;

    // The dry run: every approved action would be asked to run; nothing is recorded.
    let preview: Value =
        serde_json::from_str(&succeeded(&execute(&["--dry-run"]))).expect("a JSON answer");
    assert_eq!(preview["dry_run"], true, "{preview}");
    let would = ids_with(&preview, "would_request");
    assert!(
        !would.is_empty(),
        "the demo has an approved action: {preview}"
    );
    assert_eq!(preview["requested"], json!(would.len()), "{preview}");
    for item in preview["results"].as_array().expect("results") {
        assert_eq!(item["status"], "approved", "{preview}");
    }
    assert_eq!(
        settled_log(&ledger).await.len(),
        before.len(),
        "a dry run records nothing"
    );
    // A filter that matches nothing reaches nothing.
    let none: Value =
        serde_json::from_str(&succeeded(&execute(&["--module", "nosuch"]))).expect("a JSON answer");
    assert_eq!(none["matched"], 0, "{none}");

    // The run: each asked to execute once, and nothing else recorded.
    let done: Value = serde_json::from_str(&succeeded(&execute(&[]))).expect("a JSON answer");
    assert_eq!(done["dry_run"], false, "{done}");
    assert_eq!(ids_with(&done, "requested"), would, "{done}");
    let after = settled_log(&ledger).await;
    let added = &after[before.len()..];
    let mut requested: Vec<String> = added
        .iter()
        .map(|event| {
            assert_eq!(event.event_type, "ExecutionRequested", "{added:?}");
            event.aggregate_id.clone()
        })
        .collect();
    requested.sort();
    assert_eq!(requested, would);

    // The read model has not seen those requests (no `serve` here): a filter is refused rather
    // than answered from it; by id, each is already requested. Nothing more is recorded.
    let behind = failed(&execute(&[]));
    assert!(behind.contains("not_caught_up"), "{behind}");
    let mut by_id = Vec::new();
    for id in &would {
        by_id.extend(["--id", id.as_str()]);
    }
    let again: Value = serde_json::from_str(&succeeded(&execute(&by_id))).expect("a JSON answer");
    assert_eq!(ids_with(&again, "already_requested"), would, "{again}");
    assert_eq!(settled_log(&ledger).await.len(), after.len());

    // Bad selections fail naming the flag.
    let both = failed(&execute(&["--id", &would[0], "--module", "email"]));
    assert!(both.contains("--id"), "{both}");
    let bad_id = failed(&execute(&["--id", "not-an-id"]));
    assert!(bad_id.contains("--id not-an-id"), "{bad_id}");
    let bad_limit = failed(&execute(&["--limit", "0"]));
    assert!(bad_limit.contains("--limit"), "{bad_limit}");
    let bad_risk = failed(&execute(&["--risk", "extreme"]));
    assert!(bad_risk.contains("--risk"), "{bad_risk}");
    assert_eq!(settled_log(&ledger).await.len(), after.len());
    ledger.close().await;
}

#[tokio::test]
async fn batch_execution_of_the_embedded_store_previews_then_requests_each_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("utf-8");
    check_batch(
        &["--data-dir", data],
        &[],
        StoreConfig::Sqlite {
            path: dir.path().join("countersign.db"),
        },
    )
    .await;
}

#[tokio::test]
async fn batch_execution_of_postgres_previews_then_requests_each_once() {
    let store = TestStore::postgres().await.expect("database");
    let url = store.location();
    check_batch(&[], &[("DATABASE_URL", &url)], store.config.clone()).await;
}
