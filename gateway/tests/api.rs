//! The /v1 API end to end through the router, on PostgreSQL and on the embedded store.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use countersign_ledger::on_both_stores;
use countersign_ledger::testing::{eventually, readable_log, within};
use futures::StreamExt;
use serde_json::{Value, json};
use support::{API_KEY_SECRET, TestApp, token};

fn refund() -> Value {
    json!({
        "module": "billing", "capability": "refund",
        "payload": { "order": 1042, "amount": 25.5 },
        "summary": "Refund order 1042", "connectors": ["stripe"], "source": "board",
    })
}

struct People {
    owner: String,
    admin: String,
    fay: String,
    fox: String,
    approver: String,
    requester: String,
    auditor: String,
}

fn people() -> People {
    People {
        owner: token("olga", "acme", &["owner"]),
        admin: token("adam", "acme", &["admin"]),
        fay: token("fay", "acme", &["approver", "finance_ops"]),
        fox: token("fox", "acme", &["approver", "finance_ops"]),
        approver: token("ana", "acme", &["approver"]),
        requester: token("rita", "acme", &["requester"]),
        auditor: token("audrey", "acme", &["auditor"]),
    }
}

on_both_stores!(submit_approve_and_audit_the_whole_lifecycle);
async fn submit_approve_and_audit_the_whole_lifecycle(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let p = people();
    let submitted = app.post("/v1/actions", &p.requester, refund()).await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    assert_eq!(submitted.body["status"], "pending");
    assert_eq!(submitted.body["risk"]["score"], 20);
    assert_eq!(
        submitted.body["risk"]["reasons"][0]["code"],
        "module_finance_heavy"
    );
    assert_eq!(submitted.body["policy"]["is_default"], true);
    let id = submitted.body["id"].as_str().expect("id").to_owned();
    let token = submitted.token().expect("consistency token");

    let inbox = app
        .get(&format!("/v1/actions?consistent_with={token}"), &p.approver)
        .await;
    assert_eq!(inbox.status, StatusCode::OK);
    assert_eq!(inbox.body["items"][0]["id"], id);

    // The default policy wants an owner or admin.
    let refused = app
        .post(&format!("/v1/actions/{id}/approve"), &p.approver, json!({}))
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::FORBIDDEN, "not_eligible")
    );
    let approved = app
        .post(
            &format!("/v1/actions/{id}/approve"),
            &p.owner,
            json!({ "comment": "looks right" }),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.body);
    assert_eq!(approved.body["status"], "approved");
    let again = app
        .post(&format!("/v1/actions/{id}/reject"), &p.admin, json!({}))
        .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "invalid_state")
    );

    let token = approved.token().expect("token");
    let audit = app
        .get(
            &format!("/v1/actions/{id}/audit?consistent_with={token}"),
            &p.auditor,
        )
        .await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.body);
    assert_eq!(audit.headers["cache-control"], "no-store");
    let events = audit.body["events"].as_array().expect("events");
    let types: Vec<&str> = events
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "ActionSubmitted",
            "VoteCast",
            "StageApproved",
            "ActionApproved"
        ]
    );
    assert_eq!(events[0]["actor"], "rita");
    assert_eq!(events[1]["actor"], "olga");
    assert_eq!(events[1]["content"]["comment"], "looks right");
    assert!(
        events
            .iter()
            .all(|e| e["at"].is_string() && e["position"].is_i64())
    );

    let detail = app
        .get(
            &format!("/v1/actions/{id}?consistent_with={token}"),
            &p.requester,
        )
        .await;
    assert_eq!(detail.body["status"], "approved");
    assert_eq!(detail.body["stages"][0]["votes"][0]["voter"], "olga");
    assert_eq!(
        detail.body["stages"][0]["votes"][0]["comment"],
        "looks right"
    );
}

on_both_stores!(reject_with_a_comment_and_the_quorum_kinds_end_to_end);
async fn reject_with_a_comment_and_the_quorum_kinds_end_to_end(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let p = people();
    let rejected = app.post("/v1/actions", &p.requester, refund()).await;
    let id = rejected.body["id"].as_str().expect("id").to_owned();
    let answer = app
        .post(
            &format!("/v1/actions/{id}/reject"),
            &p.admin,
            json!({ "comment": "duplicate refund" }),
        )
        .await;
    assert_eq!(answer.body["status"], "rejected");
    assert_eq!(answer.body["decision"]["rejection"]["kind"], "ratio");
    assert_eq!(
        answer.body["stages"][0]["votes"][0]["comment"],
        "duplicate refund"
    );

    // Role quorum: two finance_ops at 60%.
    let policy = app
        .post("/v1/policies", &p.admin, json!({
            "id": "payouts", "name": "Payouts", "priority": 10,
            "criteria": { "module": "payouts" },
            "requirements": { "stages": [{ "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 2 }], "required_ratio": 0.6 }] }
        }))
        .await;
    assert_eq!(policy.status, StatusCode::CREATED, "{}", policy.body);
    let payout = json!({ "module": "payouts", "capability": "pause", "summary": "Pause payout", "payload": { "amount": 1_000_000 } });
    let id = app
        .post("/v1/actions", &p.requester, payout.clone())
        .await
        .body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(
        app.post(
            &format!("/v1/actions/{id}/votes"),
            &p.approver,
            json!({ "vote": "approve" })
        )
        .await
        .code(),
        "not_eligible"
    );
    assert_eq!(
        app.post(
            &format!("/v1/actions/{id}/votes"),
            &p.fay,
            json!({ "vote": "approve" })
        )
        .await
        .body["status"],
        "pending"
    );
    let done = app
        .post(
            &format!("/v1/actions/{id}/votes"),
            &p.fox,
            json!({ "vote": "approve", "comment": "ok" }),
        )
        .await;
    assert_eq!(done.body["status"], "approved");
    assert_eq!(done.body["policy"]["id"], "payouts");

    // Specific users, then a percentage pool, as two stages.
    let staged = app
        .post("/v1/policies", &p.owner, json!({
            "id": "deletions", "name": "Deletions", "priority": 20, "criteria": { "capability": { "$regex": "^delete" } },
            "requirements": { "stages": [
                { "rules": [{ "type": "specific_users", "users": ["olga", "adam"] }] },
                { "rules": [{ "type": "percentage", "percentage": 0.5, "pool": ["ana", "fay", "fox", "zed"] }], "required_ratio": 0.5 }
            ] }
        }))
        .await;
    assert_eq!(staged.status, StatusCode::CREATED, "{}", staged.body);
    let id = app
        .post("/v1/actions", &p.requester, json!({ "module": "crm", "capability": "delete-leads", "summary": "Delete stale leads" }))
        .await
        .body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let path = format!("/v1/actions/{id}/votes");
    assert_eq!(
        app.post(&path, &p.owner, json!({ "vote": "approve" }))
            .await
            .body["current_stage"],
        0
    );
    let second = app
        .post(&path, &p.admin, json!({ "vote": "abstain" }))
        .await;
    assert_eq!(second.body["current_stage"], 1, "{}", second.body);
    assert_eq!(
        app.post(&path, &p.fay, json!({ "vote": "reject" }))
            .await
            .body["status"],
        "pending"
    );
    let decided = app.post(&path, &p.fox, json!({ "vote": "approve" })).await;
    assert_eq!(decided.body["status"], "approved", "{}", decided.body);
}

on_both_stores!(idempotent_submission_answers_the_existing_action);
async fn idempotent_submission_answers_the_existing_action(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let p = people();
    let send = |body: Value| {
        let request = Request::post("/v1/actions")
            .header("authorization", format!("Bearer {}", p.requester))
            .header("content-type", "application/json")
            .header("idempotency-key", "refund-1042")
            .body(Body::from(body.to_string()))
            .expect("request");
        app.raw(request)
    };
    let first = send(refund()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let second = send(refund()).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body["id"], first.body["id"]);
    assert_eq!(second.body["idempotency_key"], "refund-1042");
    let mut different = refund();
    different["payload"]["order"] = json!(9999);
    let reused = send(different).await;
    assert_eq!(
        (reused.status, reused.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
    );
}

on_both_stores!(the_inbox_filters_paginates_and_answers_eligible_for_me);
async fn the_inbox_filters_paginates_and_answers_eligible_for_me(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let p = people();
    let mut last = None;
    for n in 0..5 {
        let mut body = refund();
        body["summary"] = json!(format!("Refund {n}"));
        if n % 2 == 0 {
            body["module"] = json!("crm");
        }
        last = app.post("/v1/actions", &p.requester, body).await.token();
    }
    let token = last.expect("token");
    let billing = app
        .get(
            &format!("/v1/actions?module=billing&consistent_with={token}"),
            &p.owner,
        )
        .await;
    assert_eq!(billing.body["items"].as_array().map(Vec::len), Some(2));
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/actions?limit=2&cursor={cursor}"),
            None => "/v1/actions?limit=2".to_owned(),
        };
        let page = app.get(&path, &p.owner).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        seen.extend(
            page.body["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|i| i["id"].clone()),
        );
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    let mine = app.get("/v1/actions?eligible=me", &p.owner).await;
    assert_eq!(mine.body["items"].as_array().map(Vec::len), Some(5));
    let not_mine = app.get("/v1/actions?eligible=me", &p.approver).await;
    assert_eq!(
        not_mine.body["items"].as_array().map(Vec::len),
        Some(0),
        "the default policy wants owners or admins"
    );
    let high = app.get("/v1/actions?risk=high&status=all", &p.owner).await;
    assert_eq!(high.body["items"].as_array().map(Vec::len), Some(0));
}

on_both_stores!(bulk_votes_cancel_and_execute);
async fn bulk_votes_cancel_and_execute(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let p = people();
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(
                app.post("/v1/actions", &p.requester, refund()).await.body["id"]
                    .as_str()
                    .expect("id")
                    .to_owned(),
            );
        }
        ids
    };
    let bulk = app
        .post(
            "/v1/votes",
            &p.owner,
            json!({ "votes": [
            { "action_id": ids[0], "vote": "approve" },
            { "action_id": ids[1], "vote": "reject", "comment": "no" },
            { "action_id": "not-an-id", "vote": "approve" },
        ] }),
        )
        .await;
    assert_eq!(bulk.status, StatusCode::OK, "{}", bulk.body);
    let results = bulk.body["results"].as_array().expect("results");
    assert_eq!(results[0]["status"], 200);
    assert_eq!(results[0]["action"]["status"], "approved");
    assert_eq!(results[1]["action"]["status"], "rejected");
    assert_eq!(results[2]["status"], 404);
    assert_eq!(results[2]["error"]["code"], "action_not_found");

    // Cancel: not by an approver; by the requester.
    assert_eq!(
        app.post(
            &format!("/v1/actions/{}/cancel", ids[2]),
            &p.approver,
            json!({})
        )
        .await
        .code(),
        "not_permitted"
    );
    let cancelled = app
        .post(
            &format!("/v1/actions/{}/cancel", ids[2]),
            &p.requester,
            json!({ "reason": "duplicate" }),
        )
        .await;
    assert_eq!(cancelled.body["status"], "cancelled");

    // Execute: a dry run previews and changes nothing; a real request records it.
    let preview = app
        .post(
            &format!("/v1/actions/{}/execute", ids[0]),
            &p.requester,
            json!({ "dry_run": true }),
        )
        .await;
    assert_eq!(preview.status, StatusCode::ACCEPTED);
    assert_eq!(preview.body["would_execute"], true);
    assert_eq!(
        preview.body["execution_key"].as_str().map(str::len),
        Some(64)
    );
    let refused = app
        .post(
            &format!("/v1/actions/{}/execute", ids[0]),
            &p.approver,
            json!({}),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let requested = app
        .post(
            &format!("/v1/actions/{}/execute", ids[0]),
            &p.admin,
            json!({}),
        )
        .await;
    assert_eq!(requested.status, StatusCode::ACCEPTED, "{}", requested.body);
    assert_eq!(requested.body["execution"]["requested"], true);
    let not_approved = app
        .post(
            &format!("/v1/actions/{}/execute", ids[1]),
            &p.admin,
            json!({ "dry_run": true }),
        )
        .await;
    assert_eq!(not_approved.body["would_execute"], false);
}

on_both_stores!(policies_settings_simulation_and_history);
async fn policies_settings_simulation_and_history(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let p = people();
    let before = chrono::Utc::now() - chrono::Duration::milliseconds(20);
    let created = app
        .post("/v1/policies", &p.admin, json!({
            "id": "big-refunds", "name": "Big refunds", "priority": 5,
            "criteria": { "action_type": "billing.refund", "payload.amount": { "$gte": 1000 } },
            "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 2 }] }], "timeout_seconds": 3600 }
        }))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["version"], 1);
    assert_eq!(
        app.get("/v1/policies/big-refunds", &p.requester).await.body["name"],
        "Big refunds"
    );
    let mut big = refund();
    big["payload"]["amount"] = json!(5000);
    let simulated = app
        .post("/v1/policies/simulate", &p.requester, big.clone())
        .await;
    assert_eq!(simulated.body["policy"]["id"], "big-refunds");
    assert_eq!(
        app.post("/v1/policies/simulate", &p.requester, refund())
            .await
            .body["policy"]["id"],
        "default"
    );

    let updated = app
        .call(Method::PUT, "/v1/policies/big-refunds", Some(&p.owner), Some(json!({
            "name": "Big refunds", "priority": 5, "criteria": { "action_type": "billing.refund" },
            "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }] }
        })))
        .await;
    assert_eq!(updated.body["version"], 2, "{}", updated.body);
    let mut stale = Request::put("/v1/policies/big-refunds")
        .header("authorization", format!("Bearer {}", p.owner))
        .header("content-type", "application/json")
        .header("if-match", "1")
        .body(Body::from(json!({ "name": "x", "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }] } }).to_string()))
        .expect("request");
    let conflict = app
        .raw(std::mem::replace(&mut stale, Request::new(Body::empty())))
        .await;
    assert_eq!(
        (conflict.status, conflict.code()),
        (StatusCode::CONFLICT, "stale_version")
    );

    let history = app
        .get(
            &format!(
                "/v1/policies?at={}",
                before
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    .replace('+', "%2B")
            ),
            &p.auditor,
        )
        .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.body);
    assert_eq!(
        history.body["policies"].as_array().map(Vec::len),
        Some(0),
        "no policy in force before its creation"
    );
    assert_eq!(
        app.get("/v1/policies", &p.auditor).await.body["policies"][0]["version"],
        2
    );

    let deleted = app
        .call(
            Method::DELETE,
            "/v1/policies/big-refunds",
            Some(&p.admin),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(
        app.get("/v1/policies/big-refunds", &p.admin).await.code(),
        "policy_not_found"
    );

    // Settings: safe mode is recorded in submissions from then on.
    let settings = app.get("/v1/settings", &p.admin).await;
    assert_eq!(settings.body["mode"], "require_approval");
    let mut safe = settings.body.clone();
    safe["mode"] = json!("safe");
    let changed = app
        .call(Method::PUT, "/v1/settings", Some(&p.owner), Some(safe))
        .await;
    assert_eq!(changed.body["mode"], "safe", "{}", changed.body);
    assert_eq!(
        app.post("/v1/actions", &p.requester, refund()).await.body["mode"],
        "safe"
    );
}

on_both_stores!(api_keys_authenticate_until_revoked);
async fn api_keys_authenticate_until_revoked(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let p = people();
    let created = app
        .post(
            "/v1/api-keys",
            &p.admin,
            json!({ "name": "billing service", "roles": ["requester"] }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let key = created.body["api_key"]
        .as_str()
        .expect("secret shown once")
        .to_owned();
    let key_id = created.body["key_id"].as_str().expect("id").to_owned();
    assert!(key.starts_with("csk.acme."));
    let listed = app.get("/v1/api-keys", &p.admin).await;
    assert!(
        !listed
            .body
            .to_string()
            .contains(key.rsplit('.').next().expect("secret")),
        "secrets are never listed"
    );
    let digest =
        countersign_gateway::auth::digest(&API_KEY_SECRET, key.rsplit('.').next().expect("secret"));
    assert!(
        listed.body.to_string().len() > 10
            && !listed
                .body
                .to_string()
                .contains(&digest.to_hex().to_string())
    );

    let submitted = app.post("/v1/actions", &key, refund()).await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    assert_eq!(
        submitted.body["requested_by"]["id"],
        format!("key:{key_id}")
    );
    assert_eq!(
        app.get("/v1/settings", &key).await.status,
        StatusCode::FORBIDDEN,
        "the key holds only its roles"
    );

    let revoked = app
        .call(
            Method::DELETE,
            &format!("/v1/api-keys/{key_id}"),
            Some(&p.admin),
            None,
        )
        .await;
    assert!(revoked.body["revoked_at"].is_string(), "{}", revoked.body);
    let refused = app.post("/v1/actions", &key, refund()).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::UNAUTHORIZED, "api_key_revoked")
    );
}

on_both_stores!(stats_and_user_history);
async fn stats_and_user_history(kind: &str) {
    let app = TestApp::with_executor(kind, [3; 32]).await;
    let p = people();
    // Deadlines of one second for two modules: one expires, one escalates to `cfo` and then
    // expires.
    for (id, module, escalation) in [
        ("fast-expiry", "mailbox", None),
        ("fast-escalation", "payouts", Some("cfo")),
    ] {
        let created = app
            .post("/v1/policies", &p.owner, json!({
                "id": id, "name": id, "priority": 10,
                "criteria": { "module": module },
                "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }],
                                  "timeout_seconds": 1, "escalation_role": escalation, "max_escalations": 1 }
            }))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    }
    let submit = async |module: &str, capability: &str| {
        let answer = app
            .post("/v1/actions", &p.requester, json!({
                "module": module, "capability": capability, "summary": format!("{module}.{capability}"),
                "payload": { "n": 1 }
            }))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        (
            answer.body["id"].as_str().expect("id").to_owned(),
            answer.body["risk"]["level"]
                .as_str()
                .expect("level")
                .to_owned(),
        )
    };
    let executed = submit("noop", "echo").await;
    let failed = submit("webhook", "post").await; // no webhook_url: fails for good
    let rejected = submit("billing", "refund").await;
    let cancelled = submit("billing", "refund").await;
    let expired = submit("mailbox", "quarantine").await;
    let escalated = submit("payouts", "pause").await;
    let all = [
        &executed, &failed, &rejected, &cancelled, &expired, &escalated,
    ];
    for id in [&executed.0, &failed.0] {
        let approved = app
            .post(&format!("/v1/actions/{id}/approve"), &p.owner, json!({}))
            .await;
        assert_eq!(approved.body["status"], "approved", "{}", approved.body);
        let requested = app
            .post(&format!("/v1/actions/{id}/execute"), &p.owner, json!({}))
            .await;
        assert_eq!(requested.status, StatusCode::ACCEPTED, "{}", requested.body);
    }
    let refused = app
        .post(
            &format!("/v1/actions/{}/reject", rejected.0),
            &p.admin,
            json!({}),
        )
        .await;
    assert_eq!(refused.body["status"], "rejected", "{}", refused.body);
    let withdrawn = app
        .post(
            &format!("/v1/actions/{}/cancel", cancelled.0),
            &p.requester,
            json!({}),
        )
        .await;
    assert_eq!(withdrawn.body["status"], "cancelled", "{}", withdrawn.body);

    // Wait for the executor and the deadlines to settle every action.
    let settled = [
        "executed",
        "failed",
        "rejected",
        "cancelled",
        "expired",
        "expired",
    ];
    let deadline = within(Duration::from_secs(60)).every(Duration::from_millis(50));
    let details = eventually(deadline, async || {
        let mut details = Vec::new();
        for (id, _) in all {
            details.push(app.get(&format!("/v1/actions/{id}"), &p.auditor).await.body);
        }
        let statuses: Vec<&str> = details
            .iter()
            .map(|d| d["status"].as_str().unwrap_or(""))
            .collect();
        if statuses == settled {
            return Ok(details);
        }
        Err(format!("{statuses:?}"))
    })
    .await;
    assert_eq!(details[5]["escalations"], 1, "escalated before it expired");

    // Every figure, against what the actions' own records say.
    let instant = |value: &Value| {
        chrono::DateTime::parse_from_rfc3339(value.as_str().expect("a time")).expect("RFC 3339")
    };
    let mut latencies: Vec<f64> = details
        .iter()
        .filter(|detail| detail["status"] != "cancelled")
        .map(|detail| {
            let taken = instant(&detail["decision"]["at"]) - instant(&detail["submitted_at"]);
            taken.num_microseconds().expect("micros") as f64 / 1e6
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        let rank = (p * latencies.len() as f64).ceil() as usize;
        let latency = latencies[rank.max(1) - 1];
        countersign_projections::rows::latency_bucket_bound(
            countersign_projections::rows::latency_bucket(latency),
        )
    };
    let mut by_risk = std::collections::BTreeMap::new();
    for (_, level) in all {
        *by_risk.entry(level.clone()).or_insert(0) += 1;
    }
    // The details are read from the ledger; the stats from the read model, which may still be
    // folding the last events: wait until it shows them all.
    let expected = json!({
        "by_status": { "cancelled": 1, "executed": 1, "expired": 2, "failed": 1, "rejected": 1 },
        "by_risk": by_risk,
        "by_module": { "billing": 2, "mailbox": 1, "noop": 1, "payouts": 1, "webhook": 1 },
        "submitted": 6,
        "decisions": { "approved": 2, "cancelled": 1, "expired": 2, "rejected": 1 },
        "decision_latency_p50_seconds": percentile(0.5),
        "decision_latency_p95_seconds": percentile(0.95),
        "approval_rate": 0.4,
        "rejection_rate": 0.2,
        "timeout_rate": 0.4,
        "escalation_rate": 1.0 / 6.0,
        "execution_success_rate": 0.5,
        "votes_cast": 3,
        "break_glass": 0,
        "break_glass_overdue": 0,
        "vote_participation": 0.5,
    });
    let deadline = within(Duration::from_secs(30)).every(Duration::from_millis(50));
    eventually(deadline, async || {
        let stats = app.get("/v1/stats", &p.auditor).await;
        assert_eq!(stats.status, StatusCode::OK, "{}", stats.body);
        if stats.body == expected {
            return Ok(());
        }
        Err(format!("{} != {expected}", stats.body))
    })
    .await;
    assert_eq!(
        app.get("/v1/stats", &p.requester).await.status,
        StatusCode::FORBIDDEN
    );

    let mine = app.get("/v1/users/rita/actions", &p.requester).await;
    assert_eq!(
        mine.body["items"].as_array().map(Vec::len),
        Some(6),
        "{}",
        mine.body
    );
    assert_eq!(
        app.get("/v1/users/olga/actions", &p.requester).await.status,
        StatusCode::FORBIDDEN
    );
    eventually(within(Duration::from_secs(30)), async || {
        let votes = app.get("/v1/users/olga/votes", &p.auditor).await;
        if let Some(votes) = votes.body["votes"].as_array()
            && votes.len() == 2
        {
            let mut voted: Vec<&str> = votes
                .iter()
                .filter_map(|vote| vote["action_id"].as_str())
                .collect();
            voted.sort_unstable();
            let mut approved = [executed.0.as_str(), failed.0.as_str()];
            approved.sort_unstable();
            assert_eq!(voted, approved);
            return Ok(());
        }
        Err(votes.body.to_string())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stream_sends_the_status_then_each_change() {
    let app = TestApp::spawn("sqlite").await;
    let p = people();
    let id = app.post("/v1/actions", &p.requester, refund()).await.body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let request = Request::get(format!("/v1/actions/{id}/stream"))
        .header("authorization", format!("Bearer {}", p.requester))
        .body(Body::empty())
        .expect("request");
    let response = tower::ServiceExt::oneshot(countersign_gateway::app(app.state.clone()), request)
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body().into_data_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("first frame")
        .expect("frame")
        .expect("bytes");
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(
        first.contains("event: status") && first.contains("\"pending\""),
        "{first}"
    );
    app.post(&format!("/v1/actions/{id}/approve"), &p.owner, json!({}))
        .await;
    let mut seen = String::new();
    while !seen.contains("event: ActionApproved") {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("a change arrives")
            .expect("frame")
            .expect("bytes");
        seen.push_str(&String::from_utf8_lossy(&frame));
    }
    assert!(seen.contains("event: VoteCast"), "{seen}");
    assert!(seen.contains("\"approved\""), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openapi_docs_and_metrics_are_served() {
    let app = TestApp::spawn("sqlite").await;
    let p = people();
    let document = app.get("/openapi.json", &p.requester).await;
    assert_eq!(document.status, StatusCode::OK);
    assert_eq!(
        document.body["openapi"]
            .as_str()
            .map(|v| v.starts_with("3.1")),
        Some(true)
    );
    assert!(document.body["paths"]["/v1/actions"]["post"].is_object());
    let page = app.call(Method::GET, "/docs", None, None).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.body.as_str().expect("html");
    assert!(
        html.contains("Redoc.init"),
        "the reference page embeds Redoc"
    );
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "nothing is loaded from elsewhere"
    );
    assert_eq!(
        app.call(Method::GET, "/metrics", None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/metrics", "metrics-secret").await.status,
        StatusCode::OK
    );
}

/// POSTs `body` with extra headers.
async fn post_with(
    app: &TestApp,
    path: &str,
    bearer: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> support::Answer {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("authorization", format!("Bearer {bearer}"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    app.raw(request.body(Body::from(body.to_string())).expect("request"))
        .await
}

on_both_stores!(the_correlation_id_travels_from_the_header_into_every_event_and_the_audit_trail);
async fn the_correlation_id_travels_from_the_header_into_every_event_and_the_audit_trail(
    kind: &str,
) {
    let app = TestApp::spawn(kind).await;
    let p = people();
    let flow = [("x-correlation-id", "refund-1042-flow")];
    let submitted = post_with(&app, "/v1/actions", &p.requester, &flow, refund()).await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    let id = submitted.body["id"].as_str().expect("id").to_owned();
    let approved = post_with(
        &app,
        &format!("/v1/actions/{id}/approve"),
        &p.owner,
        &flow,
        json!({}),
    )
    .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.body);
    // Without the header, the request id generated for the request is the correlation id.
    let plain = app.post("/v1/actions", &p.requester, refund()).await;
    let plain_id = plain.body["id"].as_str().expect("id").to_owned();
    let request_ids: Vec<String> = [&submitted, &approved, &plain]
        .iter()
        .map(|answer| {
            answer.headers["x-request-id"]
                .to_str()
                .expect("ascii")
                .to_owned()
        })
        .collect();

    // The log: every event of the flow carries it, in its metadata and its context, with the
    // id of the request that caused it.
    let position = plain.token().expect("token");
    let written: i64 = position
        .split('.')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("position");
    let events = eventually(within(Duration::from_secs(30)), async || {
        let all = readable_log(&app.store.ledger).await;
        if all.iter().any(|event| event.cursor.position == written) {
            return Ok(all);
        }
        Err("never readable")
    })
    .await;
    let of = |action: &str| {
        events
            .iter()
            .filter(|event| event.aggregate_id == action)
            .collect::<Vec<_>>()
    };
    let flow_events = of(&id);
    assert!(flow_events.len() >= 3, "submitted, voted, approved");
    for event in &flow_events {
        assert_eq!(event.metadata["correlation_id"], "refund-1042-flow");
        let decoded = event
            .decode::<countersign_domain::action::Action>()
            .expect("decodes");
        assert_eq!(
            decoded
                .context()
                .correlation_id
                .as_ref()
                .map(|c| c.as_str()),
            Some("refund-1042-flow")
        );
    }
    assert_eq!(
        flow_events[0].metadata["request_id"],
        request_ids[0].as_str()
    );
    assert_eq!(
        flow_events[1].metadata["request_id"],
        request_ids[1].as_str()
    );
    for event in of(&plain_id) {
        assert_eq!(event.metadata["correlation_id"], request_ids[2].as_str());
        assert_eq!(event.metadata["request_id"], request_ids[2].as_str());
    }
    // Every event a request caused names the front door it came through.
    for event in flow_events.iter().chain(of(&plain_id).iter()) {
        assert_eq!(event.metadata["channel"], "api", "{}", event.metadata);
    }

    // The audit trail shows it on every entry.
    let token = approved.token().expect("token");
    let audit = app
        .get(
            &format!("/v1/actions/{id}/audit?consistent_with={token}"),
            &p.auditor,
        )
        .await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.body);
    let entries = audit.body["events"].as_array().expect("events");
    assert_eq!(entries.len(), flow_events.len());
    assert!(
        entries
            .iter()
            .all(|entry| entry["correlation_id"] == "refund-1042-flow"),
        "{}",
        audit.body
    );
}

on_both_stores!(idempotency_key_and_correlation_id_are_headers_never_body_fields);
async fn idempotency_key_and_correlation_id_are_headers_never_body_fields(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let p = people();
    let before = app.settled_event_count().await;
    for field in ["idempotency_key", "correlation_id"] {
        let mut body = refund();
        body[field] = json!("refund-1042");
        let refused = app.post("/v1/actions", &p.requester, body).await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
            "{field}: {}",
            refused.body
        );
        assert!(
            refused.body["detail"]
                .as_str()
                .is_some_and(|detail| detail.contains(field)),
            "{}",
            refused.body
        );
    }
    assert_eq!(app.settled_event_count().await, before, "nothing recorded");
}
