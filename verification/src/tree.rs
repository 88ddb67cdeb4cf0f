//! The Merkle tree of RFC 9162 (Certificate Transparency 2.0), hashed with blake3.
//!
//! - leaf hash: `H(0x00 ‖ data)`; interior node: `H(0x01 ‖ left ‖ right)`;
//! - the tree of `n` leaves splits at the largest power of two below `n`: its left subtree is
//!   perfect, its right subtree holds the rest (so an append never changes an existing perfect
//!   subtree), and the root of the empty tree is `H()`;
//! - inclusion proofs (`PATH`) and consistency proofs (`PROOF`) and their verification follow
//!   sections 2.1.3 and 2.1.4 of the RFC.
//!
//! Pure and IO-free: the sealer, the verifier, the export and the offline check all use it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A blake3 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hexadecimal digits.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim())
            .map_err(|err| format!("`{}` is not a hexadecimal hash: {err}", text.trim()))?;
        let array: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            format!("a hash has 32 bytes (64 hex digits), not {}", bytes.len())
        })?;
        Ok(Self(array))
    }
}

impl schemars::JsonSchema for Hash {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Hash".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "pattern": "^[0-9a-f]{64}$", "description": "A blake3 digest, hex." })
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// `H(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[0x00]);
    hasher.update(data);
    Hash(*hasher.finalize().as_bytes())
}

/// `H(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[0x01]);
    hasher.update(&left.0);
    hasher.update(&right.0);
    Hash(*hasher.finalize().as_bytes())
}

/// The root of the empty tree: `H()`.
pub fn empty_root() -> Hash {
    Hash(*blake3::hash(&[]).as_bytes())
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest first (one per
/// bit of the size). Enough to append leaves and compute the root; `O(log n)` hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (height, root) of each perfect subtree, left to right; heights strictly decrease.
    peaks: Vec<(u32, Hash)>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(height, left)) = self.peaks.last() {
            if height != node.0 {
                break;
            }
            self.peaks.pop();
            node = (height + 1, node_hash(&left, &node.1));
        }
        self.peaks.push(node);
        self.size += 1;
    }

    /// The root of the tree so far (RFC 9162 `MTH`).
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(&(_, last)) = peaks.next() else {
            return empty_root();
        };
        peaks.fold(last, |right, (_, left)| node_hash(left, &right))
    }

    /// The stored form: the size and the peaks' hashes, left to right, as hex.
    pub fn encode(&self) -> String {
        self.peaks.iter().map(|(_, hash)| hash.to_hex()).collect()
    }

    /// Rebuilds a frontier from its size and [`Frontier::encode`]d peaks.
    pub fn decode(size: u64, peaks: &str) -> Result<Self, String> {
        let heights: Vec<u32> = (0..64u32)
            .rev()
            .filter(|bit| (size >> bit) & 1 == 1)
            .collect();
        if peaks.len() != heights.len() * 64 {
            return Err(format!(
                "a frontier of {size} leaves has {} peaks, not {} hex digits",
                heights.len(),
                peaks.len()
            ));
        }
        let peaks = heights
            .into_iter()
            .enumerate()
            .map(|(i, height)| Ok((height, Hash::from_hex(&peaks[i * 64..(i + 1) * 64])?)))
            .collect::<Result<_, String>>()?;
        Ok(Self { size, peaks })
    }
}

/// Every leaf of a tree with its aligned perfect subtrees, to answer roots and proofs for any
/// size up to the number of leaves in `O(log² n)` hashes each.
#[derive(Debug, Clone)]
pub struct Tree {
    /// `levels[h][i]` is the root of leaves `[i·2^h, (i+1)·2^h)`.
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    pub fn new(leaves: Vec<Hash>) -> Self {
        let mut levels = vec![leaves];
        while let Some(below) = levels.last().filter(|level| level.len() >= 2) {
            let above = below
                .chunks_exact(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
            levels.push(above);
        }
        Self { levels }
    }

    /// How many leaves the tree holds.
    pub fn len(&self) -> u64 {
        self.levels[0].len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels[0].get(usize::try_from(index).ok()?).copied()
    }

    /// `MTH(D[start:end])`, for a range that occurs in the RFC's recursions (`end > start`).
    fn subtree(&self, start: u64, end: u64) -> Hash {
        let width = end - start;
        if width.is_power_of_two() && start.is_multiple_of(width) {
            let height = width.trailing_zeros() as usize;
            if let Some(hash) = self
                .levels
                .get(height)
                .and_then(|level| level.get((start / width) as usize))
            {
                return *hash;
            }
        }
        if width == 1 {
            return self.levels[0][start as usize];
        }
        let k = split(width);
        node_hash(
            &self.subtree(start, start + k),
            &self.subtree(start + k, end),
        )
    }

    /// The root of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, ProofError> {
        self.check_size(size)?;
        Ok(if size == 0 {
            empty_root()
        } else {
            self.subtree(0, size)
        })
    }

    fn check_size(&self, size: u64) -> Result<(), ProofError> {
        if size > self.len() {
            return Err(ProofError::SizeBeyondTree {
                size,
                leaves: self.len(),
            });
        }
        Ok(())
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves (RFC 9162 `PATH`).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(size)?;
        if index >= size {
            return Err(ProofError::IndexBeyondSize { index, size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Ok(proof)
    }

    fn path(&self, m: u64, start: u64, end: u64, proof: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, start + k, proof);
            proof.push(self.subtree(start + k, end));
        } else {
            self.path(m - k, start + k, end, proof);
            proof.push(self.subtree(start, start + k));
        }
    }

    /// The proof that the tree of `old` leaves is a prefix of the tree of `new` leaves (RFC 9162
    /// `PROOF`); empty when `old` is 0 or equals `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(new)?;
        if old > new {
            return Err(ProofError::OldBeyondNew { old, new });
        }
        let mut proof = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut proof);
        }
        Ok(proof)
    }

    fn subproof(&self, m: u64, start: u64, end: u64, whole: bool, proof: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !whole {
                proof.push(self.subtree(start, end));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, start + k, whole, proof);
            proof.push(self.subtree(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, proof);
            proof.push(self.subtree(start, start + k));
        }
    }
}

/// Why a proof could not be made or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("tree size {size} is beyond the {leaves} sealed leaves")]
    SizeBeyondTree { size: u64, leaves: u64 },
    #[error("leaf index {index} is not below tree size {size}")]
    IndexBeyondSize { index: u64, size: u64 },
    #[error("old size {old} is larger than new size {new}")]
    OldBeyondNew { old: u64, new: u64 },
    #[error("the proof has the wrong number of hashes")]
    WrongLength,
    #[error("the proof does not lead to the expected root")]
    RootMismatch,
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexBeyondSize { index, size });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Checks a consistency proof between two roots (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::OldBeyondNew { old, new });
    }
    if old == new {
        return if proof.is_empty() && old_root == new_root {
            Ok(())
        } else if !proof.is_empty() {
            Err(ProofError::WrongLength)
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if old == 0 {
        // Every tree extends the empty one; there is nothing to prove.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength)
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr != *old_root || sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RFC's definition of `MTH`, written directly: the oracle for everything above.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    const MAX: u64 = 300;

    #[test]
    fn roots_match_the_rfc_definition_for_every_size() {
        let all = leaves(MAX);
        let tree = Tree::new(all.clone());
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), empty_root());
        for size in 1..=MAX {
            frontier.push(all[size as usize - 1]);
            let expected = reference_root(&all[..size as usize]);
            assert_eq!(tree.root(size), Ok(expected), "size {size}");
            assert_eq!(frontier.root(), expected, "frontier at size {size}");
            let stored = Frontier::decode(size, &frontier.encode()).expect("decodes");
            assert_eq!(stored, frontier);
        }
    }

    #[test]
    fn inclusion_proofs_verify_for_every_leaf_of_every_size_and_fail_when_anything_is_wrong() {
        let tree = Tree::new(leaves(MAX));
        for size in 1..=MAX {
            let root = tree.root(size).expect("root");
            for index in 0..size {
                let leaf = tree.leaf(index).expect("leaf");
                let proof = tree.inclusion_proof(index, size).expect("proof");
                assert_eq!(
                    verify_inclusion(&leaf, index, size, &proof, &root),
                    Ok(()),
                    "index {index} size {size}"
                );
                let other = leaf_hash(b"forged");
                assert!(verify_inclusion(&other, index, size, &proof, &root).is_err());
                if size > 1 {
                    let wrong_index = (index + 1) % size;
                    assert!(
                        verify_inclusion(&leaf, wrong_index, size, &proof, &root).is_err(),
                        "wrong index {wrong_index} for {index} at size {size}"
                    );
                }
                // A root stands for one size (a signed head binds them): the proof checked as
                // the same leaf's in a tree of another size, against that tree's root, fails.
                if size < MAX {
                    let bigger = tree.root(size + 1).expect("root");
                    assert!(verify_inclusion(&leaf, index, size + 1, &proof, &bigger).is_err());
                }
                if size > index + 1 {
                    let smaller = tree.root(size - 1).expect("root");
                    assert!(verify_inclusion(&leaf, index, size - 1, &proof, &smaller).is_err());
                }
                if let Some((first, rest)) = proof.split_first() {
                    let mut tampered = vec![node_hash(first, first)];
                    tampered.extend_from_slice(rest);
                    assert!(verify_inclusion(&leaf, index, size, &tampered, &root).is_err());
                }
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_for_every_pair_of_sizes_and_fail_when_anything_is_wrong() {
        let tree = Tree::new(leaves(MAX));
        let roots: Vec<Hash> = (0..=MAX).map(|n| tree.root(n).expect("root")).collect();
        for new in 1..=MAX {
            for old in 1..=new {
                let proof = tree.consistency_proof(old, new).expect("proof");
                let (old_root, new_root) = (roots[old as usize], roots[new as usize]);
                assert_eq!(
                    verify_consistency(old, new, &old_root, &new_root, &proof),
                    Ok(()),
                    "{old} -> {new}"
                );
                if old < new {
                    // Another old tree, another size, another new root: all refused.
                    let other = roots[(old as usize + 1).min(new as usize - 1).max(1)];
                    if other != old_root {
                        assert!(verify_consistency(old, new, &other, &new_root, &proof).is_err());
                    }
                    assert!(
                        verify_consistency(old, new, &old_root, &roots[old as usize], &proof)
                            .is_err()
                    );
                    if new < MAX {
                        let bigger = roots[new as usize + 1];
                        assert!(
                            verify_consistency(old, new + 1, &old_root, &bigger, &proof).is_err(),
                            "{old} -> {new} accepted as -> {}",
                            new + 1
                        );
                    }
                    if old > 1 {
                        let smaller = roots[old as usize - 1];
                        assert!(
                            verify_consistency(old - 1, new, &smaller, &new_root, &proof).is_err(),
                            "{old} -> {new} accepted from {}",
                            old - 1
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_proof_for_a_size_beyond_the_tree_is_refused() {
        let tree = Tree::new(leaves(5));
        assert_eq!(
            tree.inclusion_proof(2, 6),
            Err(ProofError::SizeBeyondTree { size: 6, leaves: 5 })
        );
        assert_eq!(
            tree.inclusion_proof(5, 5),
            Err(ProofError::IndexBeyondSize { index: 5, size: 5 })
        );
        assert_eq!(
            tree.consistency_proof(4, 3),
            Err(ProofError::OldBeyondNew { old: 4, new: 3 })
        );
    }

    #[test]
    fn hashes_are_domain_separated_blake3() {
        let data = b"countersign";
        let mut prefixed = vec![0u8];
        prefixed.extend_from_slice(data);
        assert_eq!(leaf_hash(data).0, *blake3::hash(&prefixed).as_bytes());
        let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
        let mut node = vec![1u8];
        node.extend_from_slice(&a.0);
        node.extend_from_slice(&b.0);
        assert_eq!(node_hash(&a, &b).0, *blake3::hash(&node).as_bytes());
        assert_eq!(Hash::from_hex(&a.to_hex()), Ok(a));
        assert!(Hash::from_hex("abc").is_err());
    }
}
