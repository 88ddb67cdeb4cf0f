//! Policy backtesting over 1M events beside reading the log (issue 20): every tenant's whole
//! history replayed under a draft that doubles the approvals needed, through the same use case
//! `countersign policies backtest` runs, on one fresh PostgreSQL database.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Context;
use chrono::{Duration as Span, Utc};
use countersign_app::backtest::{
    BacktestRequest, Ceiling, ChangeOp, PolicyChange, backtest_watched,
};
use countersign_app::{Actor, App, Channel};
use countersign_domain::{PolicyId, Principal, Role, UserId};
use countersign_ledger::{Ledger, StoreConfig};
use countersign_projections::{Projection, rebuild};

use crate::ledger::{Database, Settings};
use crate::projections::{people, read_rate, seed};
use crate::report::{Figure, Section, machine, progress};

/// Actions seeded (four events each): 1M events.
const ACTIONS: usize = 250_000;

/// The draft: every action of the range needs two approvals instead of one, so each recorded
/// approval leaves its action waiting (every replayed action is compared and listed).
fn request() -> anyhow::Result<BacktestRequest> {
    let policy = serde_json::from_value(serde_json::json!({
        "name": "two approvals for everything",
        "priority": 100,
        "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 2 }] }] }
    }))
    .context("the bench's draft policy")?;
    Ok(BacktestRequest {
        from: Utc::now() - Span::days(1),
        to: Utc::now() + Span::days(1),
        changes: vec![PolicyChange {
            op: ChangeOp::Add,
            id: PolicyId::parse("bench-two")?,
            policy: Some(policy),
        }],
        default_requirements: None,
        max_actions: Some(Ceiling::OPERATOR.max_actions),
        time_limit_seconds: Some(Ceiling::OPERATOR.time_limit_seconds),
    })
}

pub(crate) async fn measure(settings: &Settings, database: &Database) -> anyhow::Result<Section> {
    let config = StoreConfig::Postgres {
        url: database.url.clone(),
    };
    let ledger = Ledger::open(&config).await?;
    ledger.migrate().await?;
    let people = people()?;
    progress(&format!("backtest: seeding {ACTIONS} approved actions"));
    let events = seed(&database.url, &people, ACTIONS).await?;
    let (projections, seals) = countersign_runtime::open_projections_and_seals(&config).await?;
    progress("backtest: building the actions projection");
    rebuild(&ledger, &projections, Projection::Actions, |_, _| {}).await?;
    let app = App::new(ledger.clone(), projections, seals);
    let request = request()?;
    let owner = UserId::parse("bench-owner")?;

    let (mut reads, mut replays, mut changed) = (Vec::new(), Vec::new(), 0u64);
    for run in 0..settings.runs {
        progress(&format!("backtest: run {}/{}", run + 1, settings.runs));
        reads.push(read_rate(&ledger).await?);
        let started = Instant::now();
        let (mut replayed, mut outcome_changed) = (0u64, 0u64);
        for tenant in &people.tenants {
            let actor = Actor::new(
                tenant.clone(),
                Principal::new(owner.clone(), [Role::owner()]),
                Channel::Cli,
            );
            let report = backtest_watched(&app, &actor, &request, None, Ceiling::OPERATOR, None)
                .await
                .map_err(|err| anyhow::anyhow!("backtest of {tenant}: {err}"))?;
            anyhow::ensure!(report.complete, "the backtest of {tenant} was cut short");
            replayed += report.replayed;
            outcome_changed += report.outcome_changed;
        }
        anyhow::ensure!(
            replayed as usize == ACTIONS,
            "replayed {replayed} of {ACTIONS} actions"
        );
        replays.push(events as f64 / started.elapsed().as_secs_f64());
        changed = outcome_changed;
    }
    app.close().await;
    let (reads, replays) = (Figure(reads), Figure(replays));

    let mut markdown = String::new();
    let _ = writeln!(markdown, "## Policy backtesting\n");
    let _ = writeln!(
        markdown,
        "{} · PostgreSQL, fresh database · {} runs.\n",
        machine(),
        settings.runs
    );
    let _ = writeln!(
        markdown,
        "A log of {events} events ({ACTIONS} actions across 8 tenants, each submitted and approved by one vote: four events). \
         Each run backtests every tenant's whole history (one backtest per tenant, one after the other, through the use case \
         `countersign policies backtest` runs) under a draft adding a policy that needs two approvals for everything: every \
         action is scored, matched, submitted to a fresh aggregate under the draft and its recorded ballot cast again, and \
         {changed} of {ACTIONS} decisions come out differently (approved → waiting). Histories are read 500 actions per \
         statement. The baseline is reading the same log in batches of 1,000 without doing anything with it.\n"
    );
    let _ = writeln!(markdown, "| | events/s | ratio to reading |");
    let _ = writeln!(markdown, "| --- | ---: | ---: |");
    let _ = writeln!(
        markdown,
        "| reading the log (baseline) | {} | 1.00 |",
        reads.show(0)
    );
    let _ = writeln!(
        markdown,
        "| backtest of every tenant | {} | {:.2} |",
        replays.show(0),
        replays.median() / reads.median()
    );
    Ok(Section {
        id: "backtest",
        markdown,
    })
}
