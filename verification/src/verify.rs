//! Verifying the store: recompute every tenant's tree from the events table, compare each leaf
//! with the one sealed, check every stored head's root and signature (and, when given, every
//! head published outside the database), and name the first divergent event of each tenant.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use countersign_ledger::{Ledger, LogCursor, LoggedEvent};
use serde::Serialize;

use crate::head::SignedHead;
use crate::keys::KeyRing;
use crate::leaf::{EventDigest, SealedEvent, content_hash};
use crate::sealer::digest_batch;
use crate::store::{SealStore, StoredLeaf};
use crate::tree::{Frontier, Hash};

/// What `verify` checks.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only this tenant (the whole log is still read, in order).
    pub tenant: Option<String>,
    /// The public keys heads may be signed with.
    pub keys: KeyRing,
    /// Heads published outside the database, to hold the stored ones to.
    pub published: Vec<SignedHead>,
    /// Events read per batch (default 1000).
    pub batch: u32,
}

/// What kind of divergence was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DivergenceKind {
    /// The sealed event is still there but its content changed.
    Changed,
    /// A sealed event is gone from the log.
    Missing,
    /// An event that was never sealed appears among sealed ones.
    Inserted,
    /// Sealed events are in another order.
    Reordered,
    /// A sealed event now belongs to another tenant.
    MovedTenant,
    /// A stored leaf is missing or altered while its event is intact.
    LeafAltered,
    /// A signed head's root does not match the recomputed tree.
    HeadMismatch,
    /// A head's signature does not verify.
    BadSignature,
    /// A head covers more events than the log holds.
    HeadBeyondLog,
    /// A head published outside the database is missing from it, or differs.
    PublishedHeadMismatch,
}

impl DivergenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Changed => "changed",
            Self::Missing => "missing",
            Self::Inserted => "inserted",
            Self::Reordered => "reordered",
            Self::MovedTenant => "moved to another tenant",
            Self::LeafAltered => "leaf altered",
            Self::HeadMismatch => "head does not match",
            Self::BadSignature => "bad signature",
            Self::HeadBeyondLog => "head beyond the log",
            Self::PublishedHeadMismatch => "published head differs",
        }
    }
}

/// The first thing found wrong in a tenant's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Divergence {
    pub tenant: String,
    pub ledger_sequence: Option<u64>,
    pub kind: DivergenceKind,
    /// The event sealed at this ledger sequence (`aggregate_type/aggregate_id#sequence`).
    pub sealed: Option<String>,
    /// The event the log holds there now.
    pub found: Option<String>,
    /// What differs, in words.
    pub detail: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tenant {}", self.tenant)?;
        if let Some(sequence) = self.ledger_sequence {
            write!(f, ", ledger sequence {sequence}")?;
        }
        write!(f, ": {}", self.kind.as_str())?;
        match (&self.sealed, &self.found) {
            (Some(sealed), Some(found)) if sealed == found => write!(f, " — event {sealed}")?,
            (Some(sealed), Some(found)) => write!(f, " — sealed {sealed}, found {found}")?,
            (Some(sealed), None) => write!(f, " — event {sealed}")?,
            (None, Some(found)) => write!(f, " — event {found}")?,
            (None, None) => {}
        }
        write!(f, ": {}", self.detail)
    }
}

/// One tenant's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantSummary {
    pub tenant: String,
    /// Events of the tenant in the log.
    pub events: u64,
    /// Of which sealed.
    pub sealed: u64,
    /// Of which not sealed yet (after the sealer's checkpoint): no head covers them.
    pub unsealed: u64,
    /// Stored heads whose root and signature were checked.
    pub heads_checked: u64,
    /// The newest head checked.
    pub newest_head: Option<u64>,
    /// The root of the recomputed tree over every event of the tenant.
    pub root: Hash,
    pub diverged: bool,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub events: u64,
    pub seconds: f64,
    pub tenants: Vec<TenantSummary>,
    pub divergences: Vec<Divergence>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.divergences.is_empty()
    }

    /// Events verified per second.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }

    /// Events not yet sealed, summed over tenants.
    pub fn unsealed(&self) -> u64 {
        self.tenants.iter().map(|t| t.unsealed).sum()
    }
}

/// A head to hold the recomputed tree to, at its size.
#[derive(Debug, Clone)]
struct Checkpoint {
    size: u64,
    root: Hash,
    signed_at: String,
    published: bool,
}

#[derive(Debug)]
struct TenantCheck {
    frontier: Frontier,
    /// Sorted by size; `next` is the first not reached yet.
    checkpoints: Vec<Checkpoint>,
    next: usize,
    /// The newest head matched so far (size).
    matched: u64,
    heads_checked: u64,
    newest_head: Option<u64>,
    sealed: u64,
    /// Events after the tree stored when the tenant was first seen.
    unsealed: u64,
    /// The tenant's tree size stored when it was first seen.
    stored_size: u64,
    diverged: bool,
}

impl TenantCheck {
    fn reached_size(&mut self, tenant: &str, divergences: &mut Vec<Divergence>) {
        let size = self.frontier.size();
        while let Some(checkpoint) = self.checkpoints.get(self.next).filter(|c| c.size <= size) {
            let checkpoint = checkpoint.clone();
            self.next += 1;
            if self.diverged || checkpoint.size != size {
                continue;
            }
            if self.frontier.root() == checkpoint.root {
                if !checkpoint.published {
                    self.heads_checked += 1;
                    self.newest_head = Some(size);
                }
                self.matched = size;
            } else {
                self.diverged = true;
                divergences.push(Divergence {
                    tenant: tenant.to_owned(),
                    ledger_sequence: Some(self.matched),
                    kind: DivergenceKind::HeadMismatch,
                    sealed: None,
                    found: None,
                    detail: format!(
                        "the {}head of size {size} signed at {} has root {}, but the events give {}; \
                         every leaf matched its stored hash, so the stored leaves were rewritten too: \
                         the divergence lies between ledger sequences {} and {}",
                        if checkpoint.published { "published " } else { "" },
                        checkpoint.signed_at,
                        checkpoint.root,
                        self.frontier.root(),
                        self.matched,
                        size - 1
                    ),
                });
            }
        }
    }
}

/// One batch of the log made ready for checking, off the checking task: each event with its
/// ledger sequence, its recomputed digest and the leaf hash stored at that sequence.
struct Prepared {
    /// Events read from the log so far (every tenant's).
    read: u64,
    cursor: LogCursor,
    /// The batch's events of the tenants verified.
    events: Vec<LoggedEvent>,
    sequences: Vec<u64>,
    digests: Vec<EventDigest>,
    stored: Vec<Option<Hash>>,
    /// Tenants first seen in this batch, with the size of their tree as stored before any of
    /// their leaves were read (leaves only grow: every leaf below it was there to be read).
    new_tenants: Vec<(String, u64)>,
}

/// Reads the log one batch ahead, and for each batch the stored leaf hashes it will be compared
/// with (one query for all its tenants), while hashing its leaves across the cores; sends each
/// batch ready for checking. The checking task then only compares and appends.
async fn prepare(
    ledger: Ledger,
    store: SealStore,
    tenant: Option<String>,
    batch: u32,
    ready: tokio::sync::mpsc::Sender<Prepared>,
) -> anyhow::Result<()> {
    let mut ahead = ledger.read_ahead(LogCursor::START, batch);
    let mut sizes: HashMap<String, u64> = HashMap::new();
    let mut read = 0u64;
    while let Some(events) = ahead.next().await {
        let Some(last) = events.last() else { break };
        let cursor = last.cursor;
        read += events.len() as u64;
        let events: Vec<LoggedEvent> = events
            .into_iter()
            .filter(|event| tenant.as_ref().is_none_or(|t| *t == event.tenant))
            .collect();
        let mut new_tenants = Vec::new();
        // Per tenant of the batch: (first ledger sequence, count), in tenant order.
        let mut ranges: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for event in &events {
            if let Some(range) = ranges.get_mut(event.tenant.as_str()) {
                range.1 += 1;
                continue;
            }
            let from = match sizes.get(&event.tenant) {
                Some(size) => *size,
                None => {
                    let stored = store
                        .tree(&event.tenant)
                        .await?
                        .map_or(0, |tree| tree.frontier.size());
                    new_tenants.push((event.tenant.clone(), stored));
                    0
                }
            };
            ranges.insert(&event.tenant, (from, 1));
        }
        let ranges: Vec<(&str, u64, u64)> = ranges
            .into_iter()
            .map(|(tenant, (from, count))| (tenant, from, from + count))
            .collect();
        let mut next: HashMap<&str, u64> = ranges
            .iter()
            .map(|(tenant, from, _)| (*tenant, *from))
            .collect();
        let mut sequences = Vec::with_capacity(events.len());
        for event in &events {
            let sequence = next.entry(event.tenant.as_str()).or_default();
            sequences.push(*sequence);
            *sequence += 1;
        }
        let index: HashMap<&str, usize> = ranges
            .iter()
            .enumerate()
            .map(|(i, (tenant, _, _))| (*tenant, i))
            .collect();
        let found = store.leaf_hashes(&ranges).await?;
        let mut by_range: Vec<Vec<Option<Hash>>> = ranges
            .iter()
            .map(|(_, from, to)| vec![None; usize::try_from(to - from).unwrap_or(0)])
            .collect();
        for (range, sequence, hash) in found {
            if let (Some(slots), Some((_, from, _))) = (by_range.get_mut(range), ranges.get(range))
                && let Some(slot) = sequence
                    .checked_sub(*from)
                    .and_then(|offset| usize::try_from(offset).ok())
                    .and_then(|offset| slots.get_mut(offset))
            {
                *slot = Some(hash);
            }
        }
        let stored: Vec<Option<Hash>> = events
            .iter()
            .zip(&sequences)
            .map(|(event, sequence)| {
                let range = *index.get(event.tenant.as_str())?;
                let from = ranges.get(range)?.1;
                let offset = usize::try_from(sequence.checked_sub(from)?).ok()?;
                *by_range.get(range)?.get(offset)?
            })
            .collect();
        for (tenant, _, to) in &ranges {
            sizes.insert((*tenant).to_owned(), *to);
        }
        // Tenants start in name order, as they always did within a batch.
        new_tenants.sort();
        let (events, sequences, digests) = digest_batch(events, sequences).await?;
        let prepared = Prepared {
            read,
            cursor,
            events,
            sequences,
            digests,
            stored,
            new_tenants,
        };
        if ready.send(prepared).await.is_err() {
            break;
        }
    }
    ahead.finish().await
}

/// Recomputes every tenant's tree and checks it against the sealed leaves and heads.
/// `progress` hears the events read so far and the log position reached.
pub async fn verify(
    ledger: &Ledger,
    store: &SealStore,
    options: &VerifyOptions,
    mut progress: impl FnMut(u64, LogCursor),
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let batch = if options.batch == 0 {
        1000
    } else {
        options.batch
    };
    let mut tenants: BTreeMap<String, TenantCheck> = BTreeMap::new();
    let mut divergences = Vec::new();
    let mut read = 0u64;
    // Reading the log and the stored leaves, and hashing, run ahead of the checks below.
    let (ready, mut batches) = tokio::sync::mpsc::channel(2);
    let preparer = tokio::spawn(prepare(
        ledger.clone(),
        store.clone(),
        options.tenant.clone(),
        batch,
        ready,
    ));
    while let Some(prepared) = batches.recv().await {
        read = prepared.read;
        for (tenant, stored_size) in &prepared.new_tenants {
            let check =
                start_tenant(store, tenant, *stored_size, options, &mut divergences).await?;
            tenants.insert(tenant.clone(), check);
        }
        for (((event, ledger_sequence), digest), stored) in prepared
            .events
            .iter()
            .zip(&prepared.sequences)
            .zip(&prepared.digests)
            .zip(&prepared.stored)
        {
            let ledger_sequence = *ledger_sequence;
            let Some(check) = tenants.get_mut(&event.tenant) else {
                continue;
            };
            let leaf = digest.leaf_hash;
            if !check.diverged {
                // The full stored leaf, read only when it differs, to say how.
                let differing = match stored {
                    Some(stored) if *stored == leaf => None,
                    Some(_) => store
                        .leaves(&event.tenant, ledger_sequence, ledger_sequence + 1)
                        .await?
                        .into_iter()
                        .next(),
                    None => None,
                };
                match (stored, differing) {
                    (Some(stored), _) if *stored == leaf => check.sealed += 1,
                    (_, Some(differing)) => {
                        check.diverged = true;
                        let sealed = SealedEvent::from_logged(event, ledger_sequence);
                        divergences.push(diagnose(store, &differing, event, &sealed).await?);
                    }
                    // Beyond the tree stored when the tenant was first seen: not sealed yet.
                    _ if ledger_sequence >= check.stored_size => check.unsealed += 1,
                    _ => {
                        check.diverged = true;
                        let sealed = SealedEvent::from_logged(event, ledger_sequence);
                        let elsewhere = store
                            .leaf_of_event(
                                &event.aggregate_type,
                                &event.aggregate_id,
                                event.sequence,
                            )
                            .await?;
                        divergences.push(Divergence {
                            tenant: event.tenant.clone(),
                            ledger_sequence: Some(ledger_sequence),
                            kind: DivergenceKind::LeafAltered,
                            sealed: None,
                            found: Some(sealed.name()),
                            detail: match elsewhere {
                                Some(elsewhere) => format!(
                                    "no leaf is stored at this ledger sequence of a tree of {} leaves; the event was sealed at ledger sequence {} of tenant {}: leaves were deleted",
                                    check.stored_size, elsewhere.ledger_sequence, elsewhere.tenant
                                ),
                                None => format!(
                                    "no leaf is stored at this ledger sequence of a tree of {} leaves: leaves were deleted",
                                    check.stored_size
                                ),
                            },
                        });
                    }
                }
            }
            check.frontier.push(leaf);
            check.reached_size(&event.tenant, &mut divergences);
        }
        progress(read, prepared.cursor);
    }
    preparer
        .await
        .context("the verification reader panicked")??;
    // Sealed leaves and heads beyond the end of the log.
    for (tenant, check) in &mut tenants {
        if check.diverged {
            continue;
        }
        let size = check.frontier.size();
        if let Some(beyond) = store
            .leaves(tenant, size, size + 1)
            .await?
            .into_iter()
            .next()
        {
            let present = store
                .event_exists(
                    &beyond.aggregate_type,
                    &beyond.aggregate_id,
                    beyond.sequence,
                )
                .await?;
            // Present: sealed after this verification read the log; nothing is wrong.
            if present.is_none() {
                check.diverged = true;
                divergences.push(Divergence {
                    tenant: tenant.clone(),
                    ledger_sequence: Some(size),
                    kind: DivergenceKind::Missing,
                    sealed: Some(beyond.name()),
                    found: None,
                    detail: format!(
                        "sealed at position {} ({} v{}), recorded {}; it is no longer in the events table: deleted",
                        beyond.position, beyond.event_type, beyond.event_version, beyond.recorded_at
                    ),
                });
                continue;
            }
        }
        if let Some(checkpoint) = check.checkpoints.get(check.next)
            && check.unsealed == 0
        {
            let leaves_exist = !store.leaves(tenant, size, size + 1).await?.is_empty();
            if !leaves_exist {
                check.diverged = true;
                divergences.push(Divergence {
                    tenant: tenant.clone(),
                    ledger_sequence: Some(size),
                    kind: DivergenceKind::HeadBeyondLog,
                    sealed: None,
                    found: None,
                    detail: format!(
                        "a {}head signed at {} covers {} events, but the log holds {size} and no leaf is stored beyond them",
                        if checkpoint.published { "published " } else { "" },
                        checkpoint.signed_at,
                        checkpoint.size
                    ),
                });
            }
        }
    }
    let tenants = tenants
        .into_iter()
        .map(|(tenant, check)| TenantSummary {
            events: check.frontier.size(),
            sealed: check.frontier.size() - check.unsealed,
            unsealed: check.unsealed,
            heads_checked: check.heads_checked,
            newest_head: check.newest_head,
            root: check.frontier.root(),
            diverged: check.diverged,
            tenant,
        })
        .collect();
    Ok(Report {
        events: read,
        seconds: started.elapsed().max(Duration::from_nanos(1)).as_secs_f64(),
        tenants,
        divergences,
    })
}

/// Loads a tenant's heads, checks their signatures and the published heads against them.
async fn start_tenant(
    store: &SealStore,
    tenant: &str,
    stored_size: u64,
    options: &VerifyOptions,
    divergences: &mut Vec<Divergence>,
) -> anyhow::Result<TenantCheck> {
    let mut heads = Vec::new();
    loop {
        let after = heads.last().map_or(0, |head: &SignedHead| head.tree_size);
        let page = store.heads(tenant, after, 1000).await?;
        if page.is_empty() {
            break;
        }
        heads.extend(page);
    }
    let mut checkpoints = Vec::new();
    let mut bad_signature = None;
    for head in &heads {
        if let Err(err) = head.verify(&options.keys) {
            bad_signature.get_or_insert_with(|| Divergence {
                tenant: tenant.to_owned(),
                ledger_sequence: None,
                kind: DivergenceKind::BadSignature,
                sealed: None,
                found: None,
                detail: format!(
                    "the head of size {} signed at {}: {err}",
                    head.tree_size, head.signed_at
                ),
            });
        }
        checkpoints.push(Checkpoint {
            size: head.tree_size,
            root: head.root,
            signed_at: head.signed_at.clone(),
            published: false,
        });
    }
    let mut diverged = false;
    if let Some(divergence) = bad_signature {
        divergences.push(divergence);
        diverged = true;
    }
    for published in options
        .published
        .iter()
        .filter(|head| head.tenant == tenant)
    {
        let stored = heads
            .iter()
            .find(|head| head.tree_size == published.tree_size);
        let problem = match stored {
            _ if published.verify(&options.keys).is_err() => Some(format!(
                "the published head of size {} does not carry a valid signature by a trusted key",
                published.tree_size
            )),
            None => Some(format!(
                "the published head of size {} signed at {} is missing from the database: heads were deleted",
                published.tree_size, published.signed_at
            )),
            Some(stored) if stored != published => Some(format!(
                "the published head of size {} (root {}) differs from the stored one (root {})",
                published.tree_size, published.root, stored.root
            )),
            Some(_) => None,
        };
        if let Some(detail) = problem {
            if !diverged {
                divergences.push(Divergence {
                    tenant: tenant.to_owned(),
                    ledger_sequence: None,
                    kind: DivergenceKind::PublishedHeadMismatch,
                    sealed: None,
                    found: None,
                    detail,
                });
                diverged = true;
            }
            continue;
        }
        checkpoints.push(Checkpoint {
            size: published.tree_size,
            root: published.root,
            signed_at: published.signed_at.clone(),
            published: true,
        });
    }
    checkpoints.sort_by_key(|checkpoint| checkpoint.size);
    Ok(TenantCheck {
        frontier: Frontier::new(),
        checkpoints,
        next: 0,
        matched: 0,
        heads_checked: 0,
        newest_head: None,
        sealed: 0,
        unsealed: 0,
        stored_size,
        diverged,
    })
}

/// Says what happened at a ledger sequence whose event no longer matches its leaf.
async fn diagnose(
    store: &SealStore,
    stored: &StoredLeaf,
    event: &LoggedEvent,
    sealed: &SealedEvent,
) -> anyhow::Result<Divergence> {
    let tenant = event.tenant.clone();
    let ledger_sequence = Some(stored.ledger_sequence);
    let same_event = stored.aggregate_type == event.aggregate_type
        && stored.aggregate_id == event.aggregate_id
        && stored.sequence == event.sequence;
    if same_event {
        let mut differs = Vec::new();
        if stored.event_type != event.event_type {
            differs.push(format!(
                "event type (sealed {}, now {})",
                stored.event_type, event.event_type
            ));
        }
        if stored.event_version != event.event_version {
            differs.push(format!(
                "event version (sealed {}, now {})",
                stored.event_version, event.event_version
            ));
        }
        if stored.recorded_at != sealed.recorded_at {
            differs.push(format!(
                "recorded time (sealed {}, now {})",
                stored.recorded_at, sealed.recorded_at
            ));
        }
        if stored.payload_hash != content_hash(&event.payload) {
            differs.push("payload".to_owned());
        }
        if stored.metadata_hash != content_hash(&event.metadata) {
            differs.push("metadata".to_owned());
        }
        let (kind, detail) = if differs.is_empty() {
            (
                DivergenceKind::LeafAltered,
                format!(
                    "the event at position {} is as sealed, but its stored leaf hash was altered",
                    event.cursor.position
                ),
            )
        } else {
            (
                DivergenceKind::Changed,
                format!(
                    "{} differ{} from what was sealed (position {})",
                    differs.join(", "),
                    if differs.len() == 1 { "s" } else { "" },
                    event.cursor.position
                ),
            )
        };
        return Ok(Divergence {
            tenant,
            ledger_sequence,
            kind,
            sealed: Some(stored.name()),
            found: Some(sealed.name()),
            detail,
        });
    }
    let found_leaf = store
        .leaf_of_event(&event.aggregate_type, &event.aggregate_id, event.sequence)
        .await?;
    let expected = stored.name();
    let found = sealed.name();
    let Some(found_leaf) = found_leaf else {
        return Ok(Divergence {
            tenant,
            ledger_sequence,
            kind: DivergenceKind::Inserted,
            sealed: Some(expected.clone()),
            found: Some(found.clone()),
            detail: format!(
                "{found} ({} v{}, position {}, recorded {}) was never sealed, yet it comes before sealed events: inserted after sealing, in place of {expected}",
                event.event_type, event.event_version, event.cursor.position, sealed.recorded_at
            ),
        });
    };
    if found_leaf.tenant != tenant {
        return Ok(Divergence {
            tenant,
            ledger_sequence,
            kind: DivergenceKind::MovedTenant,
            sealed: Some(expected),
            found: Some(found.clone()),
            detail: format!(
                "{found} was sealed for tenant {} (ledger sequence {}) but now belongs to this tenant",
                found_leaf.tenant, found_leaf.ledger_sequence
            ),
        });
    }
    let still_there = store
        .event_exists(
            &stored.aggregate_type,
            &stored.aggregate_id,
            stored.sequence,
        )
        .await?;
    Ok(match still_there {
        None => Divergence {
            tenant,
            ledger_sequence,
            kind: DivergenceKind::Missing,
            sealed: Some(expected.clone()),
            found: Some(found.clone()),
            detail: format!(
                "{expected} ({} v{}, sealed at position {}, recorded {}) is no longer in the events table: deleted; {found} (sealed at ledger sequence {}) follows in its place",
                stored.event_type,
                stored.event_version,
                stored.position,
                stored.recorded_at,
                found_leaf.ledger_sequence
            ),
        },
        Some(position) => Divergence {
            tenant,
            ledger_sequence,
            kind: DivergenceKind::Reordered,
            sealed: Some(expected.clone()),
            found: Some(found.clone()),
            detail: format!(
                "{expected} (sealed here, at position {}) now sits at position {position}, after {found} (sealed at ledger sequence {}): the log's order changed",
                stored.position, found_leaf.ledger_sequence
            ),
        },
    })
}
