//! Verifiable history. countersign's events are already append-only in the database; this crate
//! makes any change to them — by a bug, an operator or a superuser who disables the triggers —
//! detectable, and lets an auditor check an export without trusting the database.
//!
//! - [`tree`]: the RFC 9162 Merkle tree with blake3 (leaf `H(0x00 ‖ data)`, node
//!   `H(0x01 ‖ left ‖ right)`), inclusion and consistency proofs. Pure.
//! - [`leaf`]: the canonical encoding of a stored event that a leaf hashes.
//! - [`sealer`]: the tailer that gives each tenant's events a gapless ledger sequence and a leaf,
//!   signs heads ([`head`], Ed25519 [`keys`]) and publishes them ([`publish`]).
//! - [`store`]: the seal tables and the read API: latest head, head history, proofs.
//! - [`verify`]: recompute every tree from the events table and name the first divergence.
//! - [`export`]: audit bundles (events, leaf hashes, proofs and the covering signed head) and
//!   their offline verification.
//! - [`decisions`]: re-deciding every action's recorded commands with the current domain code.
//!
//! See `docs/verification.md` for what is guaranteed and what is not.

pub mod decisions;
pub mod export;
pub mod head;
pub mod keys;
pub mod leaf;
pub mod publish;
pub mod sealer;
pub mod signed_votes;
pub mod store;
pub mod tree;
pub mod verify;

pub use head::SignedHead;
pub use keys::{HeadSigner, KeyRing};
pub use publish::{FilePublisher, Publisher};
pub use sealer::{Outcome, Sealer, SealerConfig};
pub use store::{ConsistencyProof, InclusionProof, SealStore, StoredLeaf};
pub use tree::Hash;
pub use verify::{Divergence, DivergenceKind, Report, VerifyOptions, verify};
