//! `keys generate`, `seal`, `verify`, `audit export|verify` and the sealer inside `serve`,
//! driven through the binary against real stores.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use countersign_ledger::StoreConfig;
use countersign_ledger::testing::{ChildGuard, TestStore, eventually_blocking, within};
use sqlx::{Connection, Executor};

/// Events `countersign demo` records: 3 policies and the settings the owner installs, the 3
/// example workflows with their 3 policies (docs/workflows.md), then 20 of its 7 actions.
const DEMO_EVENTS: u64 = 36;

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

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn fails(output: &Output, expected: &str) -> String {
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "should fail: {all}");
    assert!(all.contains(expected), "expected `{expected}` in: {all}");
    all
}

/// How the binary reaches a test store: flags and environment.
fn store_args(store: &TestStore) -> (Vec<String>, Vec<(String, String)>) {
    match &store.config {
        StoreConfig::Sqlite { path } => (
            vec![
                "--data-dir".into(),
                path.parent().expect("dir").display().to_string(),
            ],
            Vec::new(),
        ),
        StoreConfig::Postgres { url } => (Vec::new(), vec![("DATABASE_URL".into(), url.clone())]),
    }
}

fn run(store: &TestStore, args: &[&str]) -> Output {
    let (flags, envs) = store_args(store);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(flags.iter().map(String::as_str));
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    countersign(&all, &envs)
}

/// Changes one recorded vote's comment as a superuser would, triggers out of the way.
async fn tamper_with_a_vote(store: &TestStore) {
    match &store.config {
        StoreConfig::Postgres { url } => {
            let mut db = sqlx::PgConnection::connect(url).await.expect("connect");
            for statement in [
                "ALTER TABLE events DISABLE TRIGGER USER",
                "UPDATE events SET payload = jsonb_set(payload, '{VoteCast,comment}', '\"looks fine\"')
                  WHERE position = (SELECT min(position) FROM events WHERE event_type = 'VoteCast')",
                "ALTER TABLE events ENABLE TRIGGER USER",
            ] {
                db.execute(statement).await.expect(statement);
            }
        }
        StoreConfig::Sqlite { path } => {
            let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .expect("connect");
            for statement in [
                "DROP TRIGGER events_refuse_update",
                "UPDATE events SET payload = json_set(payload, '$.VoteCast.comment', 'looks fine')
                  WHERE position = (SELECT min(position) FROM events WHERE event_type = 'VoteCast')",
            ] {
                db.execute(statement).await.expect(statement);
            }
        }
    }
}

async fn verify_export_and_tamper(store: TestStore) {
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("keys/head.key");
    let key = key.to_str().expect("utf-8");
    let public = format!("{key}.pub");
    let heads = dir.path().join("heads");
    let heads = heads.to_str().expect("utf-8");
    let bundle = dir.path().join("demo.jsonl");
    let bundle = bundle.to_str().expect("utf-8");

    let generated = ok(&countersign(&["keys", "generate", "--out", key], &[]));
    assert!(generated.starts_with("key "), "{generated}");
    fails(
        &countersign(&["keys", "generate", "--out", key], &[]),
        "refusing to overwrite",
    );
    ok(&run(&store, &["demo"]));
    let sealed = ok(&run(
        &store,
        &["seal", "--signing-key", key, "--publish-heads-dir", heads],
    ));
    assert!(
        sealed.contains(&format!("sealed {DEMO_EVENTS} events; signed 1 heads")),
        "{sealed}"
    );
    assert!(Path::new(heads).join("demo/latest.json").exists());

    fails(&run(&store, &["verify"]), "no public key was given");
    fails(
        &run(&store, &["verify", "--public-key", "nope"]),
        "neither a public key file nor 64 hexadecimal digits",
    );
    let verified = ok(&run(
        &store,
        &[
            "verify",
            "--public-key",
            &public,
            "--published-heads",
            heads,
            "--decisions",
        ],
    ));
    assert!(
        verified.contains(&format!(
            "tenant demo: {DEMO_EVENTS} events, {DEMO_EVENTS} sealed, 1 heads checked"
        )),
        "{verified}"
    );
    assert!(verified.contains("events/s"), "{verified}");
    assert!(verified.contains("OK: every sealed event"), "{verified}");
    assert!(
        verified.contains("every recorded decision is reproduced"),
        "{verified}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&run(
        &store,
        &["verify", "--signing-key", key, "--json", "--tenant", "demo"],
    )))
    .expect("json");
    assert_eq!(json["ok"], true);
    fails(
        &run(
            &store,
            &["verify", "--signing-key", key, "--tenant", "nobody"],
        ),
        "--tenant nobody: the log holds no event of this tenant",
    );

    let exported = ok(&run(
        &store,
        &["audit", "export", "--tenant", "demo", "--out", bundle],
    ));
    assert!(
        exported.contains(&format!("exported {DEMO_EVENTS} events")),
        "{exported}"
    );
    let beyond = (DEMO_EVENTS + 1).to_string();
    fails(
        &run(
            &store,
            &[
                "audit", "export", "--tenant", "demo", "--from", "3", "--to", &beyond, "--out",
                bundle,
            ],
        ),
        &format!("--to {beyond} is beyond it"),
    );
    let offline = ok(&countersign(
        &["audit", "verify", bundle, "--public-key", &public],
        &[],
    ));
    assert!(
        offline.starts_with(&format!("OK: {DEMO_EVENTS} events of tenant demo")),
        "{offline}"
    );
    let other = dir.path().join("other.key");
    ok(&countersign(
        &["keys", "generate", "--out", other.to_str().expect("utf-8")],
        &[],
    ));
    fails(
        &countersign(
            &[
                "audit",
                "verify",
                bundle,
                "--public-key",
                &format!("{}.pub", other.display()),
            ],
            &[],
        ),
        "not among the trusted public keys",
    );
    let text = std::fs::read_to_string(bundle).expect("bundle");
    let altered = text.replacen("\"PolicyCreated\"", "\"PolicyCreatd\"", 1);
    std::fs::write(bundle, altered).expect("write");
    fails(
        &countersign(&["audit", "verify", bundle, "--public-key", &public], &[]),
        "line 2 (ledger sequence 0",
    );
    fails(
        &countersign(
            &["audit", "verify", "missing.jsonl", "--public-key", &public],
            &[],
        ),
        "opening missing.jsonl",
    );

    tamper_with_a_vote(&store).await;
    let tampered = fails(
        &run(&store, &["verify", "--public-key", &public]),
        "verification failed: 1 divergence(s)",
    );
    assert!(
        tampered.contains("DIVERGENCE tenant demo, ledger sequence ")
            && tampered.contains(": changed — event action/")
            && tampered.contains("payload differs from what was sealed"),
        "{tampered}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_verify_export_and_audit_verify_on_the_embedded_store() {
    verify_export_and_tamper(TestStore::sqlite().await.expect("store")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_verify_export_and_audit_verify_on_postgres() {
    verify_export_and_tamper(TestStore::postgres().await.expect("store")).await;
}

#[test]
fn serve_runs_the_sealer_signs_and_publishes_heads_and_stops_it_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let key = dir.path().join("head.key");
    let key = key.to_str().expect("utf-8");
    let heads = dir.path().join("heads");
    ok(&countersign(&["keys", "generate", "--out", key], &[]));
    ok(&countersign(&["demo", "--data-dir", data], &[]));
    fails(
        &countersign(
            &["serve", "--data-dir", data, "--seal-every-seconds", "0"],
            &[],
        ),
        "--seal-every-seconds must be a positive number",
    );
    let mut child: ChildGuard = Command::new(env!("CARGO_BIN_EXE_countersign"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
            "--seal-every-seconds",
            "0.2",
            "--publish-heads-dir",
            heads.to_str().expect("utf-8"),
        ])
        .env_remove("DATABASE_URL")
        .env("COUNTERSIGN_SIGNING_KEY", key)
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts")
        .into();
    let latest = heads.join("demo/latest.json");
    let deadline = within(Duration::from_secs(60)).every(Duration::from_millis(100));
    let head = eventually_blocking(deadline, || {
        if let Ok(text) = std::fs::read_to_string(&latest)
            && let Ok(head) = serde_json::from_str::<serde_json::Value>(&text)
        {
            return Ok(head);
        }
        Err("no head was published")
    });
    assert_eq!(head["tree_size"], DEMO_EVENTS);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let stderr = child.stderr.take().expect("stderr");
    let status = child.wait().expect("exits");
    assert!(status.success(), "graceful shutdown exits 0");
    let lines: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(
        lines.iter().any(|line| line.contains("sealer started"))
            && lines.iter().any(|line| line.contains("sealer stopped")),
        "{lines:#?}"
    );
    let verified = ok(&countersign(
        &["verify", "--data-dir", data, "--signing-key", key],
        &[],
    ));
    assert!(verified.contains("1 heads checked"), "{verified}");
}
