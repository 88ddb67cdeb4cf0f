//! An independent implementation agrees: `scripts/merkle_check.py`, written from RFC 9162 with
//! Python's `blake3` package (installed by `scripts/py_blake3.sh` into the tests' virtual
//! environment, `target/py-blake3`), computes the same root for every size from 1 to 300 over the
//! leaf data of real sealed events.

use countersign_verification::leaf::SealedEvent;
use countersign_verification::tree::{Hash, Tree};
use serde_json::json;

#[test]
fn python_blake3_computes_the_same_roots_for_the_same_leaves() {
    let data: Vec<Vec<u8>> = (0..300u64)
        .map(|n| {
            SealedEvent {
                tenant: if n % 3 == 0 { "acme" } else { "globex" }.into(),
                ledger_sequence: n,
                aggregate_type: "action".into(),
                aggregate_id: format!("action-{}", n / 4),
                sequence: i64::try_from(n % 4 + 1).expect("small"),
                event_type: "VoteCast".into(),
                event_version: "1".into(),
                recorded_at: "2026-11-17T14:02:00.123456Z".into(),
                payload: json!({ "VoteCast": { "vote": "approve", "comment": format!("é {n}") } }),
                metadata: json!({ "tenant": "acme", "actor": "ana" }),
            }
            .leaf_data()
        })
        .collect();
    let tree = Tree::new(
        data.iter()
            .map(|bytes| countersign_verification::tree::leaf_hash(bytes))
            .collect(),
    );
    let roots: Vec<String> = (1..=300)
        .map(|size| tree.root(size).map(|root: Hash| root.to_hex()))
        .collect::<Result<_, _>>()
        .expect("roots");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let case = dir.join(format!("merkle-case-{}.json", std::process::id()));
    std::fs::write(
        &case,
        serde_json::to_string(&json!({
            "leaves": data.iter().map(hex::encode).collect::<Vec<_>>(),
            "roots": roots,
        }))
        .expect("json"),
    )
    .expect("write case");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/merkle_check.sh");
    let output = std::process::Command::new("bash")
        .arg(script)
        .arg(&case)
        .output()
        .expect("the check runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = std::fs::remove_file(&case);
    assert!(stdout.contains("ok: 300 roots agree"), "{stdout}");
}
