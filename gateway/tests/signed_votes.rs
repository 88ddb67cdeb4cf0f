//! Votes bound to what the voter saw: a vote carrying the action's execution key is recorded
//! with it (in the detail and the audit trail) and checked again by the decision replay
//! (`countersign verify --decisions`); a vote carrying another payload's key is refused with
//! `payload_changed` and records nothing; a key that is not one is refused naming the field.
//! Signed votes: a member registers an Ed25519 key and signs (tenant, action, execution key,
//! vote, signed_at); a good signature is recorded and replayed; a bad one, another payload's,
//! one from a member without a key, with a key id that is not theirs or signed too long ago is
//! refused and records nothing; rotating keys keeps old votes checkable.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use axum::http::{Method, StatusCode};
use countersign_domain::quorum::Vote;
use countersign_domain::signing::{VoteSigner, format_signed_at};
use countersign_domain::{ActionId, TenantId};
use countersign_ledger::on_both_stores;
use countersign_verification::decisions::check_decisions;
use serde_json::json;
use support::{TestApp, token};

on_both_stores!(a_vote_is_bound_to_the_payload_the_voter_saw);
async fn a_vote_is_bound_to_the_payload_the_voter_saw(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let owner = token("olga", "acme", &["owner"]);
    let requester = token("rita", "acme", &["requester"]);
    let created = app
        .post(
            "/v1/policies",
            &owner,
            json!({ "id": "two", "name": "two approvals", "requirements": {
                "stages": [{ "rules": [{ "type": "any", "min_approvals": 2 }] }] } }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let submit = async |order: u32| {
        let submitted = app
            .post(
                "/v1/actions",
                &requester,
                json!({ "module": "billing", "capability": "refund", "summary": "refund",
                        "payload": { "order": order } }),
            )
            .await;
        assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
        (
            submitted.body["id"].as_str().expect("id").to_owned(),
            submitted.body["execution_key"]
                .as_str()
                .expect("key")
                .to_owned(),
        )
    };
    let (id, key) = submit(1).await;
    let (_, other_key) = submit(2).await;
    assert_ne!(key, other_key);

    // Another payload's key: refused, nothing recorded.
    let before = app.get(&format!("/v1/actions/{id}"), &owner).await.body;
    let refused = app
        .post(
            &format!("/v1/actions/{id}/approve"),
            &token("ann", "acme", &["approver"]),
            json!({ "execution_key": other_key }),
        )
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::CONFLICT, "payload_changed"),
        "{}",
        refused.body
    );
    let after = app.get(&format!("/v1/actions/{id}"), &owner).await.body;
    assert_eq!(after["position"], before["position"], "nothing recorded");

    // Not a key at all: refused naming the field.
    let malformed = app
        .post(
            &format!("/v1/actions/{id}/votes"),
            &token("ann", "acme", &["approver"]),
            json!({ "vote": "approve", "execution_key": "abc" }),
        )
        .await;
    assert_eq!(
        (
            malformed.status,
            malformed.code(),
            malformed.body["field"].clone()
        ),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            json!("execution_key")
        ),
        "{}",
        malformed.body
    );

    // The action's own key, through both vote endpoints: recorded with each vote.
    let first = app
        .post(
            &format!("/v1/actions/{id}/approve"),
            &token("ann", "acme", &["approver"]),
            json!({ "execution_key": key }),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let second = app
        .post(
            &format!("/v1/actions/{id}/votes"),
            &token("bob", "acme", &["approver"]),
            json!({ "vote": "approve", "execution_key": key }),
        )
        .await;
    assert_eq!(second.body["status"], "approved", "{}", second.body);
    let votes = second.body["stages"][0]["votes"].as_array().expect("votes");
    assert_eq!(votes.len(), 2);
    assert!(
        votes.iter().all(|vote| vote["execution_key"] == key),
        "{}",
        second.body
    );
    let audit = app.get(&format!("/v1/actions/{id}/audit"), &owner).await;
    let recorded: Vec<_> = audit.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|event| event["event_type"] == "VoteCast")
        .map(|event| event["content"]["execution_key"].clone())
        .collect();
    assert_eq!(recorded, [json!(key), json!(key)], "{}", audit.body);

    // The decision replay decides each bound vote again against the action's key.
    // The replay reads the log below every open transaction: wait until all of it is readable
    // (another test's transaction on the same server may hold the horizon back).
    app.settled_event_count().await;
    let report = check_decisions(&app.store.ledger, Some("acme"), |_, _| {})
        .await
        .expect("decision replay");
    assert!(report.is_ok(), "{:?}", report.mismatches);
    assert_eq!(report.bound_votes, 2);
}

/// The body of a vote signed by `signer` at `signed_at` (whole seconds) over `signed_key`.
fn signed_body(
    signer: &VoteSigner,
    id: &str,
    signed_key: &str,
    vote: Vote,
    signed_at: chrono::DateTime<chrono::Utc>,
) -> serde_json::Value {
    let key = serde_json::from_value(json!(signed_key)).expect("execution key");
    let signature = signer.sign(
        &TenantId::parse("acme").expect("tenant"),
        &ActionId::parse(id).expect("id"),
        &key,
        vote,
        signed_at,
    );
    json!({
        "vote": vote,
        "execution_key": signed_key,
        "signature": signature.signature,
        "signed_at": format_signed_at(signed_at),
        "key_id": signature.key_id,
    })
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0).expect("now")
}

on_both_stores!(a_signed_vote_is_checked_against_the_voters_registered_key);
async fn a_signed_vote_is_checked_against_the_voters_registered_key(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let owner = token("olga", "acme", &["owner"]);
    let requester = token("rita", "acme", &["requester"]);
    let ann = token("ann", "acme", &["approver"]);
    let bob = token("bob", "acme", &["approver"]);
    let ann_key = VoteSigner::from_seed([11; 32]);
    let created = app
        .post(
            "/v1/policies",
            &owner,
            json!({ "id": "two", "name": "two approvals", "requirements": {
                "stages": [{ "rules": [{ "type": "any", "min_approvals": 2 }] }] } }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);

    // ann registers her key; a value that is not a key is refused naming the field.
    let malformed = app
        .call(
            Method::PUT,
            "/v1/members/me/signing-key",
            Some(&ann),
            Some(json!({ "public_key": "abc" })),
        )
        .await;
    assert_eq!(
        (malformed.status, malformed.body["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("public_key")),
        "{}",
        malformed.body
    );
    let registered = app
        .call(
            Method::PUT,
            "/v1/members/me/signing-key",
            Some(&ann),
            Some(json!({ "public_key": ann_key.public_key() })),
        )
        .await;
    assert_eq!(registered.status, StatusCode::OK, "{}", registered.body);
    let key_id = ann_key.public_key().key_id();
    assert_eq!(
        registered.body["active_key_id"], key_id,
        "{}",
        registered.body
    );
    let taken = app
        .call(
            Method::PUT,
            "/v1/members/me/signing-key",
            Some(&bob),
            Some(json!({ "public_key": ann_key.public_key() })),
        )
        .await;
    assert_eq!(
        (taken.status, taken.code()),
        (StatusCode::CONFLICT, "signing_key_in_use"),
        "{}",
        taken.body
    );
    let bob_entry = app.get("/v1/members/bob", &owner).await;
    assert_eq!(
        bob_entry.status,
        StatusCode::NOT_FOUND,
        "a refused registration adds nobody: {}",
        bob_entry.body
    );

    let submit = async |order: u32| {
        let submitted = app
            .post(
                "/v1/actions",
                &requester,
                json!({ "module": "billing", "capability": "refund", "summary": "refund",
                        "payload": { "order": order } }),
            )
            .await;
        assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
        (
            submitted.body["id"].as_str().expect("id").to_owned(),
            submitted.body["execution_key"]
                .as_str()
                .expect("key")
                .to_owned(),
        )
    };
    let (id, key) = submit(1).await;
    let (other_id, other_key) = submit(2).await;
    let votes = format!("/v1/actions/{id}/votes");
    let before = app.get(&format!("/v1/actions/{id}"), &owner).await.body;

    let refusals = [
        // A signature over another vote (reject) sent as an approval.
        (
            &ann,
            {
                let mut body = signed_body(&ann_key, &id, &key, Vote::Reject, now());
                body["vote"] = json!("approve");
                body
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_signature",
        ),
        // Signed over another payload's key, sent with it.
        (
            &ann,
            signed_body(&ann_key, &id, &other_key, Vote::Approve, now()),
            StatusCode::CONFLICT,
            "payload_changed",
        ),
        // Signed over another payload's key, sent with this action's.
        (
            &ann,
            {
                let mut body = signed_body(&ann_key, &id, &other_key, Vote::Approve, now());
                body["execution_key"] = json!(key);
                body
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_signature",
        ),
        // Signed for another action.
        (
            &ann,
            signed_body(&ann_key, &other_id, &key, Vote::Approve, now()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_signature",
        ),
        // A key id that is not ann's.
        (
            &ann,
            {
                let mut body = signed_body(&ann_key, &id, &key, Vote::Approve, now());
                body["key_id"] = json!("0123456789abcdef");
                body
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_signing_key",
        ),
        // bob never registered a key.
        (
            &bob,
            signed_body(
                &VoteSigner::from_seed([12; 32]),
                &id,
                &key,
                Vote::Approve,
                now(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_signing_key",
        ),
        // Signed an hour ago.
        (
            &ann,
            signed_body(
                &ann_key,
                &id,
                &key,
                Vote::Approve,
                now() - chrono::Duration::hours(1),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "signed_at_out_of_window",
        ),
        // A signature without its time.
        (
            &ann,
            {
                let mut body = signed_body(&ann_key, &id, &key, Vote::Approve, now());
                body.as_object_mut().expect("object").remove("signed_at");
                body
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        // Signed in another member's place.
        (
            &ann,
            {
                let mut body = signed_body(&ann_key, &id, &key, Vote::Approve, now());
                body["on_behalf_of"] = json!("bob");
                body
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
    ];
    for (voter, body, status, code) in refusals {
        let refused = app.post(&votes, voter, body.clone()).await;
        assert_eq!(
            (refused.status, refused.code()),
            (status, code),
            "{body}: {}",
            refused.body
        );
    }
    let after = app.get(&format!("/v1/actions/{id}"), &owner).await.body;
    assert_eq!(after["position"], before["position"], "nothing recorded");

    // A good signature: recorded with the vote, in the detail and the audit trail.
    let signed_at = now();
    let cast = app
        .post(
            &votes,
            &ann,
            signed_body(&ann_key, &id, &key, Vote::Approve, signed_at),
        )
        .await;
    assert_eq!(cast.status, StatusCode::OK, "{}", cast.body);
    let ballot = &cast.body["stages"][0]["votes"][0];
    assert_eq!(ballot["signature"]["key_id"], key_id, "{}", cast.body);
    assert_eq!(
        ballot["signature"]["signed_at"],
        json!(signed_at),
        "{}",
        cast.body
    );
    let audit = app.get(&format!("/v1/actions/{id}/audit"), &owner).await;
    let signed: Vec<_> = audit.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|event| event["event_type"] == "VoteCast")
        .map(|event| event["content"]["signature"]["public_key"].clone())
        .collect();
    assert_eq!(signed, [json!(ann_key.public_key())], "{}", audit.body);

    // Rotation: a new key signs from now on; the old one stays listed, retired.
    let new_key = VoteSigner::from_seed([13; 32]);
    let rotated = app
        .call(
            Method::PUT,
            "/v1/members/me/signing-key",
            Some(&ann),
            Some(json!({ "public_key": new_key.public_key() })),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let listed = app.get("/v1/members/ann/signing-keys", &owner).await;
    let keys = listed.body["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2, "{}", listed.body);
    assert_eq!(keys[0]["key_id"], key_id);
    assert!(keys[0]["retired_at"].is_string(), "{}", listed.body);
    let old = app
        .post(
            &format!("/v1/actions/{other_id}/votes"),
            &ann,
            signed_body(&ann_key, &other_id, &other_key, Vote::Approve, now()),
        )
        .await;
    assert_eq!(
        (old.status, old.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown_signing_key"),
        "the retired key signs no more: {}",
        old.body
    );
    let again = app
        .post(
            &format!("/v1/actions/{other_id}/votes"),
            &ann,
            signed_body(&new_key, &other_id, &other_key, Vote::Approve, now()),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);

    // Only ann, an owner or an admin removes her key.
    let forbidden = app
        .call(
            Method::DELETE,
            "/v1/members/ann/signing-key",
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(
        forbidden.status,
        StatusCode::FORBIDDEN,
        "{}",
        forbidden.body
    );
    let removed = app
        .call(
            Method::DELETE,
            "/v1/members/ann/signing-key",
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);
    assert_eq!(removed.body["active_key_id"], json!(null));
    let gone = app
        .call(
            Method::DELETE,
            "/v1/members/me/signing-key",
            Some(&ann),
            None,
        )
        .await;
    assert_eq!(gone.code(), "signing_key_not_found", "{}", gone.body);

    // The decision replay checks both signatures again, with the keys they were made with.
    // The replay reads the log below every open transaction: wait until all of it is readable
    // (another test's transaction on the same server may hold the horizon back).
    app.settled_event_count().await;
    let report = check_decisions(&app.store.ledger, Some("acme"), |_, _| {})
        .await
        .expect("decision replay");
    assert!(report.is_ok(), "{:?}", report.mismatches);
    assert_eq!(report.bound_votes, 2);
}
