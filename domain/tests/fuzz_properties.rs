//! Fuzz-style properties of the two parsers every policy and every execution goes through
//! (issue 18): the criteria language takes any JSON document without panicking — it either
//! parses (and then evaluates any facts without panicking) or names what is wrong — and the
//! canonical JSON of any document parses back to the same document and is its own canonical form.

use countersign_domain::canonical::canonical_json;
use countersign_domain::criteria::Criteria;
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// Keys that reach every branch of the criteria parser, beside arbitrary ones.
const KEYS: &[&str] = &[
    "$and",
    "$or",
    "$not",
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$exists",
    "$contains",
    "$regex",
    "$bogus",
    "risk.score",
    "risk.level",
    "module",
    "capability",
    "flags",
    "payload.amount",
    "payload.a.b",
    "payload.",
    "payload..x",
    "summary",
    "",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter_map("finite", Number::from_f64)
            .prop_map(Value::Number),
        any::<String>().prop_map(Value::String),
        // Regular expressions, valid and not, huge repetitions included.
        prop::sample::select(vec![
            "^a+$",
            "(",
            "a{1000000}",
            "[z-a]",
            "\\",
            ".*",
            "(?i)x"
        ])
        .prop_map(|pattern| Value::String(pattern.to_owned())),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

fn document() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(24, 256, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn criteria_take_any_document_without_panicking(document in document(), facts in document()) {
        match Criteria::parse(&document) {
            Ok(criteria) => {
                // Parsed criteria evaluate any facts, and keep the document they came from.
                let _ = criteria.matches(&facts);
                prop_assert_eq!(criteria.document(), &document);
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }

    #[test]
    fn canonical_json_parses_back_to_the_same_document(document in document()) {
        let canonical = canonical_json(&document);
        let parsed: Value = serde_json::from_slice(&canonical).expect("canonical JSON parses");
        // Numbers are compared by value: the canonical form writes them the ECMAScript way.
        prop_assert!(same(&parsed, &document), "{} vs {}", parsed, document);
        prop_assert_eq!(canonical_json(&parsed), canonical);
    }
}

/// Equal documents, numbers compared as RFC 8785 writes them: as IEEE doubles. Integers beyond
/// ±2^53 therefore compare (and hash) equal to their nearest double — the canonical form, and so
/// the execution key, cannot tell 9007199254740993 from 9007199254740992 (docs/capabilities.md).
fn same(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, x)| b.get(key).is_some_and(|y| same(x, y)))
        }
        _ => left == right,
    }
}
