//! The web console in a real browser: Debian's headless Chromium driven over WebDriver
//! (fantoccini) against a `countersign serve` this test starts on the embedded store. Approving
//! from the drawer while a second approver's page changes live, a bulk approval of three, a
//! requester without an approve button whose forged vote is refused, an auditor's timeline,
//! hostile text shown as text, and a double-clicked submit that creates one action. Screenshots
//! of each page go to `target/ui/`.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

#[path = "support/browser.rs"]
mod browser;
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use countersign_ledger::testing::{ChildGuard, eventually, eventually_blocking, within};
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::{Client, Locator};
use serde_json::{Value, json};

use browser::{Driver, PATIENCE, screenshot, sign_in, wait_for, wait_for_text};

const SECRET: &str = "ui-console-test-secret-0123456789abcdef";

/// A `countersign serve` on a fresh embedded store, killed when dropped.
struct Serve {
    _child: ChildGuard,
    _data: tempfile::TempDir,
    address: String,
}

impl Serve {
    fn start() -> Self {
        Self::start_with(false)
    }

    /// With `seal`, a signing key and a sealer that signs a head as soon as one event waits.
    fn start_with(seal: bool) -> Self {
        let data = tempfile::tempdir().expect("a data directory");
        let mut args: Vec<String> = [
            "serve",
            "--role",
            "all",
            "--listen",
            "127.0.0.1:0",
            "--dev-keys",
            "false",
        ]
        .map(str::to_owned)
        .to_vec();
        if seal {
            let key = data.path().join("head.key");
            let generated = Command::new(env!("CARGO_BIN_EXE_countersign"))
                .args(["keys", "generate", "--out"])
                .arg(&key)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("keys generate");
            assert!(generated.success());
            args.extend([
                "--signing-key".to_owned(),
                key.display().to_string(),
                "--seal-every-events".to_owned(),
                "1".to_owned(),
                "--seal-every-seconds".to_owned(),
                "1".to_owned(),
            ]);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_countersign"))
            .args(&args)
            .env_remove("RUST_LOG")
            .env_remove("DATABASE_URL")
            .env_remove("NATS_URL")
            .env("COUNTERSIGN_LOG_FORMAT", "json")
            .env("COUNTERSIGN_DATA_DIR", data.path())
            .env("COUNTERSIGN_JWT_HS256_SECRET", SECRET)
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
        let address =
            eventually_blocking(within(PATIENCE).every(Duration::from_millis(50)), || {
                let lines = log.lock().expect("log").clone();
                if let Some(address) = lines.iter().find_map(|line| {
                    let line: Value = serde_json::from_str(line).ok()?;
                    (line["fields"]["message"] == "countersign listening")
                        .then(|| line["fields"]["address"].as_str().map(str::to_owned))?
                }) {
                    return Ok(address);
                }
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("serve exited ({status}):\n{}", lines.join("\n"));
                }
                Err(format!(
                    "serve never said where it listens:\n{}",
                    lines.join("\n")
                ))
            });
        let serve = Self {
            _child: child,
            _data: data,
            address,
        };
        // Refunds need two approvals from approvers (or admins, owners).
        let policy = serve.api(
            "POST",
            "/v1/policies",
            &token("olivia", &["owner"]),
            Some(&json!({
                "id": "refunds", "name": "Refunds", "priority": 10,
                "criteria": {"module": "billing"},
                "requirements": {"stages": [{"name": "finance", "rules": [{"type": "any", "min_approvals": 2}]}]},
            })),
        );
        assert_eq!(policy.status, 201, "{}", policy.body);
        serve
    }

    fn base(&self) -> String {
        format!("http://{}", self.address)
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

    /// Submits an action as `rita` (requester); its id.
    fn submit(&self, summary: &str, payload: Value, high: bool) -> String {
        let mut body = json!({
            "module": "billing", "capability": "refund", "summary": summary, "payload": payload,
        });
        if high {
            body["impact"] = json!("mass refund of every order");
            body["scope"] = json!("global: all tenants");
            body["flags"] = json!(["financial", "pii"]);
            body["connectors"] = json!(["stripe", "ledger", "crm"]);
        }
        let answer = self.api(
            "POST",
            "/v1/actions",
            &token("rita", &["requester"]),
            Some(&body),
        );
        assert_eq!(answer.status, 201, "{}", answer.body);
        answer.json()["id"].as_str().expect("an id").to_owned()
    }

    fn detail(&self, id: &str) -> Value {
        let answer = self.api(
            "GET",
            &format!("/v1/actions/{id}"),
            &token("olivia", &["owner"]),
            None,
        );
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()
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

/// Presses and releases `key` wherever the focus is (no element is focused first).
async fn press(client: &Client, key: char) {
    let keys = KeyActions::new("keyboard".to_owned())
        .then(KeyAction::Down { value: key })
        .then(KeyAction::Up { value: key });
    client.perform_actions(keys).await.expect("a key press");
}

fn row(id: &str) -> String {
    format!("#sections tr[data-id=\"{id}\"]")
}

async fn text_of(client: &Client, css: &str) -> String {
    wait_for(client, css).await.text().await.expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_approves_from_the_drawer_and_another_approver_sees_the_row_change_live() {
    let serve = Serve::start();
    let driver = Driver::start();
    let id = serve.submit(
        "Pause payout of 1,000,000 XOF",
        json!({"merchant": "m-77", "amount": 1_000_000}),
        true,
    );

    let ana = driver.session().await;
    ana.goto(&format!("{}/sign-in", serve.base()))
        .await
        .expect("sign-in page");
    wait_for(&ana, "#credential").await;
    screenshot(&ana, "sign-in").await;
    sign_in(&ana, &serve.base(), &token("ana", &["approver"])).await;
    // Bob follows a sign-in link (as `make run` prints them): it only fills the form in.
    let bob = driver.session().await;
    bob.goto(&format!(
        "{}/sign-in?token={}",
        serve.base(),
        token("bob", &["approver"])
    ))
    .await
    .expect("sign-in link");
    assert!(bob.find(Locator::Css("#sections")).await.is_err());
    wait_for(&bob, "#sign-in")
        .await
        .click()
        .await
        .expect("signed in");
    wait_for(&bob, "#sections").await;

    // Both see the pending high-risk action, for them, with its badge in words.
    for client in [&ana, &bob] {
        let badge = text_of(client, &format!("#mine tr[data-id=\"{id}\"] .risk")).await;
        assert!(badge.starts_with("high "), "{badge}");
        let stage = text_of(client, &format!("{} td.stage", row(&id))).await;
        assert!(stage.contains("stage 1 of 1"), "{stage}");
        assert!(stage.contains("approvers 0/2"), "{stage}");
    }
    wait_for_text(&ana, "#badge", |text| text == "1").await;
    screenshot(&ana, "inbox").await;
    // Bob's page is never reloaded: a mark set on it now is still there at the end.
    bob.execute("window.countersignMark = 'unchanged';", vec![])
        .await
        .expect("script");

    // Ana opens the drawer and approves with a comment.
    wait_for(&ana, &format!("{} a.open", row(&id)))
        .await
        .click()
        .await
        .expect("open the drawer");
    wait_for(&ana, "#drawer #approve").await;
    let summary = text_of(&ana, "#drawer #detail-summary").await;
    assert_eq!(summary, "Pause payout of 1,000,000 XOF");
    screenshot(&ana, "drawer").await;
    wait_for(&ana, "#drawer textarea[name=comment]")
        .await
        .send_keys("Checked with finance: payout is fraudulent")
        .await
        .expect("typed");
    wait_for(&ana, "#drawer #approve")
        .await
        .click()
        .await
        .expect("approved");
    wait_for_text(&ana, "#notice", |text| {
        text.contains("approval was recorded")
    })
    .await;

    // Bob's row changes without a reload.
    wait_for_text(&bob, &format!("{} td.stage", row(&id)), |text| {
        text.contains("approvers 1/2")
    })
    .await;
    let mark = bob
        .execute("return window.countersignMark;", vec![])
        .await
        .expect("script");
    assert_eq!(mark, json!("unchanged"), "bob's page was reloaded");
    screenshot(&bob, "inbox-live").await;

    // A new action reaches Bob live: its row, the count and a toast, still without a reload.
    let second = serve.submit("Refund order 77", json!({"order": 77}), false);
    wait_for(&bob, &format!("#mine tr[data-id=\"{second}\"]")).await;
    wait_for_text(&bob, "#badge", |text| text == "2").await;
    let toast = text_of(&bob, "#toasts .toast").await;
    assert_eq!(toast, "New approval assigned to you: Refund order 77");
    let mark = bob
        .execute("return window.countersignMark;", vec![])
        .await
        .expect("script");
    assert_eq!(mark, json!("unchanged"), "bob's page was reloaded");
    screenshot(&bob, "toast").await;

    // The vote is recorded with its comment and shows on the page.
    let detail = serve.detail(&id);
    let votes = &detail["stages"][0]["votes"];
    assert_eq!(votes[0]["voter"], "ana", "{detail}");
    assert_eq!(
        votes[0]["comment"],
        "Checked with finance: payout is fraudulent"
    );
    // Bound to the payload the drawer showed.
    assert_eq!(
        votes[0]["execution_key"], detail["execution_key"],
        "{detail}"
    );
    ana.goto(&format!("{}/actions/{id}", serve.base()))
        .await
        .expect("detail");
    let votes = text_of(&ana, "table.votes").await;
    assert!(votes.contains("Checked with finance"), "{votes}");
    assert!(
        ana.find(Locator::Css("#approve")).await.is_ok(),
        "ana may still change her vote"
    );
    screenshot(&ana, "detail").await;

    ana.close().await.expect("closed");
    bob.close().await.expect("closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_approval_of_three_and_a_requester_without_an_approve_button() {
    let serve = Serve::start();
    let driver = Driver::start();
    let ids: Vec<String> = (1..=3)
        .map(|n| serve.submit(&format!("Refund order {n}"), json!({"order": n}), false))
        .collect();

    let ana = driver.session().await;
    sign_in(&ana, &serve.base(), &token("ana", &["approver"])).await;
    // The keyboard: `j` moves to the first row, Enter opens its drawer.
    for id in &ids {
        wait_for(&ana, &format!("#mine tr[data-id=\"{id}\"]")).await;
    }
    press(&ana, 'j').await;
    press(&ana, '\u{E007}').await;
    wait_for(&ana, "#drawer #approve").await;
    press(&ana, '\u{E00C}').await;
    wait_for(&ana, "#drawer:empty").await;
    for id in &ids {
        wait_for(&ana, &format!("#mine input.select[value=\"{id}\"]"))
            .await
            .click()
            .await
            .expect("selected");
    }
    wait_for(&ana, "#bulk-comment")
        .await
        .send_keys("Batch reviewed")
        .await
        .expect("typed");
    wait_for(&ana, "#bulk-approve")
        .await
        .click()
        .await
        .expect("bulk approve");
    for id in &ids {
        let result = text_of(&ana, &format!("#bulk-results li[data-result-id=\"{id}\"]")).await;
        assert!(result.contains("✓ recorded"), "{result}");
    }
    screenshot(&ana, "bulk").await;
    for id in &ids {
        let detail = serve.detail(id);
        assert_eq!(detail["stages"][0]["votes"][0]["voter"], "ana", "{detail}");
        assert_eq!(detail["stages"][0]["votes"][0]["comment"], "Batch reviewed");
    }

    // The requester sees her action without an approve button; a forged vote is refused.
    let rita = driver.session().await;
    sign_in(&rita, &serve.base(), &token("rita", &["requester"])).await;
    let first = &ids[0];
    rita.goto(&format!("{}/actions/{first}", serve.base()))
        .await
        .expect("detail");
    wait_for(&rita, "#detail-summary").await;
    assert!(rita.find(Locator::Css("#approve")).await.is_err());
    assert!(rita.find(Locator::Css("#cancel")).await.is_ok());
    screenshot(&rita, "requester-detail").await;
    let before = serve.detail(first)["stages"][0]["votes"]
        .as_array()
        .map(Vec::len);
    rita.execute(
        "const form = document.createElement('form');
         form.method = 'post'; form.action = location.pathname + '/vote';
         for (const [name, value] of [['csrf', document.querySelector('input[name=csrf]').value], ['vote', 'approve']]) {
           const input = document.createElement('input');
           input.type = 'hidden'; input.name = name; input.value = value; form.appendChild(input);
         }
         document.body.appendChild(form); form.submit();",
        vec![],
    )
    .await
    .expect("forged form");
    let code = text_of(&rita, "#error-code").await;
    assert_eq!(code, "self_approval_forbidden");
    let after = serve.detail(first)["stages"][0]["votes"]
        .as_array()
        .map(Vec::len);
    assert_eq!(before, after, "nothing was recorded");

    ana.close().await.expect("closed");
    rita.close().await.expect("closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_sees_the_timeline_hostile_text_stays_text_and_a_double_click_submits_once() {
    let serve = Serve::start();
    let driver = Driver::start();
    let hostile = "<script>window.countersignPwned = 1</script>";
    let id = serve.submit(
        hostile,
        json!({"note": "<img src=x onerror=\"window.countersignPwned = 2\">"}),
        false,
    );

    let audrey = driver.session().await;
    sign_in(&audrey, &serve.base(), &token("audrey", &["auditor"])).await;
    audrey
        .goto(&format!("{}/actions/{id}", serve.base()))
        .await
        .expect("detail");
    let timeline = text_of(&audrey, "#timeline").await;
    assert!(timeline.contains("ActionSubmitted"), "{timeline}");
    assert!(timeline.contains("rita"), "{timeline}");
    assert!(audrey.find(Locator::Css("#approve")).await.is_err());
    assert_eq!(text_of(&audrey, "#detail-summary").await, hostile);
    let payload = text_of(&audrey, "#payload").await;
    assert!(payload.contains("<img src=x"), "{payload}");
    let pwned = audrey
        .execute(
            "return [window.countersignPwned === undefined, document.querySelectorAll('#payload img, #detail script').length];",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(
        pwned,
        json!([true, 0]),
        "markup from a user ran or rendered"
    );
    screenshot(&audrey, "auditor-detail").await;

    // A double-clicked submit creates one action.
    let rita = driver.session().await;
    sign_in(&rita, &serve.base(), &token("rita", &["requester"])).await;
    rita.goto(&format!("{}/request", serve.base()))
        .await
        .expect("request form");
    for (field, value) in [
        ("#module", "billing"),
        ("#capability", "refund"),
        ("#summary", "Refund order 31337 twice clicked"),
        ("#flags", "financial"),
    ] {
        wait_for(&rita, field)
            .await
            .send_keys(value)
            .await
            .expect("typed");
    }
    let policy = text_of(&rita, "#simulated-policy").await;
    assert!(policy.contains("Refunds"), "{policy}");
    screenshot(&rita, "request").await;
    rita.execute(
        "const button = document.getElementById('submit-request'); button.click(); button.click();",
        vec![],
    )
    .await
    .expect("double click");
    wait_for_text(&rita, "#notice", |text| text.contains("submitted")).await;
    // The page it lands on is the last write's action: once the inbox shows it, it shows any
    // action an earlier click created too.
    let landed = rita.current_url().await.expect("url");
    let landed = landed
        .path()
        .rsplit('/')
        .next()
        .expect("an action id")
        .to_owned();
    let answer = eventually(within(PATIENCE), async || {
        let answer = serve.api(
            "GET",
            "/v1/actions?requested_by=rita&status=all&limit=200",
            &token("rita", &["requester"]),
            None,
        );
        let items = answer.json()["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !items.iter().any(|item| item["id"] == landed.as_str()) {
            return Err("the inbox has not shown the submission yet".to_owned());
        }
        Ok(items
            .iter()
            .filter(|item| item["summary"] == "Refund order 31337 twice clicked")
            .count())
    })
    .await;
    assert_eq!(answer, 1, "a double click created more than one action");

    audrey.close().await.expect("closed");
    rita.close().await.expect("closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_edits_policies_switches_safe_mode_and_reads_the_ledger_and_stats() {
    let serve = Serve::start_with(true);
    let driver = Driver::start();
    let id = serve.submit("Refund order 5", json!({"order": 5}), false);
    let olivia = driver.session().await;
    sign_in(&olivia, &serve.base(), &token("olivia", &["owner"])).await;

    // Policies: the list, then a new one whose JSON is wrong at one field.
    olivia
        .goto(&format!("{}/policies", serve.base()))
        .await
        .expect("policies");
    let list = text_of(&olivia, "table.policies").await;
    assert!(list.contains("Refunds"), "{list}");
    screenshot(&olivia, "policies").await;
    olivia
        .goto(&format!("{}/policies/new", serve.base()))
        .await
        .expect("new policy");
    wait_for(&olivia, "#policy-id")
        .await
        .send_keys("large-refunds")
        .await
        .expect("typed");
    olivia
        .execute(
            "document.getElementById('document').value = JSON.stringify({name: 'Large', priority: 20, \
             requirements: {stages: [{rules: [{type: 'any', min_approvals: 0}]}]}});",
            vec![],
        )
        .await
        .expect("script");
    wait_for(&olivia, "#save-policy")
        .await
        .click()
        .await
        .expect("saved");
    let field = text_of(&olivia, "#error-field").await;
    assert!(
        field.starts_with("requirements.stages[0].rules[0]"),
        "{field}"
    );
    assert!(
        wait_for(&olivia, "#document")
            .await
            .attr("aria-invalid")
            .await
            .expect("attribute")
            .is_some_and(|value| value == "true")
    );
    screenshot(&olivia, "policy-error").await;

    // Settings: safe mode puts a banner on every page until it is switched off — also on pages
    // already open elsewhere, without a reload.
    let audrey = driver.session().await;
    sign_in(&audrey, &serve.base(), &token("audrey", &["auditor"])).await;
    assert!(
        audrey
            .find(Locator::Css("#safe-mode-banner"))
            .await
            .is_err()
    );
    olivia
        .goto(&format!("{}/settings", serve.base()))
        .await
        .expect("settings");
    wait_for(&olivia, "input[name=mode][value=safe]")
        .await
        .click()
        .await
        .expect("safe");
    wait_for(&olivia, "#save-settings")
        .await
        .click()
        .await
        .expect("saved");
    wait_for_text(&olivia, "#notice", |text| {
        text.contains("settings were saved")
    })
    .await;
    wait_for(&olivia, "#safe-mode-banner").await;
    screenshot(&olivia, "settings-safe-mode").await;
    wait_for(&audrey, "#safe-mode-banner").await;
    olivia
        .goto(&format!("{}/actions/{id}", serve.base()))
        .await
        .expect("detail");
    wait_for(&olivia, "#safe-mode-banner").await;
    olivia
        .goto(&format!("{}/settings", serve.base()))
        .await
        .expect("settings");
    wait_for(&olivia, "input[name=mode][value=require_approval]")
        .await
        .click()
        .await
        .expect("require approval");
    wait_for(&olivia, "#save-settings")
        .await
        .click()
        .await
        .expect("saved");
    wait_for_text(&olivia, "#notice", |text| {
        text.contains("settings were saved")
    })
    .await;
    assert!(
        olivia
            .find(Locator::Css("#safe-mode-banner"))
            .await
            .is_err()
    );
    eventually(within(PATIENCE), async || {
        match audrey.find(Locator::Css("#safe-mode-banner")).await {
            Ok(_) => Err("the banner is still on the auditor's page"),
            Err(_) => Ok(()),
        }
    })
    .await;
    audrey.close().await.expect("closed");

    // Ledger: a signed head, verified, and the evidence bundle to download.
    let verification = eventually(within(Duration::from_secs(60)), async || {
        olivia
            .goto(&format!("{}/ledger", serve.base()))
            .await
            .map_err(|err| err.to_string())?;
        match olivia.find(Locator::Css("#verification")).await {
            Ok(element) => element.text().await.map_err(|err| err.to_string()),
            Err(_) => Err("no signed head yet".to_owned()),
        }
    })
    .await;
    assert!(verification.starts_with('✓'), "{verification}");
    let href = wait_for(&olivia, "#export")
        .await
        .attr("href")
        .await
        .expect("href")
        .expect("a link");
    assert_eq!(href, "/ledger/export");
    screenshot(&olivia, "ledger").await;

    // Stats: charts drawn on the server.
    olivia
        .goto(&format!("{}/stats", serve.base()))
        .await
        .expect("stats");
    wait_for(&olivia, "#chart-risk svg rect.bar").await;
    let module = text_of(&olivia, "#chart-module").await;
    assert!(module.contains("billing"), "{module}");
    screenshot(&olivia, "stats").await;
    olivia.close().await.expect("closed");
}
