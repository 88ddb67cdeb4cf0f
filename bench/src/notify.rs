//! Notifications (issue 16), on one fresh PostgreSQL database with the service's worker role
//! running as `serve --role worker` runs it (the projections, the notifier, the dispatcher):
//!
//! - **Fan-out lag**: actions submitted and approved through the ledger at 1,000 events/s in a
//!   tenant of 1,000 members; the lag from a command's commit to its in-app notifications being
//!   readable (a query of the feed's table sees them), beside the `actions` projection's lag for
//!   the same commits in the same run.
//! - **Catch-up**: the notifier alone over a backlog appended behind its checkpoint, beside
//!   reading the same events.
//! - **Email throughput**: the dispatcher delivering a backlog of approval emails to a local SMTP
//!   sink, beside a bare `lettre` send loop to the same sink.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use countersign_app::notify::{NOTIFIER, Notifier, NotifierConfig};
use countersign_domain::action::{Action, ActionCommand, CastVote, CommandContext};
use countersign_domain::members::{Email, MemberCommand, MemberDirectory, MemberDraft};
use countersign_domain::policy::PolicySnapshot;
use countersign_domain::quorum::Vote;
use countersign_domain::tenant::TenantCommandContext;
use countersign_domain::{ActionId, Principal, Role, TenantId, TenantMode, UserId};
use countersign_ledger::{Ledger, Metadata, StoreConfig};
use countersign_projections::{Projection, ProjectionStore};
use countersign_runtime::{Role as ProcessRole, Runtime, RuntimeConfig, SmtpSettings};
use futures::StreamExt as _;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};

use crate::ledger::{Database, Settings, submission, submit_command};
use crate::projections::{percentile, read_rate_after, seed_actions};
use crate::report::{Figure, Section, machine, progress};

/// Members of the tenant's directory.
const MEMBERS: usize = 1000;
/// Of them, the holders of the role the policy asks for: each submission notifies them.
const APPROVERS: usize = 10;
/// Actions submitted and approved per second (four events each: 1,000 events/s).
const PAIRS_PER_SECOND: u32 = 250;
/// Actions (four events each) appended behind the notifier per catch-up run.
const CATCH_UP: usize = 25_000;
/// Emails per throughput run.
const EMAILS: usize = 1000;
const FROM: &str = "countersign@bench.test";

fn member(n: usize) -> anyhow::Result<UserId> {
    Ok(UserId::parse(format!("member-{n:04}"))?)
}

struct People {
    tenant: TenantId,
    /// A member without the approvers' role: hears of decisions about their actions.
    requester: Principal,
    /// A member holding the role: casts the approving vote.
    approver: Principal,
}

fn people() -> anyhow::Result<People> {
    Ok(People {
        tenant: TenantId::parse("acme")?,
        requester: Principal::new(member(MEMBERS - 1)?, [Role::parse("requester")?]),
        approver: Principal::new(member(0)?, [Role::parse("finance_ops")?]),
    })
}

/// The submission of a new action under a policy asking one `finance_ops` approval, and the
/// approving vote.
fn commands(people: &People, id: ActionId) -> anyhow::Result<(ActionCommand, ActionCommand)> {
    let submit = submit_command(
        &people.tenant,
        &people.requester,
        id,
        submission()?,
        TenantMode::RequireApproval,
        PolicySnapshot::tenant_default(serde_json::from_value(serde_json::json!({
            "stages": [{ "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 1 }] }]
        }))?),
    );
    let vote = ActionCommand::CastVote(CastVote {
        context: CommandContext {
            tenant: people.tenant.clone(),
            by: people.approver.clone(),
            at: Utc::now(),
            correlation_id: None,
        },
        vote: Vote::Approve,
        comment: None,
    });
    Ok((submit, vote))
}

/// Adds the directory's members through the ledger, as the members use case does: `APPROVERS`
/// hold `finance_ops`, the rest `viewer`, every one with an email address.
async fn seed_members(ledger: &Ledger, people: &People) -> anyhow::Result<()> {
    let owner = Principal::new(UserId::parse("bench-owner")?, [Role::owner()]);
    for n in 0..MEMBERS {
        let role = if n < APPROVERS {
            "finance_ops"
        } else if n == MEMBERS - 1 {
            "requester"
        } else {
            "viewer"
        };
        let user_id = member(n)?;
        let command = MemberCommand::AddMember {
            context: TenantCommandContext {
                tenant: people.tenant.clone(),
                by: owner.clone(),
                at: Utc::now(),
                correlation_id: None,
            },
            draft: MemberDraft {
                display_name: Some(format!("Member {n}")),
                email: Some(Email::parse(format!("{user_id}@example.com"))?),
                slack_user_id: None,
                roles: [Role::parse(role)?].into(),
                preferences: None,
            },
            user_id,
        };
        let metadata = Metadata::new(people.tenant.clone(), owner.id.clone());
        ledger
            .execute::<MemberDirectory>(&people.tenant, command, &metadata)
            .await
            .map_err(|err| anyhow::anyhow!("adding a member: {err}"))?;
    }
    Ok(())
}

/// The worker role of `serve` on the bench's database, running until the sender is used.
struct Worker {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn worker(url: &str, smtp: Option<&str>) -> anyhow::Result<(Runtime, RuntimeConfig)> {
    let mut config = RuntimeConfig::new(
        ProcessRole::Worker,
        StoreConfig::Postgres {
            url: url.to_owned(),
        },
    );
    // Nothing executes: the load is the notifier's (and the projections'), not capabilities'.
    config.executor.enabled = false;
    config.auth.api_key_secret = Some([7; 32]);
    config.public_url = Some("https://approvals.bench.test".to_owned());
    config.shutdown_grace = Duration::from_secs(10);
    if let Some(smtp) = smtp {
        config.executor.smtp = Some(SmtpSettings {
            url: smtp.to_owned(),
            from: FROM.to_owned(),
        });
    }
    let runtime = Runtime::build(config.clone()).await?;
    Ok((runtime, config))
}

fn start(runtime: Runtime) -> Worker {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(runtime.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Worker { stop, task }
}

impl Worker {
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

/// Lags (ms) of one run: in-app notifications, and the `actions` projection, for the same commits.
struct Lags {
    events_per_second: f64,
    notified: Vec<f64>,
    projected: Vec<f64>,
    missing: usize,
}

/// Submits and approves actions at `PAIRS_PER_SECOND` for `seconds` while the worker runs;
/// samples every 5 ms which notifications are readable and how far the projection got.
async fn fan_out(
    ledger: &Ledger,
    projections: &ProjectionStore,
    pool: &PgPool,
    people: &Arc<People>,
    seconds: u64,
) -> anyhow::Result<Lags> {
    // The worker's runner creates the live generation as it starts: wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    let base = loop {
        if let Some(live) = projections.live(Projection::Actions).await? {
            break live.events;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no live actions generation after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let after_seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM notifications")
        .fetch_one(pool)
        .await?;
    let (stop, _) = tokio::sync::watch::channel(false);
    // Per commit: (events committed so far, action, the kind it should notify, when).
    let committed = Arc::new(Mutex::new(
        Vec::<(i64, String, &'static str, Instant)>::new(),
    ));
    let written = Arc::new(AtomicI64::new(0));
    let projection_sampler = {
        let (projections, done) = (projections.clone(), stop.subscribe());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !*done.borrow() {
                if let Ok(Some(live)) = projections.live(Projection::Actions).await {
                    samples.push((live.events - base, Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples
        })
    };
    let notification_sampler = {
        let (pool, done) = (pool.clone(), stop.subscribe());
        tokio::spawn(async move {
            let mut seen: HashMap<(String, String), Instant> = HashMap::new();
            let mut last = after_seq;
            while !*done.borrow() {
                let rows: Vec<(i64, Option<String>, String)> = sqlx::query_as(
                    "SELECT seq, action_id, kind FROM notifications \
                     WHERE seq > $1 AND channel = 'in_app' ORDER BY seq LIMIT 20000",
                )
                .bind(last)
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
                let now = Instant::now();
                for (seq, action, kind) in rows {
                    last = last.max(seq);
                    if let Some(action) = action {
                        seen.entry((action, kind)).or_insert(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };
    let permits = Arc::new(Semaphore::new(64));
    let started = Instant::now();
    let mut ticker =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(PAIRS_PER_SECOND)));
    let mut tasks = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        ticker.tick().await;
        let permit = permits.clone().acquire_owned().await?;
        let (ledger, people, committed, written) = (
            ledger.clone(),
            people.clone(),
            committed.clone(),
            written.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let id = ActionId::from_uuid(uuid::Uuid::now_v7());
            let (submit, vote) = commands(&people, id)?;
            for (command, kind) in [(submit, "assigned"), (vote, "decided")] {
                let metadata =
                    Metadata::new(people.tenant.clone(), command.context().by.id.clone());
                let done = ledger
                    .execute::<Action>(&id, command, &metadata)
                    .await
                    .map_err(|err| anyhow::anyhow!("{err}"))?;
                let count = done.events.len() as i64;
                let total = written.fetch_add(count, Ordering::SeqCst) + count;
                if let Ok(mut committed) = committed.lock() {
                    committed.push((total, id.to_string(), kind, Instant::now()));
                }
            }
            drop(permit);
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = written.load(Ordering::SeqCst);
    let commits = committed
        .lock()
        .map_err(|_| anyhow::anyhow!("a writer panicked"))?
        .clone();
    // Let both catch up (at most 30 s), then stop sampling.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let projected = projections
            .live(Projection::Actions)
            .await?
            .map_or(0, |g| g.events - base);
        let notified: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM notifications WHERE seq > $1 AND channel = 'in_app'",
        )
        .bind(after_seq)
        .fetch_one(pool)
        .await?;
        // Each pair notifies every approver (the submission) and the requester (the approval).
        let expected = (commits.len() / 2 * (APPROVERS + 1)) as i64;
        if (projected >= total && notified >= expected) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let _ = stop.send(true);
    let samples = projection_sampler.await?;
    let seen = notification_sampler.await?;
    let mut by_count = commits.clone();
    by_count.sort_by_key(|(count, ..)| *count);
    let projected = by_count
        .iter()
        .filter_map(|(count, _, _, at)| {
            let applied = samples
                .iter()
                .find(|(events, sampled)| events >= count && sampled >= at)?;
            Some(applied.1.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    let mut missing = 0;
    let mut notified = Vec::new();
    for (_, action, kind, at) in &commits {
        match seen.get(&(action.clone(), (*kind).to_owned())) {
            Some(readable) => {
                notified.push(readable.saturating_duration_since(*at).as_secs_f64() * 1000.0);
            }
            None => missing += 1,
        }
    }
    Ok(Lags {
        events_per_second: total as f64 / elapsed,
        notified,
        projected,
        missing,
    })
}

/// Appends `CATCH_UP` submitted-and-approved actions after the notifier's checkpoint, reads
/// them (the baseline), then runs the notifier alone until it has caught up: (reading,
/// notifier) in events per second. Every submission must have notified every approver and every
/// approval the requester.
async fn catch_up(
    ledger: &Ledger,
    pool: &PgPool,
    url: &str,
    people: &People,
) -> anyhow::Result<(f64, f64)> {
    let after = ledger.load_checkpoint(NOTIFIER).await?;
    let rows_before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notifications")
        .fetch_one(pool)
        .await?;
    let events = seed_actions(url, CATCH_UP, |_, id| {
        let (submit, vote) = commands(people, id)?;
        Ok((people.tenant.clone(), vec![submit, vote]))
    })
    .await?;
    let read = read_rate_after(ledger, after).await?;
    let notifier = Notifier::new(ledger.clone(), NotifierConfig::default());
    let mut checkpoint = None;
    let started = Instant::now();
    let mut processed = 0;
    loop {
        let read = notifier.process_next(&mut checkpoint).await?;
        if read == 0 {
            break;
        }
        processed += read;
    }
    let rate = processed as f64 / started.elapsed().as_secs_f64();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notifications")
        .fetch_one(pool)
        .await?;
    // Beyond them only what a stopped worker had read but not yet checkpointed.
    anyhow::ensure!(
        usize::try_from(events).is_ok_and(|events| processed >= events),
        "the notifier read {processed} of the {events} events appended"
    );
    let expected = i64::try_from(CATCH_UP * (APPROVERS + 1))?;
    anyhow::ensure!(
        rows - rows_before == expected,
        "the catch-up wrote {} notifications, not {expected}",
        rows - rows_before
    );
    Ok((read, rate))
}

// ------------------------------------------------------------------------------------ email

/// Just enough of an SMTP server (RFC 5321) to accept every message; records when each arrived.
#[derive(Clone)]
struct Sink {
    url: String,
    received: Arc<Mutex<Vec<Instant>>>,
}

impl Sink {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let recorded = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, recorded.clone()));
            }
        });
        Ok(Self {
            url: format!("smtp://{address}"),
            received,
        })
    }

    fn arrivals(&self) -> Vec<Instant> {
        self.received
            .lock()
            .map(|received| received.clone())
            .unwrap_or_default()
    }

    fn count(&self) -> usize {
        self.received.lock().map_or(0, |received| received.len())
    }
}

async fn session(stream: TcpStream, received: Arc<Mutex<Vec<Instant>>>) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write.write_all(b"220 sink.bench ESMTP\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let verb = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if verb.starts_with("EHLO") || verb.starts_with("HELO") {
            b"250 sink.bench\r\n"
        } else if verb == "DATA" {
            write.write_all(b"354 go ahead\r\n").await?;
            loop {
                line.clear();
                if read.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
            }
            if let Ok(mut received) = received.lock() {
                received.push(Instant::now());
            }
            b"250 queued\r\n"
        } else if verb == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else if verb.starts_with("MAIL")
            || verb.starts_with("RCPT")
            || verb == "RSET"
            || verb == "NOOP"
        {
            b"250 OK\r\n"
        } else {
            b"502 not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
}

/// The baseline: `lettre` alone, `concurrency` messages in flight through a transport built as
/// the email sender builds its own (pooled connections), each message built like an approval
/// email (plain and HTML).
async fn bare_lettre(sink: &Sink, messages: usize, concurrency: usize) -> anyhow::Result<f64> {
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&sink.url)?
        .timeout(Some(Duration::from_secs(20)))
        .build();
    let from: Mailbox = FROM.parse()?;
    let before = sink.count();
    let started = Instant::now();
    let transport = &transport;
    let from = &from;
    futures::stream::iter(0..messages)
        .map(|n| async move {
            let to: Mailbox = format!("member-{:04}@example.com", n % APPROVERS).parse()?;
            let plain = format!(
                "Approval needed: Refund order 1042 (damaged in transit)\n\nAction: Refund order \
                 1042 (damaged in transit)\nType: billing.refund\nRisk: medium (40/100)\nStatus: \
                 pending\nRequested by: member-0999\nOpen: \
                 https://approvals.bench.test/actions/{n}\n"
            );
            let html = format!("<h2>Approval needed</h2><p>{plain}</p>");
            let message = Message::builder()
                .from(from.clone())
                .to(to)
                .subject("Approval needed: Refund order 1042 (damaged in transit)")
                .message_id(Some(format!("<{n}@bench.countersign>")))
                .multipart(MultiPart::alternative_plain_html(plain, html))?;
            transport.send(message).await?;
            anyhow::Ok(())
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<()>>()?;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        sink.count() - before == messages,
        "the sink missed messages"
    );
    Ok(messages as f64 / elapsed)
}

/// The service: `EMAILS / APPROVERS` actions submitted while no worker runs (a backlog of
/// `EMAILS` approval emails once the notifier reads them), then the worker started with SMTP
/// pointing at the sink; the rate from the first email to the last arriving.
async fn dispatched(url: &str, people: &People, sink: &Sink) -> anyhow::Result<f64> {
    let (runtime, _) = worker(url, Some(&sink.url)).await?;
    let ledger = runtime.app().ledger().clone();
    for _ in 0..EMAILS / APPROVERS {
        let id = ActionId::from_uuid(uuid::Uuid::now_v7());
        let (submit, _) = commands(people, id)?;
        let metadata = Metadata::new(people.tenant.clone(), people.requester.id.clone());
        ledger
            .execute::<Action>(&id, submit, &metadata)
            .await
            .map_err(|err| anyhow::anyhow!("{err}"))?;
    }
    let before = sink.count();
    let running = start(runtime);
    let deadline = Instant::now() + Duration::from_secs(120);
    while sink.count() - before < EMAILS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.stop().await?;
    let arrivals = sink.arrivals();
    let run = &arrivals[before.min(arrivals.len())..];
    anyhow::ensure!(
        run.len() == EMAILS,
        "the dispatcher delivered {} of {EMAILS} emails",
        run.len()
    );
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        anyhow::bail!("no emails");
    };
    Ok((EMAILS - 1) as f64 / last.duration_since(*first).as_secs_f64())
}

pub(crate) async fn measure(settings: &Settings, database: &Database) -> anyhow::Result<Section> {
    let people = Arc::new(people()?);
    let pool = PgPool::connect(&database.url).await?;

    // Fan-out: one worker (no SMTP: in-app rows only) for every run.
    let (runtime, _) = worker(&database.url, None).await?;
    let ledger = runtime.app().ledger().clone();
    let projections = runtime.app().projections().clone();
    progress(&format!("notify: seeding {MEMBERS} members"));
    seed_members(&ledger, &people).await?;
    let running = start(runtime);
    let seconds = settings.seconds.max(5);
    let (mut rates, mut missing) = (Vec::new(), 0);
    let (mut n50, mut n95, mut n99, mut p50, mut p95, mut p99) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for run in 0..settings.runs {
        progress(&format!(
            "notify: fan-out run {}/{}",
            run + 1,
            settings.runs
        ));
        let lags = fan_out(&ledger, &projections, &pool, &people, seconds).await?;
        rates.push(lags.events_per_second);
        missing += lags.missing;
        n50.push(percentile(&lags.notified, 0.50));
        n95.push(percentile(&lags.notified, 0.95));
        n99.push(percentile(&lags.notified, 0.99));
        p50.push(percentile(&lags.projected, 0.50));
        p95.push(percentile(&lags.projected, 0.95));
        p99.push(percentile(&lags.projected, 0.99));
    }
    running.stop().await?;

    // Email: the same sink for the baseline and the dispatcher.
    let sink = Sink::start().await?;
    let (mut serial, mut bare, mut service) = (Vec::new(), Vec::new(), Vec::new());
    let concurrency = countersign_app::notify::Dispatcher::CONCURRENCY;
    for run in 0..settings.runs {
        progress(&format!("notify: email run {}/{}", run + 1, settings.runs));
        serial.push(bare_lettre(&sink, EMAILS, 1).await?);
        bare.push(bare_lettre(&sink, EMAILS, concurrency).await?);
        service.push(dispatched(&database.url, &people, &sink).await?);
    }
    // Catch-up: the notifier alone over a backlog no worker saw, beside reading it. Last, so the
    // email runs' workers never start with that backlog for their other tailers to read.
    let ledger = Ledger::open(&StoreConfig::Postgres {
        url: database.url.clone(),
    })
    .await?;
    let (mut reads, mut catch_ups) = (Vec::new(), Vec::new());
    for run in 0..settings.runs {
        progress(&format!(
            "notify: catch-up run {}/{}",
            run + 1,
            settings.runs
        ));
        let (read, caught_up) = catch_up(&ledger, &pool, &database.url, &people).await?;
        reads.push(read);
        catch_ups.push(caught_up);
    }
    ledger.close().await;

    pool.close().await;

    let (n99, p99, serial, bare, service) = (
        Figure(n99),
        Figure(p99),
        Figure(serial),
        Figure(bare),
        Figure(service),
    );
    let mut markdown = String::new();
    let _ = writeln!(markdown, "## Notifications\n");
    let _ = writeln!(
        markdown,
        "{} · PostgreSQL, fresh database · {} runs.\n",
        machine(),
        settings.runs
    );
    let _ = writeln!(
        markdown,
        "**Fan-out lag.** A tenant of {MEMBERS} members ({APPROVERS} hold `finance_ops`, the role \
         the policy asks one approval of; all have email addresses). {PAIRS_PER_SECOND} actions per \
         second are submitted and approved through the ledger (two commands, four events each) for \
         {seconds} s while the worker role runs as `serve --role worker` does (projections, \
         notifier, dispatcher; no SMTP, so in-app rows only). Each submission notifies the \
         {APPROVERS} approvers (`assigned`), each approval the requester (`decided`). The lag is \
         from a command's commit to its in-app notifications being readable (a query of the feed's \
         table sees them), sampled every 5 ms; the baseline is the `actions` projection's lag for \
         the same commits, in the same run.\n"
    );
    let _ = writeln!(
        markdown,
        "| events/s written | | lag p50 (ms) | lag p95 (ms) | lag p99 (ms) | p99 ratio to the projection |"
    );
    let _ = writeln!(markdown, "| ---: | --- | ---: | ---: | ---: | ---: |");
    let rates = Figure(rates);
    let _ = writeln!(
        markdown,
        "| {} | `actions` projection (baseline) | {} | {} | {} | 1.00 |",
        rates.show(0),
        Figure(p50).show(1),
        Figure(p95).show(1),
        p99.show(1)
    );
    let _ = writeln!(
        markdown,
        "| | in-app notifications | {} | {} | {} | {:.2} |",
        Figure(n50).show(1),
        Figure(n95).show(1),
        n99.show(1),
        n99.median() / p99.median()
    );
    if missing > 0 {
        let _ = writeln!(
            markdown,
            "\n{missing} commits had no readable notification within 30 s of the load's end."
        );
    }
    let (reads, catch_ups) = (Figure(reads), Figure(catch_ups));
    let _ = writeln!(
        markdown,
        "\n**Catch-up.** {CATCH_UP} actions submitted and approved in the same tenant ({} events) \
         appended behind the notifier's checkpoint while no worker runs, then the notifier alone \
         (`NotifierConfig::default()`, in this process) until it has caught up: {} notifications \
         per run, checked. The baseline reads the same events in batches of 1,000.\n",
        CATCH_UP * 4,
        CATCH_UP * (APPROVERS + 1)
    );
    let _ = writeln!(markdown, "| | events/s | ratio to reading |");
    let _ = writeln!(markdown, "| --- | ---: | ---: |");
    let _ = writeln!(
        markdown,
        "| reading the backlog (baseline) | {} | 1.00 |",
        reads.show(0)
    );
    let _ = writeln!(
        markdown,
        "| the notifier catching up | {} | {:.2} |",
        catch_ups.show(0),
        catch_ups.median() / reads.median()
    );
    let _ = writeln!(
        markdown,
        "\n**Email throughput.** {EMAILS} approval emails ({} actions submitted while the worker \
         was stopped, each notifying the {APPROVERS} approvers by email) delivered by the \
         dispatcher once the worker starts with `SMTP_URL` pointing at a local SMTP sink (up to \
         {concurrency} deliveries in flight over pooled connections, each recorded as delivered \
         once the sink accepted it); the rate is from the first email's arrival to the last's. \
         The baseline is bare `lettre` sending {EMAILS} messages of the same shape to the same \
         sink through a transport built the same way, {concurrency} at a time; beside it the same \
         loop one message after another.\n",
        EMAILS / APPROVERS
    );
    let _ = writeln!(markdown, "| | messages/s | ratio to bare `lettre` |");
    let _ = writeln!(markdown, "| --- | ---: | ---: |");
    let _ = writeln!(
        markdown,
        "| bare `lettre`, one message after another | {} | {:.2} |",
        serial.show(0),
        serial.median() / bare.median()
    );
    let _ = writeln!(
        markdown,
        "| bare `lettre`, {concurrency} at a time (baseline) | {} | 1.00 |",
        bare.show(0)
    );
    let _ = writeln!(
        markdown,
        "| the dispatcher (`countersign-notify`'s email sender) | {} | {:.2} |",
        service.show(0),
        service.median() / bare.median()
    );
    Ok(Section {
        id: "notify",
        markdown,
    })
}
