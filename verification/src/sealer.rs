//! The sealer: one tailer (a tailer lock named `sealer`) reads the log in its total order and
//! gives each event the next ledger sequence of its tenant and a leaf of the tenant's Merkle
//! tree. Leaves, trees and the checkpoint commit in one transaction (exactly once, like a
//! projection). Every `every_events` leaves, or when leaves have waited `every_seconds`, it signs
//! a head of the tenant's tree; then it publishes new heads outside the database.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use countersign_ledger::{Ledger, LogCursor, LoggedEvent};
use serde::Serialize;
use tracing::{Instrument, info, info_span, warn};

use crate::head::SignedHead;
use crate::keys::HeadSigner;
use crate::leaf::{EventDigest, digest_events, format_time};
use crate::publish::Publisher;
use crate::store::{
    HEAD_COLUMNS, SealCheckpoint, SealStore, TreeState, head_row, i64_of, tree_row,
};
use crate::tree::Frontier;

/// The tailer lock the sealer holds.
pub const SEALER_LOCK: &str = "sealer";

/// How the sealer seals and signs.
#[derive(Debug, Clone)]
pub struct SealerConfig {
    /// Events read and sealed per transaction.
    pub batch: u32,
    /// Sign a head once this many leaves of a tenant wait for one.
    pub every_events: u64,
    /// Sign a head once leaves of a tenant have waited this long.
    pub every_seconds: Duration,
    /// Without a key, leaves are sealed but no head is signed.
    pub signer: Option<HeadSigner>,
    /// Where new heads are sent after they are stored.
    pub publishers: Vec<Arc<dyn Publisher>>,
}

impl Default for SealerConfig {
    fn default() -> Self {
        Self {
            batch: 2500,
            every_events: 1000,
            every_seconds: Duration::from_secs(10),
            signer: None,
            publishers: Vec::new(),
        }
    }
}

/// What one step of the sealer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sealed this many events (and signed this many heads), up to `cursor`.
    Sealed {
        events: usize,
        heads: usize,
        cursor: LogCursor,
    },
    /// Nothing new in the log (heads that came due by time were signed).
    Idle { heads: usize },
}

/// Seals the log; see the module documentation.
#[derive(Debug)]
pub struct Sealer {
    ledger: Ledger,
    store: SealStore,
    config: SealerConfig,
    checkpoint: Option<SealCheckpoint>,
    /// Trees as committed, valid while `checkpoint` is.
    trees: HashMap<String, TreeState>,
    /// The batch after the checkpoint, read and prepared while the previous one was written.
    ahead: Option<Prepared>,
}

/// A batch ready to be written: its leaves hashed, its trees grown, its heads signed — all in
/// memory, nothing stored yet.
#[derive(Debug)]
struct Prepared {
    /// The checkpoint the batch follows.
    after: SealCheckpoint,
    events: Vec<LoggedEvent>,
    sequences: Vec<u64>,
    digests: Vec<EventDigest>,
    /// The trees of the batch's tenants as the batch leaves them.
    touched: BTreeMap<String, TreeState>,
    heads: Vec<SignedHead>,
    now: DateTime<Utc>,
}

/// A leaf as written to `ledger_leaves`.
#[derive(Serialize)]
struct LeafRow<'a> {
    tenant: &'a str,
    ledger_sequence: i64,
    position: i64,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    sequence: i64,
    event_type: &'a str,
    event_version: &'a str,
    recorded_at: String,
    payload_hash: String,
    metadata_hash: String,
    leaf_hash: String,
}

/// Events hashed in one go below this stay on the caller's thread.
const PARALLEL_FROM: usize = 64;

/// The digests of `events` at `sequences`, computed on the blocking pool across the machine's
/// cores when the batch is large enough to be worth it.
pub(crate) async fn digest_batch(
    events: Vec<LoggedEvent>,
    sequences: Vec<u64>,
) -> anyhow::Result<(Vec<LoggedEvent>, Vec<u64>, Vec<EventDigest>)> {
    if events.len() < PARALLEL_FROM {
        let digests = digest_events(&events, &sequences);
        return Ok((events, sequences, digests));
    }
    tokio::task::spawn_blocking(move || {
        let digests = digest_events(&events, &sequences);
        (events, sequences, digests)
    })
    .await
    .context("hashing leaves failed")
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

impl Sealer {
    pub fn new(ledger: Ledger, store: SealStore, config: SealerConfig) -> Self {
        Self {
            ledger,
            store,
            config: SealerConfig {
                batch: config.batch.max(1),
                every_events: config.every_events.max(1),
                ..config
            },
            checkpoint: None,
            trees: HashMap::new(),
            ahead: None,
        }
    }

    pub fn store(&self) -> &SealStore {
        &self.store
    }

    fn head_due(&self, tree: &TreeState, now: DateTime<Utc>) -> bool {
        let waiting = tree.frontier.size().saturating_sub(tree.head_size);
        let waited = tree.pending_since.is_some_and(|since| {
            micros(now) - since
                >= i64::try_from(self.config.every_seconds.as_micros()).unwrap_or(i64::MAX)
        });
        waiting > 0 && (waiting >= self.config.every_events || waited)
    }

    fn sign(&self, tree: &mut TreeState, now: DateTime<Utc>) -> Option<SignedHead> {
        let signer = self.config.signer.as_ref()?;
        let head = SignedHead::sign(
            signer,
            &tree.tenant,
            tree.frontier.size(),
            tree.frontier.root(),
            now,
        );
        tree.head_size = tree.frontier.size();
        tree.pending_since = None;
        Some(head)
    }

    /// Seals the next batch after the checkpoint, in one transaction with the new checkpoint.
    ///
    /// While a full batch is written, the next one is read and prepared (hashed, its trees grown
    /// from the trees this batch leaves, its heads signed): catching up, the sealer waits for
    /// neither the log, nor the hashing, nor its own writes alone. A prepared batch is used only
    /// if the one before it committed; otherwise it is dropped and read again.
    pub async fn process_next(&mut self) -> anyhow::Result<Outcome> {
        let checkpoint = match self.checkpoint {
            Some(checkpoint) => checkpoint,
            None => {
                self.trees.clear();
                self.ahead = None;
                self.store.checkpoint().await?
            }
        };
        let prepared = match self.ahead.take() {
            Some(prepared) if prepared.after.cursor == checkpoint.cursor => prepared,
            _ => {
                let events = self
                    .ledger
                    .read_log(checkpoint.cursor, self.config.batch)
                    .await?;
                if events.is_empty() {
                    self.checkpoint = Some(checkpoint);
                    let heads = self.sign_heads(false).await?;
                    self.publish_pending().await;
                    self.report_lag(checkpoint.cursor).await;
                    return Ok(Outcome::Idle { heads });
                }
                self.prepare(checkpoint, events, None).await?
            }
        };
        let Some(cursor) = prepared.events.last().map(|event| event.cursor) else {
            return Ok(Outcome::Idle { heads: 0 });
        };
        let count = prepared.events.len();
        let next_checkpoint = SealCheckpoint {
            cursor,
            events: checkpoint.events + i64::try_from(count).unwrap_or(i64::MAX),
        };
        // Only a full batch suggests more is waiting; at the head of the log there is nothing to
        // read ahead of.
        let full = count >= self.config.batch as usize;
        let this = &*self;
        let (written, next, head) = tokio::join!(
            this.write(&prepared),
            async {
                if !full {
                    return None;
                }
                let events = this.ledger.read_log(cursor, this.config.batch).await.ok()?;
                if events.is_empty() {
                    return None;
                }
                this.prepare(next_checkpoint, events, Some(&prepared.touched))
                    .await
                    .ok()
            },
            this.ledger.log_head(),
        );
        if !written? {
            // Another sealer moved the checkpoint: nothing was written; start again from the store.
            self.checkpoint = None;
            return Ok(Outcome::Idle { heads: 0 });
        }
        let heads = prepared.heads.len();
        self.trees.extend(prepared.touched);
        self.checkpoint = Some(next_checkpoint);
        self.ahead = next;
        self.publish_pending().await;
        if let Ok(head) = head {
            metrics::gauge!("countersign_sealer_lag_events")
                .set((head.position - cursor.position).max(0) as f64);
        }
        Ok(Outcome::Sealed {
            events: count,
            heads,
            cursor,
        })
    }

    /// Prepares `events` (the batch after `after`): gives each its ledger sequence, hashes the
    /// leaves (in parallel: a leaf depends only on its event and ledger sequence), appends them
    /// to the trees in log order — the trees as `pending` leaves them, else as committed — and
    /// signs the heads that came due.
    async fn prepare(
        &self,
        after: SealCheckpoint,
        events: Vec<LoggedEvent>,
        pending: Option<&BTreeMap<String, TreeState>>,
    ) -> anyhow::Result<Prepared> {
        let now = Utc::now();
        let mut touched = self.load_trees(&events, pending).await?;
        let mut sizes: HashMap<&str, u64> = touched
            .iter()
            .map(|(tenant, tree)| (tenant.as_str(), tree.frontier.size()))
            .collect();
        let mut sequences = Vec::with_capacity(events.len());
        for event in &events {
            let size = sizes.entry(event.tenant.as_str()).or_default();
            sequences.push(*size);
            *size += 1;
        }
        let (events, sequences, digests) = digest_batch(events, sequences).await?;
        let mut heads = Vec::new();
        for (event, digest) in events.iter().zip(&digests) {
            let Some(tree) = touched.get_mut(&event.tenant) else {
                continue;
            };
            tree.frontier.push(digest.leaf_hash);
            tree.pending_since.get_or_insert(micros(now));
            if tree.frontier.size() - tree.head_size >= self.config.every_events
                && let Some(head) = self.sign(tree, now)
            {
                heads.push(head);
            }
        }
        for tree in touched.values_mut() {
            if self.head_due(tree, now)
                && let Some(head) = self.sign(tree, now)
            {
                heads.push(head);
            }
        }
        Ok(Prepared {
            after,
            events,
            sequences,
            digests,
            touched,
            heads,
            now,
        })
    }

    /// Writes a prepared batch — leaves, heads, trees — with the new checkpoint in one
    /// transaction. `false` when another sealer moved the checkpoint (nothing was written).
    async fn write(&self, prepared: &Prepared) -> anyhow::Result<bool> {
        let Prepared {
            after,
            events,
            sequences,
            digests,
            touched,
            heads,
            now,
        } = prepared;
        let Some(cursor) = events.last().map(|event| event.cursor) else {
            return Ok(true);
        };
        let leaves: Vec<LeafRow<'_>> = events
            .iter()
            .zip(sequences)
            .zip(digests)
            .map(|((event, ledger_sequence), digest)| LeafRow {
                tenant: &event.tenant,
                ledger_sequence: i64_of(*ledger_sequence),
                position: event.cursor.position,
                aggregate_type: &event.aggregate_type,
                aggregate_id: &event.aggregate_id,
                sequence: event.sequence,
                event_type: &event.event_type,
                event_version: &event.event_version,
                recorded_at: format_time(event.recorded_at),
                payload_hash: digest.payload_hash.to_hex(),
                metadata_hash: digest.metadata_hash.to_hex(),
                leaf_hash: digest.leaf_hash.to_hex(),
            })
            .collect();
        let mut tx = self.store.write_transaction().await?;
        if self.store.is_postgres() {
            insert_leaves_postgres(&mut tx, &leaves).await?;
        } else {
            for chunk in leaves.chunks(40) {
                insert_leaves(&mut tx, chunk).await?;
            }
        }
        for chunk in heads.chunks(100) {
            insert_heads(&mut tx, chunk).await?;
        }
        let trees: Vec<&TreeState> = touched.values().collect();
        for chunk in trees.chunks(100) {
            upsert_trees(&mut tx, chunk, *now).await?;
        }
        let moved = sqlx::query(
            "UPDATE ledger_seal
                SET checkpoint_txid = $1, checkpoint_position = $2, events = events + $3,
                    updated_at = $4
              WHERE id = 1 AND checkpoint_txid = $5 AND checkpoint_position = $6",
        )
        .bind(cursor.txid)
        .bind(cursor.position)
        .bind(i64::try_from(events.len()).unwrap_or(i64::MAX))
        .bind(micros(*now))
        .bind(after.cursor.txid)
        .bind(after.cursor.position)
        .execute(&mut *tx)
        .await
        .context("moving the sealer's checkpoint")?;
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await.context("committing sealed leaves")?;
        Ok(true)
    }

    /// The trees of the tenants of `events`: as `pending` (a batch being written) leaves them,
    /// else as committed — from the cache, else from the store (one query for all the batch's
    /// tenants not cached), else new.
    async fn load_trees(
        &self,
        events: &[LoggedEvent],
        pending: Option<&BTreeMap<String, TreeState>>,
    ) -> anyhow::Result<BTreeMap<String, TreeState>> {
        let mut touched: BTreeMap<String, TreeState> = BTreeMap::new();
        let mut unknown: Vec<&str> = Vec::new();
        for event in events {
            if touched.contains_key(&event.tenant) || unknown.contains(&event.tenant.as_str()) {
                continue;
            }
            let known = pending
                .and_then(|pending| pending.get(&event.tenant))
                .or_else(|| self.trees.get(&event.tenant));
            match known {
                Some(tree) => {
                    touched.insert(event.tenant.clone(), tree.clone());
                }
                None => unknown.push(&event.tenant),
            }
        }
        for chunk in unknown.chunks(100) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT tenant, size, frontier, head_size, pending_since, published_size
                   FROM ledger_trees WHERE tenant IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for tenant in chunk {
                query = query.bind(*tenant);
            }
            let rows = query
                .fetch_all(&self.store.pool)
                .await
                .context("reading ledger trees")?;
            for row in &rows {
                let tree = tree_row(row)?;
                touched.insert(tree.tenant.clone(), tree);
            }
            for tenant in chunk {
                touched
                    .entry((*tenant).to_owned())
                    .or_insert_with(|| TreeState {
                        tenant: (*tenant).to_owned(),
                        frontier: Frontier::new(),
                        head_size: 0,
                        pending_since: None,
                        published_size: 0,
                    });
            }
        }
        Ok(touched)
    }

    /// Signs a head for every tenant with leaves waiting for one — only those that came due
    /// unless `all`. Returns how many heads were signed.
    pub async fn sign_heads(&mut self, all: bool) -> anyhow::Result<usize> {
        if self.config.signer.is_none() {
            return Ok(0);
        }
        let now = Utc::now();
        let trees = self.store.trees().await?;
        let mut signed = 0;
        for mut tree in trees {
            let waiting = tree.frontier.size() > tree.head_size;
            if !(waiting && (all || self.head_due(&tree, now))) {
                continue;
            }
            let size = tree.frontier.size();
            let Some(head) = self.sign(&mut tree, now) else {
                continue;
            };
            let mut tx = self.store.write_transaction().await?;
            insert_head(&mut tx, &head).await?;
            let updated = sqlx::query(
                "UPDATE ledger_trees SET head_size = $1, pending_since = NULL, updated_at = $2
                  WHERE tenant = $3 AND size = $4",
            )
            .bind(i64_of(size))
            .bind(micros(now))
            .bind(&tree.tenant)
            .bind(i64_of(size))
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 1 {
                tx.commit().await.context("storing a signed head")?;
                self.trees.insert(tree.tenant.clone(), tree);
                signed += 1;
            } else {
                // The tree grew meanwhile (another sealer): its next step signs it.
                tx.rollback().await?;
                self.checkpoint = None;
            }
        }
        if signed > 0 {
            self.publish_pending().await;
        }
        Ok(signed)
    }

    /// Sends heads not yet published to every publisher, in order per tenant; a failure leaves
    /// the rest of that tenant's heads for the next step. Returns how many were published.
    pub async fn publish_pending(&mut self) -> usize {
        match self.try_publish().await {
            Ok(published) => published,
            Err(err) => {
                warn!(
                    error = format!("{err:#}"),
                    "publishing heads failed; will retry"
                );
                0
            }
        }
    }

    async fn try_publish(&self) -> anyhow::Result<usize> {
        if self.config.publishers.is_empty() {
            return Ok(0);
        }
        let columns: String = HEAD_COLUMNS
            .split(", ")
            .map(|column| format!("h.{column}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sqlx::query(&format!(
            "SELECT {columns} FROM ledger_heads h JOIN ledger_trees t ON t.tenant = h.tenant
              WHERE h.tree_size > t.published_size ORDER BY h.tenant, h.tree_size LIMIT 500"
        ))
        .fetch_all(&self.store.pool)
        .await
        .context("reading heads to publish")?;
        let mut published = 0;
        let mut failed: Option<String> = None;
        for row in &rows {
            let head = head_row(row)?;
            if failed.as_ref() == Some(&head.tenant) {
                continue;
            }
            for publisher in &self.config.publishers {
                if let Err(err) = publisher.publish(&head).await {
                    warn!(
                        publisher = publisher.describe(),
                        tenant = head.tenant,
                        tree_size = head.tree_size,
                        error = format!("{err:#}"),
                        "publishing a head failed; will retry"
                    );
                    failed = Some(head.tenant.clone());
                    break;
                }
            }
            if failed.as_ref() == Some(&head.tenant) {
                continue;
            }
            sqlx::query(
                "UPDATE ledger_trees SET published_size = $1
                  WHERE tenant = $2 AND published_size < $1",
            )
            .bind(i64_of(head.tree_size))
            .bind(&head.tenant)
            .execute(&self.store.pool)
            .await
            .context("recording a published head")?;
            published += 1;
        }
        Ok(published)
    }

    async fn report_lag(&self, cursor: LogCursor) {
        let Ok(head) = self.ledger.log_head().await else {
            return;
        };
        metrics::gauge!("countersign_sealer_lag_events")
            .set((head.position - cursor.position).max(0) as f64);
    }

    /// Seals until the log has nothing more; returns the events sealed.
    pub async fn run_until_idle(&mut self) -> anyhow::Result<u64> {
        let mut sealed = 0;
        loop {
            match self.process_next().await? {
                Outcome::Sealed { events, .. } => sealed += events as u64,
                Outcome::Idle { .. } => return Ok(sealed),
            }
        }
    }

    /// Runs until `shutdown` resolves, holding the sealer's tailer lock so that one instance
    /// seals.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        async move {
            tokio::pin!(shutdown);
            if self.config.signer.is_none() {
                warn!(
                    "no signing key configured: events are sealed into the ledger trees but no head is signed (see docs/verification.md)"
                );
            }
            let lock = loop {
                if let Some(lock) = self.ledger.lock_tailer(SEALER_LOCK).await? {
                    break lock;
                }
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            };
            let mut waker = self.ledger.log_waker().await?;
            let publishers: Vec<String> = self
                .config
                .publishers
                .iter()
                .map(|publisher| publisher.describe())
                .collect();
            info!(
                key_id = self.config.signer.as_ref().map(HeadSigner::id),
                every_events = self.config.every_events,
                every_seconds = self.config.every_seconds.as_secs_f64(),
                ?publishers,
                "sealer started"
            );
            let poll = self.config.every_seconds.clamp(Duration::from_millis(50), Duration::from_secs(1));
            loop {
                let step = tokio::select! {
                    () = &mut shutdown => break,
                    step = self.process_next() => step,
                };
                if step.is_ok() {
                    self.ledger.health().progressed(SEALER_LOCK);
                }
                match step {
                    Ok(Outcome::Sealed { .. }) => {}
                    Ok(Outcome::Idle { .. }) => {
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = waker.wait(poll) => {}
                        }
                    }
                    Err(err) => {
                        warn!(error = format!("{err:#}"), "sealing failed; retrying");
                        let stuck_after = match self.checkpoint.take() {
                            Some(checkpoint) => Some(checkpoint.cursor),
                            None => self.store.checkpoint().await.ok().map(|checkpoint| checkpoint.cursor),
                        };
                        let pause = self.ledger.health().failed(SEALER_LOCK, stuck_after, &err);
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            }
            lock.release().await;
            info!("sealer stopped");
            Ok(())
        }
        .instrument(info_span!("sealer"))
        .await
    }
}

/// Writes a batch's leaves with one statement on PostgreSQL: the rows travel as one JSON array
/// (the `Any` driver binds no arrays), which `json_to_recordset` turns back into rows.
async fn insert_leaves_postgres(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rows: &[LeafRow<'_>],
) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(rows).context("encoding ledger leaves")?;
    sqlx::query(
        "INSERT INTO ledger_leaves (tenant, ledger_sequence, position, aggregate_type, aggregate_id,
                sequence, event_type, event_version, recorded_at, payload_hash, metadata_hash, leaf_hash)
         SELECT tenant, ledger_sequence, position, aggregate_type, aggregate_id,
                sequence, event_type, event_version, recorded_at, payload_hash, metadata_hash, leaf_hash
           FROM json_to_recordset($1::json) AS leaf(tenant text, ledger_sequence bigint,
                position bigint, aggregate_type text, aggregate_id text, sequence bigint,
                event_type text, event_version text, recorded_at text, payload_hash text,
                metadata_hash text, leaf_hash text)",
    )
    .bind(json)
    .execute(&mut **tx)
    .await
    .context("inserting ledger leaves")?;
    Ok(())
}

/// `(${n}, ${n+1}, …)` for each of `rows` rows of `columns` parameters.
fn values(rows: usize, columns: usize) -> String {
    let mut sql = String::new();
    for i in 0..rows {
        sql.push_str(if i == 0 { "(" } else { ", (" });
        for j in 0..columns {
            let _ = write!(
                sql,
                "{}${}",
                if j == 0 { "" } else { ", " },
                i * columns + j + 1
            );
        }
        sql.push(')');
    }
    sql
}

async fn insert_leaves(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rows: &[LeafRow<'_>],
) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO ledger_leaves (tenant, ledger_sequence, position, aggregate_type, aggregate_id, \
         sequence, event_type, event_version, recorded_at, payload_hash, metadata_hash, leaf_hash) VALUES {}",
        values(rows.len(), 12)
    );
    let mut query = sqlx::query(&sql);
    for row in rows {
        query = query
            .bind(row.tenant)
            .bind(row.ledger_sequence)
            .bind(row.position)
            .bind(row.aggregate_type)
            .bind(row.aggregate_id)
            .bind(row.sequence)
            .bind(row.event_type)
            .bind(row.event_version)
            .bind(row.recorded_at.as_str())
            .bind(row.payload_hash.as_str())
            .bind(row.metadata_hash.as_str())
            .bind(row.leaf_hash.as_str());
    }
    query
        .execute(&mut **tx)
        .await
        .context("inserting ledger leaves")?;
    Ok(())
}

async fn insert_head(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    head: &SignedHead,
) -> anyhow::Result<()> {
    insert_heads(tx, std::slice::from_ref(head)).await
}

async fn insert_heads(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    heads: &[SignedHead],
) -> anyhow::Result<()> {
    if heads.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO ledger_heads ({HEAD_COLUMNS}) VALUES {}",
        values(heads.len(), 6)
    );
    let mut query = sqlx::query(&sql);
    for head in heads {
        query = query
            .bind(head.tenant.as_str())
            .bind(i64_of(head.tree_size))
            .bind(head.root.to_hex())
            .bind(head.signed_at.as_str())
            .bind(head.key_id.as_str())
            .bind(head.signature.as_str());
    }
    query
        .execute(&mut **tx)
        .await
        .context("storing signed heads")?;
    Ok(())
}

async fn upsert_trees(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    trees: &[&TreeState],
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    if trees.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO ledger_trees (tenant, size, frontier, head_size, pending_since, published_size, updated_at)
         VALUES {}
         ON CONFLICT (tenant) DO UPDATE
            SET size = excluded.size, frontier = excluded.frontier, head_size = excluded.head_size,
                pending_since = excluded.pending_since, updated_at = excluded.updated_at",
        values(trees.len(), 7)
    );
    let mut query = sqlx::query(&sql);
    for tree in trees {
        query = query
            .bind(tree.tenant.as_str())
            .bind(i64_of(tree.frontier.size()))
            .bind(tree.frontier.encode())
            .bind(i64_of(tree.head_size))
            .bind(tree.pending_since)
            .bind(0i64)
            .bind(micros(now));
    }
    query
        .execute(&mut **tx)
        .await
        .context("storing ledger trees")?;
    Ok(())
}

/// The sealer's progress: the log position it reached and how far behind the log it is.
pub async fn lag(ledger: &Ledger, store: &SealStore) -> anyhow::Result<(SealCheckpoint, i64)> {
    let checkpoint = store.checkpoint().await?;
    let head = ledger.log_head().await?;
    Ok((
        checkpoint,
        (head.position - checkpoint.cursor.position).max(0),
    ))
}
