//! The `countersign` binary, driven as a user would.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use countersign_domain::action::{Action, ActionEvent, ActionStatus};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn countersign(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_countersign"))
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("countersign runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_lists_the_subcommands() {
    let output = countersign(&["--help"]);
    assert!(output.status.success());
    for command in ["serve", "migrate", "demo", "tour", "simulate", "schemas"] {
        assert!(
            stdout(&output).contains(command),
            "{command} missing from --help"
        );
    }
}

#[test]
fn checked_in_schemas_match_the_code() {
    let output = countersign(&["schemas", "--check"]);
    assert!(
        output.status.success(),
        "schemas drifted: {}",
        stderr(&output)
    );
}

#[test]
fn schema_drift_is_reported_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().to_str().expect("utf-8 path");
    assert!(countersign(&["schemas", "--out", out]).status.success());
    assert!(
        countersign(&["schemas", "--out", out, "--check"])
            .status
            .success()
    );
    let path = dir.path().join("action-event.json");
    let edited = std::fs::read_to_string(&path)
        .expect("written")
        .replace("VoteCast", "VoteGiven");
    std::fs::write(&path, edited).expect("edit");
    let output = countersign(&["schemas", "--out", out, "--check"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("action-event.json"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_tour_events_fold_into_the_outcomes_it_narrates() {
    let output = countersign(&["tour", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let mut histories: BTreeMap<String, Vec<ActionEvent>> = BTreeMap::new();
    for line in stdout(&output).lines() {
        let event: ActionEvent = serde_json::from_str(line).expect("each line is an event");
        histories
            .entry(event.context().action_id.to_string())
            .or_default()
            .push(event);
    }
    let statuses: Vec<ActionStatus> = histories
        .values()
        .map(|events| {
            Action::from_events(events)
                .state()
                .expect("submitted")
                .status
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ActionStatus::Executed,
            ActionStatus::Executed,
            ActionStatus::Executed,
            ActionStatus::Expired
        ]
    );
}

#[test]
fn simulate_resolves_the_matching_policy_and_scores_the_risk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let submission = dir.path().join("payout.json");
    std::fs::write(
        &submission,
        r#"{ "module": "payouts", "capability": "pause", "summary": "Pause payout",
             "payload": { "amount": 1500000 }, "flags": ["financial"] }"#,
    )
    .expect("write");
    let output = countersign(&[
        "simulate",
        "--policies",
        "docs/examples/policies.json",
        submission.to_str().expect("utf-8"),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let answer: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("json");
    assert_eq!(answer["policy"]["id"], "high-value-payout");
    assert_eq!(answer["risk"]["score"], 20);
    assert_eq!(answer["risk"]["reasons"][0]["code"], "sensitive_data");
}

#[test]
fn simulate_names_the_offending_field_of_a_bad_submission() {
    let dir = tempfile::tempdir().expect("temp dir");
    let submission = dir.path().join("bad.json");
    std::fs::write(
        &submission,
        r#"{ "module": "payouts", "capability": "pause", "summary": "x", "flags": [""] }"#,
    )
    .expect("write");
    let output = countersign(&["simulate", submission.to_str().expect("utf-8")]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("flags[0]"), "{}", stderr(&output));
    let missing = countersign(&["simulate", "does-not-exist.json"]);
    assert!(
        stderr(&missing).contains("does-not-exist.json"),
        "{}",
        stderr(&missing)
    );
}
