//! The service as `serve --role all` runs it: the worker side runs the notifier and the
//! dispatcher, so submitting an action puts it in the eligible approvers' feeds and sends each
//! of them one email (with approval links on the public URL) to a real SMTP sink on loopback.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::time::Duration;

use countersign_gateway::{AuthConfig, Claims, mint_hs256};
use countersign_ledger::StoreConfig;
use countersign_ledger::testing::{eventually, within};
use countersign_runtime::{Role, Runtime, RuntimeConfig, SmtpSettings};
use serde_json::{Value, json};
use support::SmtpSink;

const SECRET: &[u8] = b"test-secret-for-the-notify-runtime";

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_notifies_the_approvers_in_app_and_by_email_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = SmtpSink::start("250 OK").await;
    let mut config = RuntimeConfig::new(
        Role::All,
        StoreConfig::Sqlite {
            path: dir.path().join("countersign.db"),
        },
    );
    config.listen = Some("127.0.0.1:0".parse().expect("address"));
    config.auth = AuthConfig {
        hs256_secret: Some(SECRET.to_vec()),
        api_key_secret: Some([3; 32]),
        ..AuthConfig::default()
    };
    config.executor.smtp = Some(SmtpSettings {
        url: sink.url.clone(),
        from: "approvals@example.test".into(),
    });
    config.public_url = Some("http://approvals.example.test".into());
    let runtime = Runtime::build(config).await.expect("runtime");
    let base = format!("http://{}", runtime.local_addr().expect("listening"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(runtime.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let call = async |method: reqwest::Method, path: &str, bearer: &str, body: Option<Value>| {
        let mut request = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(bearer);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("answer");
        let status = response.status().as_u16();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    let owner = token("olga", &["owner"]);
    for (user, roles) in [
        ("olga", ["owner"]),
        ("adam", ["admin"]),
        ("rita", ["requester"]),
    ] {
        let (status, body) = call(
            reqwest::Method::POST,
            "/v1/members",
            &owner,
            Some(
                json!({ "user_id": user, "roles": roles, "email": format!("{user}@example.com") }),
            ),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = call(
        reqwest::Method::POST,
        "/v1/actions",
        &token("rita", &["requester"]),
        Some(
            json!({ "module": "billing", "capability": "refund", "summary": "Refund order 1042" }),
        ),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    eventually(within(Duration::from_secs(30)), async || {
        let (_, feed) = call(reqwest::Method::GET, "/v1/notifications", &owner, None).await;
        let mails = sink.received();
        if feed["unread"] == 1 && mails.len() == 2 {
            Ok(())
        } else {
            Err(format!("feed {feed}, {} mails", mails.len()))
        }
    })
    .await;
    let mails = sink.received();
    let mut to: Vec<String> = mails.iter().flat_map(|m| m.recipients.clone()).collect();
    to.sort();
    assert_eq!(to, ["adam@example.com", "olga@example.com"]);
    assert!(
        mails[0]
            .data
            .replace("=\r\n", "")
            .contains("Approve: http://approvals.example.test/approve/"),
        "{}",
        mails[0].data
    );
    let _ = stop.send(());
    running
        .await
        .expect("joined")
        .expect("the runtime stopped cleanly");
    assert_eq!(sink.received().len(), 2, "nothing sent twice");
}
