//! The web console over HTTP (a separate release `countersign serve` process, authentication on,
//! signed in through the sign-in form with a session cookie), each figure beside the JSON API of
//! the same process answering the same question in the same run:
//!
//! - the inbox page (`GET /inbox`, server-rendered) with 100,000 pending actions in the tenant
//!   among 1,000,000 events, beside `GET /v1/actions?limit=50`;
//! - the detail drawer (`GET /actions/{id}` as htmx asks for it) of an action with 200 votes,
//!   beside `GET /v1/actions/{id}`;
//! - live delivery from the appending transaction to 200 open `/ui/stream` connections (one
//!   session each), beside 200 open `GET /v1/stream` connections.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::ledger::{Database, Settings};
use crate::load::{Service, client, open_actions, seed_pending, token, wait_for_sealer};
use crate::projections::{people, percentile, seed};
use crate::report::{Figure, Section, machine, progress};

/// The tenant whose inbox holds every seeded pending action.
const INBOX_TENANT: &str = "console";
/// The tenant of the live-stream measurement.
const LIVE_TENANT: &str = "live";
const SESSIONS: usize = 200;
const VOTES: usize = 200;
/// Requests per page per run (each interleaved with one to the baseline).
const REQUESTS: usize = 300;

/// A client that does not follow redirects (the sign-in answers 303 with the cookie).
fn browser() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// The `name=value` of cookie `name` set by `response`.
fn cookie(response: &reqwest::Response, name: &str) -> anyhow::Result<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with(&format!("{name}=")))
        .and_then(|value| value.split(';').next())
        .map(str::to_owned)
        .with_context(|| format!("no {name} cookie"))
}

/// Signs in through the form, as a browser does; the session cookie.
async fn sign_in(http: &reqwest::Client, base: &str, credential: &str) -> anyhow::Result<String> {
    let form = http.get(format!("{base}/sign-in")).send().await?;
    let pre = cookie(&form, "countersign_sign_in")?;
    let body = form.text().await?;
    let marker = "name=\"csrf\" value=\"";
    let start = body.find(marker).context("no CSRF field")? + marker.len();
    let csrf = body[start..].split('"').next().unwrap_or_default();
    // The CSRF token is hex and a JWT is base64url with dots: nothing to escape.
    let answer = http
        .post(format!("{base}/sign-in"))
        .header("cookie", pre)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&credential={credential}"))
        .send()
        .await?;
    anyhow::ensure!(
        answer.status().as_u16() == 303,
        "sign-in answered {}",
        answer.status()
    );
    cookie(&answer, "countersign_session")
}

/// One GET; its latency in ms, after checking the answer and reading the whole body.
async fn timed_get(request: reqwest::RequestBuilder) -> anyhow::Result<(f64, usize)> {
    let sent = Instant::now();
    let response = request.send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    let elapsed = sent.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(status.is_success(), "GET answered {status}");
    Ok((elapsed, body.len()))
}

/// Latencies (ms) of the page and of its baseline, requested alternately; the sizes of the last
/// answers.
struct Paired {
    page: Vec<f64>,
    api: Vec<f64>,
    page_bytes: usize,
    api_bytes: usize,
}

async fn paired(
    page: impl Fn() -> reqwest::RequestBuilder,
    api: impl Fn() -> reqwest::RequestBuilder,
    requests: usize,
) -> anyhow::Result<Paired> {
    let mut out = Paired {
        page: Vec::with_capacity(requests),
        api: Vec::with_capacity(requests),
        page_bytes: 0,
        api_bytes: 0,
    };
    for n in 0..requests {
        // Alternate which goes first, so neither always finds a warmer cache.
        if n % 2 == 0 {
            let (ms, bytes) = timed_get(page()).await?;
            out.page.push(ms);
            out.page_bytes = bytes;
            let (ms, bytes) = timed_get(api()).await?;
            out.api.push(ms);
            out.api_bytes = bytes;
        } else {
            let (ms, bytes) = timed_get(api()).await?;
            out.api.push(ms);
            out.api_bytes = bytes;
            let (ms, bytes) = timed_get(page()).await?;
            out.page.push(ms);
            out.page_bytes = bytes;
        }
    }
    Ok(out)
}

/// p50, p95 and p99 of several runs, each a `Figure`.
#[derive(Default)]
struct Percentiles {
    p50: Vec<f64>,
    p95: Vec<f64>,
    p99: Vec<f64>,
}

impl Percentiles {
    fn add(&mut self, latencies: &[f64]) {
        self.p50.push(percentile(latencies, 0.50));
        self.p95.push(percentile(latencies, 0.95));
        self.p99.push(percentile(latencies, 0.99));
    }

    fn row(&self, what: &str, target: &str) -> String {
        format!(
            "| {what} | {} | {} | {} | {target} |",
            Figure(self.p50.clone()).show(1),
            Figure(self.p95.clone()).show(1),
            Figure(self.p99.clone()).show(1)
        )
    }

    fn p99(&self) -> f64 {
        Figure(self.p99.clone()).median()
    }
}

/// One SSE connection: the delivery latency (ms, from the event's `recorded_at` to its arrival
/// here) of every `ActionSubmitted` it receives; `ready` counts connections that said `ready`.
async fn listen(
    request: reqwest::RequestBuilder,
    ready: Arc<tokio::sync::Semaphore>,
    latencies: Arc<Mutex<Vec<f64>>>,
    expected: usize,
) -> anyhow::Result<()> {
    let mut response = request.send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "stream answered {}",
        response.status()
    );
    let mut buffer = String::new();
    let mut received = 0;
    while received < expected {
        let Some(chunk) = response.chunk().await? else {
            bail!("the stream ended after {received} events");
        };
        let arrived = chrono::Utc::now();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let mut kind = "";
            let mut data = String::new();
            for line in message.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    kind = value.trim();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            match kind {
                "ready" => ready.add_permits(1),
                "ActionSubmitted" => {
                    let data: Value = serde_json::from_str(&data)?;
                    let recorded: chrono::DateTime<chrono::Utc> = data["recorded_at"]
                        .as_str()
                        .context("recorded_at")?
                        .parse()?;
                    let ms =
                        (arrived - recorded).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0;
                    latencies.lock().await.push(ms);
                    received += 1;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Opens `requests.len()` streams, waits until each said `ready`, submits `events` actions at
/// 10 a second, and waits until every stream has received every one; delivery latencies in ms.
async fn live_delivery(
    service: &Service,
    streams: Vec<reqwest::RequestBuilder>,
    events: usize,
) -> anyhow::Result<Vec<f64>> {
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let count = streams.len();
    let listeners: Vec<_> = streams
        .into_iter()
        .map(|request| tokio::spawn(listen(request, ready.clone(), latencies.clone(), events)))
        .collect();
    let all_ready = u32::try_from(count)?;
    tokio::time::timeout(Duration::from_secs(60), ready.acquire_many(all_ready))
        .await
        .context("the streams did not all open within 60 s")??
        .forget();
    let http = client()?;
    let requester = format!(
        "Bearer {}",
        token("live-requester", LIVE_TENANT, &["requester"])?
    );
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    for n in 0..events {
        ticker.tick().await;
        let response = http
            .post(format!("{}/v1/actions", service.base))
            .header("authorization", &requester)
            .json(&json!({ "module": "live", "capability": "notice", "summary": format!("Live event {n}") }))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().as_u16() == 201,
            "submit answered {}",
            response.status()
        );
    }
    for listener in listeners {
        tokio::time::timeout(Duration::from_secs(60), listener)
            .await
            .context("a stream did not receive every event within 60 s")???;
    }
    let latencies = latencies.lock().await.clone();
    anyhow::ensure!(
        latencies.len() == count * events,
        "{} deliveries of {}",
        latencies.len(),
        count * events
    );
    Ok(latencies)
}

pub(crate) async fn measure(settings: &Settings, database: &Database) -> anyhow::Result<Section> {
    let config = countersign_ledger::StoreConfig::Postgres {
        url: database.url.clone(),
    };
    let ledger = countersign_ledger::Ledger::open(&config).await?;
    ledger.migrate().await?;

    // The `load` section's log: 100,000 pending actions (here all in one tenant's inbox) and
    // 225,000 decided actions of four events each in eight other tenants.
    // COUNTERSIGN_BENCH_SCALE shrinks it for a quick smoke run (default 1).
    let scale: f64 = std::env::var("COUNTERSIGN_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let scaled = |n: f64| (n * scale).max(1.0) as usize;
    progress("console: seeding 100,000 pending actions among 1,000,000 events");
    let seeding = Instant::now();
    let pending =
        seed_pending(&database.url, scaled(100_000.0), &[INBOX_TENANT.to_owned()]).await?;
    let decided = seed(&database.url, &people()?, scaled(225_000.0)).await?;
    let total = pending as i64 + decided;
    let store = countersign_projections::ProjectionStore::open(&config).await?;
    for projection in countersign_projections::Projection::ALL {
        progress(&format!(
            "console: rebuilding {projection} over {total} events"
        ));
        countersign_projections::rebuild(&ledger, &store, projection, |_, _| {}).await?;
        store.drop_retired(projection).await?;
    }
    store.close().await;
    let service = Service::start(&database.url)?;
    // The fresh service seals the seeded log first; everything is measured at steady state.
    wait_for_sealer(&ledger, &database.url).await?;
    let prepared = seeding.elapsed();
    ledger.close().await;

    let http = browser()?;
    let base = service.base.clone();

    // The inbox page beside the API's first page, as the same owner.
    let owner_token = token("console-owner", INBOX_TENANT, &["owner"])?;
    let owner_session = sign_in(&http, &base, &owner_token).await?;
    let owner_bearer = format!("Bearer {owner_token}");
    let (mut inbox, mut inbox_api) = (Percentiles::default(), Percentiles::default());
    let (mut inbox_bytes, mut inbox_api_bytes) = (0, 0);
    for run in 0..settings.runs {
        progress(&format!(
            "console: inbox page, run {}/{}",
            run + 1,
            settings.runs
        ));
        let measured = paired(
            || {
                http.get(format!("{base}/inbox"))
                    .header("cookie", &owner_session)
            },
            || {
                http.get(format!("{base}/v1/actions?limit=50"))
                    .header("authorization", &owner_bearer)
            },
            REQUESTS,
        )
        .await?;
        inbox.add(&measured.page);
        inbox_api.add(&measured.api);
        (inbox_bytes, inbox_api_bytes) = (measured.page_bytes, measured.api_bytes);
    }

    // The drawer of an action with 200 votes (each from its own voter) beside its JSON.
    progress("console: 200 votes on one action");
    let id = open_actions(&service, 1, 1_000_000)
        .await?
        .pop()
        .context("no action")?;
    let api = client()?;
    for v in 0..VOTES {
        let bearer = format!(
            "Bearer {}",
            token(&format!("voter-{v}"), "votes", &["approver"])?
        );
        let response = api
            .post(format!("{base}/v1/actions/{id}/votes"))
            .header("authorization", bearer)
            .json(&json!({ "vote": "approve", "comment": format!("Checked by voter {v}: amounts match the ticket.") }))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "vote answered {}",
            response.status()
        );
    }
    let admin_token = token("bench-admin", "votes", &["admin"])?;
    let admin_session = sign_in(&http, &base, &admin_token).await?;
    let admin_bearer = format!("Bearer {admin_token}");
    let (mut drawer, mut drawer_api) = (Percentiles::default(), Percentiles::default());
    let (mut drawer_bytes, mut drawer_api_bytes) = (0, 0);
    for run in 0..settings.runs {
        progress(&format!(
            "console: drawer with 200 votes, run {}/{}",
            run + 1,
            settings.runs
        ));
        let measured = paired(
            || {
                http.get(format!("{base}/actions/{id}"))
                    .header("cookie", &admin_session)
                    .header("hx-request", "true")
            },
            || {
                http.get(format!("{base}/v1/actions/{id}"))
                    .header("authorization", &admin_bearer)
            },
            REQUESTS,
        )
        .await?;
        drawer.add(&measured.page);
        drawer_api.add(&measured.api);
        (drawer_bytes, drawer_api_bytes) = (measured.page_bytes, measured.api_bytes);
    }
    let shown = http
        .get(format!("{base}/actions/{id}"))
        .header("cookie", &admin_session)
        .header("hx-request", "true")
        .send()
        .await?
        .text()
        .await?;
    let votes_shown = shown.matches("Checked by voter").count();
    anyhow::ensure!(
        votes_shown >= VOTES,
        "the drawer shows {votes_shown} of {VOTES} votes"
    );

    // Live delivery to 200 sessions, beside 200 bearer streams, each to its own approver.
    progress("console: signing in 200 sessions");
    let mut sessions = Vec::with_capacity(SESSIONS);
    let mut bearers = Vec::with_capacity(SESSIONS);
    for s in 0..SESSIONS {
        let credential = token(&format!("watcher-{s}"), LIVE_TENANT, &["approver"])?;
        sessions.push(sign_in(&http, &base, &credential).await?);
        bearers.push(format!("Bearer {credential}"));
    }
    let events = (settings.seconds * 10).max(10) as usize;
    let streaming = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let (mut live, mut live_api) = (Percentiles::default(), Percentiles::default());
    for run in 0..settings.runs {
        progress(&format!(
            "console: live delivery to {SESSIONS} sessions, run {}/{}",
            run + 1,
            settings.runs
        ));
        let ui = sessions
            .iter()
            .map(|session| {
                streaming
                    .get(format!("{base}/ui/stream"))
                    .header("cookie", session)
            })
            .collect();
        live.add(&live_delivery(&service, ui, events).await?);
        let v1 = bearers
            .iter()
            .map(|bearer| {
                streaming
                    .get(format!("{base}/v1/stream"))
                    .header("authorization", bearer)
            })
            .collect();
        live_api.add(&live_delivery(&service, v1, events).await?);
    }
    drop(service);

    let mut markdown = String::new();
    let _ = writeln!(markdown, "## The web console\n");
    let _ = writeln!(
        markdown,
        "{} · `countersign serve` (release) and PostgreSQL on loopback, JWT authentication on, the console signed in through its form (a session cookie, re-authenticated on every request) · {} runs.\n",
        machine(),
        settings.runs
    );
    let _ = writeln!(
        markdown,
        "The log: {pending} pending actions in the console's tenant among {total} events (225,000 decided actions of four events in eight other tenants), seeded, projected and sealed before the service was measured ({:.0} s). Each page was requested {REQUESTS} times per run, one at a time, alternating with the JSON API's answer to the same question for the same person on the same process; latency is client-side, to the last byte.\n",
        prepared.as_secs_f64()
    );
    let _ = writeln!(markdown, "| request | p50 ms | p95 ms | p99 ms | target |");
    let _ = writeln!(markdown, "| --- | ---: | ---: | ---: | --- |");
    let _ = writeln!(
        markdown,
        "{}",
        inbox.row(
            &format!("inbox page `GET /inbox` (owner; {inbox_bytes} bytes)"),
            "p99 < 50 ms"
        )
    );
    let _ = writeln!(
        markdown,
        "{}",
        inbox_api.row(
            &format!("baseline `GET /v1/actions?limit=50` ({inbox_api_bytes} bytes)"),
            ""
        )
    );
    let _ = writeln!(
        markdown,
        "{}",
        drawer.row(
            &format!("drawer `GET /actions/{{id}}` (htmx), {VOTES} votes and their timeline ({drawer_bytes} bytes)"),
            "p99 < 30 ms"
        )
    );
    let _ = writeln!(
        markdown,
        "{}",
        drawer_api.row(
            &format!("baseline `GET /v1/actions/{{id}}` ({drawer_api_bytes} bytes)"),
            ""
        )
    );
    let _ = writeln!(
        markdown,
        "{}",
        live.row(
            &format!("live: appended → received on `/ui/stream`, {SESSIONS} sessions"),
            "p99 < 200 ms"
        )
    );
    let _ = writeln!(
        markdown,
        "{}",
        live_api.row(
            &format!("baseline: appended → received on `/v1/stream`, {SESSIONS} bearer streams"),
            ""
        )
    );
    let _ = writeln!(
        markdown,
        "\nRatios of the p99 medians to their baselines: inbox page {:.2}×, drawer {:.2}×, live delivery {:.2}×.\n",
        inbox.p99() / inbox_api.p99(),
        drawer.p99() / drawer_api.p99(),
        live.p99() / live_api.p99()
    );
    let _ = writeln!(
        markdown,
        "The inbox page renders the \"for me\" section, the first page of all pending actions and the count badge of the whole inbox; the API's page is one list. The drawer renders the action, its policy, its {VOTES} votes with comments and the audit timeline of its {} events (the caller is an admin, who may read it). Live delivery: {events} submissions at 10 a second per run, each received by every connection; the latency runs from the event's `recorded_at` (the appending transaction's time, from PostgreSQL's clock on the same host) to the arrival of its message at the client, so it includes the commit and the event hub's tailing.",
        VOTES + 1
    );
    Ok(Section {
        id: "console",
        markdown,
    })
}
