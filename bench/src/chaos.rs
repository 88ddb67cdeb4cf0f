//! `countersign-bench chaos` (`make chaos`, scripts/chaos.sh): the service under mixed load
//! while its parts fail, on loopback, bounded in time.
//!
//! Everything runs on servers of its own, so that restarting or pausing them disturbs nobody: a
//! PostgreSQL cluster `initdb`-ed into a temporary directory (port 55432 or the next free one), a
//! NATS server with JetStream (54222 or the next free one), one `serve --role api` and one
//! `serve --role worker`, and a webhook receiver counting the `Idempotency-Key`s it gets. A
//! client sends submissions, votes, bulk votes and execution requests at a fixed rate and
//! records every answer. Each round injects every fault once — the worker and the api process
//! SIGKILLed and started again, PostgreSQL stopped for a few seconds and started again, NATS
//! restarted, PostgreSQL paused with SIGSTOP — then stops the load, waits for the system to
//! settle and checks properties, never timings: every acknowledged command is in the log; no
//! action succeeded twice and no execution key reached the receiver more often than the log
//! shows attempts; every projection equals a rebuild from scratch; `countersign verify
//! --decisions --published-heads` passes; a write is readable within a second again after each
//! fault; no 5xx but 503, and no request left unanswered. The figures go into a table.
//!
//! The same file is the test `cli/tests/chaos.rs` (`--short`: one round with a small load).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use countersign_ledger::{Ledger, StoreConfig};
use countersign_projections::{GenerationState, Projection, ProjectionStore, Runner};
use serde_json::{Value, json};

const SECRET: &str = "chaos-secret-for-countersign-0123456789abcdef";
const WEBHOOK_SECRET: &str = "c4a05c4a05c4a05c4a05c4a05c4a05c4a05c4a05c4a05c4a05c4a05c4a05c4a0";
const TENANT: &str = "chaos";
/// An answer later than this is a hang.
const HANG: Duration = Duration::from_secs(40);
/// Requests in flight at most; a tick finding none free is shed (counted).
const IN_FLIGHT: usize = 64;

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct ChaosSettings {
    /// The `countersign` binary.
    pub binary: PathBuf,
    /// Rounds of faults (each fault once per round).
    pub rounds: usize,
    /// Requests per second of the load.
    pub rate: f64,
    /// Load between two faults, and after a fault before the next.
    pub settle: Duration,
    /// How long PostgreSQL stays stopped, and paused.
    pub outage: Duration,
}

impl ChaosSettings {
    /// `make chaos`: about ten minutes at 200 requests/s.
    pub fn full(binary: PathBuf) -> Self {
        Self {
            binary,
            rounds: 3,
            rate: 200.0,
            settle: Duration::from_secs(20),
            outage: Duration::from_secs(5),
        }
    }

    /// The gate's variant: one round, a small load, a minute or two.
    pub fn short(binary: PathBuf) -> Self {
        Self {
            binary,
            rounds: 1,
            rate: 30.0,
            settle: Duration::from_secs(5),
            outage: Duration::from_secs(3),
        }
    }
}

/// What one round found.
#[derive(Debug, Clone, Default)]
pub struct RoundReport {
    pub round: usize,
    pub requests: u64,
    pub shed: u64,
    pub acknowledged: usize,
    pub lost: Vec<String>,
    pub unfinished: usize,
    pub executed: usize,
    pub duplicate_executions: Vec<String>,
    /// Keys delivered more than once where the log shows as many attempts (an executor killed
    /// after its request left, before it recorded the outcome).
    pub redelivered: usize,
    pub unexplained_deliveries: Vec<String>,
    pub projection_divergences: Vec<String>,
    /// `countersign verify`'s report when it failed.
    pub verify_failure: Option<String>,
    /// Per fault, seconds from the end of the fault until a write was readable within 1 s
    /// (None: never, within the patience).
    pub recovery: Vec<(String, Option<f64>)>,
    pub statuses: BTreeMap<String, u64>,
    pub server_errors: Vec<String>,
    pub answered_while_pg_down: BTreeMap<String, u64>,
    pub hangs: u64,
}

impl RoundReport {
    /// What failed, one line each; empty when the round is clean. `require_503` also requires
    /// that the service answered 503 (and nothing else but refusals) while PostgreSQL was down.
    pub fn failures(&self, require_503: bool) -> Vec<String> {
        let mut failed = Vec::new();
        let round = self.round;
        if !self.lost.is_empty() {
            failed.push(format!(
                "round {round}: acknowledged but not in the log: {:?}",
                self.lost
            ));
        }
        if self.unfinished > 0 {
            failed.push(format!(
                "round {round}: {} executions never finished",
                self.unfinished
            ));
        }
        if !self.duplicate_executions.is_empty() {
            failed.push(format!(
                "round {round}: executed twice: {:?}",
                self.duplicate_executions
            ));
        }
        if !self.unexplained_deliveries.is_empty() {
            failed.push(format!(
                "round {round}: keys delivered more often than attempted: {:?}",
                self.unexplained_deliveries
            ));
        }
        if !self.projection_divergences.is_empty() {
            failed.push(format!(
                "round {round}: projections differ from a rebuild: {:?}",
                self.projection_divergences
            ));
        }
        if let Some(err) = &self.verify_failure {
            failed.push(format!("round {round}: verify failed: {err}"));
        }
        for (fault, seconds) in &self.recovery {
            if seconds.is_none() {
                failed.push(format!(
                    "round {round}: after {fault}, writes never readable within 1 s"
                ));
            }
        }
        if !self.server_errors.is_empty() {
            failed.push(format!(
                "round {round}: 5xx other than 503: {:?}",
                self.server_errors
            ));
        }
        if self.hangs > 0 {
            failed.push(format!(
                "round {round}: {} requests unanswered after {HANG:?}",
                self.hangs
            ));
        }
        if require_503 && !self.pg_down_ok() {
            failed.push(format!(
                "round {round}: while PostgreSQL was down the service answered {:?} (503, not another 5xx, expected)",
                self.answered_while_pg_down
            ));
        }
        failed
    }

    /// While PostgreSQL was away, the service said so (503) and answered no other 5xx; what
    /// waited through a pause and then succeeded is fine.
    fn pg_down_ok(&self) -> bool {
        self.answered_while_pg_down.get("503").copied().unwrap_or(0) > 0
            && self
                .answered_while_pg_down
                .keys()
                .all(|status| !status.starts_with('5') || status == "503")
    }
}

/// The rounds as a Markdown table.
pub fn table(rounds: &[RoundReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| round | requests (shed) | acknowledged | lost | executed | executed twice | key redelivered (explained / not) | projection divergences | verify --decisions | readable < 1 s again after | 5xx other than 503 while PostgreSQL is up | answers while PostgreSQL is down or paused | hangs |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rounds {
        let recovery = r
            .recovery
            .iter()
            .map(|(fault, seconds)| match seconds {
                Some(seconds) => format!("{fault} {seconds:.1} s"),
                None => format!("{fault} NEVER"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let down = r
            .answered_while_pg_down
            .iter()
            .map(|(status, count)| format!("{status}×{count}"))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            out,
            "| {} | {} ({}) | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} |",
            r.round,
            r.requests,
            r.shed,
            r.acknowledged,
            r.lost.len(),
            r.executed,
            r.duplicate_executions.len(),
            r.redelivered,
            r.unexplained_deliveries.len(),
            r.projection_divergences.len(),
            if r.verify_failure.is_none() {
                "OK"
            } else {
                "FAILED"
            },
            recovery,
            r.server_errors.len(),
            down,
            r.hangs
        );
    }
    out
}

// ---------------------------------------------------------------- processes

/// PostgreSQL's server and client programs: `$COUNTERSIGN_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<major>/bin` (Debian's layout), else 15's.
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("COUNTERSIGN_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut majors: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    majors.sort_unstable();
    let major = majors.last().copied().unwrap_or(15);
    PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"))
}

fn free_port(preferred: u16) -> anyhow::Result<u16> {
    for port in preferred..preferred.saturating_add(200) {
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run_checked(command: &mut Command, what: &str) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("{what} failed ({}): {text}", output.status);
    }
    Ok(text)
}

/// A PostgreSQL cluster of its own in a temporary directory (as the `postgres` user when run as
/// root: PostgreSQL refuses to run as root).
struct Postgres {
    data: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    fn command(&self, tool: &str) -> Command {
        let program = pg_bin().join(tool);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn init(dir: &Path) -> anyhow::Result<Self> {
        let data = dir.join("pg");
        std::fs::create_dir_all(&data)?;
        let as_postgres = is_root();
        if as_postgres {
            run_checked(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&data),
                "chown",
            )?;
        }
        let postgres = Self {
            data,
            port: free_port(55432)?,
            as_postgres,
        };
        run_checked(
            postgres
                .command("initdb")
                .args([
                    "--auth=trust",
                    "--username=postgres",
                    "--encoding=UTF8",
                    "--no-sync",
                    "-D",
                ])
                .arg(&postgres.data),
            "initdb",
        )?;
        postgres.start()?;
        Ok(postgres)
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
            self.port,
            self.data.display()
        );
        run_checked(
            self.command("pg_ctl")
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(&self.data)
                .arg("-l")
                .arg(self.data.join("server.log"))
                .args(["-o", &options]),
            "pg_ctl start",
        )
        .map(drop)
    }

    fn stop(&self, mode: &str) -> anyhow::Result<()> {
        run_checked(
            self.command("pg_ctl")
                .args(["stop", "-w", "-t", "60", "-m", mode, "-D"])
                .arg(&self.data),
            "pg_ctl stop",
        )
        .map(drop)
    }

    /// The postmaster and every process it started.
    fn processes(&self) -> anyhow::Result<Vec<String>> {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid"))?;
        let postmaster = pid_file
            .lines()
            .next()
            .context("postmaster.pid")?
            .trim()
            .to_owned();
        let mut pids = vec![postmaster.clone()];
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid …: the fields after the last ')'.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if parent == Some(postmaster.as_str()) {
                pids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(pids)
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pids = self.processes()?;
        run_checked(Command::new("kill").arg(signal).args(&pids), "kill").map(drop)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.signal("-CONT");
        let _ = self.stop("immediate");
    }
}

/// A child process killed when dropped.
struct Guarded(Option<Child>);

impl Guarded {
    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Nats {
    dir: PathBuf,
    port: u16,
    child: Guarded,
}

impl Nats {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let mut nats = Self {
            dir: dir.join("nats"),
            port: free_port(54222)?,
            child: Guarded(None),
        };
        nats.spawn()?;
        Ok(nats)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .unwrap_or("nats-server");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))?;
        let child = Command::new(binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nats-server")?;
        self.child = Guarded(Some(child));
        wait_until("NATS listens", Duration::from_secs(30), || {
            port_open(self.port)
        })
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

fn wait_until(
    what: &str,
    patience: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what}: not within {patience:?}")
}

/// How to start the deployment's processes.
struct Deployment {
    binary: PathBuf,
    dir: PathBuf,
    database_url: String,
    nats_url: String,
    api_port: u16,
    receiver: String,
    key: PathBuf,
}

impl Deployment {
    fn serve(&self, role: &str) -> anyhow::Result<Guarded> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{role}.log")))?;
        let mut command = Command::new(&self.binary);
        command
            .args([
                "serve",
                "--role",
                role,
                "--dev-keys",
                "false",
                "--log-format",
                "json",
            ])
            .env_remove("RUST_LOG")
            .env("DATABASE_URL", &self.database_url)
            .env("NATS_URL", &self.nats_url)
            .env("COUNTERSIGN_DATA_DIR", self.dir.join("data"))
            .env("COUNTERSIGN_JWT_HS256_SECRET", SECRET)
            .env("COUNTERSIGN_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("COUNTERSIGN_OUTBOUND_ALLOW", "127.0.0.0/8")
            .env("COUNTERSIGN_SWEEP_SECONDS", "1")
            .env("COUNTERSIGN_EXECUTION_LEASE_SECONDS", "5")
            .env("COUNTERSIGN_SIGNING_KEY", &self.key)
            .env("COUNTERSIGN_SEAL_EVERY_SECONDS", "2")
            .env("COUNTERSIGN_PUBLISH_HEADS_DIR", self.dir.join("heads"))
            .stdout(Stdio::null())
            .stderr(log);
        if role == "api" {
            command.args(["--listen", &format!("127.0.0.1:{}", self.api_port)]);
        }
        let child = command.spawn().context("starting countersign serve")?;
        Ok(Guarded(Some(child)))
    }
}

// ---------------------------------------------------------------- the webhook receiver

/// Counts each `Idempotency-Key` it receives; answers 200 to everything.
#[derive(Clone, Default)]
struct Receiver {
    keys: Arc<Mutex<HashMap<String, u64>>>,
}

impl Receiver {
    fn start(&self) -> anyhow::Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let keys = self.keys.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let keys = keys.clone();
                std::thread::spawn(move || {
                    let _ = serve_delivery(stream, &keys);
                });
            }
        });
        Ok(url)
    }

    fn counts(&self) -> HashMap<String, u64> {
        self.keys
            .lock()
            .map(|keys| keys.clone())
            .unwrap_or_default()
    }
}

fn serve_delivery(stream: TcpStream, keys: &Mutex<HashMap<String, u64>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        let mut key = None;
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("idempotency-key") {
                    key = Some(value.trim().to_owned());
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        if let (Some(key), Ok(mut keys)) = (key, keys.lock()) {
            *keys.entry(key).or_default() += 1;
        }
        writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")?;
    }
}

// ---------------------------------------------------------------- the client

#[derive(Debug, Clone)]
enum Answer {
    Status {
        status: u16,
        body: Value,
        token: Option<String>,
    },
    /// Nothing listened (the api process was down).
    Refused,
    /// The connection broke before an answer (the api process died mid-request).
    Broken,
    /// No answer within [`HANG`].
    Hung,
}

impl Answer {
    fn label(&self) -> String {
        match self {
            Self::Status { status, .. } => status.to_string(),
            Self::Refused => "refused".into(),
            Self::Broken => "broken".into(),
            Self::Hung => "hung".into(),
        }
    }
}

fn call(port: u16, method: &str, path: &str, bearer: &str, body: Option<&Value>) -> Answer {
    let Ok(mut stream) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    ) else {
        return Answer::Refused;
    };
    let _ = stream.set_read_timeout(Some(HANG));
    let body = body.map(ToString::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return Answer::Broken;
    }
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Answer::Hung;
        }
        Err(_) => return Answer::Broken,
    }
    let response = String::from_utf8_lossy(&response);
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        return Answer::Broken;
    };
    let Some(status) = head.split(' ').nth(1).and_then(|code| code.parse().ok()) else {
        return Answer::Broken;
    };
    let token = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("x-consistency-token")
            .then(|| value.trim().to_owned())
    });
    Answer::Status {
        status,
        body: serde_json::from_str(body).unwrap_or(Value::Null),
        token,
    }
}

fn token(user: &str, roles: &[&str]) -> anyhow::Result<String> {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({ "sub": user, "tenant": TENANT, "roles": roles, "exp": now + 24 * 3600, "iat": now });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}

struct Tokens {
    requester: String,
    alice: String,
    bob: String,
    owner: String,
}

/// What was acknowledged: the command and the action.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Ack {
    Submitted(String),
    Voted(String, &'static str),
    ExecutionRequested(String),
}

/// Everything the client saw, shared by its request tasks.
#[derive(Default)]
struct Ledgerbook {
    acks: Vec<Ack>,
    /// Execution key → action id, from the submissions' answers.
    keys: HashMap<String, String>,
    /// (when, answer label) of every request.
    answers: Vec<(Instant, String)>,
    to_vote: VecDeque<String>,
    to_bulk: VecDeque<String>,
    to_execute: VecDeque<String>,
    executing: Vec<String>,
}

struct Load {
    port: u16,
    tokens: Arc<Tokens>,
    book: Arc<Mutex<Ledgerbook>>,
    requests: Arc<AtomicU64>,
    shed: Arc<AtomicU64>,
}

impl Load {
    /// Sends requests at `rate` per second until `stop` turns true; returns once every request
    /// sent has been answered.
    async fn run(&self, rate: f64, stop: Arc<AtomicBool>) {
        let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut tick = 0u64;
        while !stop.load(Ordering::SeqCst) {
            ticker.tick().await;
            tick += 1;
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                self.shed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            self.requests.fetch_add(1, Ordering::Relaxed);
            let (port, tokens, book) = (self.port, self.tokens.clone(), self.book.clone());
            tokio::task::spawn_blocking(move || {
                one_request(port, &tokens, &book, tick);
                drop(permit);
            });
        }
        let _ = permits.acquire_many(IN_FLIGHT as u32).await;
    }
}

fn one_request(port: u16, tokens: &Tokens, book: &Mutex<Ledgerbook>, tick: u64) {
    let Ok(mut guard) = book.lock() else { return };
    // Execute, vote, bulk vote and submit in turn, each when it has something to do.
    let choice = match tick % 4 {
        0 if !guard.to_execute.is_empty() => 0,
        1 if !guard.to_vote.is_empty() => 1,
        2 if guard.to_bulk.len() >= 3 => 2,
        _ => 3,
    };
    let work: Vec<String> = match choice {
        0 => guard.to_execute.pop_front().into_iter().collect(),
        1 => guard.to_vote.pop_front().into_iter().collect(),
        2 => {
            let n = guard.to_bulk.len().min(10);
            guard.to_bulk.drain(..n).collect()
        }
        _ => Vec::new(),
    };
    drop(guard);
    let (answer, requeue): (Answer, fn(&mut Ledgerbook, String)) = match choice {
        0 => (
            call(
                port,
                "POST",
                &format!("/v1/actions/{}/execute", work[0]),
                &tokens.requester,
                Some(&json!({})),
            ),
            |book, id| book.to_execute.push_back(id),
        ),
        1 => (
            call(
                port,
                "POST",
                &format!("/v1/actions/{}/votes", work[0]),
                &tokens.alice,
                Some(&json!({ "vote": "approve", "comment": "chaos" })),
            ),
            |book, id| book.to_vote.push_back(id),
        ),
        2 => {
            let votes: Vec<Value> = work
                .iter()
                .map(|id| json!({ "action_id": id, "vote": "approve" }))
                .collect();
            (
                call(
                    port,
                    "POST",
                    "/v1/votes",
                    &tokens.bob,
                    Some(&json!({ "votes": votes })),
                ),
                |book, id| book.to_bulk.push_back(id),
            )
        }
        _ => (
            call(
                port,
                "POST",
                "/v1/actions",
                &tokens.requester,
                Some(&json!({
                    "module": "webhook", "capability": "post",
                    "summary": format!("Chaos delivery {tick}"),
                    // The execution key is per capability and payload: each
                    // action's own, so that deliveries map to one action.
                    "payload": { "tick": tick, "nonce": uuid::Uuid::now_v7().to_string() }
                })),
            ),
            |_, _| {},
        ),
    };
    let Ok(mut book) = book.lock() else { return };
    book.answers.push((Instant::now(), answer.label()));
    let Answer::Status { status, body, .. } = &answer else {
        // Unknown outcome: try again (a repeat is refused if the first one was recorded).
        for id in work {
            requeue(&mut book, id);
        }
        return;
    };
    match (choice, status) {
        (0, 202) => {
            book.acks.push(Ack::ExecutionRequested(work[0].clone()));
            book.executing.push(work[0].clone());
        }
        (1, 200) => {
            book.acks.push(Ack::Voted(work[0].clone(), "alice"));
            book.to_bulk.push_back(work[0].clone());
        }
        (2, 200) => {
            for result in body["results"].as_array().into_iter().flatten() {
                let Some(id) = result["action_id"].as_str() else {
                    continue;
                };
                match result["status"].as_u64() {
                    Some(200) => {
                        book.acks.push(Ack::Voted(id.to_owned(), "bob"));
                        book.to_execute.push_back(id.to_owned());
                    }
                    Some(status) if status >= 500 => book.to_bulk.push_back(id.to_owned()),
                    _ => {}
                }
            }
        }
        (3, 201) => {
            if let (Some(id), Some(key)) = (body["id"].as_str(), body["execution_key"].as_str()) {
                book.acks.push(Ack::Submitted(id.to_owned()));
                book.keys.insert(key.to_owned(), id.to_owned());
                book.to_vote.push_back(id.to_owned());
            }
        }
        (_, status) if *status >= 500 => {
            for id in work {
                requeue(&mut book, id);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------- a run

/// The chaos database as the checks read it.
struct Stores {
    ledger: Ledger,
    projections: ProjectionStore,
    pool: sqlx::PgPool,
}

impl Stores {
    async fn open(url: &str) -> anyhow::Result<Self> {
        let config = StoreConfig::Postgres {
            url: url.to_owned(),
        };
        Ok(Self {
            ledger: Ledger::open(&config).await?,
            projections: ProjectionStore::open(&config).await?,
            pool: sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(url)
                .await?,
        })
    }

    async fn close(self) {
        self.pool.close().await;
        self.projections.close().await;
        self.ledger.close().await;
    }

    /// Every action event: (action id, event type, actor).
    async fn events(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        Ok(sqlx::query_as(
            "SELECT aggregate_id, event_type, metadata ->> 'actor' FROM events
              WHERE aggregate_type = 'action' ORDER BY position",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

struct World {
    settings: ChaosSettings,
    deployment: Deployment,
    postgres: Postgres,
    nats: Nats,
    api: Guarded,
    worker: Guarded,
    receiver: Receiver,
    load: Arc<Load>,
    /// Windows (start, end) during which PostgreSQL was down.
    pg_down: Vec<(Instant, Instant)>,
}

/// Runs the whole thing; the rounds' reports, whatever they found (errors are for a run that
/// could not be carried out).
pub async fn run(settings: ChaosSettings) -> anyhow::Result<Vec<RoundReport>> {
    let dir = std::env::temp_dir().join(format!(
        "countersign-chaos-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let outcome = run_in(settings, &dir).await;
    match &outcome {
        Ok(rounds) if rounds.iter().all(|round| round.failures(true).is_empty()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        _ => tracing_line(&format!("chaos: logs kept in {}", dir.display())),
    }
    outcome
}

#[expect(
    clippy::print_stderr,
    reason = "progress of a long run, on the terminal"
)]
fn tracing_line(line: &str) {
    eprintln!("{line}");
}

async fn run_in(settings: ChaosSettings, dir: &Path) -> anyhow::Result<Vec<RoundReport>> {
    let setup_dir = dir.to_owned();
    let (postgres, nats) = tokio::task::spawn_blocking(move || {
        let postgres = Postgres::init(&setup_dir)?;
        let nats = Nats::start(&setup_dir)?;
        anyhow::Ok((postgres, nats))
    })
    .await??;
    tracing_line(&format!(
        "chaos: PostgreSQL on {}, NATS on {}, in {}",
        postgres.port,
        nats.port,
        dir.display()
    ));
    run_checked(
        postgres.command("createdb").args([
            "-h",
            "127.0.0.1",
            "-p",
            &postgres.port.to_string(),
            "-U",
            "postgres",
            "chaos",
        ]),
        "createdb",
    )?;
    let database_url = postgres.url("chaos");
    let key = dir.join("head.key");
    run_checked(
        Command::new(&settings.binary)
            .args(["keys", "generate", "--out"])
            .arg(&key),
        "countersign keys generate",
    )?;
    let receiver = Receiver::default();
    let deployment = Deployment {
        binary: settings.binary.clone(),
        dir: dir.to_owned(),
        database_url: database_url.clone(),
        nats_url: nats.url(),
        api_port: free_port(38080)?,
        receiver: receiver.start()?,
        key,
    };
    let worker = deployment.serve("worker")?;
    let api = deployment.serve("api")?;
    let port = deployment.api_port;
    tokio::task::spawn_blocking(move || {
        wait_until("the api answers", Duration::from_secs(120), || {
            matches!(
                call(port, "GET", "/readyz", "", None),
                Answer::Status { status: 200, .. }
            )
        })
    })
    .await??;
    let tokens = Arc::new(Tokens {
        requester: token("rita", &["requester"])?,
        alice: token("alice", &["approver"])?,
        bob: token("bob", &["approver"])?,
        owner: token("olga", &["owner"])?,
    });
    configure(port, &tokens.owner, &deployment.receiver)?;
    let load = Arc::new(Load {
        port,
        tokens,
        book: Arc::new(Mutex::new(Ledgerbook::default())),
        requests: Arc::new(AtomicU64::new(0)),
        shed: Arc::new(AtomicU64::new(0)),
    });
    let mut world = World {
        settings,
        deployment,
        postgres,
        nats,
        api,
        worker,
        receiver,
        load,
        pg_down: Vec::new(),
    };
    let mut reports = Vec::new();
    for round in 1..=world.settings.rounds {
        let report = world.round(round).await?;
        tracing_line(&table(std::slice::from_ref(&report)));
        reports.push(report);
    }
    world.api.terminate();
    world.worker.terminate();
    Ok(reports)
}

/// Two approvals from approvers (one by a single vote, one in a bulk vote), webhook deliveries
/// to the receiver.
fn configure(port: u16, owner: &str, receiver: &str) -> anyhow::Result<()> {
    let Answer::Status {
        status: 200,
        body: mut settings,
        ..
    } = call(port, "GET", "/v1/settings", owner, None)
    else {
        bail!("reading the settings failed");
    };
    settings["webhook_url"] = json!(receiver);
    settings["default_requirements"] = json!({
        "stages": [{ "rules": [{ "type": "any", "min_approvals": 2, "roles": ["approver"] }] }],
        "max_attempts": 10
    });
    match call(port, "PUT", "/v1/settings", owner, Some(&settings)) {
        Answer::Status { status: 200, .. } => Ok(()),
        other => bail!("updating the settings: {other:?}"),
    }
}

impl World {
    async fn round(&mut self, round: usize) -> anyhow::Result<RoundReport> {
        let started = Instant::now();
        let requests_before = self.load.requests.load(Ordering::Relaxed);
        let shed_before = self.load.shed.load(Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let load = self.load.clone();
        let (rate, flag) = (self.settings.rate, stop.clone());
        let running = tokio::spawn(async move { load.run(rate, flag).await });
        let settle = self.settings.settle;
        let mut recovery = Vec::new();
        tokio::time::sleep(settle).await;
        for fault in [
            "worker SIGKILL",
            "api SIGKILL",
            "PostgreSQL restart",
            "NATS restart",
            "PostgreSQL SIGSTOP",
        ] {
            tracing_line(&format!("chaos: round {round}: {fault}"));
            let outage = self.inject(fault).await?;
            recovery.push((fault.to_owned(), self.recovered().await));
            // PostgreSQL's outage lasts, for the service, until a write is readable again.
            if let Some(since) = outage {
                self.pg_down.push((since, Instant::now()));
            }
            tokio::time::sleep(settle).await;
        }
        stop.store(true, Ordering::SeqCst);
        running.await?;
        tracing_line(&format!("chaos: round {round}: load stopped, checking"));
        let mut report = self.check(round, started).await?;
        report.recovery = recovery;
        report.requests = self.load.requests.load(Ordering::Relaxed) - requests_before;
        report.shed = self.load.shed.load(Ordering::Relaxed) - shed_before;
        Ok(report)
    }

    /// Injects `fault`; when it takes PostgreSQL away, when it began.
    async fn inject(&mut self, fault: &str) -> anyhow::Result<Option<Instant>> {
        let outage = self.settings.outage;
        match fault {
            "worker SIGKILL" => {
                self.worker.kill();
                self.worker = self.deployment.serve("worker")?;
            }
            "api SIGKILL" => {
                self.api.kill();
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.api = self.deployment.serve("api")?;
            }
            "PostgreSQL restart" => {
                let down = Instant::now();
                self.postgres.stop("fast")?;
                // Probes while it is down, beside the load.
                let (port, owner) = (self.deployment.api_port, self.load.tokens.owner.clone());
                let book = self.load.book.clone();
                let probe = tokio::task::spawn_blocking(move || {
                    let until = Instant::now() + outage;
                    while Instant::now() < until {
                        let answer =
                            call(port, "GET", "/v1/actions?status=all&limit=5", &owner, None);
                        if let Ok(mut book) = book.lock() {
                            book.answers.push((Instant::now(), answer.label()));
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                });
                probe.await?;
                self.postgres.start()?;
                return Ok(Some(down));
            }
            "NATS restart" => {
                self.nats.child.terminate();
                self.nats.spawn()?;
            }
            "PostgreSQL SIGSTOP" => {
                let paused = Instant::now();
                self.postgres.signal("-STOP")?;
                tokio::time::sleep(outage).await;
                self.postgres.signal("-CONT")?;
                return Ok(Some(paused));
            }
            other => bail!("unknown fault {other}"),
        }
        Ok(None)
    }

    /// Seconds from now until a submission is readable in the inbox within a second of its
    /// acknowledgement (None: not within two minutes).
    async fn recovered(&self) -> Option<f64> {
        let (port, requester) = (self.deployment.api_port, self.load.tokens.requester.clone());
        let book = self.load.book.clone();
        tokio::task::spawn_blocking(move || {
            let began = Instant::now();
            let mut n = 0;
            while began.elapsed() < Duration::from_secs(120) {
                n += 1;
                let written = call(
                    port,
                    "POST",
                    "/v1/actions",
                    &requester,
                    Some(&json!({ "module": "noop", "capability": "echo", "summary": format!("Lag probe {n}") })),
                );
                let Answer::Status { status: 201, token: Some(token), body } = written else {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                };
                if let (Some(id), Ok(mut book)) = (body["id"].as_str(), book.lock()) {
                    book.acks.push(Ack::Submitted(id.to_owned()));
                }
                let acknowledged = Instant::now();
                let read = call(
                    port,
                    "GET",
                    &format!("/v1/actions?status=all&limit=1&consistent_with={token}"),
                    &requester,
                    None,
                );
                if matches!(read, Answer::Status { status: 200, .. })
                    && acknowledged.elapsed() < Duration::from_secs(1)
                {
                    return Some(began.elapsed().as_secs_f64());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    async fn check(&mut self, round: usize, started: Instant) -> anyhow::Result<RoundReport> {
        let mut report = RoundReport {
            round,
            ..RoundReport::default()
        };
        let (acks, keys, answers, executing) = {
            let book = self
                .load
                .book
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            (
                book.acks.clone(),
                book.keys.clone(),
                book.answers.clone(),
                book.executing.clone(),
            )
        };
        report.acknowledged = acks.len();
        // Opened afresh each round: PostgreSQL was restarted under the last ones.
        let stores = Stores::open(&self.deployment.database_url).await?;

        // Every execution asked for finishes (retries after a kill run on the lease's expiry).
        let deadline = Instant::now() + Duration::from_secs(180);
        let events = loop {
            let events = stores.events().await?;
            let finished: HashSet<&str> = events
                .iter()
                .filter(|(_, kind, _)| kind == "ExecutionSucceeded" || kind == "ExecutionFailed")
                .map(|(id, _, _)| id.as_str())
                .collect();
            report.unfinished = executing
                .iter()
                .filter(|id| !finished.contains(id.as_str()))
                .count();
            if report.unfinished == 0 || Instant::now() > deadline {
                break events;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };

        // Acknowledged means recorded.
        let recorded: HashSet<(&str, &str, &str)> = events
            .iter()
            .map(|(id, kind, actor)| (id.as_str(), kind.as_str(), actor.as_str()))
            .collect();
        let submitted: HashSet<&str> = events
            .iter()
            .filter(|(_, kind, _)| kind == "ActionSubmitted")
            .map(|(id, _, _)| id.as_str())
            .collect();
        let requested: HashSet<&str> = events
            .iter()
            .filter(|(_, kind, _)| kind == "ExecutionRequested")
            .map(|(id, _, _)| id.as_str())
            .collect();
        for ack in &acks {
            let found = match ack {
                Ack::Submitted(id) => submitted.contains(id.as_str()),
                Ack::Voted(id, voter) => recorded.contains(&(id.as_str(), "VoteCast", voter)),
                Ack::ExecutionRequested(id) => requested.contains(id.as_str()),
            };
            if !found {
                report.lost.push(format!("{ack:?}"));
            }
        }

        // Exactly once: one success per action at most, and no key delivered more often than
        // the log shows attempts.
        let mut started_count: HashMap<&str, u64> = HashMap::new();
        let mut succeeded: HashMap<&str, u64> = HashMap::new();
        for (id, kind, _) in &events {
            match kind.as_str() {
                "ExecutionStarted" => *started_count.entry(id).or_default() += 1,
                "ExecutionSucceeded" => *succeeded.entry(id).or_default() += 1,
                _ => {}
            }
        }
        report.executed = succeeded.len();
        report.duplicate_executions = succeeded
            .iter()
            .filter(|(_, count)| **count > 1)
            .map(|(id, count)| format!("{id} ×{count}"))
            .collect();
        for (key, delivered) in self.receiver.counts() {
            let id = keys.get(&key).map(String::as_str).unwrap_or("?");
            let attempts = started_count.get(id).copied().unwrap_or(0);
            if delivered > attempts {
                report.unexplained_deliveries.push(format!(
                    "{key} ({id}): {delivered} deliveries, {attempts} attempts"
                ));
            } else if delivered > 1 {
                report.redelivered += 1;
            }
        }

        // Projections: the live generations, caught up, against a rebuild from scratch.
        report.projection_divergences = Self::compare_projections(&stores).await?;

        // The sealed ledger and the decisions.
        report.verify_failure = self.verify().await.err();
        stores.close().await;

        // What the service answered.
        for (at, label) in answers.iter().filter(|(at, _)| *at >= started) {
            *report.statuses.entry(label.clone()).or_default() += 1;
            let down = self.pg_down.iter().any(|(from, to)| at >= from && at <= to);
            if down {
                *report
                    .answered_while_pg_down
                    .entry(label.clone())
                    .or_default() += 1;
            }
            if label == "hung" {
                report.hangs += 1;
            }
            if !down && label.starts_with('5') && label != "503" {
                report.server_errors.push(label.clone());
            }
        }
        Ok(report)
    }

    /// Each live generation against a rebuild from scratch, compared while the log stands
    /// still (executions the load asked for without hearing the answer may still be finishing:
    /// a comparison the log moved under is made again).
    async fn compare_projections(stores: &Stores) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let head = stores.ledger.log_head().await?;
            let mut caught_up = true;
            for projection in Projection::ALL {
                let live = stores.projections.live(projection).await?;
                caught_up &= live.is_some_and(|live| live.checkpoint.position >= head.position);
            }
            if !caught_up {
                if Instant::now() > deadline {
                    bail!("the live projections did not catch up with the log");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let divergences = Self::compare_once(stores).await?;
            if stores.ledger.log_head().await? == head {
                return Ok(divergences);
            }
            if Instant::now() > deadline {
                bail!("the log never stood still long enough to compare the projections");
            }
        }
    }

    async fn compare_once(stores: &Stores) -> anyhow::Result<Vec<String>> {
        let mut divergences = Vec::new();
        for projection in Projection::ALL {
            let Some(live) = stores.projections.live(projection).await? else {
                bail!("{projection}: no live generation");
            };
            let rebuilt = stores
                .projections
                .create_generation(projection, GenerationState::Building)
                .await?;
            let mut runner = Runner::new(
                stores.ledger.clone(),
                stores.projections.clone(),
                projection,
                rebuilt.generation,
            );
            runner.run_until_idle().await?;
            let incremental =
                without_zero_counters(stores.projections.dump(projection, live.generation).await?);
            let from_scratch = without_zero_counters(
                stores
                    .projections
                    .dump(projection, rebuilt.generation)
                    .await?,
            );
            stores
                .projections
                .discard(projection, rebuilt.generation)
                .await?;
            if incremental != from_scratch {
                let live_rows: HashSet<&Vec<String>> = incremental.iter().collect();
                let rebuilt_rows: HashSet<&Vec<String>> = from_scratch.iter().collect();
                let only_live: Vec<String> = live_rows
                    .difference(&rebuilt_rows)
                    .take(3)
                    .map(|row| row.join(","))
                    .collect();
                let only_rebuilt: Vec<String> = rebuilt_rows
                    .difference(&live_rows)
                    .take(3)
                    .map(|row| row.join(","))
                    .collect();
                divergences.push(format!(
                    "{projection}: {} live rows, {} rebuilt; only live: {only_live:?}; only rebuilt: {only_rebuilt:?}",
                    incremental.len(),
                    from_scratch.len()
                ));
            }
        }
        Ok(divergences)
    }

    async fn verify(&self) -> Result<(), String> {
        let mut command = Command::new(&self.settings.binary);
        command
            .args(["verify", "--decisions", "--public-key"])
            .arg(self.deployment.key.with_extension("key.pub"))
            .arg("--published-heads")
            .arg(self.deployment.dir.join("heads"))
            .env("DATABASE_URL", &self.deployment.database_url)
            .env("COUNTERSIGN_LOG_FORMAT", "text")
            .env_remove("COUNTERSIGN_SIGNING_KEY");
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .map_err(|err| err.to_string())?
            .map_err(|err| err.to_string())?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }
}

/// The rows of a dump without the statistics counters that stand at zero: a counter that went
/// up and down again is a row holding 0 when the two changes were applied in different batches,
/// and no row when they were applied in one (a rebuild's batches are larger), and both read as
/// 0. Every other row must be equal.
fn without_zero_counters(rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    rows.into_iter()
        .filter(|row| {
            !(row.first().is_some_and(|table| table == "p_stats")
                && row.last().is_some_and(|count| count == "0"))
        })
        .collect()
}

/// `countersign-bench chaos [--short]`: runs, prints the table, fails on any failed check.
pub async fn command(short: bool) -> anyhow::Result<()> {
    let binary = std::env::current_exe()?.with_file_name("countersign");
    if !binary.exists() {
        bail!(
            "{} is missing: `make chaos` builds it first",
            binary.display()
        );
    }
    let settings = if short {
        ChaosSettings::short(binary)
    } else {
        ChaosSettings::full(binary)
    };
    let rounds = run(settings).await?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", table(&rounds))?;
    let failures: Vec<String> = rounds
        .iter()
        .flat_map(|round| round.failures(true))
        .collect();
    for failure in &failures {
        writeln!(out, "FAILED: {failure}")?;
    }
    if !failures.is_empty() {
        bail!("{} check(s) failed", failures.len());
    }
    writeln!(out, "chaos: every check passed")?;
    Ok(())
}
