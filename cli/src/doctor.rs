//! `countersign doctor`: whether the store answers and is migrated (and, on PostgreSQL, whether
//! autovacuum is on), and whether every tailer can go on from where it stands (the next event
//! after its checkpoint reads and decodes). Exits non-zero when something needs an operator
//! (docs/operations.md, "A stalled tailer").

use std::io::Write;

use anyhow::bail;
use countersign_ledger::health::Standing;
use countersign_ledger::{Ledger, LogCursor};
use countersign_projections::{GenerationState, Projection, ProjectionStore};
use countersign_verification::SealStore;
use countersign_verification::sealer::SEALER_LOCK;

use crate::store::StoreArgs;

/// Every tailer with a checkpoint in the store, as another process sees it.
pub async fn standings(
    ledger: &Ledger,
    projections: &ProjectionStore,
    seals: &SealStore,
) -> anyhow::Result<Vec<Standing>> {
    let mut tailers: Vec<(String, LogCursor)> = Vec::new();
    for projection in Projection::ALL {
        for generation in projections.generations(projection).await? {
            if generation.state != GenerationState::Retired {
                tailers.push((
                    format!("projection:{}:g{}", projection, generation.generation),
                    generation.checkpoint,
                ));
            }
        }
    }
    tailers.push((SEALER_LOCK.to_owned(), seals.checkpoint().await?.cursor));
    tailers.extend(ledger.tailer_checkpoints().await?);
    let mut standings = Vec::with_capacity(tailers.len());
    for (tailer, checkpoint) in tailers {
        standings.push(ledger.standing(&tailer, checkpoint).await?);
    }
    Ok(standings)
}

pub async fn run(store: &StoreArgs) -> anyhow::Result<()> {
    let config = store.config();
    let ledger = Ledger::open(&config).await?;
    let mut out = std::io::stdout();
    ledger.ping().await?;
    let pending = ledger.pending_migrations().await?;
    writeln!(
        out,
        "store: {} reachable, {}",
        ledger.kind(),
        if pending == 0 {
            "every migration applied".to_owned()
        } else {
            format!("{pending} migrations not applied (run `countersign migrate`)")
        }
    )?;
    if pending > 0 {
        bail!("{pending} migrations not applied");
    }
    if let Some(on) = ledger.autovacuum().await? {
        writeln!(
            out,
            "{}",
            if on {
                "autovacuum: on"
            } else {
                "autovacuum: OFF (warning: the tables the projections and the notifier rewrite are \
                 never pruned nor analyzed, and tailer lag grows with them; turn it on, see \
                 docs/deployment.md)"
            }
        )?;
    }
    let (projections, seals) = countersign_runtime::open_projections_and_seals(&config).await?;
    let head = ledger.log_head().await?;
    writeln!(out, "log head: position {}", head.position)?;
    writeln!(
        out,
        "{:<28} {:>12} {:>10}  state",
        "tailer", "checkpoint", "behind"
    )?;
    let standings = standings(&ledger, &projections, &seals).await?;
    for standing in &standings {
        writeln!(
            out,
            "{:<28} {:>12} {:>10}  {}",
            standing.tailer,
            standing.checkpoint.position,
            standing.behind,
            match &standing.stuck {
                None => "ok".to_owned(),
                Some(error) => format!(
                    "STALLED after position {}: {error}",
                    standing.checkpoint.position
                ),
            }
        )?;
    }
    let stalled = standings.iter().filter(|s| s.stuck.is_some()).count();
    if stalled > 0 {
        bail!(
            "{stalled} tailer(s) cannot get past the next event; see docs/operations.md, \"A stalled tailer\""
        );
    }
    writeln!(out, "all tailers can go on")?;
    Ok(())
}
