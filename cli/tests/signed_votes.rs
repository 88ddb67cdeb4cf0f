//! Signed votes end to end through the binary: `keys vote generate` makes a member's key,
//! `keys vote sign` signs a vote with it, the vote is cast through the application's use case,
//! and `audit verify` checks every signed vote of an export offline — a signature the server
//! altered in its own store (sealed afterwards, so every proof holds) fails, and so does a
//! signature edited in the bundle.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

use std::process::{Command, Output};

use countersign_app::actions::{self, Submitted};
use countersign_app::signed_votes::{SignedBy, vote_signed};
use countersign_app::{Actor, App, Channel, members};
use countersign_domain::quorum::Vote;
use countersign_domain::signing::{VotePublicKey, VoteSigner};
use countersign_domain::{Principal, Role, TenantId, UserId};
use countersign_ledger::StoreConfig;
use countersign_ledger::testing::TestStore;
use serde_json::{Value, json};
use sqlx::{Connection, Executor};

fn countersign(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_countersign"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("COUNTERSIGN_SIGNING_KEY")
        .env("COUNTERSIGN_LOG_FORMAT", "text")
        .envs(envs.iter().copied())
        .output()
        .expect("countersign runs")
}

fn all(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn ok(output: &Output) -> String {
    assert!(output.status.success(), "{}", all(output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn fails(output: &Output, expected: &str) -> String {
    let text = all(output);
    assert!(!output.status.success(), "should fail: {text}");
    assert!(text.contains(expected), "expected `{expected}` in: {text}");
    text
}

/// Runs the binary on the test store.
fn run(store: &TestStore, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    let mut envs = Vec::new();
    match &store.config {
        StoreConfig::Sqlite { path } => {
            all.push("--data-dir".into());
            all.push(path.parent().expect("dir").display().to_string());
        }
        StoreConfig::Postgres { url } => envs.push(("DATABASE_URL", url.as_str())),
    }
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    countersign(&all, &envs)
}

fn actor(tenant: &str, user: &str, roles: &[&str]) -> Actor {
    Actor::new(
        TenantId::parse(tenant).expect("tenant"),
        Principal::new(
            UserId::parse(user).expect("user"),
            roles.iter().map(|role| Role::parse(*role).expect("role")),
        ),
        Channel::Api,
    )
}

/// Submits an action in `tenant` and has `ann` (admin, key in `key_file`) approve it with a
/// vote signed by `keys vote sign`; answers the action id.
async fn signed_approval(app: &App, tenant: &str, key_file: &str) -> String {
    let ann = actor(tenant, "ann", &["admin"]);
    let public = std::fs::read_to_string(format!("{key_file}.pub")).expect("public key");
    members::set_my_signing_key(
        app,
        &ann,
        VotePublicKey::parse(public.trim()).expect("public key"),
    )
    .await
    .expect("registered");
    let submission = serde_json::from_value(json!({
        "module": "billing", "capability": "refund", "summary": "refund order 7",
        "payload": { "order": 7 }
    }))
    .expect("submission");
    let Submitted::New(submitted) = actions::submit(
        app,
        &actor(tenant, "rita", &["requester"]),
        submission,
        None,
    )
    .await
    .expect("submitted") else {
        panic!("a new action");
    };
    let detail = submitted.value;
    let id = detail.id.to_string();
    let body: Value = serde_json::from_str(&ok(&countersign(
        &[
            "keys",
            "vote",
            "sign",
            "--key",
            key_file,
            "--tenant",
            tenant,
            "--action",
            &id,
            "--execution-key",
            detail.execution_key.as_str(),
        ],
        &[],
    )))
    .expect("a vote body");
    assert_eq!(body["vote"], "approve");
    let signed = SignedBy {
        signature: serde_json::from_value(body["signature"].clone()).expect("signature"),
        signed_at: serde_json::from_value(body["signed_at"].clone()).expect("signed_at"),
        key_id: body["key_id"].as_str().map(str::to_owned),
    };
    let voted = vote_signed(
        app,
        &ann,
        detail.id,
        Vote::Approve,
        None,
        serde_json::from_value(body["execution_key"].clone()).expect("key"),
        signed,
    )
    .await
    .expect("a good signature is accepted");
    assert_eq!(
        voted.value.status,
        countersign_domain::action::ActionStatus::Approved
    );
    id
}

/// What a dishonest server would do: rewrite a recorded signature (triggers out of the way)
/// before the log is sealed, so that every proof of an export holds.
async fn forge_signature(store: &TestStore, tenant: &str) {
    let forged = VoteSigner::from_seed([99; 32])
        .sign(
            &TenantId::parse(tenant).expect("tenant"),
            &countersign_domain::ActionId::from_uuid(uuid::Uuid::nil()),
            &serde_json::from_value(json!("0".repeat(64))).expect("key"),
            Vote::Approve,
            chrono::Utc::now(),
        )
        .signature;
    let forged = forged.as_str();
    match &store.config {
        StoreConfig::Postgres { url } => {
            let mut db = sqlx::PgConnection::connect(url).await.expect("connect");
            for statement in [
                "ALTER TABLE events DISABLE TRIGGER USER".to_owned(),
                format!(
                    "UPDATE events SET payload = jsonb_set(payload, '{{VoteCast,signature,signature}}', '\"{forged}\"')
                      WHERE event_type = 'VoteCast' AND tenant = '{tenant}'"
                ),
                "ALTER TABLE events ENABLE TRIGGER USER".to_owned(),
            ] {
                db.execute(statement.as_str()).await.expect("statement");
            }
        }
        StoreConfig::Sqlite { path } => {
            let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .expect("connect");
            for statement in [
                "DROP TRIGGER IF EXISTS events_refuse_update".to_owned(),
                format!(
                    "UPDATE events SET payload = json_set(payload, '$.VoteCast.signature.signature', '{forged}')
                      WHERE event_type = 'VoteCast' AND tenant = '{tenant}'"
                ),
            ] {
                db.execute(statement.as_str()).await.expect("statement");
            }
        }
    }
}

async fn signed_votes_in_audit_bundles(store: TestStore) {
    let dir = tempfile::tempdir().expect("dir");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (head_key, vote_key) = (path("head.key"), path("ann.key"));
    ok(&countersign(&["keys", "generate", "--out", &head_key], &[]));
    let generated = ok(&countersign(
        &["keys", "vote", "generate", "--out", &vote_key],
        &[],
    ));
    assert!(generated.starts_with("vote key "), "{generated}");

    ok(&run(&store, &["migrate"]));
    let projections = countersign_projections::ProjectionStore::open(&store.config)
        .await
        .expect("projections");
    let seals = countersign_verification::SealStore::open(&store.config)
        .await
        .expect("seals");
    let app = App::new(store.ledger.clone(), projections, seals);
    signed_approval(&app, "acme", &vote_key).await;
    // The same member key signs in a second tenant (each tenant has its own directory).
    signed_approval(&app, "forged", &vote_key).await;
    forge_signature(&store, "forged").await;
    ok(&run(&store, &["seal", "--signing-key", &head_key]));

    // The honest tenant's export verifies, signed vote included.
    let public = format!("{head_key}.pub");
    let bundle = path("acme.jsonl");
    ok(&run(
        &store,
        &["audit", "export", "--tenant", "acme", "--out", &bundle],
    ));
    let verified = ok(&countersign(
        &["audit", "verify", &bundle, "--public-key", &public],
        &[],
    ));
    assert!(
        verified.contains("OK: 1 signed vote(s) verify with their voters' registered keys"),
        "{verified}"
    );

    // A signature edited in the bundle: the event no longer hashes to its leaf.
    let text = std::fs::read_to_string(&bundle).expect("bundle");
    let line = text
        .lines()
        .find(|line| line.contains("\"VoteCast\""))
        .expect("the vote's line");
    let signature = serde_json::from_str::<Value>(line).expect("line")["event"]["payload"]
        ["VoteCast"]["signature"]["signature"]
        .as_str()
        .expect("signature")
        .to_owned();
    let flipped = format!(
        "{}{}",
        if signature.starts_with('0') { "1" } else { "0" },
        &signature[1..]
    );
    std::fs::write(&bundle, text.replacen(&signature, &flipped, 1)).expect("write");
    fails(
        &countersign(&["audit", "verify", &bundle, "--public-key", &public], &[]),
        "it was altered",
    );

    // The server's forgery, sealed: every proof holds, the signature does not.
    let forged = path("forged.jsonl");
    ok(&run(
        &store,
        &["audit", "export", "--tenant", "forged", "--out", &forged],
    ));
    let failed = fails(
        &countersign(&["audit", "verify", &forged, "--public-key", &public], &[]),
        "1 of 1 signed vote(s) do not verify",
    );
    assert!(
        failed.contains("the signature of ann's vote does not verify"),
        "{failed}"
    );
    // The decision replay on the store finds it too.
    fails(
        &run(&store, &["verify", "--public-key", &public, "--decisions"]),
        "bad signature",
    );
    app.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_checks_signed_votes_on_the_embedded_store() {
    signed_votes_in_audit_bundles(TestStore::sqlite().await.expect("store")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_checks_signed_votes_on_postgres() {
    signed_votes_in_audit_bundles(TestStore::postgres().await.expect("store")).await;
}
