//! Verifying the store: recompute every tenant's tree from the events table, compare each leaf
//! with the one sealed, check every stored head's root and signature (and, when given, every
//! head published outside the database), and name the first divergent event of each tenant.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use countersign_ledger::{Ledger, LogCursor, LoggedEvent};
use serde::Serialize;

use crate::head::SignedHead;
use crate::keys::KeyRing;
use crate::leaf::{SealedEvent, content_hash};
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
    // The log is read one batch ahead of checking, so reading and hashing overlap.
    let mut ahead = ledger.read_ahead(LogCursor::START, batch);
    while let Some(events) = ahead.next().await {
        let Some(last) = events.last() else { break };
        let cursor = last.cursor;
        read += events.len() as u64;
        let events: Vec<&LoggedEvent> = events
            .iter()
            .filter(|event| options.tenant.as_ref().is_none_or(|t| *t == event.tenant))
            .collect();
        // The stored leaves this batch will be compared with, per tenant.
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for event in &events {
            *counts.entry(event.tenant.as_str()).or_default() += 1;
        }
        let mut stored: HashMap<(String, u64), StoredLeaf> = HashMap::new();
        for (tenant, count) in counts {
            if !tenants.contains_key(tenant) {
                let check = start_tenant(store, tenant, options, &mut divergences).await?;
                tenants.insert(tenant.to_owned(), check);
            }
            let Some(check) = tenants.get(tenant).filter(|check| !check.diverged) else {
                continue;
            };
            let from = check.frontier.size();
            for leaf in store.leaves(tenant, from, from + count).await? {
                stored.insert((leaf.tenant.clone(), leaf.ledger_sequence), leaf);
            }
        }
        for event in events {
            let Some(check) = tenants.get_mut(&event.tenant) else {
                continue;
            };
            let ledger_sequence = check.frontier.size();
            let sealed = SealedEvent::from_logged(event, ledger_sequence);
            let leaf = sealed.leaf_hash();
            if !check.diverged {
                match stored.get(&(event.tenant.clone(), ledger_sequence)) {
                    Some(stored) if stored.leaf_hash == leaf => check.sealed += 1,
                    Some(stored) => {
                        check.diverged = true;
                        divergences.push(diagnose(store, stored, event, &sealed).await?);
                    }
                    // Beyond the tree stored when the tenant was first seen: not sealed yet.
                    None if ledger_sequence >= check.stored_size => check.unsealed += 1,
                    None => {
                        check.diverged = true;
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
        progress(read, cursor);
    }
    ahead.finish().await?;
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
        stored_size: store
            .tree(tenant)
            .await?
            .map_or(0, |tree| tree.frontier.size()),
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
