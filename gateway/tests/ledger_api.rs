//! Signed heads, proofs and evidence bundles through the HTTP API.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use countersign_ledger::testing::{eventually, within};
use countersign_verification::{
    ConsistencyProof, HeadSigner, InclusionProof, KeyRing, Sealer, SealerConfig, SignedHead,
};
use serde_json::json;
use support::{TestApp, token};

async fn seal(app: &TestApp, signer: &HeadSigner) {
    let config = SealerConfig {
        batch: 100,
        every_events: 1,
        every_seconds: Duration::from_secs(3600),
        signer: Some(signer.clone()),
        publishers: Vec::new(),
    };
    let mut sealer = Sealer::new(
        app.store.ledger.clone(),
        app.state.app.seals().clone(),
        config,
    );
    eventually(within(Duration::from_secs(30)), async || {
        sealer.run_until_idle().await.expect("seal");
        sealer.sign_heads(true).await.expect("sign");
        let sealed = app
            .state
            .app
            .seals()
            .checkpoint()
            .await
            .expect("checkpoint");
        if sealed.cursor >= app.store.ledger.log_head().await.expect("head")
            && app.settled_event_count().await > 0
        {
            return Ok(());
        }
        Err("never sealed everything")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heads_proofs_and_bundles_verify_for_an_auditor() {
    let app = TestApp::spawn("sqlite").await;
    let requester = token("rita", "acme", &["requester"]);
    let owner = token("olga", "acme", &["owner"]);
    let auditor = token("audrey", "acme", &["auditor"]);
    let id = app
        .post(
            "/v1/actions",
            &requester,
            json!({ "module": "crm", "capability": "tag", "summary": "Tag it" }),
        )
        .await
        .body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let signer = HeadSigner::generate();
    seal(&app, &signer).await;
    let first: SignedHead =
        serde_json::from_value(app.get("/v1/ledger/head", &auditor).await.body).expect("head");
    app.post(&format!("/v1/actions/{id}/approve"), &owner, json!({}))
        .await;
    seal(&app, &signer).await;

    let keys = KeyRing::new([signer.public_key()]);
    let answer = app.get("/v1/ledger/head", &auditor).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let head: SignedHead = serde_json::from_value(answer.body).expect("head");
    head.verify(&keys).expect("the head's signature verifies");
    assert!(head.tree_size > first.tree_size);
    let history = app.get("/v1/ledger/heads", &auditor).await;
    assert!(
        history.body["heads"]
            .as_array()
            .is_some_and(|heads| heads.len() >= 2)
    );

    let audit = app.get(&format!("/v1/actions/{id}/audit"), &auditor).await;
    let position = audit.body["events"][0]["position"]
        .as_i64()
        .expect("position");
    let inclusion = app
        .get(
            &format!(
                "/v1/ledger/proofs/inclusion?event={position}&size={}",
                head.tree_size
            ),
            &auditor,
        )
        .await;
    assert_eq!(inclusion.status, StatusCode::OK, "{}", inclusion.body);
    let proof: InclusionProof = serde_json::from_value(inclusion.body).expect("proof");
    proof.verify().expect("inclusion verifies");
    assert_eq!(proof.root, head.root);

    let consistency = app
        .get(
            &format!(
                "/v1/ledger/proofs/consistency?from={}&to={}",
                first.tree_size, head.tree_size
            ),
            &auditor,
        )
        .await;
    let proof: ConsistencyProof = serde_json::from_value(consistency.body).expect("proof");
    proof.verify().expect("consistency verifies");
    assert_eq!((proof.from_root, proof.to_root), (first.root, head.root));

    let bundle = app.get("/v1/audit/export", &auditor).await;
    assert_eq!(bundle.status, StatusCode::OK);
    assert_eq!(bundle.headers["content-type"], "application/x-ndjson");
    let text = bundle.body.as_str().expect("text").to_owned();
    let report =
        countersign_verification::export::verify_bundle(std::io::Cursor::new(text.clone()), &keys)
            .expect("an untouched bundle verifies");
    assert!(report.to > report.from);
    let tampered = text.replacen("Tag it", "Tag it twice", 1);
    assert!(
        countersign_verification::export::verify_bundle(std::io::Cursor::new(tampered), &keys)
            .is_err()
    );

    // Only evidence readers, and only of their tenant.
    assert_eq!(
        app.get("/v1/ledger/head", &requester).await.status,
        StatusCode::FORBIDDEN
    );
    let other = token("gus", "globex", &["auditor"]);
    assert_eq!(app.get("/v1/ledger/head", &other).await.code(), "no_head");
    assert_eq!(
        app.get(
            &format!("/v1/ledger/proofs/inclusion?event={position}"),
            &other
        )
        .await
        .code(),
        "event_not_sealed"
    );
    assert_eq!(
        app.get("/v1/ledger/proofs/consistency?from=3&to=1", &auditor)
            .await
            .code(),
        "invalid_proof_request"
    );
    // Before its first seal a tenant has nothing to export: a state, not a bad request.
    let unsealed = app.get("/v1/audit/export", &other).await;
    assert_eq!(
        (unsealed.status, unsealed.code()),
        (StatusCode::CONFLICT, "cannot_export"),
        "{}",
        unsealed.body
    );
}
