//! No secret ever shows (issue 18): `serve` is given a distinctive value for every secret it
//! takes (JWT and API key secrets, webhook key, metrics token, SMTP, PostgreSQL and NATS
//! credentials), driven through every path that handles one (valid, forged and expired tokens,
//! an API key created, used, revoked and used again, `/metrics` with a wrong and the right token,
//! a webhook URL with credentials, an email whose SMTP attempt fails), and then none of them may
//! appear in its output, the `--help` texts, the `/metrics` body, any answer it gave (the API
//! key's creation answer excepted for that key alone) or any table of the store (the webhook URL's
//! credentials excepted in `tenant_secrets`, where they are documented to be kept). Settings that
//! stop `serve` at startup (NATS unreachable, an SMTP URL refused, a missing database) are named
//! in the error without their credentials.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use countersign_ledger::testing::{
    ChildGuard, Deadline, TestStore, TestStream, eventually, eventually_blocking, within,
};
use serde_json::{Value, json};

const JWT_SECRET: &str = "jwtSecret-Zq81Lw-never-shown-0123456789";
const API_KEY_SECRET: &str = "5ec5ec0a5ec5ec0a5ec5ec0a5ec5ec0a5ec5ec0a5ec5ec0a5ec5ec0a5ec5ec0a";
const WEBHOOK_SECRET: &str = "b00cb00c7e57b00cb00c7e57b00cb00c7e57b00cb00c7e57b00cb00c7e57b00c";
const METRICS_TOKEN: &str = "metricsTok-Hq27Zp-never-shown";
const SMTP_PASSWORD: &str = "smtpPw-Xy7Rt4-never-shown";
const PG_PASSWORD: &str = "pgPw-Lm3Kd9-never-shown";
const NATS_TOKEN: &str = "natsTok-Qw8Vn2-never-shown";
const HOOK_PASSWORD: &str = "hooksecret-Vb5Jc6-never-shown";

fn patience() -> Deadline {
    within(Duration::from_secs(60)).every(Duration::from_millis(100))
}

/// `countersign serve` with its standard output and error collected line by line as they come.
struct Served {
    child: ChildGuard,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Served {
    fn start(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        let readers = [stdout, stderr]
            .into_iter()
            .map(|output| {
                let sink = lines.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(output).lines().map_while(Result::ok) {
                        sink.lock().expect("lines").push(line);
                    }
                })
            })
            .collect();
        Self {
            child: child.into(),
            lines,
            readers,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// The JSON log lines whose message is `message`.
    fn logged(&self, message: &str) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["fields"]["message"] == message)
            .collect()
    }

    async fn address(&mut self) -> String {
        eventually(patience(), async || {
            if let Some(line) = self.logged("countersign listening").first() {
                return Ok(line["fields"]["address"]
                    .as_str()
                    .expect("an address")
                    .to_owned());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("serve exited ({status}):\n{}", self.lines().join("\n"));
            }
            Err(format!(
                "serve never said where it listens:\n{}",
                self.lines().join("\n")
            ))
        })
        .await
    }

    /// SIGTERM, a clean exit, and every line it wrote.
    async fn stop(mut self) -> Vec<String> {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let status = eventually(patience(), async || match self.child.try_wait() {
            Ok(Some(status)) => Ok(status),
            _ => Err("serve did not stop on SIGTERM"),
        })
        .await;
        assert!(status.success(), "graceful shutdown exits 0");
        for reader in self.readers.drain(..) {
            reader.join().expect("output reader");
        }
        self.lines()
    }
}

/// One HTTP/1.1 request; answers (status, body text).
fn http(
    address: &str,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let answer = support::request(address, method, path, Some(bearer), &[], body);
    (answer.status, answer.body)
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|err| panic!("{err}: {body}"))
}

fn mint(secret: &str, user: &str, roles: &[&str], expires_in: i64) -> String {
    countersign_gateway::mint_hs256(
        secret.as_bytes(),
        &countersign_gateway::Claims {
            sub: user.into(),
            tenant: "acme".into(),
            roles: roles.iter().map(|role| (*role).to_owned()).collect(),
            exp: chrono::Utc::now().timestamp() + expires_in,
            iat: None,
            iss: None,
            aud: None,
        },
    )
    .expect("token")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A loopback port nothing listens on (bound, then released).
fn unused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Every row of every table of the store's database as JSON text, by table name.
async fn every_row(url: &str) -> Vec<(String, String)> {
    let pool = sqlx::PgPool::connect(url).await.expect("database");
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
          WHERE table_type = 'BASE TABLE'
            AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&pool)
    .await
    .expect("tables");
    let mut rows = Vec::new();
    for (schema, table) in tables {
        let sql = format!("SELECT row_to_json(t)::text FROM \"{schema}\".\"{table}\" t");
        let texts: Vec<String> = sqlx::query_scalar(&sql)
            .fetch_all(&pool)
            .await
            .expect("rows");
        rows.extend(texts.into_iter().map(|row| (table.clone(), row)));
    }
    pool.close().await;
    rows
}

/// The secrets `haystack` shows, by name.
fn shown<'a>(secrets: &[(&'a str, String)], haystack: &str) -> Vec<&'a str> {
    secrets
        .iter()
        .filter(|(_, value)| haystack.contains(value.as_str()))
        .map(|(name, _)| *name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_shows_in_output_help_metrics_answers_or_the_store() {
    let store = TestStore::postgres().await.expect("database");
    let stream = TestStream::new("secrets");
    let data = tempfile::tempdir().expect("temp dir");
    // Trust authentication ignores the password, and a NATS server without authentication the
    // token: both connect, so both are handled as the secrets they would be in production.
    let database_url = store.location().replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{PG_PASSWORD}@"),
        1,
    );
    assert!(database_url.contains(PG_PASSWORD), "{database_url}");
    let nats_url = stream
        .url()
        .replacen("nats://", &format!("nats://{NATS_TOKEN}@"), 1);
    let smtp_url = format!("smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:{}", unused_port());
    let envs: Vec<(&str, String)> = vec![
        ("COUNTERSIGN_JWT_HS256_SECRET", JWT_SECRET.to_owned()),
        ("COUNTERSIGN_API_KEY_SECRET", API_KEY_SECRET.to_owned()),
        ("COUNTERSIGN_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        ("COUNTERSIGN_METRICS_TOKEN", METRICS_TOKEN.to_owned()),
        ("SMTP_URL", smtp_url),
        ("DATABASE_URL", database_url.clone()),
        ("NATS_URL", nats_url),
        ("COUNTERSIGN_NATS_STREAM", stream.name.clone()),
        ("COUNTERSIGN_NATS_PREFIX", stream.prefix.clone()),
        (
            "COUNTERSIGN_DATA_DIR",
            data.path().to_str().expect("utf-8").to_owned(),
        ),
        ("COUNTERSIGN_SWEEP_SECONDS", "1".to_owned()),
        ("COUNTERSIGN_LOG_FORMAT", "json".to_owned()),
    ];
    let countersign = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_countersign"));
        command
            .env_remove("RUST_LOG")
            .envs(envs.iter().map(|(name, value)| (name, value)));
        command
    };

    // The help texts name the settings, never their values.
    let mut helps = Vec::new();
    for args in [&["--help"][..], &["serve", "--help"]] {
        let output = countersign().args(args).output().expect("help");
        assert!(output.status.success(), "{}", text(&output));
        helps.push(text(&output));
    }
    assert!(
        helps[1].contains("COUNTERSIGN_METRICS_TOKEN"),
        "{}",
        helps[1]
    );

    let mut served = Served::start(countersign().args([
        "serve",
        "--role",
        "all",
        "--listen",
        "127.0.0.1:0",
        "--dev-keys",
        "false",
    ]));
    let address = served.address().await;
    // Every answer but the API key's creation (which shows that key's secret, once, by design).
    let mut answers: Vec<String> = Vec::new();
    let mut call = |method: &str, path: &str, bearer: &str, body: Option<&Value>| {
        let (status, body) = http(&address, method, path, bearer, body);
        answers.push(body.clone());
        (status, body)
    };

    let owner = mint(JWT_SECRET, "olga", &["owner"], 600);
    let (status, body) = call("GET", "/v1/settings", &owner, None);
    assert_eq!(status, 200, "{body}");
    let mut settings = json_of(&body);
    for (why, bearer) in [
        (
            "forged",
            mint("not-the-secret-0123456789abcdef", "olga", &["owner"], 600),
        ),
        ("expired", mint(JWT_SECRET, "olga", &["owner"], -3600)),
        ("garbage", "not.a.token".to_owned()),
        ("a made-up API key", format!("csk.acme.nokey.{JWT_SECRET}")),
    ] {
        let (status, body) = call("GET", "/v1/settings", &bearer, None);
        assert_eq!(status, 401, "{why}: {body}");
    }

    // An API key: created (its secret answered once), used, revoked, refused.
    let (status, body) = http(
        &address,
        "POST",
        "/v1/api-keys",
        &owner,
        Some(&json!({ "name": "mailer service", "roles": ["requester"] })),
    );
    assert_eq!(status, 201, "{body}");
    let created = json_of(&body);
    let api_key = created["api_key"].as_str().expect("the key").to_owned();
    let key_id = created["key_id"].as_str().expect("its id").to_owned();
    let key_secret = api_key
        .rsplit_once('.')
        .map(|(_, secret)| secret.to_owned())
        .expect("csk.<tenant>.<id>.<secret>");
    assert!(key_secret.len() >= 16, "{api_key}");
    for secret in [JWT_SECRET, API_KEY_SECRET, WEBHOOK_SECRET, METRICS_TOKEN] {
        assert!(!body.contains(secret), "the creation answer shows {secret}");
    }

    // The email goes through the API key; the SMTP server is not there, so the attempt fails.
    let (status, body) = call(
        "POST",
        "/v1/actions",
        &api_key,
        Some(&json!({
            "module": "email", "capability": "send", "summary": "Tell customer 1042",
            "payload": { "to": ["c1042@example.com"], "subject": "Refund", "text": "Done." }
        })),
    );
    assert_eq!(status, 201, "{body}");
    let id = json_of(&body)["id"].as_str().expect("id").to_owned();
    let (status, body) = call("DELETE", &format!("/v1/api-keys/{key_id}"), &owner, None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = call("GET", "/v1/actions", &api_key, None);
    assert_eq!(status, 401, "a revoked key: {body}");

    let (status, body) = call(
        "POST",
        &format!("/v1/actions/{id}/approve"),
        &owner,
        Some(&json!({})),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        "POST",
        &format!("/v1/actions/{id}/execute"),
        &owner,
        Some(&json!({})),
    );
    assert!(status == 202 || status == 200, "{status} {body}");

    // A webhook URL with credentials: answered redacted.
    let hook = format!("https://hookuser:{HOOK_PASSWORD}@hooks.example.com/x");
    settings["webhook_url"] = json!(hook);
    let (status, body) = call("PUT", "/v1/settings", &owner, Some(&settings));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_of(&body)["webhook_url"],
        "https://***@hooks.example.com/x"
    );

    // /metrics: refused with a wrong token, answered with the right one.
    let (status, body) = call("GET", "/metrics", "not-the-metrics-token", None);
    assert_eq!(status, 401, "{body}");
    let (status, metrics) = call("GET", "/metrics", METRICS_TOKEN, None);
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("countersign_http_request_duration_seconds"),
        "{metrics}"
    );

    // The failed SMTP attempt is logged, and recorded.
    let failed = eventually(patience(), async || {
        let failed = served.logged("execution failed");
        if failed.is_empty() {
            return Err(format!(
                "the SMTP attempt's failure was never logged:\n{}",
                served.lines().join("\n")
            ));
        }
        Ok(failed)
    })
    .await;
    assert!(
        failed[0]["fields"]["error"]
            .as_str()
            .is_some_and(|error| error.contains("SMTP")),
        "{}",
        failed[0]
    );
    let (status, detail) = call("GET", &format!("/v1/actions/{id}"), &owner, None);
    assert_eq!(status, 200, "{detail}");

    let lines = served.stop().await;
    assert!(lines.len() > 10, "{lines:?}");

    let mut secrets: Vec<(&str, String)> = [
        ("the JWT secret", JWT_SECRET),
        ("the API key secret", API_KEY_SECRET),
        ("the webhook secret", WEBHOOK_SECRET),
        ("the metrics token", METRICS_TOKEN),
        ("the SMTP password", SMTP_PASSWORD),
        ("the PostgreSQL password", PG_PASSWORD),
        ("the NATS token", NATS_TOKEN),
        ("the webhook URL's password", HOOK_PASSWORD),
    ]
    .into_iter()
    .map(|(name, value)| (name, value.to_owned()))
    .collect();
    secrets.push(("the created API key's secret", key_secret));

    let mut leaks = Vec::new();
    for (i, help) in helps.iter().enumerate() {
        for name in shown(&secrets, help) {
            leaks.push(format!("help {i} shows {name}"));
        }
    }
    for line in &lines {
        for name in shown(&secrets, line) {
            leaks.push(format!("the output shows {name}: {line}"));
        }
    }
    for answer in &answers {
        for name in shown(&secrets, answer) {
            leaks.push(format!("an answer shows {name}: {answer}"));
        }
    }
    let rows = every_row(&database_url).await;
    let kept_apart = rows
        .iter()
        .any(|(table, row)| table == "tenant_secrets" && row.contains(HOOK_PASSWORD));
    assert!(kept_apart, "the webhook URL's credentials are kept apart");
    assert!(
        rows.iter()
            .any(|(table, row)| table == "events" && row.contains("SMTP")),
        "the failed attempt is recorded"
    );
    for (table, row) in &rows {
        for name in shown(&secrets, row) {
            // Documented: tenant_secrets keeps a webhook URL's credentials for the executor.
            if table == "tenant_secrets" && name == "the webhook URL's password" {
                continue;
            }
            leaks.push(format!("table {table} shows {name}: {row}"));
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

/// `countersign serve` with `settings` (and an embedded store in a fresh directory unless they
/// name a database), expected to fail at startup: answers everything it wrote.
fn failed_start(settings: &[(&str, &str)]) -> String {
    let data = tempfile::tempdir().expect("temp dir");
    let mut child: ChildGuard = Command::new(env!("CARGO_BIN_EXE_countersign"))
        .args(["serve", "--listen", "127.0.0.1:0", "--dev-keys", "false"])
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("COUNTERSIGN_DATA_DIR", data.path())
        .env("COUNTERSIGN_LOG_FORMAT", "json")
        .envs(settings.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts")
        .into();
    let status = eventually_blocking(patience(), || match child.try_wait() {
        Ok(Some(status)) => Ok(status),
        _ => Err(format!("serve with {settings:?} did not fail")),
    });
    assert!(!status.success(), "serve with {settings:?} started");
    let mut said = String::new();
    for output in [
        child
            .stdout
            .take()
            .map(|out| Box::new(out) as Box<dyn Read>),
        child
            .stderr
            .take()
            .map(|err| Box::new(err) as Box<dyn Read>),
    ]
    .into_iter()
    .flatten()
    {
        BufReader::new(output)
            .read_to_string(&mut said)
            .expect("output");
    }
    said
}

#[test]
fn settings_that_fail_at_startup_are_named_without_their_secrets() {
    let nats = format!("nats://{NATS_TOKEN}@127.0.0.1:{}", unused_port());
    let smtp = format!("smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:25?tls=bogus");
    let postgres = format!(
        "postgres://postgres:{PG_PASSWORD}@127.0.0.1:5432/countersign_no_such_database_{}",
        std::process::id()
    );
    for (settings, named, secret) in [
        (&[("NATS_URL", nats.as_str())][..], "NATS", NATS_TOKEN),
        (&[("SMTP_URL", smtp.as_str())], "SMTP_URL", SMTP_PASSWORD),
        (
            &[("DATABASE_URL", postgres.as_str())],
            "PostgreSQL",
            PG_PASSWORD,
        ),
    ] {
        let said = failed_start(settings);
        assert!(said.contains(named), "the error names {named}: {said}");
        assert!(!said.contains(secret), "the error shows the secret: {said}");
    }
}
