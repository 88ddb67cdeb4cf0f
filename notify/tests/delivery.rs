//! Email and webhook notifications against real peers on loopback, on both stores: an SMTP sink
//! receives each approval request once (plain and HTML parts, a stable `Message-ID`); its
//! approval link, opened over HTTP on the served gateway, changes nothing until confirmed, then
//! casts the vote once; used, forged or decided links are refused with a page saying why. The
//! tenant's webhook receives signed notifications once; a failing one is retried, then
//! dead-lettered and shown to admins.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use countersign_app::App;
use countersign_app::notify::{Dispatcher, NotificationSender, Notifier, NotifierConfig};
use countersign_domain::members::NotificationChannel;
use countersign_gateway::{AppState, AuthConfig, Claims, mint_hs256};
use countersign_ledger::on_both_stores;
use countersign_ledger::testing::{TestStore, eventually, settled_log, within};
use countersign_notify::{EmailSender, WebhookSender};
use serde_json::{Value, json};
use support::{SmtpSink, receiver};

const SECRET: &[u8] = b"test-secret-for-countersign-notify";
const WEBHOOK_KEY: [u8; 32] = [9; 32];

struct Served {
    store: TestStore,
    app: App,
    base: String,
    http: reqwest::Client,
}

impl Served {
    async fn start(kind: &str) -> Self {
        let store = TestStore::of_kind(kind).await.expect("store");
        let projections = countersign_projections::ProjectionStore::open(&store.config)
            .await
            .expect("projections");
        let seals = countersign_verification::SealStore::open(&store.config)
            .await
            .expect("seals");
        let app =
            App::new(store.ledger.clone(), projections, seals).with_api_key_secret(Some([7; 32]));
        let state = AppState::new(
            app.clone(),
            AuthConfig {
                hs256_secret: Some(SECRET.to_vec()),
                api_key_secret: Some([7; 32]),
                ..AuthConfig::default()
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, countersign_gateway::app(state)).await });
        Self {
            store,
            app,
            base: format!("http://{address}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
        }
    }

    fn token(user: &str, roles: &[&str]) -> String {
        mint_hs256(
            SECRET,
            &Claims {
                sub: user.to_owned(),
                tenant: "acme".to_owned(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                exp: chrono::Utc::now().timestamp() + 3600,
                iat: None,
                iss: None,
                aud: None,
            },
        )
        .expect("token")
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(bearer);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("answer");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn members(&self) {
        let owner = Self::token("olga", &["owner"]);
        for (user, roles, email) in [
            ("olga", json!(["owner"]), "olga@example.com"),
            ("adam", json!(["admin"]), "adam@example.com"),
            ("rita", json!(["requester"]), "rita@example.com"),
        ] {
            let (status, body) = self
                .call(
                    reqwest::Method::POST,
                    "/v1/members",
                    &owner,
                    Some(json!({ "user_id": user, "roles": roles, "email": email })),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
    }

    async fn submit(&self, order: u32) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/actions",
                &Self::token("rita", &["requester"]),
                Some(json!({
                    "module": "billing", "capability": "refund",
                    "payload": { "order": order }, "summary": format!("Refund order {order} <now>"),
                })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("id").to_owned()
    }

    async fn notify(&self, notifier: &Notifier) {
        settled_log(&self.store.ledger).await;
        let mut checkpoint = None;
        eventually(within(Duration::from_secs(20)), async || {
            match notifier.process_next(&mut checkpoint).await {
                Ok(0) => Ok(()),
                Ok(read) => Err(format!("read {read} more")),
                Err(err) => Err(format!("{err:#}")),
            }
        })
        .await;
    }

    async fn votes(&self, id: &str) -> Vec<Value> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/actions/{id}"),
                &Self::token("olga", &["owner"]),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["stages"][0]["votes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn page(
        &self,
        method: reqwest::Method,
        link: &str,
    ) -> (u16, String, reqwest::header::HeaderMap) {
        let response = self.http.request(method, link).send().await.expect("page");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, response.text().await.expect("text"), headers)
    }
}

fn approve_link(mail: &support::Mail) -> String {
    let data = mail.data.replace("=\r\n", "");
    let start = data
        .find("Approve: ")
        .expect("an approve link in the plain part")
        + "Approve: ".len();
    data[start..]
        .split_whitespace()
        .next()
        .expect("a link")
        .to_owned()
}

on_both_stores!(an_approval_email_arrives_once_and_its_link_votes_only_when_confirmed);
async fn an_approval_email_arrives_once_and_its_link_votes_only_when_confirmed(kind: &str) {
    let served = Served::start(kind).await;
    served.members().await;
    let sink = SmtpSink::start("250 OK").await;
    let email: Arc<dyn NotificationSender> = Arc::new(
        EmailSender::new(
            served.app.clone(),
            &sink.url,
            "countersign@example.test",
            Some(served.base.clone()),
        )
        .expect("email sender"),
    );
    let notifier = Notifier::new(
        served.store.ledger.clone(),
        NotifierConfig {
            channels: [NotificationChannel::Email].into(),
            link_base: Some(served.base.clone()),
            ..NotifierConfig::default()
        },
    );
    let dispatcher = Dispatcher::new(served.app.clone(), vec![email]);
    let id = served.submit(1042).await;
    served.notify(&notifier).await;
    dispatcher.deliver_due().await.expect("delivered");
    // Delivering again (a second dispatcher pass, a replayed notifier) sends nothing more.
    served.notify(&notifier).await;
    dispatcher.deliver_due().await.expect("nothing due");

    let mails = sink.received();
    let mut to: Vec<String> = mails.iter().flat_map(|m| m.recipients.clone()).collect();
    to.sort();
    assert_eq!(
        to,
        ["adam@example.com", "olga@example.com"],
        "each approver once"
    );
    let olga = mails
        .iter()
        .find(|m| m.recipients == ["olga@example.com"])
        .expect("olga's mail");
    let subject = olga.header("Subject").expect("subject");
    assert!(subject.contains("Approval needed"), "{subject}");
    let message_id = olga.header("Message-ID").expect("message id");
    assert!(
        message_id.ends_with("@notifications.countersign>"),
        "{message_id}"
    );
    assert!(
        olga.header("Content-Type")
            .expect("type")
            .starts_with("multipart/alternative"),
        "plain and HTML parts"
    );
    assert!(olga.data.contains("text/html"), "an HTML part");
    assert!(
        olga.data.contains("Refund order 1042 &lt;now&gt;"),
        "the HTML part escapes the summary"
    );
    assert!(olga.data.contains("Risk: low"), "{}", olga.data);

    // Opening the link (as a mail scanner would) changes nothing.
    let link = approve_link(olga);
    assert!(
        link.starts_with(&format!("{}/approve/", served.base)),
        "{link}"
    );
    for _ in 0..2 {
        let (status, page, headers) = served.page(reqwest::Method::GET, &link).await;
        assert_eq!(status, 200, "{page}");
        assert!(
            page.contains("Refund order 1042 &lt;now&gt;"),
            "escaped: {page}"
        );
        assert!(page.contains("<form method=\"post\">"), "{page}");
        assert!(!page.contains("<script"), "no script");
        let csp = headers
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(csp.contains("default-src 'none'"), "{csp}");
    }
    assert!(served.votes(&id).await.is_empty(), "GET recorded nothing");

    // Confirming casts olga's vote, once.
    let (status, page, _) = served.page(reqwest::Method::POST, &link).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Your vote was recorded"), "{page}");
    let votes = served.votes(&id).await;
    assert_eq!(votes.len(), 1, "{votes:?}");
    assert_eq!(votes[0]["voter"], "olga");
    assert_eq!(votes[0]["vote"], "approve");
    let (status, page, _) = served.page(reqwest::Method::POST, &link).await;
    assert_eq!(status, 409, "the action is decided now: {page}");
    assert!(page.contains("already been decided"), "{page}");

    // Adam's link for the same, now decided, action: refused with a page saying why.
    let adam = mails
        .iter()
        .find(|m| m.recipients == ["adam@example.com"])
        .expect("adam's mail");
    let (status, page, _) = served.page(reqwest::Method::GET, &approve_link(adam)).await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("action_decided"), "{page}");

    // A forged link (a changed voter, the signature kept) is refused.
    let forged = {
        let (payload, mac) = link
            .rsplit_once('/')
            .expect("token")
            .1
            .split_once('.')
            .expect("two parts");
        let mut claims: Value = serde_json::from_slice(
            &(0..payload.len())
                .step_by(2)
                .map(|at| u8::from_str_radix(&payload[at..at + 2], 16).expect("hex"))
                .collect::<Vec<u8>>(),
        )
        .expect("claims");
        claims["voter"] = json!("adam");
        let bytes = serde_json::to_vec(&claims).expect("json");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}/approve/{hex}.{mac}", served.base)
    };
    let (status, page, _) = served.page(reqwest::Method::POST, &forged).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("link_invalid"), "{page}");
    assert_eq!(served.votes(&id).await.len(), 1, "nothing more recorded");
}

on_both_stores!(a_link_is_single_use_while_the_action_stays_open);
async fn a_link_is_single_use_while_the_action_stays_open(kind: &str) {
    let served = Served::start(kind).await;
    served.members().await;
    // Two approvals needed: olga's vote leaves the action open.
    let owner = Served::token("olga", &["owner"]);
    let (status, body) = served
        .call(
            reqwest::Method::PUT,
            "/v1/settings",
            &owner,
            Some(json!({
                "mode": "require_approval",
                "default_requirements": { "stages": [{ "rules": [
                    { "type": "any", "min_approvals": 2, "roles": ["owner", "admin"] }
                ] }] }
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sink = SmtpSink::start("250 OK").await;
    let email: Arc<dyn NotificationSender> = Arc::new(
        EmailSender::new(
            served.app.clone(),
            &sink.url,
            "countersign@example.test",
            Some(served.base.clone()),
        )
        .expect("email sender"),
    );
    let notifier = Notifier::new(
        served.store.ledger.clone(),
        NotifierConfig {
            channels: [NotificationChannel::Email].into(),
            ..NotifierConfig::default()
        },
    );
    let id = served.submit(7).await;
    served.notify(&notifier).await;
    Dispatcher::new(served.app.clone(), vec![email])
        .deliver_due()
        .await
        .expect("delivered");
    let mails = sink.received();
    let olga = mails
        .iter()
        .find(|m| m.recipients == ["olga@example.com"])
        .expect("olga's mail");
    let link = approve_link(olga);
    let (status, page, _) = served.page(reqwest::Method::POST, &link).await;
    assert_eq!(status, 200, "{page}");
    let (status, page, _) = served.page(reqwest::Method::POST, &link).await;
    assert_eq!(status, 410, "{page}");
    assert!(page.contains("already used"), "{page}");
    assert_eq!(served.votes(&id).await.len(), 1);
}

on_both_stores!(webhook_notifications_are_signed_sent_once_and_dead_lettered_after_the_limit);
async fn webhook_notifications_are_signed_sent_once_and_dead_lettered_after_the_limit(kind: &str) {
    let served = Served::start(kind).await;
    served.members().await;
    let (url, received) = receiver(200).await;
    let owner = Served::token("olga", &["owner"]);
    let (_, mut settings) = served
        .call(reqwest::Method::GET, "/v1/settings", &owner, None)
        .await;
    settings["webhook_url"] = json!(url);
    let (status, body) = served
        .call(
            reqwest::Method::PUT,
            "/v1/settings",
            &owner,
            Some(settings.clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let webhook: Arc<dyn NotificationSender> = Arc::new(
        WebhookSender::new(
            served.app.clone(),
            WEBHOOK_KEY,
            countersign_executor::OutboundPolicy::default()
                .allowing(["127.0.0.0/8".parse().expect("a CIDR")]),
        )
        .expect("webhook sender"),
    );
    let notifier = Notifier::new(
        served.store.ledger.clone(),
        NotifierConfig {
            channels: [NotificationChannel::Webhook].into(),
            ..NotifierConfig::default()
        },
    );
    let dispatcher = Dispatcher::new(served.app.clone(), vec![webhook.clone()]);
    served.submit(1).await;
    served.notify(&notifier).await;
    dispatcher.deliver_due().await.expect("delivered");
    dispatcher.deliver_due().await.expect("nothing more");
    let deliveries = received.lock().expect("lock").clone();
    assert_eq!(deliveries.len(), 2, "one per approver, once each");
    for delivery in &deliveries {
        let timestamp: i64 = delivery.headers["x-countersign-timestamp"]
            .to_str()
            .expect("text")
            .parse()
            .expect("seconds");
        let secret = countersign_executor::builtin::Webhook::tenant_secret(&WEBHOOK_KEY, "acme");
        assert_eq!(
            delivery.headers["x-countersign-signature"]
                .to_str()
                .expect("text"),
            countersign_executor::builtin::Webhook::signature(&secret, timestamp, &delivery.body),
            "signed like webhook.post"
        );
        let body: Value = serde_json::from_slice(&delivery.body).expect("json");
        assert_eq!(body["kind"], "assigned");
        assert_eq!(body["details"]["summary"], "Refund order 1 <now>");
    }

    // A receiver that keeps failing: retried with backoff, then dead-lettered, visible to admins.
    let (failing, attempts) = receiver(500).await;
    settings["webhook_url"] = json!(failing);
    let (status, body) = served
        .call(reqwest::Method::PUT, "/v1/settings", &owner, Some(settings))
        .await;
    assert_eq!(status, 200, "{body}");
    served.submit(2).await;
    served.notify(&notifier).await;
    let mut dispatcher = Dispatcher::new(served.app.clone(), vec![webhook]);
    dispatcher.max_attempts = 2;
    dispatcher.deliver_due().await.expect("first attempts");
    let admin = Served::token("adam", &["admin"]);
    let (_, pending) = served
        .call(
            reqwest::Method::GET,
            "/v1/notifications/deliveries?status=pending",
            &admin,
            None,
        )
        .await;
    assert_eq!(
        pending["deliveries"].as_array().map(Vec::len),
        Some(2),
        "{pending}"
    );
    assert_eq!(pending["deliveries"][0]["attempts"], 1);
    assert!(pending["deliveries"][0]["next_attempt_at"].is_string());
    eventually(within(Duration::from_secs(20)), async || {
        dispatcher
            .deliver_due()
            .await
            .map_err(|err| format!("{err:#}"))?;
        let (_, dead) = served
            .call(
                reqwest::Method::GET,
                "/v1/notifications/deliveries?status=dead",
                &admin,
                None,
            )
            .await;
        match dead["deliveries"].as_array().map(Vec::len) {
            Some(2) => Ok(dead),
            _ => Err(format!("not dead yet: {dead}")),
        }
    })
    .await;
    assert_eq!(
        attempts.lock().expect("lock").len(),
        4,
        "two attempts each, then given up"
    );
}

/// A Slack interaction callback signed as Slack signs it.
fn interaction(
    secret: &str,
    timestamp: i64,
    user: &str,
    value: &str,
    response_url: &str,
) -> (String, String, String) {
    let payload = json!({
        "type": "block_actions",
        "user": { "id": user },
        "actions": [{ "action_id": "approve", "block_id": "countersign_vote", "value": value }],
        "response_url": response_url,
    });
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish();
    let timestamp = timestamp.to_string();
    let signature = countersign_app::notify::slack::signature(secret, &timestamp, body.as_bytes());
    (body, timestamp, signature)
}

on_both_stores!(slack_gets_block_kit_with_buttons_and_signed_clicks_vote_as_the_mapped_member);
async fn slack_gets_block_kit_with_buttons_and_signed_clicks_vote_as_the_mapped_member(kind: &str) {
    let served = Served::start(kind).await;
    served.members().await;
    let owner = Served::token("olga", &["owner"]);
    let (status, body) = served
        .call(
            reqwest::Method::PUT,
            "/v1/members/olga",
            &owner,
            Some(json!({ "roles": ["owner"], "slack_user_id": "U0OLGA", "email": "olga@example.com" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (url, received) = receiver(200).await;
    // Plays Slack's response_url: the message updates after a vote arrive here.
    let (response_url, responses) = receiver(200).await;
    const SIGNING: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    let (status, body) = served
        .call(
            reqwest::Method::PUT,
            "/v1/notifications/slack",
            &owner,
            Some(json!({ "webhook_url": url, "signing_secret": SIGNING })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({ "configured": true }),
        "the secrets are never shown"
    );
    let slack: Arc<dyn NotificationSender> = Arc::new(
        countersign_notify::SlackSender::new(
            served.app.clone(),
            countersign_executor::OutboundPolicy::default()
                .allowing(["127.0.0.0/8".parse().expect("a CIDR")]),
            Some(served.base.clone()),
        )
        .expect("slack sender"),
    );
    let notifier = Notifier::new(
        served.store.ledger.clone(),
        NotifierConfig {
            channels: [NotificationChannel::Slack].into(),
            ..NotifierConfig::default()
        },
    );
    let id = served.submit(5).await;
    served.notify(&notifier).await;
    let dispatcher = Dispatcher::new(served.app.clone(), vec![slack]);
    dispatcher.deliver_due().await.expect("delivered");
    dispatcher.deliver_due().await.expect("nothing more");
    let messages = received.lock().expect("lock").clone();
    assert_eq!(messages.len(), 1, "only olga has a Slack id, once");
    let message: Value = serde_json::from_slice(&messages[0].body).expect("json");
    assert!(
        message["text"]
            .as_str()
            .expect("text")
            .starts_with("<@U0OLGA> Approval needed: Refund order 5 &lt;now&gt;"),
        "{message}"
    );
    assert_eq!(message["blocks"][0]["type"], "section");
    let actions = &message["blocks"][1];
    assert_eq!(actions["type"], "actions", "{message}");
    assert_eq!(actions["elements"][0]["action_id"], "approve");
    assert_eq!(actions["elements"][1]["action_id"], "reject");
    assert_eq!(actions["elements"][0]["text"]["type"], "plain_text");
    let approve = actions["elements"][0]["value"].as_str().expect("a token");

    let post = |body: String, timestamp: String, signature: String| {
        let http = served.http.clone();
        let url = format!("{}/v1/slack/interactions", served.base);
        async move {
            let response = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-slack-request-timestamp", timestamp)
                .header("x-slack-signature", signature)
                .body(body)
                .send()
                .await
                .expect("answer");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let now = chrono::Utc::now().timestamp();
    let (body, timestamp, _) = interaction(SIGNING, now, "U0OLGA", approve, &response_url);
    let (status, answer) = post(
        body.clone(),
        timestamp.clone(),
        format!("v0={}", "0".repeat(64)),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (401, Some("invalid_signature")),
        "{answer}"
    );
    let (body, timestamp, signature) =
        interaction(SIGNING, now - 600, "U0OLGA", approve, &response_url);
    let (status, answer) = post(body, timestamp, signature).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (401, Some("stale_signature")),
        "{answer}"
    );
    let (body, timestamp, signature) =
        interaction(SIGNING, now, "U0NOBODY", approve, &response_url);
    let (status, answer) = post(body, timestamp, signature).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["text"]
            .as_str()
            .expect("text")
            .contains("not linked"),
        "{answer}"
    );
    assert!(
        served.votes(&id).await.is_empty(),
        "no refused click recorded anything"
    );

    let (body, timestamp, signature) = interaction(SIGNING, now, "U0OLGA", approve, &response_url);
    let (status, answer) = post(body, timestamp, signature).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["replace_original"], true);
    assert_eq!(
        answer["text"],
        format!("olga voted approve on action {id}.")
    );
    let votes = served.votes(&id).await;
    assert_eq!(votes.len(), 1, "{votes:?}");
    assert_eq!(votes[0]["voter"], "olga");

    // The vote's replacement message also goes to the interaction's response_url, once; the
    // refused clicks above sent nothing there.
    assert!(
        responses.lock().expect("lock").is_empty(),
        "nothing is posted before the dispatcher runs"
    );
    dispatcher.deliver_due().await.expect("delivered");
    dispatcher.deliver_due().await.expect("nothing more");
    let updates = responses.lock().expect("lock").clone();
    assert_eq!(updates.len(), 1, "one update for the one recorded vote");
    let update: Value = serde_json::from_slice(&updates[0].body).expect("json");
    assert_eq!(
        update,
        json!({ "replace_original": true, "text": format!("olga voted approve on action {id}.") })
    );
    assert_eq!(
        received.lock().expect("lock").len(),
        1,
        "the update does not go to the incoming webhook"
    );

    // A click again is answered (already used) and posts nothing more.
    let (body, timestamp, signature) = interaction(SIGNING, now, "U0OLGA", approve, &response_url);
    let (status, answer) = post(body, timestamp, signature).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["text"]
            .as_str()
            .expect("text")
            .starts_with("Nothing was changed"),
        "{answer}"
    );
    dispatcher.deliver_due().await.expect("nothing more");
    assert_eq!(responses.lock().expect("lock").len(), 1);
}

on_both_stores!(a_reminder_reaches_the_eligible_members_who_have_not_voted_once);
async fn a_reminder_reaches_the_eligible_members_who_have_not_voted_once(kind: &str) {
    let served = Served::start(kind).await;
    served.members().await;
    let owner = Served::token("olga", &["owner"]);
    let (status, body) = served
        .call(
            reqwest::Method::PUT,
            "/v1/settings",
            &owner,
            Some(json!({
                "mode": "require_approval",
                "default_requirements": { "stages": [{ "rules": [
                    { "type": "any", "min_approvals": 2, "roles": ["owner", "admin"] }
                ] }] }
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let notifier = Notifier::new(served.store.ledger.clone(), NotifierConfig::default());
    let id = served.submit(9).await;
    served.notify(&notifier).await;
    assert_eq!(
        notifier.remind_due().await.expect("sweep"),
        0,
        "nothing is due before 75% of the deadline"
    );
    let (status, body) = served
        .call(
            reqwest::Method::POST,
            &format!("/v1/actions/{id}/votes"),
            &owner,
            Some(json!({ "vote": "approve" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    served.notify(&notifier).await;
    // The deadline's 75% mark, brought to now (the reminder's time is the only clock read).
    let moved = match served.store.ledger.backend() {
        countersign_ledger::Backend::Postgres(pool) => {
            sqlx::query("UPDATE notification_reminders SET remind_us = 0")
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        }
        countersign_ledger::Backend::Sqlite(pool) => {
            sqlx::query("UPDATE notification_reminders SET remind_us = 0")
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        }
    }
    .expect("moved");
    assert_eq!(moved, 1, "one open action, one reminder");
    assert_eq!(notifier.remind_due().await.expect("sweep"), 1, "adam only");
    assert_eq!(notifier.remind_due().await.expect("sweep"), 0, "once");
    let feed = |user: &'static str, roles: &'static [&'static str]| {
        let served = &served;
        async move {
            let (status, body) = served
                .call(
                    reqwest::Method::GET,
                    "/v1/notifications",
                    &Served::token(user, roles),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{body}");
            body["notifications"]
                .as_array()
                .expect("notifications")
                .iter()
                .map(|n| n["kind"].as_str().expect("kind").to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(feed("adam", &["admin"]).await, ["reminder", "assigned"]);
    assert_eq!(
        feed("olga", &["owner"]).await,
        ["assigned"],
        "olga voted: no reminder"
    );
    assert_eq!(feed("rita", &["requester"]).await, Vec::<String>::new());
}

on_both_stores!(a_daily_digest_gathers_a_days_emails_into_one_once_the_day_is_over);
async fn a_daily_digest_gathers_a_days_emails_into_one_once_the_day_is_over(kind: &str) {
    let served = Served::start(kind).await;
    served.members().await;
    let (status, body) = served
        .call(
            reqwest::Method::PUT,
            "/v1/members/me/preferences",
            &Served::token("olga", &["owner"]),
            Some(json!({ "preferences": { "daily_digest": true } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sink = SmtpSink::start("250 OK").await;
    let email: Arc<dyn NotificationSender> = Arc::new(
        EmailSender::new(
            served.app.clone(),
            &sink.url,
            "countersign@example.test",
            Some(served.base.clone()),
        )
        .expect("email sender"),
    );
    let notifier = Notifier::new(
        served.store.ledger.clone(),
        NotifierConfig {
            channels: [NotificationChannel::Email].into(),
            ..NotifierConfig::default()
        },
    );
    served.submit(1).await;
    served.submit(2).await;
    served.notify(&notifier).await;
    let dispatcher = Dispatcher::new(served.app.clone(), vec![email]);
    dispatcher.deliver_due().await.expect("immediate mail");
    assert_eq!(
        dispatcher.deliver_digests().await.expect("digests"),
        0,
        "the day is not over"
    );
    let to: Vec<String> = sink
        .received()
        .iter()
        .flat_map(|m| m.recipients.clone())
        .collect();
    assert_eq!(
        to,
        ["adam@example.com", "adam@example.com"],
        "olga's wait for her digest"
    );
    // The day is over: the kept rows were written yesterday.
    let statement =
        "UPDATE notifications SET created_us = created_us - 86400000000 WHERE status = 'digest'";
    let moved = match served.store.ledger.backend() {
        countersign_ledger::Backend::Postgres(pool) => sqlx::query(statement)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()),
        countersign_ledger::Backend::Sqlite(pool) => sqlx::query(statement)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()),
    }
    .expect("moved");
    assert_eq!(moved, 2);
    assert_eq!(dispatcher.deliver_digests().await.expect("digests"), 1);
    dispatcher.deliver_due().await.expect("the digest sent");
    assert_eq!(
        dispatcher.deliver_digests().await.expect("digests"),
        0,
        "once"
    );
    dispatcher.deliver_due().await.expect("nothing more");
    let mails = sink.received();
    let digest = mails
        .iter()
        .find(|m| m.recipients == ["olga@example.com"])
        .expect("olga's digest");
    let subject = digest.header("Subject").expect("subject");
    assert!(subject.contains("2 notifications"), "{subject}");
    let text = digest.data.replace("=\r\n", "");
    assert!(text.contains("Refund order 1 &lt;now&gt;"), "{text}");
    assert!(text.contains("Refund order 2"), "{text}");
    assert_eq!(mails.len(), 3);
}

/// Runs one statement on the test's store; answers the rows it changed.
async fn execute(served: &Served, statement: &str) -> u64 {
    match served.store.ledger.backend() {
        countersign_ledger::Backend::Postgres(pool) => sqlx::query(statement)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()),
        countersign_ledger::Backend::Sqlite(pool) => sqlx::query(statement)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()),
    }
    .expect("statement")
}

/// The tenant's whole delivery log, as an admin reads it.
async fn delivery_log(served: &Served) -> Vec<Value> {
    let (status, body) = served
        .call(
            reqwest::Method::GET,
            "/v1/notifications/deliveries?limit=200",
            &Served::token("adam", &["admin"]),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"].as_array().cloned().unwrap_or_default()
}

on_both_stores!(a_refused_digest_is_retried_until_sent_once_and_one_refused_to_the_limit_is_dead_lettered_with_its_rows);
async fn a_refused_digest_is_retried_until_sent_once_and_one_refused_to_the_limit_is_dead_lettered_with_its_rows(
    kind: &str,
) {
    let served = Served::start(kind).await;
    served.members().await;
    let (status, body) = served
        .call(
            reqwest::Method::PUT,
            "/v1/members/me/preferences",
            &Served::token("olga", &["owner"]),
            Some(json!({ "preferences": { "daily_digest": true } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sink = SmtpSink::start("250 OK").await;
    let email: Arc<dyn NotificationSender> = Arc::new(
        EmailSender::new(
            served.app.clone(),
            &sink.url,
            "countersign@example.test",
            Some(served.base.clone()),
        )
        .expect("email sender"),
    );
    let notifier = Notifier::new(
        served.store.ledger.clone(),
        NotifierConfig {
            channels: [NotificationChannel::Email].into(),
            ..NotifierConfig::default()
        },
    );
    let mut dispatcher = Dispatcher::new(served.app.clone(), vec![email]);
    dispatcher.max_attempts = 3;
    served.submit(1).await;
    served.submit(2).await;
    served.notify(&notifier).await;
    dispatcher
        .deliver_due()
        .await
        .expect("adam's immediate mail");
    let yesterday =
        "UPDATE notifications SET created_us = created_us - 86400000000 WHERE status = 'digest'";
    assert_eq!(execute(&served, yesterday).await, 2, "olga's two kept rows");

    // The SMTP server refuses for now: the digest waits as a pending delivery, like any email.
    sink.answer("451 4.3.0 try again later");
    assert_eq!(dispatcher.deliver_digests().await.expect("queued"), 1);
    assert_eq!(
        dispatcher.deliver_digests().await.expect("queued once"),
        0,
        "its rows are gathered into one digest only"
    );
    dispatcher.deliver_due().await.expect("a refused attempt");
    let log = delivery_log(&served).await;
    let digest = log
        .iter()
        .find(|row| row["kind"] == "digest")
        .expect("the digest in the delivery log");
    assert_eq!(digest["status"], "pending", "{digest}");
    assert_eq!(digest["recipient"], "olga");
    assert_eq!(digest["channel"], "email");
    assert_eq!(digest["attempts"], 1);
    assert!(digest["next_attempt_at"].is_string(), "{digest}");
    assert!(
        digest["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("451")),
        "{digest}"
    );
    let gathered: Vec<&Value> = log
        .iter()
        .filter(|row| {
            row["recipient"] == "olga" && row["channel"] == "email" && row["kind"] == "assigned"
        })
        .collect();
    assert_eq!(gathered.len(), 2);
    assert!(
        gathered.iter().all(|row| row["status"] == "digested"),
        "{log:?}"
    );

    // It accepts again: the digest goes out after its backoff, once, and its rows with it.
    sink.answer("250 OK");
    let olga = |sink: &SmtpSink| {
        sink.received()
            .into_iter()
            .filter(|mail| mail.recipients == ["olga@example.com"])
            .collect::<Vec<_>>()
    };
    eventually(within(Duration::from_secs(20)), async || {
        dispatcher
            .deliver_due()
            .await
            .map_err(|err| format!("{err:#}"))?;
        match olga(&sink).len() {
            0 => Err("no digest yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    dispatcher.deliver_due().await.expect("nothing more");
    assert_eq!(dispatcher.deliver_digests().await.expect("none"), 0);
    let mails = olga(&sink);
    assert_eq!(mails.len(), 1, "sent once");
    let subject = mails[0].header("Subject").expect("subject");
    assert!(subject.contains("2 notifications"), "{subject}");
    let log = delivery_log(&served).await;
    let digest = log
        .iter()
        .find(|row| row["kind"] == "digest")
        .expect("the digest");
    assert_eq!(digest["status"], "delivered", "{digest}");
    assert_eq!(digest["attempts"], 2);
    assert!(digest["delivered_at"].is_string(), "{digest}");
    for row in log.iter().filter(|row| {
        row["recipient"] == "olga" && row["channel"] == "email" && row["kind"] == "assigned"
    }) {
        assert_eq!(row["status"], "delivered", "{row}");
        assert_eq!(row["attempts"], 2, "{row}");
        assert_eq!(row["delivered_at"], digest["delivered_at"], "{row}");
    }

    // The next day's digest meets a server that keeps refusing: after the attempts limit it is
    // dead, and so are its rows, in the admins' delivery log.
    served.submit(3).await;
    served.notify(&notifier).await;
    assert_eq!(execute(&served, yesterday).await, 1);
    sink.answer("451 4.3.0 try again later");
    assert_eq!(dispatcher.deliver_digests().await.expect("queued"), 1);
    let admin = Served::token("adam", &["admin"]);
    let dead = eventually(within(Duration::from_secs(30)), async || {
        dispatcher
            .deliver_due()
            .await
            .map_err(|err| format!("{err:#}"))?;
        let (_, dead) = served
            .call(
                reqwest::Method::GET,
                "/v1/notifications/deliveries?status=dead",
                &admin,
                None,
            )
            .await;
        // adam's own email of the day is refused too: only olga's digest is looked at.
        let dead: Vec<Value> = dead["deliveries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|row| row["recipient"] == "olga")
            .cloned()
            .collect();
        match dead.len() {
            2 => Ok(dead),
            _ => Err(format!("not dead yet: {dead:?}")),
        }
    })
    .await;
    let digest = dead
        .iter()
        .find(|row| row["kind"] == "digest")
        .expect("the dead digest");
    assert_eq!(digest["attempts"], 3, "{digest}");
    assert!(digest["next_attempt_at"].is_null(), "{digest}");
    let row = dead
        .iter()
        .find(|row| row["kind"] == "assigned")
        .expect("its row, dead with it");
    assert_eq!(row["recipient"], "olga");
    assert_eq!(row["attempts"], 3, "{row}");
    assert_eq!(row["last_error"], digest["last_error"], "{row}");
    dispatcher.deliver_due().await.expect("nothing more");
    assert_eq!(olga(&sink).len(), 1, "a dead digest is not sent again");
    assert_eq!(dispatcher.deliver_digests().await.expect("none"), 0);
}
