//! What a leaf seals: the stored event, exactly as stored (before any upcasting), in one
//! canonical encoding that anyone can rebuild from an export.
//!
//! The leaf data is the RFC 8785 canonical JSON of
//!
//! ```json
//! { "format": "countersign.leaf.v1", "tenant": "acme", "ledger_sequence": 0,
//!   "aggregate_type": "action", "aggregate_id": "…", "sequence": 1,
//!   "event_type": "ActionSubmitted", "event_version": "1",
//!   "recorded_at": "2026-11-17T14:02:00.123456Z", "payload": { … }, "metadata": { … } }
//! ```
//!
//! (keys sorted, no whitespace), and the leaf hash is `blake3(0x00 ‖ data)`. The ledger
//! sequence is the event's 0-based index in its tenant's tree. The global position is not
//! hashed: it is where the store happens to keep the event, not part of the history.

use chrono::{DateTime, SecondsFormat, Utc};
use countersign_domain::canonical::canonical_json;
use countersign_ledger::LoggedEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::tree::{Hash, leaf_hash};

/// The leaf format tag, part of every leaf's data.
pub const LEAF_FORMAT: &str = "countersign.leaf.v1";

/// An event as sealed: every stored field that the leaf hash covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedEvent {
    pub tenant: String,
    pub ledger_sequence: u64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// RFC 3339, UTC, microseconds.
    pub recorded_at: String,
    pub payload: Value,
    pub metadata: Value,
}

/// The recorded time as it is hashed: RFC 3339 in UTC with microseconds.
pub fn format_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl SealedEvent {
    /// The event read from the log, as the `ledger_sequence`-th leaf of its tenant.
    pub fn from_logged(event: &LoggedEvent, ledger_sequence: u64) -> Self {
        Self {
            tenant: event.tenant.clone(),
            ledger_sequence,
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            recorded_at: format_time(event.recorded_at),
            payload: event.payload.clone(),
            metadata: event.metadata.clone(),
        }
    }

    /// The leaf data: canonical JSON of the fields above with the format tag.
    pub fn leaf_data(&self) -> Vec<u8> {
        canonical_json(&json!({
            "format": LEAF_FORMAT,
            "tenant": self.tenant,
            "ledger_sequence": self.ledger_sequence,
            "aggregate_type": self.aggregate_type,
            "aggregate_id": self.aggregate_id,
            "sequence": self.sequence,
            "event_type": self.event_type,
            "event_version": self.event_version,
            "recorded_at": self.recorded_at,
            "payload": self.payload,
            "metadata": self.metadata,
        }))
    }

    pub fn leaf_hash(&self) -> Hash {
        leaf_hash(&self.leaf_data())
    }

    /// `aggregate_type/aggregate_id#sequence`, how reports name an event.
    pub fn name(&self) -> String {
        event_name(&self.aggregate_type, &self.aggregate_id, self.sequence)
    }
}

/// `aggregate_type/aggregate_id#sequence`.
pub fn event_name(aggregate_type: &str, aggregate_id: &str, sequence: i64) -> String {
    format!("{aggregate_type}/{aggregate_id}#{sequence}")
}

/// blake3 of a value's canonical JSON: stored beside each leaf so that a verifier can say which
/// part of an event changed.
pub fn content_hash(value: &Value) -> Hash {
    Hash(*blake3::hash(&canonical_json(value)).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leaf_data_is_canonical_json_with_the_format_tag() {
        let event = SealedEvent {
            tenant: "acme".into(),
            ledger_sequence: 3,
            aggregate_type: "action".into(),
            aggregate_id: "a1".into(),
            sequence: 2,
            event_type: "VoteCast".into(),
            event_version: "1".into(),
            recorded_at: "2026-01-02T03:04:05.000006Z".into(),
            payload: json!({ "b": 1.0, "a": [true] }),
            metadata: json!({ "tenant": "acme" }),
        };
        assert_eq!(
            String::from_utf8(event.leaf_data()).expect("utf-8"),
            r#"{"aggregate_id":"a1","aggregate_type":"action","event_type":"VoteCast","event_version":"1","format":"countersign.leaf.v1","ledger_sequence":3,"metadata":{"tenant":"acme"},"payload":{"a":[true],"b":1},"recorded_at":"2026-01-02T03:04:05.000006Z","sequence":2,"tenant":"acme"}"#
        );
        assert_eq!(event.leaf_hash(), leaf_hash(&event.leaf_data()));
        assert_eq!(event.name(), "action/a1#2");
    }
}
