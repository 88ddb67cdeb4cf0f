//! Backup and restore of a PostgreSQL store (docs/operations.md, "Backup and restore"): a
//! `pg_dump` restored into an empty database verifies with the same signed heads, and a restore
//! that lost the newest events (a dump older than the newest published head) is detected by
//! `countersign verify --published-heads` and named.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

use std::path::PathBuf;
use std::process::{Command, Output};

use countersign_domain::TenantMode;
use countersign_domain::quorum::Vote;
use countersign_ledger::testing::TestStore;
use countersign_ledger::testing::actions::{
    any_of, context, execute, new_id, principal, submission, submit, tenant, vote,
};
use sqlx::{Connection, Executor, PgConnection};

/// PostgreSQL's client programs (the server's major version or newer): `$COUNTERSIGN_PG_BIN`,
/// else the newest `/usr/lib/postgresql/<major>/bin` (Debian's layout), else 15's.
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("COUNTERSIGN_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut majors: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    majors.sort_unstable();
    let major = majors.last().copied().unwrap_or(15);
    PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"))
}

fn countersign(args: &[&str], database_url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_countersign"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env_remove("COUNTERSIGN_SIGNING_KEY")
        .env("COUNTERSIGN_LOG_FORMAT", "text")
        .output()
        .expect("countersign runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn ok(output: &Output) -> String {
    assert!(output.status.success(), "{}", text(output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn pg_tool(tool: &str, args: &[&str]) {
    let program = pg_bin().join(tool);
    let output = Command::new(&program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{}: {err}", program.display()));
    assert!(output.status.success(), "{tool}: {}", text(&output));
}

/// Databases created on the test's server, dropped however the test ends.
struct Scratch {
    server: String,
    names: Vec<String>,
}

impl Scratch {
    /// A new empty database on the same server as `url`; its URL.
    async fn create(&mut self, label: &str) -> String {
        let name = format!(
            "countersign_restore_{label}_{}",
            uuid::Uuid::new_v4().simple()
        );
        let mut admin = PgConnection::connect(&self.server)
            .await
            .expect("the server");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("CREATE DATABASE");
        let _ = admin.close().await;
        self.names.push(name.clone());
        with_database(&self.server, &name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new(pg_bin().join("dropdb"))
                .args(["--if-exists", "--force", "--dbname", &self.server, name])
                .output();
        }
    }
}

fn with_database(url: &str, database: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a database URL");
    format!("{base}/{database}")
}

/// The signed heads a database holds: (tenant, tree size, root, signature).
async fn heads(url: &str) -> Vec<(String, i64, String, String)> {
    let mut db = PgConnection::connect(url).await.expect("connect");
    let heads = sqlx::query_as(
        "SELECT tenant, tree_size, root, signature FROM ledger_heads ORDER BY tenant, tree_size",
    )
    .fetch_all(&mut db)
    .await
    .expect("heads");
    let _ = db.close().await;
    heads
}

async fn event_count(url: &str) -> i64 {
    let mut db = PgConnection::connect(url).await.expect("connect");
    let count = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&mut db)
        .await
        .expect("count");
    let _ = db.close().await;
    count
}

/// Three more actions of the demo tenant, each submitted and approved.
async fn more_events(store: &TestStore) {
    let demo = tenant("demo");
    let (requester, approver) = (
        principal("rita", &["requester"]),
        principal("olga", &["owner"]),
    );
    for n in 0..3 {
        let id = new_id();
        let now = chrono::Utc::now();
        execute(
            &store.ledger,
            id,
            submit(
                context(&demo, &requester, now),
                id,
                submission(
                    "noop",
                    "echo",
                    &format!("After the first backup, number {n}"),
                    serde_json::json!({ "payload": { "n": n } }),
                ),
                &any_of(1),
                TenantMode::RequireApproval,
            ),
        )
        .await
        .expect("submitted");
        execute(
            &store.ledger,
            id,
            vote(context(&demo, &approver, now), Vote::Approve, Some("fine")),
        )
        .await
        .expect("approved");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_dump_verifies_with_the_same_heads_and_a_lost_tail_is_detected() {
    let store = TestStore::postgres().await.expect("database");
    let url = store.location();
    let mut scratch = Scratch {
        server: with_database(&url, "postgres"),
        names: Vec::new(),
    };
    let dir = tempfile::tempdir().expect("dir");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (key, heads_dir) = (path("head.key"), path("heads"));
    let public = format!("{key}.pub");
    let seal = [
        "seal",
        "--signing-key",
        &key,
        "--publish-heads-dir",
        &heads_dir,
    ];
    let verify = [
        "verify",
        "--public-key",
        &public,
        "--published-heads",
        &heads_dir,
        "--decisions",
    ];

    // The live store: the demo, sealed and signed, then a backup.
    ok(&countersign(&["keys", "generate", "--out", &key], &url));
    ok(&countersign(&["demo"], &url));
    ok(&countersign(&seal, &url));
    let early_size = event_count(&url).await;
    let (early, late) = (path("early.dump"), path("late.dump"));
    pg_tool("pg_dump", &["--format", "custom", "--file", &early, &url]);

    // More events, sealed into a newer head that is published; a second backup.
    more_events(&store).await;
    let sealed = ok(&countersign(&seal, &url));
    let size = event_count(&url).await;
    assert!(size > early_size, "{size} events after {early_size}");
    assert!(
        sealed.contains(&format!(
            "tenant demo: {size} leaves, newest head at {size}"
        )),
        "{sealed}"
    );
    pg_tool("pg_dump", &["--format", "custom", "--file", &late, &url]);
    let original = ok(&countersign(&verify, &url));
    let original_heads = heads(&url).await;
    assert_eq!(original_heads.len(), 2, "{original_heads:?}");

    // The newest backup, restored into an empty database: every event, the same signed heads,
    // and verify reports the same roots as the original.
    let restored = scratch.create("late").await;
    pg_tool(
        "pg_restore",
        &["--exit-on-error", "--dbname", &restored, &late],
    );
    assert_eq!(event_count(&restored).await, size);
    assert_eq!(heads(&restored).await, original_heads);
    let verified = ok(&countersign(&verify, &restored));
    assert!(
        verified.contains(&format!(
            "tenant demo: {size} events, {size} sealed, 2 heads checked (newest at size {size})"
        )),
        "{verified}"
    );
    let tenant_line = |report: &str| {
        report
            .lines()
            .find(|line| line.starts_with("tenant demo:"))
            .map(str::to_owned)
            .expect("a line for the demo tenant")
    };
    assert_eq!(tenant_line(&verified), tenant_line(&original));
    assert!(
        verified.contains("every recorded decision is reproduced"),
        "{verified}"
    );

    // The older backup, restored: consistent in itself (verify without the published heads
    // passes), but behind the newest published head, which verify names.
    let stale = scratch.create("early").await;
    pg_tool(
        "pg_restore",
        &["--exit-on-error", "--dbname", &stale, &early],
    );
    assert_eq!(event_count(&stale).await, early_size);
    ok(&countersign(&["verify", "--public-key", &public], &stale));
    let lost = countersign(&verify, &stale);
    assert!(
        !lost.status.success(),
        "a lost tail passes: {}",
        text(&lost)
    );
    let report = text(&lost);
    assert!(
        report.contains(&format!("the published head of size {size} signed at "))
            && report.contains("is missing from the database"),
        "{report}"
    );
    assert!(
        report.contains("verification failed: 1 divergence(s)"),
        "{report}"
    );
}
