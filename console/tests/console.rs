//! The console through its router (`oneshot`), on both stores: signing in and its cookie, CSRF,
//! buttons shown only to whoever the domain would accept, forged POSTs refused with nothing
//! recorded, escaping, tenant isolation, assets and headers.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::time::Duration;

use axum::http::{StatusCode, header};
use countersign_app::actions;
use countersign_domain::action::Action;
use countersign_domain::{ActionId, Role, UserId};
use countersign_gateway::{Claims, mint_hs256};
use countersign_ledger::on_both_stores;
use countersign_ledger::testing::{eventually, within};
use serde_json::json;

use support::*;

impl Harness {
    async fn events_of(&self, id: ActionId) -> usize {
        self.state
            .app
            .ledger()
            .stream_of::<Action>(&id)
            .await
            .expect("stream")
            .len()
    }
}

async fn sign_in_sets_a_session_cookie_with_the_right_attributes(kind: &str) {
    let harness = Harness::start(kind).await;
    let exp = chrono::Utc::now().timestamp() + 1800;
    let credential = token("ana", "acme", &["approver"], exp);
    let answer = harness.sign_in_answer(&credential, &[]).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.location(), "/inbox");
    let set = answer
        .set_cookies()
        .into_iter()
        .find(|cookie| cookie.starts_with("countersign_session="))
        .expect("a session cookie");
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    assert!(set.contains("Path=/"), "{set}");
    assert!(!set.contains("Secure"), "plain HTTP gets no Secure: {set}");
    let max_age: i64 = set
        .split(';')
        .find_map(|part| part.trim().strip_prefix("Max-Age="))
        .expect("Max-Age")
        .parse()
        .expect("seconds");
    assert!(
        (1..=1800).contains(&max_age),
        "the session ends with the token: {max_age}"
    );
    // The cookie carries the credential encrypted, never in clear.
    assert!(!set.contains(&credential));

    let over_tls = harness
        .sign_in_answer(&credential, &[("x-forwarded-proto", "https")])
        .await;
    let secure = over_tls
        .set_cookies()
        .into_iter()
        .find(|cookie| cookie.starts_with("countersign_session="))
        .expect("a session cookie");
    assert!(secure.contains("Secure"), "{secure}");

    let cookie = answer.cookie("countersign_session").expect("cookie");
    let inbox = harness.get("/inbox", Some(&cookie)).await;
    assert_eq!(inbox.status, StatusCode::OK);
    assert!(inbox.body.contains("ana · acme"), "{}", inbox.body);
    assert!(
        inbox
            .headers
            .get(header::CONTENT_SECURITY_POLICY)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|csp| csp.contains("script-src 'self'")
                && csp.contains("frame-ancestors 'none'")
                && !csp.contains("unsafe-inline"))
    );
    assert_eq!(
        inbox.headers.get(header::CACHE_CONTROL).expect("no-store"),
        "no-store"
    );
    assert_eq!(
        inbox
            .headers
            .get(header::X_CONTENT_TYPE_OPTIONS)
            .expect("nosniff"),
        "nosniff"
    );

    // Signing out ends the session cookie.
    let csrf = inbox.csrf();
    let out = harness
        .post("/sign-out", Some(&cookie), &[("csrf", &csrf)])
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(
        out.set_cookies().iter().any(
            |cookie| cookie.starts_with("countersign_session=") && cookie.contains("Max-Age=0")
        )
    );
}
on_both_stores!(sign_in_sets_a_session_cookie_with_the_right_attributes);

async fn a_bad_credential_shows_the_sign_in_page_with_a_clear_error(kind: &str) {
    let harness = Harness::start(kind).await;
    let forged = mint_hs256(
        b"another-secret-entirely-0123456789",
        &Claims {
            sub: "mallory".into(),
            tenant: "acme".into(),
            roles: vec!["owner".into()],
            exp: hour(),
            iat: None,
            iss: None,
            aud: None,
        },
    )
    .expect("token");
    for credential in [forged.as_str(), "not a token", "csk.acme.key.secret"] {
        let answer = harness.sign_in_answer(credential, &[]).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{credential}");
        assert!(answer.body.contains("Signing in failed"), "{}", answer.body);
        assert!(answer.cookie("countersign_session").is_none());
    }
    let expired = token("ana", "acme", &["approver"], hour() - 7200);
    let answer = harness.sign_in_answer(&expired, &[]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.body.contains("token_expired"), "{}", answer.body);

    // The sign-in POST needs its own CSRF token too.
    let refused = harness
        .post(
            "/sign-in",
            None,
            &[("credential", &token("ana", "acme", &["approver"], hour()))],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.cookie("countersign_session").is_none());

    // A GET with a token only fills the form in: no session.
    let prefilled = harness.get("/sign-in?token=abc.def.ghi", None).await;
    assert_eq!(prefilled.status, StatusCode::OK);
    assert!(prefilled.body.contains("abc.def.ghi"));
    assert!(prefilled.cookie("countersign_session").is_none());

    // Pages without a session go to the sign-in page; so does a cookie that does not decrypt.
    for cookie in [None, Some("countersign_session=forged")] {
        let page = harness.get("/inbox", cookie).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        assert!(page.location().starts_with("/sign-in"));
    }
    let home = harness.get("/", None).await;
    assert_eq!(home.location(), "/sign-in");
}
on_both_stores!(a_bad_credential_shows_the_sign_in_page_with_a_clear_error);

async fn a_forged_post_without_the_csrf_token_is_refused_and_records_nothing(kind: &str) {
    let harness = Harness::start(kind).await;
    let requester = actor("rita", "acme", &["requester"]);
    let id = harness
        .submit(&requester, "Refund order 1042", json!({"order": 1042}))
        .await;
    let before = harness.events_of(id).await;
    let ana = harness
        .sign_in(&token("ana", "acme", &["approver"], hour()))
        .await;
    let bob = harness
        .sign_in(&token("bob", "acme", &["approver"], hour()))
        .await;
    let bobs_csrf = harness.csrf(&bob).await;
    let path = format!("/actions/{id}/vote");
    for fields in [
        vec![("vote", "approve")],
        vec![("vote", "approve"), ("csrf", "0000")],
        // Another session's token does not fit this session.
        vec![("vote", "approve"), ("csrf", bobs_csrf.as_str())],
    ] {
        let answer = harness.post(&path, Some(&ana), &fields).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{fields:?}");
        assert!(
            answer.body.contains("csrf_token_invalid"),
            "{}",
            answer.body
        );
    }
    for path in ["/inbox/votes", "/request", "/sign-out", "/settings"] {
        let answer = harness
            .post(
                path,
                Some(&ana),
                &[("id", &id.to_string()), ("vote", "approve")],
            )
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(harness.events_of(id).await, before, "nothing was recorded");

    // With the token, the same vote counts.
    let csrf = harness.csrf(&ana).await;
    let voted = harness
        .post(
            &path,
            Some(&ana),
            &[("vote", "approve"), ("csrf", &csrf), ("comment", "fine")],
        )
        .await;
    assert_eq!(voted.status, StatusCode::SEE_OTHER, "{}", voted.body);
    assert!(harness.events_of(id).await > before);
}
on_both_stores!(a_forged_post_without_the_csrf_token_is_refused_and_records_nothing);

async fn a_requester_sees_no_approve_button_on_their_own_action_and_a_forged_vote_is_refused(
    kind: &str,
) {
    let harness = Harness::start(kind).await;
    let rita = actor("rita", "acme", &["requester", "approver"]);
    let id = harness
        .submit(&rita, "Refund order 7", json!({"order": 7}))
        .await;
    let before = harness.events_of(id).await;
    let cookie = harness
        .sign_in(&token("rita", "acme", &["requester", "approver"], hour()))
        .await;
    let page = harness.get(&format!("/actions/{id}"), Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("id=\"approve\""), "no approve button");
    assert!(!page.body.contains("id=\"vote-form\""));
    // She may cancel her own request.
    assert!(page.body.contains("id=\"cancel\""));
    let csrf = page.csrf();
    let forged = harness
        .post(
            &format!("/actions/{id}/vote"),
            Some(&cookie),
            &[("vote", "approve"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
    assert!(forged.body.contains("self_approval"), "{}", forged.body);
    assert_eq!(harness.events_of(id).await, before, "nothing was recorded");

    // An approver sees the buttons, but no cancel.
    let ana = harness
        .sign_in(&token("ana", "acme", &["approver"], hour()))
        .await;
    let page = harness.get(&format!("/actions/{id}"), Some(&ana)).await;
    assert!(page.body.contains("id=\"approve\""));
    assert!(page.body.contains("id=\"reject\""));
    assert!(!page.body.contains("id=\"cancel\""));
    // An auditor sees the timeline and no vote.
    let audrey = harness
        .sign_in(&token("audrey", "acme", &["auditor"], hour()))
        .await;
    let page = harness.get(&format!("/actions/{id}"), Some(&audrey)).await;
    assert!(page.body.contains("id=\"timeline\""));
    assert!(page.body.contains("ActionSubmitted"));
    assert!(!page.body.contains("id=\"approve\""));
}
on_both_stores!(
    a_requester_sees_no_approve_button_on_their_own_action_and_a_forged_vote_is_refused
);

async fn user_text_renders_escaped(kind: &str) {
    let harness = Harness::start(kind).await;
    let rita = actor("rita", "acme", &["requester"]);
    let id = harness
        .submit(
            &rita,
            "<script>alert('summary')</script>",
            json!({"note": "<img src=x onerror=alert(1)>", "long": "x".repeat(400)}),
        )
        .await;
    let ana = harness
        .sign_in(&token("ana", "acme", &["approver"], hour()))
        .await;
    let page = harness.get(&format!("/actions/{id}"), Some(&ana)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    assert!(!page.body.contains("<img src=x"));
    assert!(page.body.contains("&#60;script&#62;"), "{}", page.body);
    assert!(page.body.contains("&#60;img src=x onerror=alert(1)&#62;"));
    // A long value is collapsed.
    assert!(page.body.contains("long value ("));
    // The inbox row too, once the read model has it.
    eventually(within(Duration::from_secs(30)), async || {
        let inbox = harness.get("/inbox", Some(&ana)).await;
        if !inbox.body.contains(&id.to_string()) {
            return Err("the inbox has not shown the action yet".to_owned());
        }
        if inbox.body.contains("<script>alert") {
            return Err("unescaped summary".to_owned());
        }
        Ok(())
    })
    .await;
}
on_both_stores!(user_text_renders_escaped);

async fn another_tenants_action_answers_404(kind: &str) {
    let harness = Harness::start(kind).await;
    let other = actor("olga", "globex", &["requester"]);
    let id = harness.submit(&other, "Globex refund", json!({})).await;
    let ana = harness
        .sign_in(&token("ana", "acme", &["owner"], hour()))
        .await;
    let page = harness.get(&format!("/actions/{id}"), Some(&ana)).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(!page.body.contains("Globex refund"));
    let missing = harness
        .get(
            &format!("/actions/{}", ActionId::from_uuid(uuid::Uuid::now_v7())),
            Some(&ana),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        harness.get("/actions/not-an-id", Some(&ana)).await.status,
        StatusCode::NOT_FOUND
    );
    let csrf = harness.csrf(&ana).await;
    let before = harness.events_of(id).await;
    let cancel = harness
        .post(
            &format!("/actions/{id}/cancel"),
            Some(&ana),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(cancel.status, StatusCode::NOT_FOUND);
    assert_eq!(harness.events_of(id).await, before);
}
on_both_stores!(another_tenants_action_answers_404);

async fn a_repeated_request_form_creates_one_action(kind: &str) {
    let harness = Harness::start(kind).await;
    let rita = harness
        .sign_in(&token("rita", "acme", &["requester"], hour()))
        .await;
    let form = harness.get("/request", Some(&rita)).await;
    assert_eq!(form.status, StatusCode::OK);
    let marker = "name=\"idempotency_key\" value=\"";
    let start = form.body.find(marker).expect("a key") + marker.len();
    let key = form.body[start..]
        .split('"')
        .next()
        .expect("key")
        .to_owned();
    let csrf = form.csrf();
    let fields = [
        ("csrf", csrf.as_str()),
        ("idempotency_key", key.as_str()),
        ("module", "billing"),
        ("capability", "refund"),
        ("summary", "Refund order 9"),
        ("payload", "{\"order\": 9}"),
        ("flags", "financial"),
    ];
    let first = harness.post("/request", Some(&rita), &fields).await;
    let second = harness.post("/request", Some(&rita), &fields).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.body);
    assert_eq!(first.location(), second.location());

    // The simulation answers risk and policy; bad JSON names the field.
    let simulated = harness
        .post("/request/simulate", Some(&rita), &fields)
        .await;
    assert!(
        simulated.body.contains("simulated-risk"),
        "{}",
        simulated.body
    );
    let bad = [
        ("csrf", csrf.as_str()),
        ("module", "billing"),
        ("capability", "refund"),
        ("summary", "x"),
        ("payload", "{not json"),
    ];
    let refused = harness.post("/request", Some(&rita), &bad).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        refused.body.contains("<strong>payload</strong>"),
        "{}",
        refused.body
    );
    let simulated = harness.post("/request/simulate", Some(&rita), &bad).await;
    assert!(simulated.body.contains("simulation-error"));
}
on_both_stores!(a_repeated_request_form_creates_one_action);

#[tokio::test]
async fn assets_are_embedded_under_hashed_names_with_an_immutable_cache() {
    let harness = Harness::start("sqlite").await;
    let page = harness.get("/sign-in", None).await;
    let scripts: Vec<&str> = page
        .body
        .split("src=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(
        scripts.len(),
        3,
        "htmx, its SSE extension, the console's script"
    );
    for path in scripts {
        assert!(path.starts_with("/assets/"), "{path}");
        let asset = harness.get(path, None).await;
        assert_eq!(asset.status, StatusCode::OK, "{path}");
        assert_eq!(
            asset.headers.get(header::CACHE_CONTROL).expect("cache"),
            "public, max-age=31536000, immutable"
        );
        assert!(
            asset
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.starts_with("text/javascript"))
        );
    }
    assert_eq!(
        harness.get("/assets/htmx.min.0000.js", None).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(!page.body.contains("<script>"), "no inline script");
}

async fn a_vote_is_bound_to_the_payload_the_page_showed(kind: &str) {
    let harness = Harness::start(kind).await;
    let rita = actor("rita", "acme", &["requester"]);
    let id = harness
        .submit(&rita, "Refund order 12", json!({"order": 12}))
        .await;
    let ana = harness
        .sign_in(&token("ana", "acme", &["approver"], hour()))
        .await;
    let page = harness.get(&format!("/actions/{id}"), Some(&ana)).await;
    let marker = "name=\"execution_key\" value=\"";
    let start = page.body.find(marker).expect("the key shown") + marker.len();
    let shown = page.body[start..]
        .split('"')
        .next()
        .expect("key")
        .to_owned();
    let csrf = page.csrf();
    let before = harness.events_of(id).await;
    let path = format!("/actions/{id}/vote");
    let other = "0".repeat(64);
    let refused = harness
        .post(
            &path,
            Some(&ana),
            &[
                ("csrf", &csrf),
                ("vote", "approve"),
                ("execution_key", &other),
            ],
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert!(refused.body.contains("payload_changed"), "{}", refused.body);
    let malformed = harness
        .post(
            &path,
            Some(&ana),
            &[
                ("csrf", &csrf),
                ("vote", "approve"),
                ("execution_key", "XYZ"),
            ],
        )
        .await;
    assert_eq!(malformed.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(harness.events_of(id).await, before, "nothing was recorded");
    let voted = harness
        .post(
            &path,
            Some(&ana),
            &[
                ("csrf", &csrf),
                ("vote", "approve"),
                ("execution_key", &shown),
            ],
        )
        .await;
    assert_eq!(voted.status, StatusCode::SEE_OTHER, "{}", voted.body);
    let (action, _) = actions::watch(&harness.state.app, &rita, id)
        .await
        .expect("action");
    let state = action.state().expect("state");
    let ballot = state.ballots[0]
        .get(&UserId::parse("ana").expect("user"))
        .expect("ana's ballot");
    assert_eq!(
        ballot.execution_key.as_ref().map(|key| key.as_str()),
        Some(shown.as_str())
    );
}
on_both_stores!(a_vote_is_bound_to_the_payload_the_page_showed);

async fn the_inbox_filters_sorts_and_pages(kind: &str) {
    let harness = Harness::start(kind).await;
    let rita = actor("rita", "acme", &["requester"]);
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(
            harness
                .submit(&rita, &format!("Refund order {n}"), json!({"order": n}))
                .await,
        );
    }
    let ana = harness
        .sign_in(&token("ana", "acme", &["approver"], hour()))
        .await;
    // Once the read model has all 30 (the count badge says so): the newest first, 25 a page,
    // the next page has the rest.
    eventually(within(Duration::from_secs(30)), async || {
        let badge = harness.get("/inbox/badge", Some(&ana)).await;
        if badge.body == "30" {
            Ok(())
        } else {
            Err(format!("the badge says {}", badge.body))
        }
    })
    .await;
    let first = harness
        .get("/inbox?status=all&sort=created", Some(&ana))
        .await;
    let all_section = &first.body[first.body.find("id=\"all\"").expect("all")..];
    assert!(all_section.contains(&ids[29].to_string()));
    assert!(
        !all_section.contains(&ids[0].to_string()),
        "the oldest is on page two"
    );
    let marker = "rel=\"next\" href=\"";
    let start = all_section.find(marker).expect("a next page") + marker.len();
    let next = all_section[start..]
        .split('"')
        .next()
        .expect("href")
        .replace("&amp;", "&")
        .replace("&#38;", "&");
    let second = harness.get(&next, Some(&ana)).await;
    assert_eq!(second.status, StatusCode::OK, "{next}");
    let all_section = &second.body[second.body.find("id=\"all\"").expect("all")..];
    assert!(all_section.contains(&ids[0].to_string()));
    assert!(!all_section.contains(&ids[29].to_string()));
    // Filters narrow the list; a value the inbox does not know is refused, naming it.
    let high = harness.get("/inbox?status=all&risk=high", Some(&ana)).await;
    let all_section = &high.body[high.body.find("id=\"all\"").expect("all")..];
    assert!(all_section.contains("No action matches these filters."));
    let bad = harness.get("/inbox?risk=extreme", Some(&ana)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("risk: unknown level"), "{}", bad.body);
    // Requests by someone else are the owner's, admin's or auditor's to filter by.
    let refused = harness.get("/inbox?requested_by=rita", Some(&ana)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}
on_both_stores!(the_inbox_filters_sorts_and_pages);

async fn a_session_with_an_api_key_ends_when_the_key_is_revoked(kind: &str) {
    let harness = Harness::start(kind).await;
    let owner = actor("olivia", "acme", &["owner"]);
    let roles = ["approver"]
        .into_iter()
        .map(|role| Role::parse(role).expect("role"))
        .collect();
    let created = countersign_app::keys::create(&harness.state.app, &owner, "console", roles)
        .await
        .expect("a key")
        .value;
    let cookie = harness.sign_in(&created.api_key).await;
    let inbox = harness.get("/inbox", Some(&cookie)).await;
    assert_eq!(inbox.status, StatusCode::OK);
    assert!(inbox.body.contains(&format!("key:{}", created.key.key_id)));
    countersign_app::keys::revoke(&harness.state.app, &owner, &created.key.key_id)
        .await
        .expect("revoked");
    let ended = harness.get("/inbox", Some(&cookie)).await;
    assert_eq!(ended.status, StatusCode::SEE_OTHER);
    assert_eq!(ended.location(), "/sign-in?ended=1");
    let page = harness.get("/sign-in?ended=1", None).await;
    assert!(page.body.contains("Your session ended"));
    // The live stream refuses it too.
    let stream = harness.get("/ui/stream", Some(&cookie)).await;
    assert_eq!(stream.status, StatusCode::SEE_OTHER);
}
on_both_stores!(a_session_with_an_api_key_ends_when_the_key_is_revoked);
