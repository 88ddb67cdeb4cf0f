//! The one-click approval link of an email, followed in a real browser (Debian's headless
//! Chromium over WebDriver) against a `countersign serve --role all` this test starts with SMTP
//! pointed at a loopback sink and a public URL: the link opens a confirmation page that records
//! nothing, a mail scanner's plain GET records nothing, the page's button records the vote once,
//! and the link opened again says it was used.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

#[path = "support/browser.rs"]
mod browser;
#[path = "support/smtp.rs"]
mod smtp;
mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use countersign_ledger::testing::{ChildGuard, eventually, eventually_blocking, within};
use fantoccini::Locator;
use serde_json::{Value, json};

use browser::{Driver, PATIENCE, screenshot, wait_for, wait_for_text};
use smtp::{Mail, SmtpSink};

const SECRET: &str = "ui-email-link-test-secret-0123456789abcdef";
/// Derives the key that signs approval links (without it no links are issued).
const API_KEY_SECRET: &str = "5c0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1";

/// A `countersign serve --role all` on a fresh embedded store, its SMTP at `smtp` and its public
/// URL its own address; killed when dropped.
struct Serve {
    _child: ChildGuard,
    _data: tempfile::TempDir,
    address: String,
}

impl Serve {
    fn start(smtp: &SmtpSink) -> Self {
        let data = tempfile::tempdir().expect("a data directory");
        // The public URL must be known before start: a port that was free a moment ago.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free loopback port");
        let address = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_countersign"))
            .args(["serve", "--role", "all", "--dev-keys", "false", "--listen"])
            .arg(&address)
            .arg("--public-url")
            .arg(format!("http://{address}"))
            .arg("--smtp-url")
            .arg(&smtp.url)
            .env_remove("RUST_LOG")
            .env_remove("DATABASE_URL")
            .env_remove("NATS_URL")
            .env("COUNTERSIGN_LOG_FORMAT", "json")
            .env("COUNTERSIGN_DATA_DIR", data.path())
            .env("COUNTERSIGN_JWT_HS256_SECRET", SECRET)
            .env("COUNTERSIGN_API_KEY_SECRET", API_KEY_SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log").push(line);
            }
        });
        let mut child: ChildGuard = child.into();
        eventually_blocking(within(PATIENCE).every(Duration::from_millis(50)), || {
            let lines = log.lock().expect("log").clone();
            if lines.iter().any(|line| {
                serde_json::from_str::<Value>(line)
                    .is_ok_and(|line| line["fields"]["message"] == "countersign listening")
            }) {
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("serve exited ({status}):\n{}", lines.join("\n"));
            }
            Err(format!(
                "serve never said it listens:\n{}",
                lines.join("\n")
            ))
        });
        Self {
            _child: child,
            _data: data,
            address,
        }
    }

    fn api(
        &self,
        method: &str,
        path: &str,
        bearer: &str,
        body: Option<&Value>,
    ) -> support::Exchange {
        support::request(&self.address, method, path, Some(bearer), &[], body)
    }

    /// The votes of the action's first stage, as the owner reads them.
    fn votes(&self, id: &str) -> Vec<Value> {
        let detail = self.api(
            "GET",
            &format!("/v1/actions/{id}"),
            &token("olivia", &["owner"]),
            None,
        );
        assert_eq!(detail.status, 200, "{}", detail.body);
        detail.json()["stages"][0]["votes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

fn token(user: &str, roles: &[&str]) -> String {
    countersign_gateway::mint_hs256(
        SECRET.as_bytes(),
        &countersign_gateway::Claims {
            sub: user.into(),
            tenant: "acme".into(),
            roles: roles.iter().map(|role| (*role).to_owned()).collect(),
            exp: chrono::Utc::now().timestamp() + 3600,
            iat: None,
            iss: None,
            aud: None,
        },
    )
    .expect("token")
}

/// The Approve link of the plain part (quoted-printable soft breaks undone).
fn approve_link(mail: &Mail) -> Option<String> {
    let data = mail.data.replace("=\r\n", "").replace("=3D", "=");
    let start = data.find("Approve: ")? + "Approve: ".len();
    data[start..].split_whitespace().next().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_link_opens_a_confirmation_page_and_votes_only_when_confirmed_once() {
    let sink = SmtpSink::start();
    let serve = Serve::start(&sink);
    let owner = token("olivia", &["owner"]);
    let added = serve.api(
        "POST",
        "/v1/members",
        &owner,
        Some(&json!({ "user_id": "ana", "display_name": "Ana", "email": "ana@example.com", "roles": ["approver"] })),
    );
    assert_eq!(added.status, 201, "{}", added.body);
    // Refunds need two approvals, so one vote leaves the action pending.
    let policy = serve.api(
        "POST",
        "/v1/policies",
        &owner,
        Some(&json!({
            "id": "refunds", "name": "Refunds", "priority": 10,
            "criteria": {"module": "billing"},
            "requirements": {"stages": [{"name": "finance", "rules": [{"type": "any", "min_approvals": 2}]}]},
        })),
    );
    assert_eq!(policy.status, 201, "{}", policy.body);
    let submitted = serve.api(
        "POST",
        "/v1/actions",
        &token("rita", &["requester"]),
        Some(&json!({
            "module": "billing", "capability": "refund",
            "summary": "Refund order o-4711 of 250 EUR", "payload": {"order": "o-4711"},
        })),
    );
    assert_eq!(submitted.status, 201, "{}", submitted.body);
    let id = submitted.json()["id"].as_str().expect("an id").to_owned();

    let link = eventually(
        within(PATIENCE).every(Duration::from_millis(100)),
        async || {
            sink.received()
                .iter()
                .filter(|mail| mail.recipients.iter().any(|to| to == "ana@example.com"))
                .find_map(approve_link)
                .ok_or_else(|| format!("no approval email for ana yet: {:?}", sink.received()))
        },
    )
    .await;
    let path = link
        .strip_prefix(&format!("http://{}", serve.address))
        .unwrap_or_else(|| panic!("the link is on the public URL: {link}"))
        .to_owned();
    assert!(path.starts_with("/approve/"), "{path}");

    let driver = Driver::start();
    let ana = driver.session().await;
    ana.goto(&link).await.expect("the link opens");
    wait_for_text(&ana, "h1", |title| title == "Confirm: approve this action?").await;
    let page = wait_for(&ana, "dl")
        .await
        .text()
        .await
        .expect("the page's text");
    assert!(page.contains("Refund order o-4711 of 250 EUR"), "{page}");
    assert!(page.contains("ana"), "{page}");
    screenshot(&ana, "email-link-confirm").await;
    assert!(
        serve.votes(&id).is_empty(),
        "opening the page recorded nothing"
    );

    // A mail scanner fetches the link: nothing either.
    let prefetch = support::request(&serve.address, "GET", &path, None, &[], None);
    assert_eq!(prefetch.status, 200, "{}", prefetch.body);
    assert!(serve.votes(&id).is_empty(), "a prefetch recorded nothing");

    wait_for(&ana, "form button")
        .await
        .click()
        .await
        .expect("confirm");
    wait_for_text(&ana, "h1", |title| title == "Your vote was recorded").await;
    screenshot(&ana, "email-link-recorded").await;
    let votes = serve.votes(&id);
    assert_eq!(votes.len(), 1, "{votes:?}");
    assert_eq!(votes[0]["voter"], "ana");
    assert_eq!(votes[0]["vote"], "approve");

    // The scanner again, after the vote: refused as used, nothing recorded.
    let prefetch = support::request(&serve.address, "GET", &path, None, &[], None);
    assert_eq!(prefetch.status, 410, "{}", prefetch.body);
    assert_eq!(serve.votes(&id).len(), 1);

    // The link a second time: a page saying it was used, and no button.
    ana.goto(&link).await.expect("the link opens again");
    wait_for_text(&ana, "h1", |title| title == "Nothing was changed").await;
    let said = wait_for(&ana, "body").await.text().await.expect("text");
    assert!(said.contains("already used"), "{said}");
    assert!(
        ana.find(Locator::Css("form button")).await.is_err(),
        "no button"
    );
    screenshot(&ana, "email-link-used").await;
    assert_eq!(serve.votes(&id).len(), 1, "nothing more recorded");
    ana.close().await.expect("session closed");
}
