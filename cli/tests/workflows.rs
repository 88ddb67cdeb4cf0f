//! Issue 17's "done when", with the real binary: `countersign serve` (PostgreSQL, NATS) runs the
//! workflow engine and the JetStream intake in its worker role; `countersign events publish`
//! publishes `order.refunded` to NATS; the run waits for a vote, an owner approves it through
//! `/v1/workflow-runs`, and the tenant's webhook receives the call once.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use countersign_ledger::testing::{ChildGuard, TestStore, TestStream, eventually, within};
use serde_json::{Value, json};

const SECRET: &str = "workflow-cli-test-secret-0123456789";
const WEBHOOK_SECRET: &str = "4242424242424242424242424242424242424242424242424242424242424242";

/// A loopback HTTP receiver: keeps every request body, answers `200 {}`.
fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let recorded = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                recorded
                    .lock()
                    .expect("lock")
                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            }
            let mut stream = reader.into_inner();
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            );
        }
    });
    (format!("http://{address}/hook"), bodies)
}

fn token(user: &str, roles: &[&str]) -> String {
    countersign_gateway::mint_hs256(
        SECRET.as_bytes(),
        &countersign_gateway::Claims {
            sub: user.into(),
            tenant: "acme".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            exp: chrono::Utc::now().timestamp() + 600,
            iat: None,
            iss: None,
            aud: None,
        },
    )
    .expect("token")
}

fn call(
    address: &str,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let answer = support::request(address, method, path, Some(bearer), &[], body);
    (answer.status, answer.json())
}

fn publish(stream: &TestStream, store: &TestStore) -> Output {
    Command::new(env!("CARGO_BIN_EXE_countersign"))
        .args([
            "events",
            "publish",
            "--tenant",
            "acme",
            "--type",
            "order.refunded",
            "--subject",
            "order-1042",
            "--id",
            "refund-1042",
            "--data",
            r#"{"amount": 900, "currency": "EUR"}"#,
        ])
        .env("NATS_URL", stream.url())
        .env("COUNTERSIGN_NATS_PREFIX", &stream.prefix)
        .env("DATABASE_URL", store.location())
        .env("COUNTERSIGN_LOG_FORMAT", "text")
        .output()
        .expect("countersign runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_to_nats_runs_through_a_vote_to_one_webhook_call() {
    let store = TestStore::postgres().await.expect("database");
    let stream = TestStream::new("wfcli");
    let (hook, bodies) = receiver();
    let mut child = Command::new(env!("CARGO_BIN_EXE_countersign"))
        .args(["serve", "--listen", "127.0.0.1:0", "--dev-keys", "false"])
        .env("DATABASE_URL", store.location())
        .env("NATS_URL", stream.url())
        .env("COUNTERSIGN_NATS_STREAM", &stream.name)
        .env("COUNTERSIGN_NATS_PREFIX", &stream.prefix)
        .env("COUNTERSIGN_JWT_HS256_SECRET", SECRET)
        .env("COUNTERSIGN_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("COUNTERSIGN_OUTBOUND_ALLOW", "127.0.0.0/8")
        .env("COUNTERSIGN_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let _served = ChildGuard::from(child);
    let address = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            let log: Value = serde_json::from_str(&line).ok()?;
            (log["fields"]["message"] == "countersign listening")
                .then(|| log["fields"]["address"].as_str().map(str::to_owned))?
        })
        .expect("a JSON log line with the address");
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));

    let owner = token("olga", &["owner"]);
    let (_, mut settings) = call(&address, "GET", "/v1/settings", &owner, None);
    settings["webhook_url"] = json!(hook);
    assert_eq!(
        call(&address, "PUT", "/v1/settings", &owner, Some(&settings)).0,
        200
    );
    let (status, created) = call(
        &address,
        "POST",
        "/v1/workflows",
        &owner,
        Some(&json!({
            "id": "refund-to-ledger", "name": "Large refunds tell the ledger",
            "triggers": ["order.refunded"], "condition": { "data.amount": { "$gt": 500 } },
            "steps": [{ "capability": "webhook.post", "summary": "Refund of {{ event.data.amount }} on {{ event.subject }}",
                        "payload": { "order": "{{ event.subject }}", "amount": "{{ event.data.amount }}" }, "require_approval": true }],
        })),
    );
    assert_eq!(status, 201, "{created}");

    let published = publish(&stream, &store);
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let ack: Value = serde_json::from_slice(&published.stdout).expect("the acknowledgement");
    assert_eq!(ack["duplicate"], false, "{ack}");

    let patience = || within(Duration::from_secs(60)).every(Duration::from_millis(100));
    let run = eventually(patience(), async || {
        let (_, page) = call(
            &address,
            "GET",
            "/v1/workflow-runs?status=pending_approval",
            &owner,
            None,
        );
        page["runs"][0]["run_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or(format!("no pending run: {page}"))
    })
    .await;
    let (_, detail) = call(
        &address,
        "GET",
        &format!("/v1/workflow-runs/{run}"),
        &owner,
        None,
    );
    assert_eq!(
        detail["actions"][0]["correlation_id"], "refund-1042",
        "{detail}"
    );
    let (status, voted) = call(
        &address,
        "POST",
        &format!("/v1/workflow-runs/{run}/approve"),
        &owner,
        Some(&json!({ "comment": "checked" })),
    );
    assert_eq!(status, 200, "{voted}");
    eventually(patience(), async || {
        let (_, detail) = call(
            &address,
            "GET",
            &format!("/v1/workflow-runs/{run}"),
            &owner,
            None,
        );
        if detail["status"] == "completed" {
            Ok(())
        } else {
            Err(format!("not completed: {detail}"))
        }
    })
    .await;
    assert_eq!(
        bodies.lock().expect("lock").clone(),
        [json!({ "order": "order-1042", "amount": 900 })]
    );

    // Published again: JetStream's window drops it; one run, one call.
    let again = publish(&stream, &store);
    let ack: Value = serde_json::from_slice(&again.stdout).expect("the acknowledgement");
    assert_eq!(ack["duplicate"], true, "{ack}");
    let (_, page) = call(&address, "GET", "/v1/workflow-runs", &owner, None);
    assert_eq!(page["runs"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(bodies.lock().expect("lock").len(), 1);

    if let Ok(client) = async_nats::connect(stream.url()).await {
        let _ = async_nats::jetstream::new(client)
            .delete_stream(format!("{}_INTAKE", stream.prefix.to_uppercase()))
            .await;
    }
}
