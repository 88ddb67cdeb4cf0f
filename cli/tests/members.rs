//! `countersign members` runs the same use cases as `/v1/members`: the same email rule, the same
//! refusals, recorded as the operator through the CLI.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

use std::path::Path;
use std::process::{Command, Output};

fn members(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_countersign"))
        .arg("members")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .output()
        .expect("countersign runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn members_are_added_listed_updated_and_removed_under_the_api_rules() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    let added = members(
        data,
        &[
            "add",
            "--tenant",
            "acme",
            "--user",
            "bob",
            "--name",
            "Bob",
            "--email",
            "bob@example.com",
            "--roles",
            "approver,finance_ops",
        ],
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    assert_eq!(text(&added.stdout).trim(), "added bob");

    let refused = members(
        data,
        &[
            "add", "--tenant", "acme", "--user", "carl", "--email", "carl@@x",
        ],
    );
    assert!(!refused.status.success(), "an invalid email is refused");
    assert!(
        text(&refused.stderr).contains("email"),
        "{}",
        text(&refused.stderr)
    );
    let again = members(data, &["add", "--tenant", "acme", "--user", "bob"]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );

    let listed = members(data, &["list", "--tenant", "acme", "--json"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let lines: Vec<serde_json::Value> = text(&listed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "only bob: the refused ones recorded nothing"
    );
    assert_eq!(lines[0]["email"], "bob@example.com");
    assert_eq!(
        lines[0]["roles"],
        serde_json::json!(["approver", "finance_ops"])
    );

    let updated = members(
        data,
        &[
            "update", "--tenant", "acme", "--user", "bob", "--slack", "U0BOB", "--roles",
            "approver",
        ],
    );
    assert!(updated.status.success(), "{}", text(&updated.stderr));
    let listed = members(data, &["list", "--tenant", "acme", "--json"]);
    let bob: serde_json::Value =
        serde_json::from_str(text(&listed.stdout).trim()).expect("one member");
    assert_eq!(bob["slack_user_id"], "U0BOB");
    assert!(bob.get("email").is_none(), "an update replaces every field");

    let unknown = members(data, &["remove", "--tenant", "acme", "--user", "nobody"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown.stderr).contains("not found"),
        "{}",
        text(&unknown.stderr)
    );
    let removed = members(data, &["remove", "--tenant", "acme", "--user", "bob"]);
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    let listed = members(data, &["list", "--tenant", "acme"]);
    assert_eq!(text(&listed.stdout), "");
}
