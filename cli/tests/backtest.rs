//! `countersign policies backtest` on a store the demo loaded: the policies in force change
//! nothing, a draft without them puts every action under another policy, a bad draft fails
//! naming the change, and nothing is written.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use countersign_domain::TenantId;
use countersign_domain::tenant::PolicySet;
use countersign_ledger::testing::{TestStore, settled_log};
use countersign_ledger::{Ledger, StoreConfig};
use serde_json::{Value, json};
use support::{countersign, succeeded};

async fn check_backtest(store: &[&str], envs: &[(&str, &str)], config: StoreConfig) {
    let with_store = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(store)
            .map(|arg| (*arg).to_owned())
            .collect()
    };
    let run = |args: &[&str]| {
        let args = with_store(args);
        countersign(&args.iter().map(String::as_str).collect::<Vec<_>>(), envs)
    };
    succeeded(&run(&["demo"]));
    succeeded(&run(&["projections", "rebuild", "all"]));
    let ledger = Ledger::open(&config).await.expect("store");
    let demo = TenantId::parse("demo").expect("tenant");
    let before = settled_log(&ledger).await;
    let submitted = before
        .iter()
        .filter(|event| event.tenant == "demo" && event.event_type == "ActionSubmitted")
        .count();
    let under_policies = before
        .iter()
        .filter(|event| event.tenant == "demo" && event.event_type == "ActionSubmitted")
        .filter(|event| event.payload["ActionSubmitted"]["policy"]["is_default"] == false)
        .count();
    assert!(under_policies > 0, "the demo submits under its policies");
    let dir = tempfile::tempdir().expect("temp dir");
    let draft = |name: &str, body: &Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, body.to_string()).expect("draft written");
        path.to_str().expect("utf-8").to_owned()
    };
    let backtest = |draft: Option<&str>| {
        let mut args = vec![
            "policies",
            "backtest",
            "--tenant",
            "demo",
            "--from",
            "2000-01-01T00:00:00Z",
            "--json",
        ];
        if let Some(draft) = draft {
            args.extend(["--draft", draft]);
        }
        run(&args)
    };

    // The policies in force: every action keeps its policy and its outcome.
    let same: Value = serde_json::from_str(&succeeded(&backtest(None))).expect("a JSON report");
    assert_eq!(same["replayed"], json!(submitted), "{same}");
    assert_eq!(same["complete"], true);
    assert_eq!(
        (
            same["policy_changed"].clone(),
            same["requirements_changed"].clone(),
            same["outcome_changed"].clone()
        ),
        (json!(0), json!(0), json!(0)),
        "{same}"
    );

    // Without any of the demo's policies, every action they governed falls to the tenant
    // default.
    let (policies, _) = ledger.load::<PolicySet>(&demo).await.expect("policies");
    let removals: Vec<Value> = policies
        .list()
        .iter()
        .map(|policy| json!({ "op": "remove", "id": policy.id }))
        .collect();
    let none = draft("none.json", &json!({ "changes": removals }));
    let report: Value =
        serde_json::from_str(&succeeded(&backtest(Some(&none)))).expect("a JSON report");
    assert_eq!(report["policy_changed"], json!(under_policies), "{report}");
    assert!(
        report["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .all(|diff| diff["draft"]["policy_id"] == "default"),
        "{report}"
    );

    // A change of a policy that does not exist fails, naming it; nothing is written.
    let bad = draft(
        "bad.json",
        &json!({ "changes": [{ "op": "remove", "id": "no-such-policy" }] }),
    );
    let refused = backtest(Some(&bad));
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("changes[0].id"), "{stderr}");
    assert_eq!(
        settled_log(&ledger).await.len(),
        before.len(),
        "nothing written"
    );
    ledger.close().await;
}

#[tokio::test]
async fn a_backtest_of_the_embedded_store_compares_drafts_with_the_demo_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("utf-8");
    check_backtest(
        &["--data-dir", data],
        &[],
        StoreConfig::Sqlite {
            path: dir.path().join("countersign.db"),
        },
    )
    .await;
}

#[tokio::test]
async fn a_backtest_of_postgres_compares_drafts_with_the_demo_history() {
    let store = TestStore::postgres().await.expect("database");
    let url = store.location();
    check_backtest(&[], &[("DATABASE_URL", &url)], store.config.clone()).await;
}
