//! The sealer, proofs, verification after tampering, audit exports and the decision replay,
//! on a fresh PostgreSQL database and a fresh SQLite file each.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use countersign_ledger::on_both_stores;
use countersign_ledger::testing::TestStore;
use countersign_verification::decisions::check_decisions;
use countersign_verification::export::{BundleHeader, BundleLine, export, verify_bundle};
use countersign_verification::publish::read_published;
use countersign_verification::tree::verify_consistency;
use countersign_verification::{
    DivergenceKind, FilePublisher, HeadSigner, KeyRing, Report, SealStore, Sealer, SealerConfig,
    SignedHead, StoredLeaf, VerifyOptions, verify,
};
use std::sync::Arc;

use support::{config, readable, seal_store, seal_through, tamper, workload};

const PER_TENANT: usize = 4;
/// Four events per action.
const EVENTS: i64 = (PER_TENANT * 4 * support::TENANTS.len()) as i64;

struct Sealed {
    seals: SealStore,
    signer: HeadSigner,
    ids: Vec<(String, Vec<String>)>,
}

impl Sealed {
    fn acme(&self, n: usize) -> &str {
        &self.ids[0].1[n]
    }

    async fn leaf(&self, id: &str, sequence: i64) -> StoredLeaf {
        self.seals
            .leaf_of_event("action", id, sequence)
            .await
            .expect("leaf")
            .expect("sealed")
    }

    fn keys(&self) -> KeyRing {
        KeyRing::new([self.signer.public_key()])
    }

    async fn verify(&self, store: &TestStore) -> Report {
        verify(
            &store.ledger,
            &self.seals,
            &VerifyOptions {
                keys: self.keys(),
                ..VerifyOptions::default()
            },
            |_, _| {},
        )
        .await
        .expect("verify runs")
    }
}

/// The workload, sealed, with heads every 5 events and one over everything.
async fn sealed(store: &TestStore) -> Sealed {
    let ids = workload(&store.ledger, PER_TENANT).await;
    let seals = seal_store(store).await;
    let signer = HeadSigner::generate();
    let mut sealer = Sealer::new(store.ledger.clone(), seals.clone(), config(&signer, 5));
    seal_through(&mut sealer, EVENTS).await;
    sealer.sign_heads(true).await.expect("heads");
    Sealed { seals, signer, ids }
}

// ------------------------------------------------------------------ sealing and proofs

on_both_stores!(
    the_sealer_gives_each_tenant_a_gapless_sequence_signs_heads_and_proves_inclusion,
    sealing
);
async fn sealing(store: &TestStore) {
    let ids = workload(&store.ledger, 6).await;
    let seals = seal_store(store).await;
    let signer = HeadSigner::generate();
    // A first sealer stops after two batches; a second one takes over from its checkpoint.
    let mut first = Sealer::new(store.ledger.clone(), seals.clone(), config(&signer, 5));
    readable(&store.ledger, 48).await;
    first.process_next().await.expect("batch");
    first.process_next().await.expect("batch");
    drop(first);
    let mut sealer = Sealer::new(store.ledger.clone(), seals.clone(), config(&signer, 5));
    seal_through(&mut sealer, 48).await;
    assert_eq!(sealer.sign_heads(true).await.expect("heads"), 2);
    assert_eq!(
        sealer.sign_heads(true).await.expect("heads"),
        0,
        "nothing waits"
    );

    for (tenant, actions) in &ids {
        let leaves = seals.leaves(tenant, 0, 1000).await.expect("leaves");
        assert_eq!(leaves.len(), 24);
        for (expected, leaf) in leaves.iter().enumerate() {
            assert_eq!(leaf.ledger_sequence, expected as u64);
        }
        assert!(
            leaves.windows(2).all(|w| w[0].position < w[1].position),
            "ledger order follows the log"
        );
        assert_eq!(leaves[0].aggregate_id, actions[0]);
        assert_eq!(leaves[0].event_type, "ActionSubmitted");

        let heads = seals.heads(tenant, 0, 100).await.expect("heads");
        let sizes: Vec<u64> = heads.iter().map(|h| h.tree_size).collect();
        assert_eq!(sizes, [5, 10, 15, 20, 24]);
        let keys = KeyRing::new([signer.public_key()]);
        assert!(heads.iter().all(|head| head.verify(&keys).is_ok()));
        assert_eq!(
            seals.latest_head(tenant).await.expect("latest").as_ref(),
            heads.last()
        );
        for head in &heads {
            for sequence in 0..head.tree_size {
                let proof = seals
                    .inclusion_proof(tenant, sequence, head.tree_size)
                    .await
                    .expect("proof");
                assert_eq!(proof.root, head.root);
                assert_eq!(proof.leaf_hash, leaves[sequence as usize].leaf_hash);
                proof.verify().expect("inclusion verifies");
            }
        }
        for pair in heads.windows(2) {
            let proof = seals
                .consistency_proof(tenant, pair[0].tree_size, pair[1].tree_size)
                .await
                .expect("proof");
            assert_eq!(
                (proof.from_root, proof.to_root),
                (pair[0].root, pair[1].root)
            );
            proof.verify().expect("consistency verifies");
            assert!(
                verify_consistency(
                    pair[0].tree_size,
                    pair[1].tree_size,
                    &pair[1].root,
                    &pair[1].root,
                    &proof.path
                )
                .is_err()
            );
        }
        let beyond = seals
            .inclusion_proof(tenant, 3, 25)
            .await
            .expect_err("beyond the tree");
        assert!(
            format!("{beyond:#}").contains("beyond the 24 sealed leaves"),
            "{beyond:#}"
        );
    }
    let checkpoint = seals.checkpoint().await.expect("checkpoint");
    assert_eq!(checkpoint.events, 48);

    let report = verify(
        &store.ledger,
        &seals,
        &VerifyOptions {
            keys: KeyRing::new([signer.public_key()]),
            ..VerifyOptions::default()
        },
        |_, _| {},
    )
    .await
    .expect("verify");
    assert!(report.is_ok(), "{:?}", report.divergences);
    assert_eq!(report.events, 48);
    assert!(
        report
            .tenants
            .iter()
            .all(|t| t.heads_checked == 5 && t.sealed == 24 && t.newest_head == Some(24))
    );

    // Events after the newest head are sealed but not yet covered; verify still passes.
    support::approved_action(&store.ledger, "acme", 99).await;
    seal_through(&mut sealer, 52).await;
    let report = verify(
        &store.ledger,
        &seals,
        &VerifyOptions {
            keys: KeyRing::new([signer.public_key()]),
            tenant: Some("acme".into()),
            ..VerifyOptions::default()
        },
        |_, _| {},
    )
    .await
    .expect("verify");
    assert!(report.is_ok(), "{:?}", report.divergences);
    assert_eq!(report.tenants.len(), 1);
    assert_eq!(report.tenants[0].events, 28);
}

on_both_stores!(
    without_a_signing_key_events_are_sealed_but_no_head_is_signed,
    unsigned
);
async fn unsigned(store: &TestStore) {
    workload(&store.ledger, 2).await;
    let seals = seal_store(store).await;
    let mut sealer = Sealer::new(
        store.ledger.clone(),
        seals.clone(),
        SealerConfig {
            every_events: 1,
            ..SealerConfig::default()
        },
    );
    seal_through(&mut sealer, 16).await;
    assert_eq!(sealer.sign_heads(true).await.expect("no heads"), 0);
    for tenant in support::TENANTS {
        assert_eq!(seals.leaves(tenant, 0, 100).await.expect("leaves").len(), 8);
        assert!(seals.latest_head(tenant).await.expect("head").is_none());
    }
    let report = verify(&store.ledger, &seals, &VerifyOptions::default(), |_, _| {})
        .await
        .expect("verify");
    assert!(report.is_ok(), "{:?}", report.divergences);
}

// ------------------------------------------------------------------ tampering

fn only_divergence(report: &Report) -> &countersign_verification::Divergence {
    assert_eq!(
        report.divergences.len(),
        1,
        "exactly one tenant diverges: {:#?}",
        report.divergences
    );
    let divergence = &report.divergences[0];
    assert_eq!(divergence.tenant, "acme");
    let globex = report
        .tenants
        .iter()
        .find(|t| t.tenant == "globex")
        .expect("globex");
    assert!(!globex.diverged && globex.heads_checked > 0);
    divergence
}

on_both_stores!(
    a_changed_payload_is_named_with_its_ledger_sequence,
    changed_payload
);
async fn changed_payload(store: &TestStore) {
    let sealed = sealed(store).await;
    assert!(sealed.verify(store).await.is_ok(), "untouched passes");
    let id = sealed.acme(1).to_owned();
    let leaf = sealed.leaf(&id, 2).await;
    tamper(
        store,
        &[&format!(
            "UPDATE events SET payload = jsonb_set(payload, '{{VoteCast,comment}}', '\"forged\"') WHERE aggregate_id = '{id}' AND sequence = 2"
        )],
        &[&format!(
            "UPDATE events SET payload = json_set(payload, '$.VoteCast.comment', 'forged') WHERE aggregate_id = '{id}' AND sequence = 2"
        )],
    )
    .await;
    let report = sealed.verify(store).await;
    let divergence = only_divergence(&report);
    assert_eq!(divergence.kind, DivergenceKind::Changed);
    assert_eq!(divergence.ledger_sequence, Some(leaf.ledger_sequence));
    let name = format!("action/{id}#2");
    assert_eq!(divergence.sealed.as_deref(), Some(name.as_str()));
    assert_eq!(divergence.found.as_deref(), Some(name.as_str()));
    assert!(
        divergence.detail.starts_with("payload differs"),
        "{divergence}"
    );
}

on_both_stores!(a_deleted_event_is_named, deleted_event);
async fn deleted_event(store: &TestStore) {
    let sealed = sealed(store).await;
    let id = sealed.acme(1).to_owned();
    let leaf = sealed.leaf(&id, 4).await;
    let delete = format!("DELETE FROM events WHERE aggregate_id = '{id}' AND sequence = 4");
    tamper(store, &[&delete], &[&delete]).await;
    let report = sealed.verify(store).await;
    let divergence = only_divergence(&report);
    assert_eq!(divergence.kind, DivergenceKind::Missing, "{divergence}");
    assert_eq!(divergence.ledger_sequence, Some(leaf.ledger_sequence));
    assert_eq!(
        divergence.sealed.as_deref(),
        Some(format!("action/{id}#4").as_str())
    );
    assert!(divergence.detail.contains("deleted"), "{divergence}");

    // The decision replay notices the vote's run is cut short too.
    let decisions = check_decisions(&store.ledger, None, |_, _| {})
        .await
        .expect("decisions");
    assert_eq!(decisions.mismatches.len(), 1, "{:?}", decisions.mismatches);
    assert_eq!(decisions.mismatches[0].action_id, id);
    assert_eq!(decisions.mismatches[0].sequence, 2);
}

on_both_stores!(the_last_sealed_event_deleted_is_named, deleted_last_event);
async fn deleted_last_event(store: &TestStore) {
    let sealed = sealed(store).await;
    let id = sealed.acme(PER_TENANT - 1).to_owned();
    let leaf = sealed.leaf(&id, 4).await;
    let delete = format!("DELETE FROM events WHERE aggregate_id = '{id}' AND sequence = 4");
    tamper(store, &[&delete], &[&delete]).await;
    let report = sealed.verify(store).await;
    let divergence = only_divergence(&report);
    assert_eq!(divergence.kind, DivergenceKind::Missing, "{divergence}");
    assert_eq!(divergence.ledger_sequence, Some(leaf.ledger_sequence));
    assert_eq!(
        divergence.sealed.as_deref(),
        Some(format!("action/{id}#4").as_str())
    );
}

on_both_stores!(an_inserted_forged_event_is_named, inserted_event);
async fn inserted_event(store: &TestStore) {
    let sealed = sealed(store).await;
    let id = sealed.acme(1).to_owned();
    let before = sealed.leaf(&id, 4).await;
    let forged = uuid::Uuid::now_v7().to_string();
    let p = before.position;
    tamper(
        store,
        &[&format!(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, position, txid)
             OVERRIDING SYSTEM VALUE
             SELECT 'action', '{forged}', 1, 'ActionCancelled', '1', '{{}}'::jsonb,
                    '{{\"tenant\":\"acme\",\"actor\":\"mallory\"}}'::jsonb, 1000000, txid
               FROM events WHERE aggregate_id = '{id}' AND sequence = 4"
        )],
        &[
            &format!("UPDATE events SET position = -position WHERE position > {p}"),
            "UPDATE events SET position = 1 - position WHERE position < 0",
            &format!(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, position)
                 VALUES ('action', '{forged}', 1, 'ActionCancelled', '1', '{{}}', '{{\"tenant\":\"acme\",\"actor\":\"mallory\"}}', {})",
                p + 1
            ),
        ],
    )
    .await;
    let report = sealed.verify(store).await;
    let divergence = only_divergence(&report);
    assert_eq!(divergence.kind, DivergenceKind::Inserted, "{divergence}");
    assert_eq!(divergence.ledger_sequence, Some(before.ledger_sequence + 1));
    assert_eq!(
        divergence.found.as_deref(),
        Some(format!("action/{forged}#1").as_str())
    );
    assert!(divergence.detail.contains("never sealed"), "{divergence}");
}

on_both_stores!(two_swapped_events_are_named, swapped_events);
async fn swapped_events(store: &TestStore) {
    let sealed = sealed(store).await;
    let id = sealed.acme(2).to_owned();
    let (first, second) = (sealed.leaf(&id, 1).await, sealed.leaf(&id, 2).await);
    let (p1, p2) = (first.position, second.position);
    tamper(
        store,
        &[&format!(
            "UPDATE events SET txid = CASE sequence
                 WHEN 1 THEN (SELECT txid FROM events WHERE aggregate_id = '{id}' AND sequence = 2)
                 ELSE (SELECT txid FROM events WHERE aggregate_id = '{id}' AND sequence = 1) END
              WHERE aggregate_id = '{id}' AND sequence IN (1, 2)"
        )],
        &[
            &format!("UPDATE events SET position = -1 WHERE position = {p1}"),
            &format!("UPDATE events SET position = {p1} WHERE position = {p2}"),
            &format!("UPDATE events SET position = {p2} WHERE position = -1"),
        ],
    )
    .await;
    let report = sealed.verify(store).await;
    let divergence = only_divergence(&report);
    assert_eq!(divergence.kind, DivergenceKind::Reordered, "{divergence}");
    assert_eq!(divergence.ledger_sequence, Some(first.ledger_sequence));
    assert_eq!(
        divergence.sealed.as_deref(),
        Some(format!("action/{id}#1").as_str())
    );
    assert_eq!(
        divergence.found.as_deref(),
        Some(format!("action/{id}#2").as_str())
    );
}

on_both_stores!(
    events_rewritten_with_their_leaves_are_caught_by_the_signed_head_that_covers_them,
    rewritten_leaves
);
async fn rewritten_leaves(store: &TestStore) {
    let sealed = sealed(store).await;
    let id = sealed.acme(2).to_owned();
    let leaf = sealed.leaf(&id, 2).await;
    let (events, leaves) = (
        format!(
            "UPDATE events SET payload = jsonb_set(payload, '{{VoteCast,comment}}', '\"forged\"') WHERE aggregate_id = '{id}' AND sequence = 2"
        ),
        format!(
            "UPDATE events SET payload = json_set(payload, '$.VoteCast.comment', 'forged') WHERE aggregate_id = '{id}' AND sequence = 2"
        ),
    );
    tamper(store, &[&events], &[&leaves]).await;
    // The tamperer recomputes the leaf and its digests to match, but cannot re-sign the heads.
    let event = store
        .ledger
        .read_positions(&[leaf.position])
        .await
        .expect("read")
        .pop()
        .expect("event");
    let rewritten =
        countersign_verification::leaf::SealedEvent::from_logged(&event, leaf.ledger_sequence);
    let update = format!(
        "UPDATE ledger_leaves SET leaf_hash = '{}', payload_hash = '{}' WHERE position = {}",
        rewritten.leaf_hash(),
        countersign_verification::leaf::content_hash(&event.payload),
        leaf.position
    );
    tamper(
        store,
        &["ALTER TABLE ledger_leaves DISABLE TRIGGER USER", &update],
        &["DROP TRIGGER ledger_leaves_refuse_update", &update],
    )
    .await;
    let report = sealed.verify(store).await;
    let divergence = only_divergence(&report);
    assert_eq!(
        divergence.kind,
        DivergenceKind::HeadMismatch,
        "{divergence}"
    );
    let below = leaf.ledger_sequence / 5 * 5;
    let above = (below + 5).min(16);
    assert_eq!(divergence.ledger_sequence, Some(below));
    assert!(
        divergence.detail.contains(&format!(
            "between ledger sequences {below} and {}",
            above - 1
        )),
        "{divergence}"
    );
}

on_both_stores!(heads_signed_by_another_key_are_refused, forged_heads);
async fn forged_heads(store: &TestStore) {
    let sealed = sealed(store).await;
    let other = KeyRing::new([HeadSigner::generate().public_key()]);
    let report = verify(
        &store.ledger,
        &sealed.seals,
        &VerifyOptions {
            keys: other,
            ..VerifyOptions::default()
        },
        |_, _| {},
    )
    .await
    .expect("verify");
    assert_eq!(report.divergences.len(), 2, "both tenants' heads");
    assert!(
        report
            .divergences
            .iter()
            .all(|d| d.kind == DivergenceKind::BadSignature)
    );
}

// ------------------------------------------------------------------ exports

on_both_stores!(
    an_export_verifies_offline_and_fails_when_a_line_is_altered_or_removed_or_the_head_forged,
    exports
);
async fn exports(store: &TestStore) {
    let sealed = sealed(store).await;
    let mut bytes = Vec::new();
    let summary = export(&store.ledger, &sealed.seals, "acme", 0, None, &mut bytes)
        .await
        .expect("export");
    assert_eq!((summary.from, summary.to, summary.events), (0, 16, 16));
    let keys = sealed.keys();
    let report = verify_bundle(bytes.as_slice(), &keys).expect("untouched export verifies");
    assert_eq!(report.head.tree_size, 16);
    let text = String::from_utf8(bytes).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 17);

    let fails = |lines: &[String], expected: &str| {
        let joined = lines.join("\n") + "\n";
        let err = verify_bundle(joined.as_bytes(), &keys).expect_err("refused");
        let message = format!("{err:#}");
        assert!(message.contains(expected), "{message}");
    };
    let owned: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();

    // One altered line (its leaf hash kept, then recomputed too).
    let mut altered = owned.clone();
    let mut line: BundleLine = serde_json::from_str(&altered[3]).expect("line");
    line.event.payload["forged"] = serde_json::json!(true);
    altered[3] = serde_json::to_string(&line).expect("json");
    fails(&altered, "line 4 (ledger sequence 2");
    fails(&altered, "it was altered");
    line.leaf_hash = line.event.leaf_hash();
    altered[3] = serde_json::to_string(&line).expect("json");
    fails(&altered, "inclusion proof fails");

    // A removed line, in the middle and at the end.
    let mut removed = owned.clone();
    removed.remove(5);
    fails(&removed, "expected ledger sequence 4, found 5");
    let mut truncated = owned.clone();
    truncated.pop();
    fails(&truncated, "lines were removed");

    // A head signed by another key, with its own id or with the real key's id.
    let mut header: BundleHeader = serde_json::from_str(&owned[0]).expect("header");
    let other = HeadSigner::generate();
    let head = &header.head;
    let forged = SignedHead::sign(
        &other,
        &head.tenant,
        head.tree_size,
        head.root,
        chrono::Utc::now(),
    );
    header.head = forged.clone();
    let mut reheaded = owned.clone();
    reheaded[0] = serde_json::to_string(&header).expect("json");
    fails(&reheaded, "not among the trusted public keys");
    header.head.key_id = sealed.signer.id().to_owned();
    reheaded[0] = serde_json::to_string(&header).expect("json");
    fails(&reheaded, "does not verify with key");

    // A partial range verifies; a range beyond the newest head is refused.
    let mut part = Vec::new();
    export(&store.ledger, &sealed.seals, "acme", 3, Some(9), &mut part)
        .await
        .expect("export");
    let report = verify_bundle(part.as_slice(), &keys).expect("verifies");
    assert_eq!((report.from, report.to), (3, 9));
    let err = export(
        &store.ledger,
        &sealed.seals,
        "acme",
        0,
        Some(17),
        &mut Vec::new(),
    )
    .await
    .expect_err("beyond");
    assert!(format!("{err:#}").contains("beyond it"), "{err:#}");
    let err = export(
        &store.ledger,
        &sealed.seals,
        "nobody",
        0,
        None,
        &mut Vec::new(),
    )
    .await
    .expect_err("no head");
    assert!(format!("{err:#}").contains("no signed head"), "{err:#}");
}

// ------------------------------------------------------------------ decisions

on_both_stores!(
    the_decision_replay_reproduces_recorded_decisions_and_names_an_action_that_differs,
    decisions
);
async fn decisions(store: &TestStore) {
    let sealed = sealed(store).await;
    let report = check_decisions(&store.ledger, None, |_, _| {})
        .await
        .expect("decisions");
    assert!(report.is_ok(), "{:?}", report.mismatches);
    assert_eq!(report.actions, 8);
    assert_eq!(report.commands, 16);

    let id = sealed.acme(2).to_owned();
    tamper(
        store,
        &[&format!(
            "UPDATE events SET payload = jsonb_set(payload, '{{ActionSubmitted,risk,score}}', '99') WHERE aggregate_id = '{id}' AND sequence = 1"
        )],
        &[&format!(
            "UPDATE events SET payload = json_set(payload, '$.ActionSubmitted.risk.score', 99) WHERE aggregate_id = '{id}' AND sequence = 1"
        )],
    )
    .await;
    let report = check_decisions(&store.ledger, None, |_, _| {})
        .await
        .expect("decisions");
    assert_eq!(report.mismatches.len(), 1, "{:?}", report.mismatches);
    let mismatch = &report.mismatches[0];
    assert_eq!(
        (mismatch.action_id.as_str(), mismatch.sequence),
        (id.as_str(), 1)
    );
    assert_eq!(mismatch.tenant, "acme");
    assert!(
        mismatch.detail.contains("risk.score: recorded 99, now 20"),
        "{mismatch}"
    );
    let only_globex = check_decisions(&store.ledger, Some("globex"), |_, _| {})
        .await
        .expect("decisions");
    assert!(only_globex.is_ok());
    assert_eq!(only_globex.actions, 4);
}

on_both_stores!(
    the_decision_replay_reproduces_safe_mode_skips_and_resumes,
    safe_mode_decisions
);
/// Skips for the tenant's mode at a claim (also after a lease ran out) and explicit resumes
/// record every input their decision used: the replay reproduces them.
async fn safe_mode_decisions(store: &TestStore) {
    use chrono::{Duration, Utc};
    use countersign_domain::TenantMode;
    use countersign_domain::action::{ActionCommand, RequestExecution, StartExecution};
    use countersign_ledger::testing::actions::{self, principal};

    let id = support::approved_action(&store.ledger, "acme", 0).await;
    let action_id = countersign_domain::ActionId::parse(&id).expect("an action id");
    let tenant = actions::tenant("acme");
    let now = Utc::now();
    let rita = principal("rita", &["requester"]);
    let ada = principal("ada", &["admin"]);
    let executor = principal("executor:one", &[]);
    let request = |by, seconds, mode| {
        ActionCommand::RequestExecution(RequestExecution {
            context: actions::context(&tenant, by, now + Duration::seconds(seconds)),
            mode,
        })
    };
    let start = |seconds, mode| {
        ActionCommand::StartExecution(StartExecution {
            context: actions::context(&tenant, &executor, now + Duration::seconds(seconds)),
            lease_seconds: 5,
            mode,
        })
    };
    let steps = [
        (
            request(&rita, 1, TenantMode::RequireApproval),
            vec!["ExecutionRequested"],
        ),
        (start(2, TenantMode::Safe), vec!["ExecutionSkipped"]),
        (request(&ada, 3, TenantMode::Auto), vec!["ExecutionResumed"]),
        (
            start(4, TenantMode::RequireApproval),
            vec!["ExecutionStarted"],
        ),
        // The lease ran out and the tenant is in safe mode: the next attempt does not start.
        (
            start(60, TenantMode::Safe),
            vec!["ExecutionFailed", "ExecutionSkipped"],
        ),
        (
            request(&rita, 61, TenantMode::RequireApproval),
            vec!["ExecutionResumed"],
        ),
        (
            start(62, TenantMode::RequireApproval),
            vec!["ExecutionStarted"],
        ),
    ];
    for (command, expected) in steps {
        let committed = actions::execute(&store.ledger, action_id, command)
            .await
            .expect("command commits");
        let types: Vec<&str> = committed
            .events
            .iter()
            .map(|event| event.event.event_type())
            .collect();
        assert_eq!(types, expected);
    }
    readable(&store.ledger, 4 + 8).await;
    let report = check_decisions(&store.ledger, None, |_, _| {})
        .await
        .expect("decisions");
    assert!(report.is_ok(), "{:?}", report.mismatches);
    assert_eq!(report.actions, 1);
    // The reclaim's failure and skip replay as two commands (a recorded failure, then a claim),
    // as a reclaim's failure and next start do.
    assert_eq!(report.commands, 2 + 8);
}

// ------------------------------------------------------------------ publishing

on_both_stores!(
    heads_are_published_to_files_and_a_head_deleted_from_the_database_is_caught,
    published
);
async fn published(store: &TestStore) {
    let dir = tempfile::tempdir().expect("dir");
    workload(&store.ledger, 2).await;
    let seals = seal_store(store).await;
    let signer = HeadSigner::generate();
    let mut sealer = Sealer::new(
        store.ledger.clone(),
        seals.clone(),
        SealerConfig {
            publishers: vec![Arc::new(FilePublisher::new(dir.path()))],
            ..config(&signer, 3)
        },
    );
    seal_through(&mut sealer, 16).await;
    sealer.sign_heads(true).await.expect("heads");
    let published = read_published(dir.path()).expect("published");
    let sizes: Vec<(String, u64)> = published
        .iter()
        .map(|h| (h.tenant.clone(), h.tree_size))
        .collect();
    let expected: Vec<(String, u64)> = ["acme", "globex"]
        .into_iter()
        .flat_map(|t| [3, 6, 8].map(|n| (t.to_owned(), n)))
        .collect();
    assert_eq!(sizes, expected);
    let latest: SignedHead = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("acme/latest.json")).expect("latest"),
    )
    .expect("head");
    assert_eq!(latest.tree_size, 8);
    let keys = KeyRing::new([signer.public_key()]);
    let options = VerifyOptions {
        keys,
        published: published.clone(),
        ..VerifyOptions::default()
    };
    let report = verify(&store.ledger, &seals, &options, |_, _| {})
        .await
        .expect("verify");
    assert!(report.is_ok(), "{:?}", report.divergences);

    // Whoever can rewrite the database can drop a head from it, but not from the files.
    let drop_head = "DELETE FROM ledger_heads WHERE tenant = 'acme' AND tree_size = 6";
    tamper(
        store,
        &["ALTER TABLE ledger_heads DISABLE TRIGGER USER", drop_head],
        &["DROP TRIGGER ledger_heads_refuse_delete", drop_head],
    )
    .await;
    let report = verify(&store.ledger, &seals, &options, |_, _| {})
        .await
        .expect("verify");
    assert_eq!(report.divergences.len(), 1, "{:?}", report.divergences);
    assert_eq!(
        report.divergences[0].kind,
        DivergenceKind::PublishedHeadMismatch
    );
    assert!(
        report.divergences[0].detail.contains("size 6")
            && report.divergences[0].detail.contains("missing"),
        "{}",
        report.divergences[0]
    );
}
