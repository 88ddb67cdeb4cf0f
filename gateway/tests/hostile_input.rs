//! What the API accepts, every reader of the log reads back: hostile documents are refused with
//! 422 naming the field and change nothing, and whatever is accepted is read back exactly by the
//! projections, the sealer, verification and the executor — on both stores.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use countersign_ledger::LogCursor;
use countersign_ledger::on_both_stores;
use countersign_ledger::testing::{eventually, within};
use countersign_verification::export::{export, verify_bundle};
use countersign_verification::{HeadSigner, KeyRing, Sealer, SealerConfig, VerifyOptions, verify};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use support::{Answer, TestApp, token};

/// POSTs raw bytes (duplicate keys and exact number spellings survive only as bytes).
async fn post_raw(app: &TestApp, path: &str, bearer: &str, body: String) -> Answer {
    app.raw(
        Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("authorization", format!("Bearer {bearer}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request"),
    )
    .await
}

fn submission_with_payload(payload: &str) -> String {
    format!(r#"{{"module":"noop","capability":"echo","summary":"d","payload":{payload}}}"#)
}

fn nested(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

/// Seals the whole log, signs heads, verifies the store, and exports every tenant's history
/// with proofs and verifies the bundle offline: every event reads, hashes and matches.
async fn seal_and_verify(app: &TestApp) {
    let events = app.settled_event_count().await;
    let signer = HeadSigner::generate();
    let keys = KeyRing::new([signer.public_key()]);
    let mut sealer = Sealer::new(
        app.store.ledger.clone(),
        app.state.app.seals().clone(),
        SealerConfig {
            signer: Some(signer),
            ..SealerConfig::default()
        },
    );
    let sealed = sealer
        .run_until_idle()
        .await
        .expect("the sealer reads every event");
    assert_eq!(sealed as usize, events, "every event sealed");
    sealer.sign_heads(true).await.expect("heads");
    let report = verify(
        &app.store.ledger,
        app.state.app.seals(),
        &VerifyOptions {
            tenant: None,
            keys: keys.clone(),
            published: Vec::new(),
            batch: 0,
        },
        |_, _| {},
    )
    .await
    .expect("verify reads every event");
    assert!(report.is_ok(), "{:?}", report.divergences);
    assert_eq!(report.events as usize, events);
    let mut exported = 0;
    for tree in app.state.app.seals().trees().await.expect("trees") {
        let mut bundle = Vec::new();
        export(
            &app.store.ledger,
            app.state.app.seals(),
            &tree.tenant,
            0,
            None,
            &mut bundle,
        )
        .await
        .expect("export reads every event");
        let checked = verify_bundle(bundle.as_slice(), &keys).expect("the bundle verifies");
        exported += checked.to - checked.from;
    }
    assert_eq!(exported as usize, events, "every event exported");
}

/// Where a write landed, from its consistency token (`<txid>.<position>`).
fn cursor_of(answer: &Answer) -> LogCursor {
    let token = answer.token().expect("a consistency token");
    let (txid, position) = token.split_once('.').expect("txid.position");
    LogCursor {
        txid: txid.parse().expect("txid"),
        position: position.parse().expect("position"),
    }
}

/// Waits until every projection has applied the log through `head` (the last write's cursor;
/// on PostgreSQL the readable head may lag behind it while other transactions are open),
/// failing if a tailer stalls.
async fn projections_catch_up(app: &TestApp, head: LogCursor) {
    eventually(within(Duration::from_secs(60)), async || {
        let stalled = app.store.ledger.health().stalled();
        assert!(stalled.is_empty(), "a tailer stalled: {stalled:?}");
        let mut behind = false;
        for projection in countersign_projections::Projection::ALL {
            let live = app
                .state
                .app
                .projections()
                .live(projection)
                .await
                .expect("generation")
                .expect("live");
            behind |= live.checkpoint < head;
        }
        if !behind {
            return Ok(());
        }
        Err(format!("projections never reached {head:?}"))
    })
    .await;
}

on_both_stores!(the_deep_payload_attack_is_refused_and_every_tenant_keeps_moving);
async fn the_deep_payload_attack_is_refused_and_every_tenant_keeps_moving(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let mallory = token("mallory", "evil", &["requester"]);
    let rita = token("rita", "acme", &["requester"]);
    let before = app.settled_event_count().await;

    // The attack of issue 12 (125 levels used to be accepted and stored 129 deep), and the
    // first depth over the documented limit of 32.
    for levels in [125, 127, 33] {
        let refused = post_raw(
            &app,
            "/v1/actions",
            &mallory,
            submission_with_payload(&nested(levels)),
        )
        .await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
            "{levels} levels: {}",
            refused.body
        );
        assert!(
            refused.body["field"]
                .as_str()
                .is_some_and(|field| field.starts_with("payload")),
            "{}",
            refused.body
        );
        assert!(
            refused.body["detail"]
                .as_str()
                .is_some_and(|detail| detail.contains("deeper than 32")),
            "{}",
            refused.body
        );
    }
    assert_eq!(app.settled_event_count().await, before, "nothing recorded");

    // The limit itself is accepted and read back whole.
    let deepest = post_raw(
        &app,
        "/v1/actions",
        &mallory,
        submission_with_payload(&nested(32)),
    )
    .await;
    assert_eq!(deepest.status, StatusCode::CREATED, "{}", deepest.body);

    // Another tenant's new action is readable at once.
    let submitted = app
        .post(
            "/v1/actions",
            &rita,
            json!({"module": "billing", "capability": "refund", "summary": "Refund 1042",
                   "payload": {"order": 1042}}),
        )
        .await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    let id = submitted.body["id"].as_str().expect("id");
    let consistency = submitted.token().expect("token");
    let read = app
        .get(
            &format!("/v1/actions/{id}?consistent_with={consistency}"),
            &rita,
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);

    let deepest_id = deepest.body["id"].as_str().expect("id");
    let read = app
        .get(
            &format!("/v1/actions/{deepest_id}?consistent_with={consistency}"),
            &mallory,
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(
        read.body["request"]["payload"],
        serde_json::from_str::<Value>(&nested(32)).expect("json")
    );
    projections_catch_up(&app, cursor_of(&submitted)).await;
    seal_and_verify(&app).await;
}

on_both_stores!(hostile_documents_and_text_get_422_naming_the_field_and_change_nothing);
async fn hostile_documents_and_text_get_422_naming_the_field_and_change_nothing(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let rita = token("rita", "acme", &["requester"]);
    let olga = token("olga", "acme", &["owner"]);
    let pending = app
        .post(
            "/v1/actions",
            &rita,
            json!({"module": "billing", "capability": "refund", "summary": "Refund 1042"}),
        )
        .await;
    assert_eq!(pending.status, StatusCode::CREATED);
    let id = pending.body["id"].as_str().expect("id").to_owned();
    let before = app.settled_event_count().await;

    let policy = |criteria: &str| {
        format!(
            r#"{{"id":"p1","name":"p","criteria":{criteria},"requirements":{{"stages":[{{"rules":[{{"type":"any","min_approvals":1}}]}}]}}}}"#
        )
    };
    let cases: Vec<(&str, &str, &str, String, &str)> = vec![
        // (what, path, caller, body, field named)
        (
            "NUL in a payload string",
            "/v1/actions",
            &rita,
            submission_with_payload(r#"{"note":"a\u0000b"}"#),
            "payload.note",
        ),
        (
            "NUL in a payload key",
            "/v1/actions",
            &rita,
            submission_with_payload(r#"{"k\u0000":1}"#),
            "payload",
        ),
        (
            "duplicate keys in the payload",
            "/v1/actions",
            &rita,
            submission_with_payload(r#"{"amount":1,"amount":1000000}"#),
            "payload.amount",
        ),
        (
            "an integer that would be rounded",
            "/v1/actions",
            &rita,
            submission_with_payload(r#"{"amount":123456789012345678901234567890}"#),
            "payload.amount",
        ),
        (
            "a decimal that would be rounded",
            "/v1/actions",
            &rita,
            submission_with_payload(r#"{"rate":0.12345678901234567890123}"#),
            "payload.rate",
        ),
        (
            "a bidirectional override in the summary",
            "/v1/actions",
            &rita,
            r#"{"module":"noop","capability":"echo","summary":"Refund \u202e0001 rodnev\u202c ok"}"#
                .to_owned(),
            "summary",
        ),
        (
            "an invisible character in a vote comment",
            "/v1/actions/ID/approve",
            &olga,
            r#"{"comment":"fine\u2066 really\u2069"}"#.to_owned(),
            "comment",
        ),
        (
            "NUL in a criteria value",
            "/v1/policies",
            &olga,
            policy(r#"{"module":{"$eq":"a\u0000"}}"#),
            "criteria.module.$eq",
        ),
        (
            "criteria nested beyond the limit",
            "/v1/policies",
            &olga,
            policy(&format!(r#"{{"payload":{{"$eq":{}}}}}"#, nested(40))),
            "criteria.payload.$eq",
        ),
        (
            "criteria nested beyond the parser (issue 12's policy attack)",
            "/v1/policies",
            &olga,
            policy(&format!(r#"{{"payload":{{"$eq":{}}}}}"#, nested(123))),
            "criteria",
        ),
        (
            "a bidirectional override in a policy name",
            "/v1/policies",
            &olga,
            r#"{"id":"p2","name":"safe\u202e","requirements":{"stages":[{"rules":[{"type":"any","min_approvals":1}]}]}}"#
                .to_owned(),
            "name",
        ),
        (
            "an invisible character in an API key name",
            "/v1/api-keys",
            &olga,
            r#"{"name":"svc\u200b","roles":["requester"]}"#.to_owned(),
            "name",
        ),
        (
            "NUL in an API key name",
            "/v1/api-keys",
            &olga,
            r#"{"name":"svc\u0000","roles":["requester"]}"#.to_owned(),
            "name",
        ),
    ];
    for (what, path, caller, body, field) in cases {
        let path = path.replace("ID", &id);
        let refused = post_raw(&app, &path, caller, body).await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
            "{what}: {}",
            refused.body
        );
        assert!(
            refused.body["field"]
                .as_str()
                .is_some_and(|named| named.starts_with(field)),
            "{what}: expected the field {field}: {}",
            refused.body
        );
    }
    assert_eq!(
        app.settled_event_count().await,
        before,
        "nothing was recorded"
    );
    // Exact numbers and joiners pass.
    let accepted = post_raw(
        &app,
        "/v1/actions",
        &rita,
        r#"{"module":"noop","capability":"echo","summary":"family 👨‍👩‍👧","payload":{"amount":18446744073709551615,"rate":0.1,"big":1e20}}"#
            .to_owned(),
    )
    .await;
    assert_eq!(accepted.status, StatusCode::CREATED, "{}", accepted.body);
    assert_eq!(
        accepted.body["request"]["payload"]["amount"],
        json!(18_446_744_073_709_551_615_u64)
    );
}

/// JSON text of every kind a hostile client sends: deep, wide, duplicate keys, NUL and every
/// Unicode plane in keys and strings, numbers of any spelling and size.
fn hostile_json() -> impl Strategy<Value = String> {
    let number = "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?";
    let string =
        any::<String>().prop_map(|text| serde_json::to_string(&text).expect("a string encodes"));
    let key = prop_oneof![
        Just("\"a\"".to_owned()),
        Just("\"b\"".to_owned()),
        Just("\"\\u0000\"".to_owned()),
        string.clone(),
    ];
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        number.prop_map(|n| n),
        string,
    ];
    let tree = leaf.prop_recursive(6, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((key.clone(), inner), 0..6).prop_map(|pairs| {
                let members: Vec<String> =
                    pairs.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    });
    // Wrapped in up to 140 arrays: across the limit of 32 and serde_json's 128.
    (tree, prop_oneof![0usize..4, 28usize..36, 120usize..140])
        .prop_map(|(tree, depth)| format!("{}{tree}{}", "[".repeat(depth), "]".repeat(depth)))
}

on_both_stores!(whatever_the_api_accepts_every_reader_reads_back_exactly);
async fn whatever_the_api_accepts_every_reader_reads_back_exactly(kind: &str) {
    let app = TestApp::with_executor(kind, [9; 32]).await;
    let rita = token("rita", "acme", &["requester"]);
    let mut runner = TestRunner::new(Config {
        cases: 48,
        ..Config::default()
    });
    let mut accepted: Vec<(String, Value)> = Vec::new();
    let mut last_write = LogCursor::START;
    let mut refused = 0;
    let strategy = hostile_json();
    // Numbers PostgreSQL stores as `numeric` and gives back in another spelling, then 48
    // generated bodies.
    let fixed = ["[-7.149264637413e17, 1e2, 1.50, 0.1, -0]".to_owned()];
    let generated = (0..48).map(|_| strategy.new_tree(&mut runner).expect("a case").current());
    for payload in fixed.into_iter().chain(generated) {
        let answer = post_raw(
            &app,
            "/v1/actions",
            &rita,
            submission_with_payload(&payload),
        )
        .await;
        match answer.status {
            StatusCode::CREATED => {
                let id = answer.body["id"].as_str().expect("id").to_owned();
                let sent: Value = serde_json::from_str(&payload).expect("accepted JSON parses");
                accepted.push((id, sent));
                last_write = last_write.max(cursor_of(&answer));
            }
            StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST => {
                assert!(
                    ["invalid_input", "malformed_json"].contains(&answer.code()),
                    "a refusal has a stable code: {}",
                    answer.body
                );
                refused += 1;
            }
            other => panic!("{other} for {payload}: {}", answer.body),
        }
    }
    assert!(
        !accepted.is_empty() && refused > 0,
        "the cases cross the limits both ways ({} accepted, {refused} refused)",
        accepted.len()
    );
    projections_catch_up(&app, last_write).await;
    for (id, sent) in &accepted {
        let read = app.get(&format!("/v1/actions/{id}"), &rita).await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.body);
        // Exactly, as canonical JSON (RFC 8785, what execution keys hash): PostgreSQL's jsonb
        // keeps numbers as `numeric`, so `-7.149264637413e17` reads back as
        // `-714926463741300000` — the same number, which serde_json then calls an integer.
        let canonical = countersign_domain::canonical::canonical_json;
        assert_eq!(
            String::from_utf8_lossy(&canonical(&read.body["request"]["payload"])),
            String::from_utf8_lossy(&canonical(sent)),
            "read back exactly"
        );
        assert_eq!(
            read.body["execution_key"],
            json!(
                countersign_domain::canonical::ExecutionKey::compute(
                    &countersign_domain::ActionType::parse("noop.echo").expect("type"),
                    &read.body["request"]["payload"],
                )
                .as_str()
            ),
            "the key recomputed from what was read back is the recorded one"
        );
        let audit = app
            .get(
                &format!("/v1/actions/{id}/audit"),
                &token("audrey", "acme", &["auditor"]),
            )
            .await;
        assert_eq!(audit.status, StatusCode::OK, "{}", audit.body);
    }
    // The embedded executor tails the same log: it must not be stuck either.
    let executor = app.executor.clone().expect("executor");
    let head = last_write;
    eventually(within(Duration::from_secs(60)), async || {
        let read = executor.ledger().load_checkpoint("executor").await;
        if read.expect("checkpoint") >= head {
            return Ok(());
        }
        let stalled = app.store.ledger.health().stalled();
        assert!(stalled.is_empty(), "a tailer stalled: {stalled:?}");
        Err("the executor never read the whole log")
    })
    .await;
    seal_and_verify(&app).await;
}
