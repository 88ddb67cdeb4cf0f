//! Key files the CLI writes are readable by their owner only, from the moment they exist.
#![cfg(unix)]
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// Runs the binary under the usual umask (022), so a file created without an explicit mode
/// would be readable by everyone.
fn countersign(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("umask 022 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_countersign"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("COUNTERSIGN_DATA_DIR")
        .env_remove("COUNTERSIGN_JWT_HS256_SECRET")
        .env_remove("COUNTERSIGN_API_KEY_SECRET")
        .output()
        .expect("countersign runs")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("the file exists")
        .permissions()
        .mode()
        & 0o777
}

fn explain(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn demo_creates_the_development_keys_readable_by_their_owner_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("utf-8 path");
    let output = countersign(&["demo", "--data-dir", data]);
    assert!(output.status.success(), "{}", explain(&output));
    let keys = dir.path().join("dev-keys.json");
    assert_eq!(mode(&keys), 0o600, "{}", keys.display());
    // A second run reads them and leaves them as they are.
    let again = countersign(&["demo", "--data-dir", data]);
    assert!(again.status.success(), "{}", explain(&again));
    assert_eq!(mode(&keys), 0o600);
}

/// Development keys as an older version wrote them: mode `mode`.
fn old_dev_keys(dir: &Path, mode: u32) -> std::path::PathBuf {
    let keys = dir.join("dev-keys.json");
    std::fs::write(
        &keys,
        serde_json::json!({
            "jwt_hs256_secret": "0123456789abcdef0123456789abcdef",
            "api_key_secret": "00".repeat(32),
        })
        .to_string(),
    )
    .expect("write");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(mode)).expect("chmod");
    keys
}

#[test]
fn development_keys_others_could_read_are_narrowed_before_use() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = old_dev_keys(dir.path(), 0o644);
    let data = dir.path().to_str().expect("utf-8 path");
    let output = countersign(&[
        "token",
        "--data-dir",
        data,
        "--sub",
        "rita",
        "--tenant",
        "acme",
        "--roles",
        "requester",
    ]);
    assert!(output.status.success(), "{}", explain(&output));
    assert_eq!(mode(&keys), 0o600);
}

#[test]
fn token_refuses_a_subject_reserved_for_the_service() {
    let dir = tempfile::tempdir().expect("temp dir");
    old_dev_keys(dir.path(), 0o600);
    let data = dir.path().to_str().expect("utf-8 path");
    for reserved in ["key:abc", "system:deadlines"] {
        let output = countersign(&[
            "token",
            "--data-dir",
            data,
            "--sub",
            reserved,
            "--tenant",
            "acme",
            "--roles",
            "owner",
        ]);
        assert!(!output.status.success(), "{reserved}: {}", explain(&output));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("reserved"),
            "{reserved}: {}",
            explain(&output)
        );
    }
}
