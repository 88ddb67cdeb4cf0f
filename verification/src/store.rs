//! The sealer's tables (`ledger_seal`, `ledger_trees`, `ledger_leaves`, `ledger_heads`), reached
//! through sqlx's `Any` driver with portable SQL, and the read API built on them: the latest
//! head, head history, inclusion and consistency proofs.

use anyhow::Context;
use countersign_ledger::{LogCursor, StoreConfig};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::head::SignedHead;
use crate::tree::{Frontier, Hash, ProofError, Tree};

/// The sealer's tables of one store.
#[derive(Debug, Clone)]
pub struct SealStore {
    pub(crate) pool: AnyPool,
    postgres: bool,
}

/// A sealed leaf with the evidence stored beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLeaf {
    pub tenant: String,
    pub ledger_sequence: u64,
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: String,
    pub payload_hash: Hash,
    pub metadata_hash: Hash,
    pub leaf_hash: Hash,
}

impl StoredLeaf {
    pub fn name(&self) -> String {
        crate::leaf::event_name(&self.aggregate_type, &self.aggregate_id, self.sequence)
    }
}

/// A tenant's tree as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeState {
    pub tenant: String,
    pub frontier: Frontier,
    /// Size of the newest signed head (0 when none).
    pub head_size: u64,
    /// Since when (µs) sealed leaves have waited for a head.
    pub pending_since: Option<i64>,
    /// Heads up to this size were published outside the database.
    pub published_size: u64,
}

/// The sealer's progress through the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealCheckpoint {
    pub cursor: LogCursor,
    /// Events sealed so far.
    pub events: i64,
}

/// Proof that one event is in a tenant's tree of `tree_size` leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InclusionProof {
    pub tenant: String,
    pub ledger_sequence: u64,
    pub tree_size: u64,
    pub leaf_hash: Hash,
    pub root: Hash,
    pub path: Vec<Hash>,
}

impl InclusionProof {
    pub fn verify(&self) -> Result<(), ProofError> {
        crate::tree::verify_inclusion(
            &self.leaf_hash,
            self.ledger_sequence,
            self.tree_size,
            &self.path,
            &self.root,
        )
    }
}

/// Proof that a tenant's tree of `from` leaves is a prefix of its tree of `to` leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConsistencyProof {
    pub tenant: String,
    pub from: u64,
    pub to: u64,
    pub from_root: Hash,
    pub to_root: Hash,
    pub path: Vec<Hash>,
}

impl ConsistencyProof {
    pub fn verify(&self) -> Result<(), ProofError> {
        crate::tree::verify_consistency(
            self.from,
            self.to,
            &self.from_root,
            &self.to_root,
            &self.path,
        )
    }
}

pub(crate) fn hash_column(row: &AnyRow, column: &str) -> anyhow::Result<Hash> {
    let text: String = row.try_get(column)?;
    Hash::from_hex(&text).map_err(|err| anyhow::anyhow!("{column}: {err}"))
}

pub(crate) fn u64_column(row: &AnyRow, column: &str) -> anyhow::Result<u64> {
    let value: i64 = row.try_get(column)?;
    u64::try_from(value).with_context(|| format!("{column} is negative: {value}"))
}

pub(crate) fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) const LEAF_COLUMNS: &str = "tenant, ledger_sequence, position, aggregate_type, aggregate_id, sequence, \
     event_type, event_version, recorded_at, payload_hash, metadata_hash, leaf_hash";

pub(crate) fn leaf_row(row: &AnyRow) -> anyhow::Result<StoredLeaf> {
    Ok(StoredLeaf {
        tenant: row.try_get("tenant")?,
        ledger_sequence: u64_column(row, "ledger_sequence")?,
        position: row.try_get("position")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        recorded_at: row.try_get("recorded_at")?,
        payload_hash: hash_column(row, "payload_hash")?,
        metadata_hash: hash_column(row, "metadata_hash")?,
        leaf_hash: hash_column(row, "leaf_hash")?,
    })
}

pub(crate) const HEAD_COLUMNS: &str = "tenant, tree_size, root, signed_at, key_id, signature";

pub(crate) fn head_row(row: &AnyRow) -> anyhow::Result<SignedHead> {
    Ok(SignedHead {
        tenant: row.try_get("tenant")?,
        tree_size: u64_column(row, "tree_size")?,
        root: hash_column(row, "root")?,
        signed_at: row.try_get("signed_at")?,
        key_id: row.try_get("key_id")?,
        signature: row.try_get("signature")?,
    })
}

pub(crate) fn tree_row(row: &AnyRow) -> anyhow::Result<TreeState> {
    let tenant: String = row.try_get("tenant")?;
    let size = u64_column(row, "size")?;
    let frontier = Frontier::decode(size, &row.try_get::<String, _>("frontier")?)
        .map_err(|err| anyhow::anyhow!("the stored tree of {tenant}: {err}"))?;
    Ok(TreeState {
        tenant,
        frontier,
        head_size: u64_column(row, "head_size")?,
        pending_since: row.try_get("pending_since")?,
        published_size: u64_column(row, "published_size")?,
    })
}

impl SealStore {
    /// Opens the sealer's tables of the ledger's store (which must be migrated) on a pool of
    /// their own, for a command that needs no other tables beside the ledger. A process that also
    /// runs projections shares one pool: [`SealStore::with_pool`].
    pub async fn open(config: &StoreConfig) -> anyhow::Result<Self> {
        let pool = config
            .any_pool(Self::connections(config))
            .await
            .context("opening the ledger seal tables")?;
        Ok(Self::with_pool(pool))
    }

    /// The connections the sealer and the evidence reads want of a pool: a pool shared with
    /// other stores adds these to theirs.
    pub fn connections(config: &StoreConfig) -> u32 {
        if config.is_postgres() { 8 } else { 4 }
    }

    /// The sealer's tables reached through `pool` (from [`StoreConfig::any_pool`], on a
    /// migrated store), which other stores of the process may share.
    pub fn with_pool(pool: AnyPool) -> Self {
        let postgres = countersign_ledger::is_postgres_pool(&pool);
        Self { pool, postgres }
    }

    /// A transaction that will write; on SQLite it takes the write lock up front (`BEGIN
    /// IMMEDIATE`) so that it waits for other writers instead of failing with `database is locked`.
    pub(crate) async fn write_transaction(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        if self.postgres {
            self.pool.begin().await
        } else {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// Closes the pool (shared with the other stores given it, if any).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Where the sealer is in the log.
    pub async fn checkpoint(&self) -> anyhow::Result<SealCheckpoint> {
        let row = sqlx::query(
            "SELECT checkpoint_txid, checkpoint_position, events FROM ledger_seal WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await
        .context("reading the sealer's checkpoint (is the store migrated?)")?;
        Ok(SealCheckpoint {
            cursor: LogCursor {
                txid: row.try_get(0)?,
                position: row.try_get(1)?,
            },
            events: row.try_get(2)?,
        })
    }

    /// Every tenant's tree, by tenant.
    pub async fn trees(&self) -> anyhow::Result<Vec<TreeState>> {
        let rows = sqlx::query(
            "SELECT tenant, size, frontier, head_size, pending_since, published_size
               FROM ledger_trees ORDER BY tenant",
        )
        .fetch_all(&self.pool)
        .await
        .context("reading the ledger trees")?;
        rows.iter().map(tree_row).collect()
    }

    /// One tenant's tree.
    pub async fn tree(&self, tenant: &str) -> anyhow::Result<Option<TreeState>> {
        let row = sqlx::query(
            "SELECT tenant, size, frontier, head_size, pending_since, published_size
               FROM ledger_trees WHERE tenant = $1",
        )
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
        .context("reading a ledger tree")?;
        row.as_ref().map(tree_row).transpose()
    }

    /// The newest signed head of a tenant.
    pub async fn latest_head(&self, tenant: &str) -> anyhow::Result<Option<SignedHead>> {
        let row = sqlx::query(&format!(
            "SELECT {HEAD_COLUMNS} FROM ledger_heads WHERE tenant = $1
              ORDER BY tree_size DESC LIMIT 1"
        ))
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
        .context("reading the latest head")?;
        row.as_ref().map(head_row).transpose()
    }

    /// A tenant's signed heads with a tree size above `after`, oldest first, at most `limit`.
    pub async fn heads(
        &self,
        tenant: &str,
        after: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<SignedHead>> {
        let rows = sqlx::query(&format!(
            "SELECT {HEAD_COLUMNS} FROM ledger_heads WHERE tenant = $1 AND tree_size > $2
              ORDER BY tree_size LIMIT $3"
        ))
        .bind(tenant)
        .bind(i64_of(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .context("reading head history")?;
        rows.iter().map(head_row).collect()
    }

    /// The head of a tenant's tree at exactly `tree_size`, if one was signed.
    pub async fn head_at(
        &self,
        tenant: &str,
        tree_size: u64,
    ) -> anyhow::Result<Option<SignedHead>> {
        let row = sqlx::query(&format!(
            "SELECT {HEAD_COLUMNS} FROM ledger_heads WHERE tenant = $1 AND tree_size = $2"
        ))
        .bind(tenant)
        .bind(i64_of(tree_size))
        .fetch_optional(&self.pool)
        .await
        .context("reading a head")?;
        row.as_ref().map(head_row).transpose()
    }

    /// A tenant's leaves with ledger sequences in `from..to`.
    pub async fn leaves(
        &self,
        tenant: &str,
        from: u64,
        to: u64,
    ) -> anyhow::Result<Vec<StoredLeaf>> {
        let rows = sqlx::query(&format!(
            "SELECT {LEAF_COLUMNS} FROM ledger_leaves
              WHERE tenant = $1 AND ledger_sequence >= $2 AND ledger_sequence < $3
              ORDER BY ledger_sequence"
        ))
        .bind(tenant)
        .bind(i64_of(from))
        .bind(i64_of(to))
        .fetch_all(&self.pool)
        .await
        .context("reading ledger leaves")?;
        rows.iter().map(leaf_row).collect()
    }

    /// The stored leaf hashes of several tenants' ranges `(tenant, from, to)` in one query
    /// (what `verify` compares each batch with), as `(range index, ledger sequence, leaf hash)`.
    pub async fn leaf_hashes(
        &self,
        ranges: &[(&str, u64, u64)],
    ) -> anyhow::Result<Vec<(usize, u64, Hash)>> {
        let mut found = Vec::new();
        // 100 ranges (300 parameters) per statement: within SQLite's oldest limit of 999.
        for (chunk, ranges) in ranges.chunks(100).enumerate() {
            let sql = (0..ranges.len())
                .map(|i| {
                    format!(
                        "SELECT CAST({index} AS BIGINT) AS range_index, ledger_sequence, leaf_hash FROM ledger_leaves
                          WHERE tenant = ${} AND ledger_sequence >= ${} AND ledger_sequence < ${}",
                        3 * i + 1,
                        3 * i + 2,
                        3 * i + 3,
                        index = chunk * 100 + i,
                    )
                })
                .collect::<Vec<_>>()
                .join(" UNION ALL ");
            let mut query = sqlx::query(&sql);
            for (tenant, from, to) in ranges {
                query = query.bind(*tenant).bind(i64_of(*from)).bind(i64_of(*to));
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .context("reading leaf hashes")?;
            for row in &rows {
                let index: i64 = row.try_get("range_index")?;
                found.push((
                    usize::try_from(index).context("a range index")?,
                    u64_column(row, "ledger_sequence")?,
                    hash_column(row, "leaf_hash")?,
                ));
            }
        }
        Ok(found)
    }

    /// The leaf of the event at a global log position, wherever it was sealed.
    pub async fn leaf_at_position(&self, position: i64) -> anyhow::Result<Option<StoredLeaf>> {
        let row = sqlx::query(&format!(
            "SELECT {LEAF_COLUMNS} FROM ledger_leaves WHERE position = $1"
        ))
        .bind(position)
        .fetch_optional(&self.pool)
        .await
        .context("reading an event's leaf")?;
        row.as_ref().map(leaf_row).transpose()
    }

    /// The leaf of one event, wherever it was sealed.
    pub async fn leaf_of_event(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> anyhow::Result<Option<StoredLeaf>> {
        let row = sqlx::query(&format!(
            "SELECT {LEAF_COLUMNS} FROM ledger_leaves
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3"
        ))
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .fetch_optional(&self.pool)
        .await
        .context("reading an event's leaf")?;
        row.as_ref().map(leaf_row).transpose()
    }

    /// The first `size` leaf hashes of a tenant, as a tree; fails when fewer are sealed.
    pub async fn tree_of(&self, tenant: &str, size: u64) -> anyhow::Result<Tree> {
        let rows = sqlx::query(
            "SELECT leaf_hash FROM ledger_leaves
              WHERE tenant = $1 AND ledger_sequence < $2 ORDER BY ledger_sequence",
        )
        .bind(tenant)
        .bind(i64_of(size))
        .fetch_all(&self.pool)
        .await
        .context("reading leaf hashes")?;
        let leaves = rows
            .iter()
            .map(|row| hash_column(row, "leaf_hash"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if (leaves.len() as u64) < size {
            return Err(ProofError::SizeBeyondTree {
                size,
                leaves: leaves.len() as u64,
            })
            .with_context(|| format!("tenant {tenant}"));
        }
        Ok(Tree::new(leaves))
    }

    /// Proof that the event at `ledger_sequence` is in the tenant's tree of `tree_size` leaves.
    pub async fn inclusion_proof(
        &self,
        tenant: &str,
        ledger_sequence: u64,
        tree_size: u64,
    ) -> anyhow::Result<InclusionProof> {
        if ledger_sequence >= tree_size {
            return Err(ProofError::IndexBeyondSize {
                index: ledger_sequence,
                size: tree_size,
            }
            .into());
        }
        let tree = self.tree_of(tenant, tree_size).await?;
        Ok(InclusionProof {
            tenant: tenant.to_owned(),
            ledger_sequence,
            tree_size,
            leaf_hash: tree
                .leaf(ledger_sequence)
                .context("the leaf disappeared while proving")?,
            root: tree.root(tree_size)?,
            path: tree.inclusion_proof(ledger_sequence, tree_size)?,
        })
    }

    /// Proof that the tenant's tree of `from` leaves is a prefix of its tree of `to` leaves.
    pub async fn consistency_proof(
        &self,
        tenant: &str,
        from: u64,
        to: u64,
    ) -> anyhow::Result<ConsistencyProof> {
        if from > to {
            return Err(ProofError::OldBeyondNew { old: from, new: to }.into());
        }
        let tree = self.tree_of(tenant, to).await?;
        Ok(ConsistencyProof {
            tenant: tenant.to_owned(),
            from,
            to,
            from_root: tree.root(from)?,
            to_root: tree.root(to)?,
            path: tree.consistency_proof(from, to)?,
        })
    }

    /// Whether the events table still holds this event (by its primary key).
    pub async fn event_exists(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> anyhow::Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT position FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .fetch_optional(&self.pool)
        .await
        .context("looking an event up")?;
        row.map(|row| row.try_get::<i64, _>(0))
            .transpose()
            .context("decoding a position")
    }
}
