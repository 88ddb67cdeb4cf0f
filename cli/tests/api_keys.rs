//! `countersign api-keys` runs the same use cases as `/v1/api-keys`: the same name rule, the same
//! refusals, recorded as the operator through the CLI.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

use std::path::Path;
use std::process::{Command, Output};

const SECRET: &str = "0707070707070707070707070707070707070707070707070707070707070707";

fn api_keys(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_countersign"))
        .arg("api-keys")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .env("COUNTERSIGN_API_KEY_SECRET", SECRET)
        .output()
        .expect("countersign runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn keys_are_created_listed_and_revoked_under_the_api_rules() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();

    let created = api_keys(
        data,
        &[
            "create",
            "--tenant",
            "acme",
            "--name",
            "  billing service  ",
            "--roles",
            "requester",
        ],
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    let out = text(&created.stdout);
    let key_id = out
        .strip_prefix("key id ")
        .and_then(|rest| rest.split(';').next())
        .expect("the key id is printed")
        .to_owned();
    assert!(out.contains(&format!("csk.acme.{key_id}.")), "{out}");

    // The name rules are the domain's, as over HTTP: refused naming the field, nothing recorded.
    for (name, why) in [
        ("   ", "blank"),
        ("refund \u{202e}gnp.exe", "a bidi control"),
        (&"n".repeat(101), "over 100 characters"),
    ] {
        let refused = api_keys(
            data,
            &[
                "create",
                "--tenant",
                "acme",
                "--name",
                name,
                "--roles",
                "requester",
            ],
        );
        assert!(!refused.status.success(), "{why}: accepted");
        assert!(
            text(&refused.stderr).contains("name"),
            "{why}: the refusal names the field: {}",
            text(&refused.stderr)
        );
    }

    let listed = api_keys(data, &["list", "--tenant", "acme"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let lines: Vec<String> = text(&listed.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 1, "only the accepted key: {lines:?}");
    assert!(lines[0].starts_with(&key_id), "{lines:?}");
    assert!(
        lines[0].contains("billing service"),
        "trimmed name: {lines:?}"
    );
    assert!(lines[0].ends_with("active"), "{lines:?}");

    let revoked = api_keys(data, &["revoke", "--tenant", "acme", "--key-id", &key_id]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let unknown = api_keys(data, &["revoke", "--tenant", "acme", "--key-id", "nope"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown.stderr).contains("not found"),
        "{}",
        text(&unknown.stderr)
    );
    let listed = api_keys(data, &["list", "--tenant", "acme"]);
    assert!(
        text(&listed.stdout).contains("revoked"),
        "{}",
        text(&listed.stdout)
    );
}
