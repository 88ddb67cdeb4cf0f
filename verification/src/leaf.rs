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
use serde_json::Value;
use std::io::Write as _;

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
        let mut payload = Vec::new();
        write_canonical(&self.payload, &mut payload);
        let mut metadata = Vec::new();
        write_canonical(&self.metadata, &mut metadata);
        let mut out = Vec::new();
        write_leaf_data(&self.fields(), &payload, &metadata, &mut out);
        out
    }

    fn fields(&self) -> LeafFields<'_> {
        LeafFields {
            tenant: &self.tenant,
            ledger_sequence: self.ledger_sequence,
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            sequence: self.sequence,
            event_type: &self.event_type,
            event_version: &self.event_version,
            recorded_at: &self.recorded_at,
        }
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
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    Hash(*blake3::hash(&out).as_bytes())
}

/// The fields of a leaf besides the payload and metadata, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct LeafFields<'a> {
    pub tenant: &'a str,
    pub ledger_sequence: u64,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub recorded_at: &'a str,
}

/// What sealing or verifying one event computes: its leaf hash and the digests of its payload
/// and metadata, each canonicalized once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventDigest {
    pub leaf_hash: Hash,
    pub payload_hash: Hash,
    pub metadata_hash: Hash,
}

/// Reused buffers for [`digest_event`]: hashing a batch allocates nothing per event.
#[derive(Debug, Default)]
pub struct DigestBuffers {
    payload: Vec<u8>,
    metadata: Vec<u8>,
    leaf: Vec<u8>,
}

/// The leaf hash and content digests of a logged event as the `ledger_sequence`-th leaf of its
/// tenant: the same bytes as [`SealedEvent::from_logged`] then [`SealedEvent::leaf_hash`] and
/// [`content_hash`], without copying the event or canonicalizing anything twice.
pub fn digest_event(
    event: &LoggedEvent,
    ledger_sequence: u64,
    buffers: &mut DigestBuffers,
) -> EventDigest {
    let DigestBuffers {
        payload,
        metadata,
        leaf,
    } = buffers;
    payload.clear();
    metadata.clear();
    leaf.clear();
    write_canonical(&event.payload, payload);
    write_canonical(&event.metadata, metadata);
    let recorded_at = format_time(event.recorded_at);
    write_leaf_data(
        &LeafFields {
            tenant: &event.tenant,
            ledger_sequence,
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            sequence: event.sequence,
            event_type: &event.event_type,
            event_version: &event.event_version,
            recorded_at: &recorded_at,
        },
        payload,
        metadata,
        leaf,
    );
    EventDigest {
        leaf_hash: leaf_hash(leaf),
        payload_hash: Hash(*blake3::hash(payload).as_bytes()),
        metadata_hash: Hash(*blake3::hash(metadata).as_bytes()),
    }
}

/// The digests of `events`, the `i`-th as leaf `sequences[i]` of its tenant, split across the
/// machine's cores (a leaf depends on its event and ledger sequence alone, so any split gives the
/// same hashes; appending them to the trees stays in log order, with the caller).
pub fn digest_events(events: &[LoggedEvent], sequences: &[u64]) -> Vec<EventDigest> {
    let serial = |events: &[LoggedEvent], sequences: &[u64]| {
        let mut buffers = DigestBuffers::default();
        events
            .iter()
            .zip(sequences)
            .map(|(event, sequence)| digest_event(event, *sequence, &mut buffers))
            .collect::<Vec<_>>()
    };
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if threads < 2 || events.len() < 2 * threads {
        return serial(events, sequences);
    }
    let chunk = events.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = events.chunks(chunk).zip(sequences.chunks(chunk));
        let first = parts.next();
        let others: Vec<_> = parts
            .map(|(events, sequences)| scope.spawn(move || serial(events, sequences)))
            .collect();
        let mut digests =
            first.map_or_else(Vec::new, |(events, sequences)| serial(events, sequences));
        for other in others {
            digests.extend(
                other
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        digests
    })
}

/// Writes the leaf data (the canonical JSON object of the module documentation) from its fields
/// and the canonical JSON of the payload and metadata: canonical JSON nests canonical JSON
/// verbatim, and the object's keys are fixed, so they are written in their sorted order.
pub fn write_leaf_data(
    fields: &LeafFields<'_>,
    payload: &[u8],
    metadata: &[u8],
    out: &mut Vec<u8>,
) {
    out.reserve(payload.len() + metadata.len() + 256);
    out.extend_from_slice(b"{\"aggregate_id\":");
    write_string(fields.aggregate_id, out);
    out.extend_from_slice(b",\"aggregate_type\":");
    write_string(fields.aggregate_type, out);
    out.extend_from_slice(b",\"event_type\":");
    write_string(fields.event_type, out);
    out.extend_from_slice(b",\"event_version\":");
    write_string(fields.event_version, out);
    out.extend_from_slice(b",\"format\":");
    write_string(LEAF_FORMAT, out);
    out.extend_from_slice(b",\"ledger_sequence\":");
    write_number(&serde_json::Number::from(fields.ledger_sequence), out);
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(metadata);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload);
    out.extend_from_slice(b",\"recorded_at\":");
    write_string(fields.recorded_at, out);
    out.extend_from_slice(b",\"sequence\":");
    write_number(&serde_json::Number::from(fields.sequence), out);
    out.extend_from_slice(b",\"tenant\":");
    write_string(fields.tenant, out);
    out.push(b'}');
}

/// Appends the RFC 8785 canonical JSON of `value` to `out`: byte for byte what
/// [`canonical_json`] gives (the unit tests hold them together), without its buffer and re-parse
/// per object key, which made it the sealer's largest cost.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => write_number(number, out),
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            // The map iterates in UTF-8 byte order, which is RFC 8785's UTF-16 order unless a
            // key holds a character at or above U+E000 (UTF-8 lead byte 0xEE or more), where
            // the two orders part around the surrogates.
            if map.keys().any(|key| key.bytes().any(|byte| byte >= 0xEE)) {
                let mut entries: Vec<(Vec<u16>, &String, &Value)> = map
                    .iter()
                    .map(|(key, value)| (key.encode_utf16().collect(), key, value))
                    .collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                for (i, (_, key, value)) in entries.into_iter().enumerate() {
                    write_member(i, key, value, out);
                }
            } else {
                for (i, (key, value)) in map.iter().enumerate() {
                    write_member(i, key, value, out);
                }
            }
            out.push(b'}');
        }
    }
}

fn write_member(i: usize, key: &str, value: &Value, out: &mut Vec<u8>) {
    if i > 0 {
        out.push(b',');
    }
    write_string(key, out);
    out.push(b':');
    write_canonical(value, out);
}

/// Integers up to 2^53 are written in decimal, which is what the ECMAScript number
/// serialization of RFC 8785 gives for them; everything else (fractions, larger integers) goes
/// through [`canonical_json`] itself.
fn write_number(number: &serde_json::Number, out: &mut Vec<u8>) {
    const EXACT: u64 = 1 << 53;
    if let Some(n) = number.as_u64().filter(|n| *n <= EXACT) {
        let _ = write!(out, "{n}");
    } else if let Some(n) = number.as_i64().filter(|n| n.unsigned_abs() <= EXACT) {
        let _ = write!(out, "{n}");
    } else {
        out.extend_from_slice(&canonical_json(&Value::Number(number.clone())));
    }
}

/// A JSON string as serde_json (and so the canonicalizer) escapes it: `"` and `\`, the short
/// escapes of `\b \t \n \f \r`, other control characters as `\u00xx` (lower-case hex), and
/// everything else as it is.
fn write_string(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut unicode = *b"\\u0000";
    for (i, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x09 => b"\\t",
            0x0A => b"\\n",
            0x0C => b"\\f",
            0x0D => b"\\r",
            0x00..=0x1F => {
                unicode[4] = HEX[usize::from(byte >> 4)];
                unicode[5] = HEX[usize::from(byte & 0xF)];
                &unicode
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use countersign_ledger::LogCursor;
    use serde_json::{Map, json};

    /// The leaf data as the sealer computed it before the streaming encoder: the fields in a
    /// `json!` object through the general canonicalizer. The oracle for [`write_leaf_data`].
    fn reference_leaf_data(event: &SealedEvent) -> Vec<u8> {
        canonical_json(&json!({
            "format": LEAF_FORMAT,
            "tenant": event.tenant,
            "ledger_sequence": event.ledger_sequence,
            "aggregate_type": event.aggregate_type,
            "aggregate_id": event.aggregate_id,
            "sequence": event.sequence,
            "event_type": event.event_type,
            "event_version": event.event_version,
            "recorded_at": event.recorded_at,
            "payload": event.payload,
            "metadata": event.metadata,
        }))
    }

    /// A small deterministic generator (xorshift), so the comparison covers the same documents
    /// on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn text(&mut self) -> String {
            // Control characters, escapes, ASCII, accents, the characters around the
            // surrogates (where UTF-8 and UTF-16 orders part) and beyond the BMP.
            const CHARS: &[char] = &[
                'a',
                'b',
                'z',
                'A',
                '0',
                '_',
                ' ',
                '"',
                '\\',
                '/',
                '\u{0}',
                '\u{1}',
                '\u{8}',
                '\t',
                '\n',
                '\u{b}',
                '\u{c}',
                '\r',
                '\u{1f}',
                '\u{7f}',
                '\u{80}',
                'é',
                '\u{2028}',
                '\u{d7ff}',
                '\u{e000}',
                '\u{ffff}',
                '\u{10000}',
                '😀',
                '\u{10ffff}',
            ];
            (0..self.below(6))
                .map(|_| CHARS[self.below(CHARS.len() as u64) as usize])
                .collect()
        }

        fn number(&mut self) -> Value {
            match self.below(9) {
                0 => json!(self.below(100)),
                1 => json!(-(self.below(100) as i64)),
                2 => json!(self.next()),
                3 => json!(i64::MIN + self.below(1000) as i64),
                4 => json!((1u64 << 53) + self.below(3) - 1),
                5 => json!(-((1i64 << 53) + self.below(3) as i64 - 1)),
                6 => json!(self.below(100_000) as f64 / 100.0),
                7 => json!(f64::from_bits(self.next() & !(0x7FF << 52)) * 1e300),
                _ => json!(-0.0),
            }
        }

        fn value(&mut self, depth: u32) -> Value {
            let leaf = depth == 0 || self.below(3) == 0;
            match (leaf, self.below(6)) {
                (true, 0) => Value::Null,
                (true, 1) => Value::Bool(self.below(2) == 0),
                (true, 2 | 3) => self.number(),
                (true, _) => Value::String(self.text()),
                (false, 0..=2) => {
                    Value::Array((0..self.below(5)).map(|_| self.value(depth - 1)).collect())
                }
                (false, _) => Value::Object(
                    (0..self.below(6))
                        .map(|_| (self.text(), self.value(depth - 1)))
                        .collect::<Map<_, _>>(),
                ),
            }
        }
    }

    #[test]
    fn the_streaming_encoder_writes_what_the_canonicalizer_writes() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let value = rng.value(4);
            let mut fast = Vec::new();
            write_canonical(&value, &mut fast);
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&canonical_json(&value)),
                "{value:?}"
            );
        }
    }

    fn logged(rng: &mut Rng, n: u64) -> LoggedEvent {
        LoggedEvent {
            cursor: LogCursor {
                txid: 7,
                position: i64::try_from(n).expect("small") + 1,
            },
            tenant: ["acme", "globex", "é\"t"][(n % 3) as usize].to_owned(),
            aggregate_type: "action".to_owned(),
            aggregate_id: format!("action-{}-{}", n / 4, rng.text()),
            sequence: i64::try_from(n % 4 + 1).expect("small"),
            event_type: ["ActionSubmitted", "VoteCast", "ActionApproved"][(n % 3) as usize]
                .to_owned(),
            event_version: "1".to_owned(),
            payload: json!({ "n": n, "body": rng.value(4), "amount": 10.5, "note": rng.text() }),
            metadata: json!({ "tenant": "acme", "actor": rng.text(), "extra": rng.value(2) }),
            recorded_at: DateTime::from_timestamp_micros(
                1_795_000_000_000_000 + i64::try_from(n).expect("small") * 1_234_567,
            )
            .expect("a time"),
        }
    }

    /// Leaves sealed by this code are the leaves sealed before it: a fixed log's leaf hashes,
    /// content digests and Merkle root, computed by the former encoder and pinned here.
    #[test]
    fn a_fixed_log_seals_to_the_same_leaves_and_root_as_before() {
        let mut rng = Rng(42);
        let mut buffers = DigestBuffers::default();
        let mut frontier = crate::tree::Frontier::new();
        for n in 0..500 {
            let event = logged(&mut rng, n);
            let sealed = SealedEvent::from_logged(&event, n);
            let reference = reference_leaf_data(&sealed);
            assert_eq!(sealed.leaf_data(), reference, "leaf {n}");
            let digest = digest_event(&event, n, &mut buffers);
            assert_eq!(digest.leaf_hash, leaf_hash(&reference), "leaf {n}");
            assert_eq!(
                digest.payload_hash,
                Hash(*blake3::hash(&canonical_json(&event.payload)).as_bytes())
            );
            assert_eq!(
                digest.metadata_hash,
                Hash(*blake3::hash(&canonical_json(&event.metadata)).as_bytes())
            );
            assert_eq!(content_hash(&event.payload), digest.payload_hash);
            frontier.push(digest.leaf_hash);
        }
        assert_eq!(frontier.root().to_hex(), FIXED_ROOT);
    }

    /// The root of [`a_fixed_log_seals_to_the_same_leaves_and_root_as_before`]'s 500 events, as
    /// the sealer computed it with `canonical_json(&json!({…}))` (commit bf655a2).
    const FIXED_ROOT: &str = "053b2c73e1b90cb90ff42844443eeafc107ebd1519d53c9a29d2694a72a6adaf";

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
