//! Audit exports: a tenant's events `from..to` (ledger sequences, end excluded) as JSON lines,
//! each with its leaf hash and its inclusion proof in the tree of the newest signed head, after
//! a first line holding that head. An auditor verifies one offline, with the public key and
//! nothing else — no database, no trust in whoever made the export. Signed votes carry their
//! signature and the voter's public key in their `VoteCast` event, and the keys' registrations
//! are member-directory events of the same log: verifying a bundle checks every signed vote
//! too ([`crate::signed_votes`]).
//!
//! ```text
//! {"format":"countersign.audit-export.v1","tenant":"acme","from":0,"to":120,"head":{…signed head…}}
//! {"ledger_sequence":0,"position":1,"event":{…sealed event…},"leaf_hash":"…","inclusion_proof":["…",…]}
//! …
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use anyhow::{Context, bail};
use countersign_ledger::Ledger;
use serde::{Deserialize, Serialize};

use crate::head::SignedHead;
use crate::keys::KeyRing;
use crate::leaf::SealedEvent;
use crate::signed_votes::{SignedVoteCheck, SignedVotesReport};
use crate::store::SealStore;
use crate::tree::{Hash, verify_inclusion};

pub const EXPORT_FORMAT: &str = "countersign.audit-export.v1";

/// The first line of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleHeader {
    pub format: String,
    pub tenant: String,
    /// The first ledger sequence exported.
    pub from: u64,
    /// One past the last ledger sequence exported.
    pub to: u64,
    /// The signed head every line's inclusion proof leads to.
    pub head: SignedHead,
}

/// One event of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleLine {
    pub ledger_sequence: u64,
    /// Where the store kept the event (informative, not hashed).
    pub position: i64,
    pub event: SealedEvent,
    pub leaf_hash: Hash,
    pub inclusion_proof: Vec<Hash>,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub tenant: String,
    pub from: u64,
    pub to: u64,
    pub head_size: u64,
    pub events: u64,
}

/// Writes the bundle of `tenant`'s events `from..to` (`to` defaults to the newest head's size).
/// Fails when no signed head covers the range, or when an event no longer matches its leaf.
pub async fn export(
    ledger: &Ledger,
    store: &SealStore,
    tenant: &str,
    from: u64,
    to: Option<u64>,
    out: &mut impl Write,
) -> anyhow::Result<ExportSummary> {
    let Some(head) = store.latest_head(tenant).await? else {
        bail!("tenant {tenant} has no signed head yet: nothing can be exported with proofs");
    };
    let to = to.unwrap_or(head.tree_size);
    if from >= to {
        bail!("--from {from} must be below --to {to} (ledger sequences, --to excluded)");
    }
    if to > head.tree_size {
        bail!(
            "the newest signed head of tenant {tenant} covers ledger sequences 0..{}; --to {to} is beyond it (events after the newest head cannot be proven yet)",
            head.tree_size
        );
    }
    let tree = store.tree_of(tenant, head.tree_size).await?;
    if tree.root(head.tree_size)? != head.root {
        bail!(
            "the stored leaves of tenant {tenant} do not give the root of its newest head: run `countersign verify`"
        );
    }
    let header = BundleHeader {
        format: EXPORT_FORMAT.to_owned(),
        tenant: tenant.to_owned(),
        from,
        to,
        head: head.clone(),
    };
    serde_json::to_writer(&mut *out, &header)?;
    out.write_all(b"\n")?;
    let mut start = from;
    while start < to {
        let end = (start + 1000).min(to);
        let leaves = store.leaves(tenant, start, end).await?;
        let positions: Vec<i64> = leaves.iter().map(|leaf| leaf.position).collect();
        let events: BTreeMap<i64, _> = ledger
            .read_positions(&positions)
            .await?
            .into_iter()
            .map(|event| (event.cursor.position, event))
            .collect();
        for leaf in &leaves {
            let Some(event) = events.get(&leaf.position) else {
                bail!(
                    "ledger sequence {} ({}) is sealed at position {} but the event is gone: run `countersign verify`",
                    leaf.ledger_sequence,
                    leaf.name(),
                    leaf.position
                );
            };
            let sealed = SealedEvent::from_logged(event, leaf.ledger_sequence);
            if sealed.leaf_hash() != leaf.leaf_hash {
                bail!(
                    "ledger sequence {} ({}) no longer matches its sealed leaf: run `countersign verify`",
                    leaf.ledger_sequence,
                    leaf.name()
                );
            }
            let line = BundleLine {
                ledger_sequence: leaf.ledger_sequence,
                position: leaf.position,
                leaf_hash: leaf.leaf_hash,
                inclusion_proof: tree.inclusion_proof(leaf.ledger_sequence, head.tree_size)?,
                event: sealed,
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        }
        if (leaves.len() as u64) < end - start {
            bail!(
                "tenant {tenant} has fewer sealed leaves than its head claims: run `countersign verify`"
            );
        }
        start = end;
    }
    out.flush()?;
    Ok(ExportSummary {
        tenant: tenant.to_owned(),
        from,
        to,
        head_size: head.tree_size,
        events: to - from,
    })
}

/// What an offline verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleReport {
    pub tenant: String,
    pub from: u64,
    pub to: u64,
    pub head: SignedHead,
    /// The signed votes checked (every one verified).
    pub signed_votes: SignedVotesReport,
}

/// Verifies a bundle with the trusted public keys alone: the head, every line's leaf hash and
/// inclusion proof, then every signed vote's signature and key registration. The error names
/// the line and what is wrong with it (every signed vote that does not verify).
pub fn verify_bundle(reader: impl BufRead, keys: &KeyRing) -> anyhow::Result<BundleReport> {
    let mut lines = reader.lines().enumerate();
    let Some((_, first)) = lines.next() else {
        bail!("the bundle is empty");
    };
    let header: BundleHeader = serde_json::from_str(&first.context("reading line 1")?)
        .context("line 1 is not a countersign audit export header")?;
    if header.format != EXPORT_FORMAT {
        bail!(
            "line 1: unknown format `{}` (expected {EXPORT_FORMAT})",
            header.format
        );
    }
    let head = &header.head;
    head.verify(keys)
        .with_context(|| format!("line 1: the head of size {} is not trusted", head.tree_size))?;
    if head.tenant != header.tenant {
        bail!(
            "line 1: the head is tenant {}'s, the export claims tenant {}",
            head.tenant,
            header.tenant
        );
    }
    if header.from >= header.to || header.to > head.tree_size {
        bail!(
            "line 1: the range {}..{} is not within the head's {} leaves",
            header.from,
            header.to,
            head.tree_size
        );
    }
    let mut expected = header.from;
    let mut signed_votes = SignedVoteCheck::default();
    for (index, line) in lines {
        let number = index + 1;
        let text = line.with_context(|| format!("reading line {number}"))?;
        if text.trim().is_empty() {
            continue;
        }
        let line: BundleLine = serde_json::from_str(&text)
            .with_context(|| format!("line {number} is not an exported event"))?;
        if line.ledger_sequence != expected {
            bail!(
                "line {number}: expected ledger sequence {expected}, found {}: lines were removed, added or reordered",
                line.ledger_sequence
            );
        }
        if line.event.ledger_sequence != line.ledger_sequence || line.event.tenant != header.tenant
        {
            bail!(
                "line {number}: the event claims tenant {} ledger sequence {}, the line says tenant {} ledger sequence {}",
                line.event.tenant,
                line.event.ledger_sequence,
                header.tenant,
                line.ledger_sequence
            );
        }
        let computed = line.event.leaf_hash();
        if computed != line.leaf_hash {
            bail!(
                "line {number} (ledger sequence {}, {}): the event does not hash to its leaf hash: it was altered",
                line.ledger_sequence,
                line.event.name()
            );
        }
        verify_inclusion(
            &computed,
            line.ledger_sequence,
            head.tree_size,
            &line.inclusion_proof,
            &head.root,
        )
        .with_context(|| {
            format!(
                "line {number} (ledger sequence {}, {}): its inclusion proof fails against the signed head",
                line.ledger_sequence,
                line.event.name()
            )
        })?;
        signed_votes.observe(number, &line.event);
        expected += 1;
    }
    if expected != header.to {
        bail!(
            "the bundle ends before ledger sequence {expected}; its header promises events up to {}: lines were removed",
            header.to
        );
    }
    let signed_votes = signed_votes.finish(header.from);
    if !signed_votes.failures.is_empty() {
        bail!(
            "{} of {} signed vote(s) do not verify:\n  {}",
            signed_votes.failures.len(),
            signed_votes.checked,
            signed_votes.failures.join("\n  ")
        );
    }
    Ok(BundleReport {
        tenant: header.tenant.clone(),
        from: header.from,
        to: header.to,
        head: header.head,
        signed_votes,
    })
}
