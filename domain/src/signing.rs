//! Ed25519-signed votes: the public keys members register to sign their votes, the message a
//! signature covers, and the check of a signature as a vote is cast (and as the decision replay
//! and an auditor check it again).
//!
//! The signed message is UTF-8 text, six lines joined by `\n`, no trailing newline:
//!
//! ```text
//! countersign-vote-v1
//! {tenant}
//! {action id, lowercase hyphenated UUID}
//! {execution key, 64 lowercase hex digits}
//! {approve | reject | abstain}
//! {signed_at, RFC 3339 in UTC with whole seconds: 2026-11-30T09:15:00Z}
//! ```
//!
//! A key is named by its id: the first 16 hex digits of `blake3("countersign.key.v1" ‖ public
//! key)`, the same naming as the keys that sign ledger heads. Verifying needs no secret, no clock
//! and no IO, so it belongs here: the domain refuses a bad signature before anything is recorded,
//! and every replay of the vote checks it again.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::canonical::ExecutionKey;
use crate::quorum::Vote;
use crate::{ActionId, ParseError, TenantId, Timestamp};

/// The first line of every signed vote message: the format's version.
pub const VOTE_MESSAGE_VERSION: &str = "countersign-vote-v1";

/// How far `signed_at` may be from the moment the vote is received, either way, in seconds.
pub const MAX_SIGNATURE_SKEW_SECONDS: i64 = 300;

fn lower_hex(text: &str, bytes: usize) -> bool {
    text.len() == bytes * 2 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    if !lower_hex(text, N) {
        return None;
    }
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

/// The id of a public key: the first 16 hex digits of `blake3("countersign.key.v1" ‖ key)`.
pub fn key_id_of(public: &[u8; 32]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"countersign.key.v1");
    hasher.update(public);
    hasher.finalize().to_hex()[..16].to_owned()
}

/// An Ed25519 public key a member registered to sign their votes: 64 lowercase hex digits that
/// decode to a valid Ed25519 point.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(extend("pattern" = "^[0-9a-f]{64}$"))]
pub struct VotePublicKey(String);

impl VotePublicKey {
    pub fn parse(value: impl Into<String>) -> Result<Self, ParseError> {
        let value: String = value.into();
        let value = value.trim().to_ascii_lowercase();
        let invalid = || {
            ParseError::new(
                "public_key",
                "must be an Ed25519 public key: 64 hexadecimal digits",
            )
        };
        let bytes = decode::<32>(&value).ok_or_else(invalid)?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| invalid())?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's id (see the module documentation).
    pub fn key_id(&self) -> String {
        decode::<32>(&self.0).map_or_else(String::new, |bytes| key_id_of(&bytes))
    }

    fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&decode::<32>(&self.0)?).ok()
    }
}

impl TryFrom<String> for VotePublicKey {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<VotePublicKey> for String {
    fn from(value: VotePublicKey) -> Self {
        value.0
    }
}

impl fmt::Display for VotePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for VotePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VotePublicKey({})", self.0)
    }
}

/// An Ed25519 signature: 128 lowercase hex digits (64 bytes).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(extend("pattern" = "^[0-9a-f]{128}$"))]
pub struct VoteSignatureBytes(String);

impl VoteSignatureBytes {
    pub fn parse(value: impl Into<String>) -> Result<Self, ParseError> {
        let value: String = value.into();
        let value = value.trim().to_ascii_lowercase();
        if lower_hex(&value, 64) {
            Ok(Self(value))
        } else {
            Err(ParseError::new(
                "signature",
                "must be an Ed25519 signature: 128 hexadecimal digits",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VoteSignatureBytes {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<VoteSignatureBytes> for String {
    fn from(value: VoteSignatureBytes) -> Self {
        value.0
    }
}

impl fmt::Debug for VoteSignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VoteSignatureBytes({})", self.0)
    }
}

/// `signed_at` as the message carries it: RFC 3339 in UTC with whole seconds.
pub fn format_signed_at(at: Timestamp) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A `signed_at` must name a whole second (the message carries whole seconds).
pub fn check_signed_at(at: Timestamp) -> Result<(), ParseError> {
    if at.timestamp_subsec_nanos() == 0 {
        Ok(())
    } else {
        Err(ParseError::new(
            "signed_at",
            "must be a whole second (RFC 3339 without fractional seconds)",
        ))
    }
}

fn vote_word(vote: Vote) -> &'static str {
    match vote {
        Vote::Approve => "approve",
        Vote::Reject => "reject",
        Vote::Abstain => "abstain",
    }
}

/// The message a voter signs (see the module documentation).
pub fn vote_message(
    tenant: &TenantId,
    action: &ActionId,
    execution_key: &ExecutionKey,
    vote: Vote,
    signed_at: Timestamp,
) -> String {
    format!(
        "{VOTE_MESSAGE_VERSION}\n{tenant}\n{action}\n{execution_key}\n{}\n{}",
        vote_word(vote),
        format_signed_at(signed_at)
    )
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureProblem {
    /// `signed_at` is more than [`MAX_SIGNATURE_SKEW_SECONDS`] from the moment of the vote.
    #[error(
        "signed_at {signed_at} is more than {MAX_SIGNATURE_SKEW_SECONDS} seconds from the time the vote was received ({at})"
    )]
    OutOfWindow { signed_at: Timestamp, at: Timestamp },
    /// The recorded key id is not the id of the recorded public key.
    #[error("key id {key_id} is not the id of the public key ({expected})")]
    KeyIdMismatch { key_id: String, expected: String },
    /// The signature does not verify over the vote's message with the key.
    #[error("the signature does not verify with key {key_id} over the vote's message")]
    Invalid { key_id: String },
}

/// A vote's signature, as recorded in its `VoteCast` event: which key signed (its id and the
/// public key itself, so the vote is checked without any other record), when, and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VoteSignature {
    /// The id of `public_key`.
    pub key_id: String,
    /// The voter's registered key that made the signature.
    pub public_key: VotePublicKey,
    /// When the voter signed (part of the message).
    pub signed_at: Timestamp,
    pub signature: VoteSignatureBytes,
}

impl VoteSignature {
    /// Checks the signature of a vote received (or recorded) at `at`: the key id, `signed_at`
    /// within [`MAX_SIGNATURE_SKEW_SECONDS`] of `at`, and the signature over the message.
    pub fn check(
        &self,
        tenant: &TenantId,
        action: &ActionId,
        execution_key: &ExecutionKey,
        vote: Vote,
        at: Timestamp,
    ) -> Result<(), SignatureProblem> {
        if (at - self.signed_at).abs() > chrono::Duration::seconds(MAX_SIGNATURE_SKEW_SECONDS) {
            return Err(SignatureProblem::OutOfWindow {
                signed_at: self.signed_at,
                at,
            });
        }
        self.verify(tenant, action, execution_key, vote)
    }

    /// Checks the key id and the signature over the message alone (no time window): what an
    /// auditor checks offline.
    pub fn verify(
        &self,
        tenant: &TenantId,
        action: &ActionId,
        execution_key: &ExecutionKey,
        vote: Vote,
    ) -> Result<(), SignatureProblem> {
        let expected = self.public_key.key_id();
        if self.key_id != expected {
            return Err(SignatureProblem::KeyIdMismatch {
                key_id: self.key_id.clone(),
                expected,
            });
        }
        let invalid = || SignatureProblem::Invalid {
            key_id: self.key_id.clone(),
        };
        let key = self.public_key.verifying_key().ok_or_else(invalid)?;
        let bytes = decode::<64>(self.signature.as_str()).ok_or_else(invalid)?;
        let message = vote_message(tenant, action, execution_key, vote, self.signed_at);
        key.verify_strict(message.as_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| invalid())
    }
}

/// A secret key that signs votes, from its 32-byte seed (Ed25519 signing is deterministic: no
/// randomness is needed to sign). Generating a seed is the caller's business (the CLI uses the
/// operating system's generator).
#[derive(Clone)]
pub struct VoteSigner {
    key: SigningKey,
}

impl fmt::Debug for VoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VoteSigner")
            .field("key_id", &self.public_key().key_id())
            .finish_non_exhaustive()
    }
}

impl VoteSigner {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Reads a secret key as written by `countersign keys vote generate`: 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, ParseError> {
        decode::<32>(&text.trim().to_ascii_lowercase())
            .map(Self::from_seed)
            .ok_or_else(|| ParseError::new("key", "must be a secret key: 64 hexadecimal digits"))
    }

    pub fn public_key(&self) -> VotePublicKey {
        VotePublicKey(hex::encode(self.key.verifying_key().as_bytes()))
    }

    /// Signs a vote: the signature to send with it.
    pub fn sign(
        &self,
        tenant: &TenantId,
        action: &ActionId,
        execution_key: &ExecutionKey,
        vote: Vote,
        signed_at: Timestamp,
    ) -> VoteSignature {
        let message = vote_message(tenant, action, execution_key, vote, signed_at);
        let public_key = self.public_key();
        VoteSignature {
            key_id: public_key.key_id(),
            public_key,
            signed_at,
            signature: VoteSignatureBytes(hex::encode(
                self.key.sign(message.as_bytes()).to_bytes(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn at(seconds: i64) -> Timestamp {
        chrono::Utc
            .timestamp_opt(1_800_000_000 + seconds, 0)
            .single()
            .expect("time")
    }

    #[test]
    fn a_signature_verifies_over_exactly_its_vote_and_nothing_else() {
        let tenant = TenantId::parse("acme").expect("tenant");
        let action = ActionId::from_uuid(uuid::Uuid::nil());
        let key = ExecutionKey::compute(
            &crate::ActionType::parse("billing.refund").expect("type"),
            &json!({"order": 1}),
        );
        let other = ExecutionKey::compute(
            &crate::ActionType::parse("billing.refund").expect("type"),
            &json!({"order": 2}),
        );
        let signer = VoteSigner::from_seed([7; 32]);
        let signed = signer.sign(&tenant, &action, &key, Vote::Approve, at(0));
        assert_eq!(signed.key_id.len(), 16);
        assert_eq!(
            signed.check(&tenant, &action, &key, Vote::Approve, at(10)),
            Ok(())
        );
        assert_eq!(
            vote_message(&tenant, &action, &key, Vote::Approve, at(0)),
            format!(
                "countersign-vote-v1\nacme\n00000000-0000-0000-0000-000000000000\n{key}\napprove\n2027-01-15T08:00:00Z"
            )
        );
        for (key, vote) in [(&other, Vote::Approve), (&key, Vote::Reject)] {
            assert!(matches!(
                signed.check(&tenant, &action, key, vote, at(10)),
                Err(SignatureProblem::Invalid { .. })
            ));
        }
        assert!(matches!(
            signed.check(&tenant, &action, &key, Vote::Approve, at(301)),
            Err(SignatureProblem::OutOfWindow { .. })
        ));
        assert!(matches!(
            signed.check(&tenant, &action, &key, Vote::Approve, at(-301)),
            Err(SignatureProblem::OutOfWindow { .. })
        ));
        let by_another = VoteSignature {
            public_key: VoteSigner::from_seed([8; 32]).public_key(),
            ..signed.clone()
        };
        assert!(matches!(
            by_another.verify(&tenant, &action, &key, Vote::Approve),
            Err(SignatureProblem::KeyIdMismatch { .. })
        ));
        let round_trip: VoteSignature =
            serde_json::from_value(serde_json::to_value(&signed).expect("json")).expect("reads");
        assert_eq!(round_trip, signed);
    }

    #[test]
    fn keys_and_signatures_must_be_hex_of_their_length() {
        assert!(VotePublicKey::parse("ab").is_err());
        assert_eq!(
            VotePublicKey::parse("zz".repeat(32))
                .expect_err("not hex")
                .field,
            "public_key"
        );
        let public = VoteSigner::from_seed([1; 32]).public_key();
        assert_eq!(
            VotePublicKey::parse(public.as_str().to_ascii_uppercase()).expect("upper case"),
            public
        );
        assert!(VoteSignatureBytes::parse("00".repeat(63)).is_err());
        assert!(VoteSignatureBytes::parse("00".repeat(64)).is_ok());
        assert!(VoteSigner::from_hex("nope").is_err());
        assert!(check_signed_at(at(0)).is_ok());
        assert!(check_signed_at(at(0) + chrono::Duration::milliseconds(5)).is_err());
    }
}
