//! Signed ledger heads: "tenant T's tree had S leaves and root R at time W", signed with
//! Ed25519.
//!
//! The signed message is the RFC 8785 canonical JSON of
//! `{"format":"countersign.head.v1","tenant":…,"tree_size":…,"root":"<hex>","signed_at":"<RFC 3339, µs>","key_id":…}`.

use chrono::{DateTime, Utc};
use countersign_domain::canonical::canonical_json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::keys::{HeadSigner, KeyRing, SignatureError};
use crate::leaf::format_time;
use crate::tree::Hash;

pub const HEAD_FORMAT: &str = "countersign.head.v1";

/// A signed statement of a tenant's tree size and root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    pub tenant: String,
    pub tree_size: u64,
    pub root: Hash,
    /// RFC 3339, UTC, microseconds.
    pub signed_at: String,
    pub key_id: String,
    /// Ed25519 signature of [`SignedHead::message`], hex.
    pub signature: String,
}

impl SignedHead {
    /// The bytes that are signed.
    pub fn message(
        tenant: &str,
        tree_size: u64,
        root: &Hash,
        signed_at: &str,
        key_id: &str,
    ) -> Vec<u8> {
        canonical_json(&json!({
            "format": HEAD_FORMAT,
            "tenant": tenant,
            "tree_size": tree_size,
            "root": root.to_hex(),
            "signed_at": signed_at,
            "key_id": key_id,
        }))
    }

    pub fn sign(
        signer: &HeadSigner,
        tenant: &str,
        tree_size: u64,
        root: Hash,
        at: DateTime<Utc>,
    ) -> Self {
        let signed_at = format_time(at);
        let message = Self::message(tenant, tree_size, &root, &signed_at, signer.id());
        Self {
            tenant: tenant.to_owned(),
            tree_size,
            root,
            signed_at,
            key_id: signer.id().to_owned(),
            signature: hex::encode(signer.sign(&message).to_bytes()),
        }
    }

    /// Checks the signature with the trusted keys.
    pub fn verify(&self, keys: &KeyRing) -> Result<(), SignatureError> {
        let signature = hex::decode(&self.signature).map_err(|_| SignatureError::Malformed)?;
        let message = Self::message(
            &self.tenant,
            self.tree_size,
            &self.root,
            &self.signed_at,
            &self.key_id,
        );
        keys.verify(&self.key_id, &message, &signature)
    }

    /// When it was signed.
    pub fn signed_at(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.signed_at)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::leaf_hash;

    #[test]
    fn a_head_verifies_with_its_key_and_not_when_changed_or_signed_by_another() {
        let signer = HeadSigner::generate();
        let head = SignedHead::sign(&signer, "acme", 7, leaf_hash(b"x"), Utc::now());
        let ring = KeyRing::new([signer.public_key()]);
        assert_eq!(head.verify(&ring), Ok(()));
        let mut bigger = head.clone();
        bigger.tree_size = 8;
        assert!(matches!(
            bigger.verify(&ring),
            Err(SignatureError::Invalid(_))
        ));
        let other = HeadSigner::generate();
        let forged = SignedHead::sign(&other, "acme", 7, leaf_hash(b"x"), Utc::now());
        assert!(matches!(
            forged.verify(&ring),
            Err(SignatureError::UnknownKey(_))
        ));
        let mut relabelled = forged.clone();
        relabelled.key_id = signer.id().to_owned();
        assert!(matches!(
            relabelled.verify(&ring),
            Err(SignatureError::Invalid(_))
        ));
        let text = serde_json::to_string(&head).expect("json");
        assert_eq!(
            serde_json::from_str::<SignedHead>(&text).expect("parses"),
            head
        );
    }
}
