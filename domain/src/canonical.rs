//! Canonical JSON (RFC 8785: keys sorted, no insignificant whitespace, numbers in their shortest
//! ECMAScript form) and the hashes built on it.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ActionType;

/// The RFC 8785 canonical form of a JSON value.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail: its maps have string keys and its numbers are finite.
    serde_json_canonicalizer::to_vec(value).unwrap_or_else(|_| value.to_string().into_bytes())
}

/// What makes an execution unique: blake3 of the capability and the canonical payload. An action
/// runs at most once per key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ExecutionKey(#[schemars(regex(pattern = "^[0-9a-f]{64}$"))] String);

impl ExecutionKey {
    pub fn compute(action_type: &ActionType, payload: &Value) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(action_type.as_str().as_bytes());
        hasher.update(&[0]);
        hasher.update(&canonical_json(payload));
        Self(hasher.finalize().to_hex().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExecutionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for ExecutionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExecutionKey({})", &self.0)
    }
}

/// blake3 of a value's canonical JSON, as hex: equal for equal content however it was written.
pub fn digest(value: &Value) -> String {
    blake3::hash(&canonical_json(value)).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_drops_whitespace_and_normalises_numbers() {
        let value: Value = serde_json::from_str(
            r#"{ "b": [1.0, 2.50, 1e3], "a": { "z": true, "y": null }, "c": "é" }"#,
        )
        .expect("json");
        assert_eq!(
            String::from_utf8(canonical_json(&value)).expect("utf-8"),
            r#"{"a":{"y":null,"z":true},"b":[1,2.5,1000],"c":"é"}"#
        );
    }

    #[test]
    fn execution_keys_ignore_formatting_but_not_content() {
        let refund = ActionType::parse("billing.refund").expect("valid");
        let a = ExecutionKey::compute(&refund, &json!({ "order": 1042, "amount": 10.0 }));
        let b = ExecutionKey::compute(
            &refund,
            &serde_json::from_str(r#"{"amount":10,  "order":1042}"#).expect("json"),
        );
        assert_eq!(a, b);
        assert_eq!(a.as_str().len(), 64);
        assert_ne!(
            a,
            ExecutionKey::compute(&refund, &json!({ "order": 1043, "amount": 10 }))
        );
        let charge = ActionType::parse("billing.charge").expect("valid");
        assert_ne!(
            a,
            ExecutionKey::compute(&charge, &json!({ "order": 1042, "amount": 10 }))
        );
    }

    #[test]
    fn execution_key_is_blake3_of_capability_separator_and_canonical_payload() {
        let refund = ActionType::parse("billing.refund").expect("valid");
        let expected = blake3::hash(b"billing.refund\0{\"amount\":10,\"order\":1042}");
        assert_eq!(
            ExecutionKey::compute(&refund, &json!({ "order": 1042, "amount": 10 })).as_str(),
            expected.to_hex().as_str()
        );
    }
}
