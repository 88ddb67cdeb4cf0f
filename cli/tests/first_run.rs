//! First run: `serve` in a fresh directory with no `DATABASE_URL`, no key material and a
//! loopback address is development mode — development keys, the demo tenant loaded once, and
//! a sign-in link per demo user printed — while a database URL or a public address keeps the
//! service fail closed.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use countersign_ledger::testing::{ChildGuard, TestStore, eventually_blocking, within};
use serde_json::Value;

/// The variables that configure a store, keys or an address: none is set on a first run.
const CONFIGURATION: &[&str] = &[
    "DATABASE_URL",
    "NATS_URL",
    "SMTP_URL",
    "COUNTERSIGN_JWT_HS256_SECRET",
    "COUNTERSIGN_JWKS_FILE",
    "COUNTERSIGN_JWT_ISSUER",
    "COUNTERSIGN_JWT_AUDIENCE",
    "COUNTERSIGN_API_KEY_SECRET",
    "COUNTERSIGN_WEBHOOK_SECRET",
    "COUNTERSIGN_DEV_KEYS",
    "COUNTERSIGN_DATA_DIR",
    "COUNTERSIGN_LISTEN",
    "COUNTERSIGN_ROLE",
    "COUNTERSIGN_LOG_FORMAT",
    "RUST_LOG",
];

/// A `serve` started in `dir`, killed when dropped; its standard output and error collected.
struct Serve {
    child: ChildGuard,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(from: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    // Detached: it ends when the stream closes.
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    lines
}

impl Serve {
    fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_countersign"));
        command.arg("serve").args(args).current_dir(dir);
        for name in CONFIGURATION {
            command.env_remove(name);
        }
        command.envs(env.iter().copied());
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Self {
            child: child.into(),
            stdout,
            stderr,
        }
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.lock().expect("stdout").join("\n"),
            self.stderr.lock().expect("stderr").join("\n")
        )
    }

    fn printed(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout").clone()
    }

    /// Waits for the printed sign-in link of every demo user: (user, address, token).
    fn sign_in_links(&mut self) -> Vec<(String, String, String)> {
        eventually_blocking(within(Duration::from_secs(120)), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("serve exited with {status}: {}", self.output());
            }
            let printed = self.printed();
            let links: Vec<_> = printed
                .iter()
                .filter_map(|line| {
                    let user = line.split_whitespace().next()?.to_owned();
                    let link = line.split_whitespace().last()?;
                    let rest = link.strip_prefix("http://")?;
                    let (address, token) = rest.split_once("/sign-in?token=")?;
                    Some((user, address.to_owned(), token.to_owned()))
                })
                .collect();
            if printed.last().is_some_and(|line| line.starts_with("====")) && links.len() >= 6 {
                Ok(links)
            } else {
                Err(format!("no sign-in links yet: {}", self.output()))
            }
        })
    }

    /// Where it listens, from its JSON log.
    fn address(&mut self) -> String {
        eventually_blocking(within(Duration::from_secs(120)), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("serve exited with {status}: {}", self.output());
            }
            let found = self
                .stderr
                .lock()
                .expect("stderr")
                .iter()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find_map(|line| {
                    (line["fields"]["message"] == "countersign listening")
                        .then(|| line["fields"]["address"].as_str().map(str::to_owned))?
                });
            found.ok_or_else(|| format!("not listening yet: {}", self.output()))
        })
    }
}

fn get(address: &str, path: &str, bearer: Option<&str>) -> support::Exchange {
    support::request(address, "GET", path, bearer, &[], None)
}

/// The demo tenant's actions as the inbox lists them, once the read model has them all.
fn demo_actions(address: &str, token: &str) -> usize {
    eventually_blocking(within(Duration::from_secs(60)), || {
        let inbox = get(address, "/v1/actions?status=all&limit=100", Some(token));
        if inbox.status != 200 {
            return Err(format!("{}: {}", inbox.status, inbox.body));
        }
        let items = inbox.json()["items"].as_array().map_or(0, Vec::len);
        // The demo loads seven actions.
        if items >= 7 {
            Ok(items)
        } else {
            Err(format!("only {items} actions listed: {}", inbox.body))
        }
    })
}

#[test]
fn a_first_run_is_development_mode_with_the_demo_loaded_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = Serve::start(dir.path(), &["--listen", "127.0.0.1:0"], &[]);
    let links = first.sign_in_links();
    let printed = first.printed().join("\n");
    assert!(printed.contains("DEVELOPMENT MODE"), "{printed}");
    assert!(printed.contains("loaded now"), "{printed}");
    let users: Vec<&str> = links.iter().map(|(user, _, _)| user.as_str()).collect();
    for user in ["olivia", "adam", "fay", "felix", "rita", "audrey", "gus"] {
        assert!(users.contains(&user), "a link for {user}: {printed}");
    }
    assert!(
        dir.path().join("data/dev-keys.json").exists(),
        "development keys are created"
    );
    let (_, address, olivia) = links
        .iter()
        .find(|(user, _, _)| user == "olivia")
        .expect("olivia's link")
        .clone();
    let count = demo_actions(&address, &olivia);
    let inbox = get(&address, "/v1/actions?status=all&limit=100", Some(&olivia)).json();
    assert!(
        inbox["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|item| item["summary"] == "Delete 3,200 stale leads"),
        "the demo actions: {inbox}"
    );
    first.child.kill_and_wait();

    // A restart in the same directory keeps the keys and does not load the demo again.
    let mut second = Serve::start(dir.path(), &["--listen", "127.0.0.1:0"], &[]);
    let links = second.sign_in_links();
    let printed = second.printed().join("\n");
    assert!(
        printed.contains("already loaded, not loaded again"),
        "{printed}"
    );
    let (_, address, olivia) = links
        .into_iter()
        .find(|(user, _, _)| user == "olivia")
        .expect("olivia's link");
    assert_eq!(
        demo_actions(&address, &olivia),
        count,
        "the same actions, once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_address_or_a_database_url_or_a_key_stays_fail_closed() {
    let store = TestStore::postgres().await.expect("database");
    let database_url = store.location();
    let cases = [
        (&["--listen", "0.0.0.0:0"][..], &[][..]),
        (
            &["--listen", "127.0.0.1:0"][..],
            &[("DATABASE_URL", database_url.as_str())][..],
        ),
        (
            &["--listen", "127.0.0.1:0"][..],
            &[(
                "COUNTERSIGN_JWT_HS256_SECRET",
                "configured-secret-0123456789abcdef",
            )][..],
        ),
    ];
    for (args, env) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut serve = Serve::start(
            dir.path(),
            args,
            &[env, &[("COUNTERSIGN_LOG_FORMAT", "json")]].concat(),
        );
        let address = serve.address().replace("0.0.0.0", "127.0.0.1");
        let answer = get(&address, "/v1/actions", None);
        assert_eq!(answer.status, 401, "{args:?} {env:?}: {}", answer.body);
        let printed = serve.printed().join("\n");
        assert!(
            !printed.contains("sign-in?token=") && !printed.contains("DEVELOPMENT MODE"),
            "{args:?} {env:?}: {printed}"
        );
        assert!(
            !dir.path().join("data/dev-keys.json").exists(),
            "{args:?} {env:?}: no development keys are created"
        );
    }
}
