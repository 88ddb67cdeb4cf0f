//! The criteria language: which submissions a policy governs.
//!
//! A criteria document is a JSON object whose keys are fields of the submission (`module`,
//! `capability`, `action_type`, `source`, `requested_by`, `risk.score`, `risk.level`,
//! `connectors`, `flags`, `impact`, `scope`, `payload` and `payload.<dotted.path>`) or the
//! combinators `$and`, `$or` (arrays of documents) and `$not` (a document). All keys of a document
//! must hold. A field's value is either a bare JSON value (equality; on a list field, membership)
//! or an object of operators that must all hold: `$eq $ne $gt $gte $lt $lte $in $nin $exists
//! $contains $regex $not`.
//!
//! Semantics worth knowing: numbers compare numerically (`1 == 1.0`); ordering operators compare
//! numbers with numbers and strings with strings, and `risk.level` in its natural order
//! (low < medium < high); a missing field fails every test except `$ne`, `$nin`, `$exists: false`
//! and `$not`; `$contains` is a substring test on strings and a membership test on lists;
//! `$regex` uses the linear-time `regex` crate. A document is parsed once, when the policy is
//! saved; every error names the offending path.

use std::cmp::Ordering;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::ParseError;
use crate::risk::RiskLevel;

const MAX_DEPTH: usize = 16;
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
const FIELDS: &[&str] = &[
    "module",
    "capability",
    "action_type",
    "source",
    "requested_by",
    "risk.score",
    "risk.level",
    "connectors",
    "flags",
    "impact",
    "scope",
    "payload",
];

/// A parsed criteria document; keeps the document it came from for display and storage.
#[derive(Clone)]
pub struct Criteria {
    document: Value,
    root: Node,
}

#[derive(Clone, Debug)]
enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    Field(FieldPath, Vec<Test>),
}

#[derive(Clone, Debug)]
struct FieldPath {
    segments: Vec<String>,
    is_risk_level: bool,
}

#[derive(Clone, Debug)]
enum Test {
    Eq(Value),
    Ne(Value),
    Compare(Ordering, bool, Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Exists(bool),
    Contains(Value),
    Regex(regex::Regex),
    Not(Vec<Test>),
}

impl Criteria {
    /// Criteria that match every submission (`{}`).
    pub fn always() -> Self {
        Self {
            document: Value::Object(serde_json::Map::new()),
            root: Node::All(Vec::new()),
        }
    }

    /// Parses a criteria document; errors name the path under `criteria`.
    pub fn parse(document: &Value) -> Result<Self, ParseError> {
        let root = parse_document(document, "criteria", 0)?;
        Ok(Self {
            document: document.clone(),
            root,
        })
    }

    pub fn document(&self) -> &Value {
        &self.document
    }

    /// Whether a submission's facts (see [`crate::submission::Submission::facts`]) match.
    pub fn matches(&self, facts: &Value) -> bool {
        self.root.matches(facts)
    }
}

impl PartialEq for Criteria {
    fn eq(&self, other: &Self) -> bool {
        self.document == other.document
    }
}

impl fmt::Debug for Criteria {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Criteria({})", self.document)
    }
}

impl Serialize for Criteria {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.document.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Criteria {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let document = Value::deserialize(deserializer)?;
        Self::parse(&document).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Criteria {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Criteria".into()
    }

    /// The language as a schema: which keys a document may have, what each operator takes.
    /// What it cannot say is in the description (nesting depth; `$regex` compiling with the
    /// `regex` crate).
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        use crate::document::Document;
        let criteria = generator.subschema_for::<Self>();
        // A field's test: a value compared for equality (an object only without `$` keys), or
        // an object of operators.
        let test = json_schema!({
            "anyOf": [
                {
                    "type": ["null", "boolean", "number", "string", "array"],
                    "allOf": [generator.subschema_for::<Document>()],
                },
                {
                    "type": "object",
                    "propertyNames": { "pattern": r"^(?:[^$\u0000][^\u0000]*)?$" },
                    "additionalProperties": generator.subschema_for::<Document>(),
                },
                generator.subschema_for::<Operators>(),
            ],
        });
        let fields = FIELDS
            .iter()
            .map(|field| regex::escape(field))
            .collect::<Vec<_>>()
            .join("|");
        // `payload.<path>`: segments are not empty (and, as every key, carry no U+0000).
        let field_pattern = format!(r"^(?:{fields}|payload(?:\.[^.\u0000]+)+)$");
        let mut schema = json_schema!({
            "type": "object",
            "description": "A criteria document: fields of the submission mapped to values or \
                operator objects ($eq $ne $gt $gte $lt $lte $in $nin $exists $contains $regex \
                $not), combined with $and, $or and $not; at most 16 levels deep, `$regex` in the \
                Rust `regex` crate's syntax. See docs/approvals.md.",
            "properties": {
                "$and": { "type": "array", "minItems": 1, "items": criteria.clone() },
                "$or": { "type": "array", "minItems": 1, "items": criteria.clone() },
                "$not": criteria,
            },
            "additionalProperties": false,
        });
        schema.insert(
            "patternProperties".into(),
            serde_json::json!({ field_pattern: test }),
        );
        schema
    }
}

/// The schema of a field's operator object (`{"$gte": 5, "$lt": 10}`); `$not` takes one again.
struct Operators;

impl JsonSchema for Operators {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CriteriaOperators".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        use crate::document::{Document, NO_NUL};
        let document = generator.subschema_for::<Document>();
        // Numbers and strings, as in documents (see `Document`).
        let comparable = json_schema!({
            "anyOf": [{ "type": "string", "pattern": NO_NUL }, { "type": "number" }],
        });
        let list = json_schema!({ "type": "array", "items": document.clone() });
        json_schema!({
            "description": "Operators that must all hold of the field.",
            "type": "object",
            "minProperties": 1,
            "properties": {
                "$eq": document.clone(),
                "$ne": document,
                "$gt": comparable.clone(),
                "$gte": comparable.clone(),
                "$lt": comparable.clone(),
                "$lte": comparable,
                "$in": list.clone(),
                "$nin": list,
                "$exists": { "type": "boolean" },
                "$contains": {
                    "anyOf": [
                        { "type": ["null", "boolean", "number"] },
                        { "type": "string", "pattern": NO_NUL },
                    ],
                },
                // Any string here is not yet a pattern: it must compile with the `regex` crate,
                // which no schema can say (and `format: regex` means ECMA-262's syntax).
                "$regex": { "type": "string", "pattern": NO_NUL },
                "$not": generator.subschema_for::<Self>(),
            },
            "additionalProperties": false,
        })
    }
}

fn parse_document(value: &Value, path: &str, depth: usize) -> Result<Node, ParseError> {
    if depth > MAX_DEPTH {
        return Err(ParseError::new(
            path,
            format!("nests deeper than {MAX_DEPTH} levels"),
        ));
    }
    let Value::Object(map) = value else {
        return Err(ParseError::new(path, "must be an object"));
    };
    let mut nodes = Vec::with_capacity(map.len());
    for (key, value) in map {
        let here = format!("{path}.{key}");
        let node = match key.as_str() {
            "$and" | "$or" => {
                let Value::Array(items) = value else {
                    return Err(ParseError::new(here, "must be an array of criteria"));
                };
                if items.is_empty() {
                    return Err(ParseError::new(here, "must not be empty"));
                }
                let children = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| parse_document(item, &format!("{here}[{i}]"), depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                if key == "$and" {
                    Node::All(children)
                } else {
                    Node::Any(children)
                }
            }
            "$not" => Node::Not(Box::new(parse_document(value, &here, depth + 1)?)),
            operator if operator.starts_with('$') => {
                return Err(ParseError::new(
                    here,
                    "is not a combinator (use $and, $or or $not, or name a field)",
                ));
            }
            field => Node::Field(
                parse_field(field, &here)?,
                parse_tests(value, &here, depth)?,
            ),
        };
        nodes.push(node);
    }
    Ok(if nodes.len() == 1 {
        nodes.remove(0)
    } else {
        Node::All(nodes)
    })
}

fn parse_field(field: &str, path: &str) -> Result<FieldPath, ParseError> {
    let known = FIELDS.contains(&field);
    let payload_path = field.strip_prefix("payload.");
    if !known && payload_path.is_none() {
        return Err(ParseError::new(
            path,
            format!(
                "unknown field `{field}` (expected one of {}, or payload.<path>)",
                FIELDS.join(", ")
            ),
        ));
    }
    if payload_path.is_some_and(|rest| rest.split('.').any(str::is_empty)) {
        return Err(ParseError::new(path, "has an empty path segment"));
    }
    Ok(FieldPath {
        segments: field.split('.').map(str::to_owned).collect(),
        is_risk_level: field == "risk.level",
    })
}

fn parse_tests(value: &Value, path: &str, depth: usize) -> Result<Vec<Test>, ParseError> {
    let Value::Object(map) = value else {
        return Ok(vec![Test::Eq(value.clone())]);
    };
    let operators = map.keys().filter(|key| key.starts_with('$')).count();
    if operators == 0 {
        return Ok(vec![Test::Eq(value.clone())]);
    }
    if operators != map.len() {
        return Err(ParseError::new(
            path,
            "mixes operators and plain keys; use {\"$eq\": {...}} to compare with an object",
        ));
    }
    map.iter()
        .map(|(operator, operand)| {
            parse_operator(operator, operand, &format!("{path}.{operator}"), depth)
        })
        .collect()
}

fn parse_operator(
    operator: &str,
    operand: &Value,
    path: &str,
    depth: usize,
) -> Result<Test, ParseError> {
    let comparable = || match operand {
        Value::Number(_) | Value::String(_) => Ok(operand.clone()),
        _ => Err(ParseError::new(path, "must be a number or a string")),
    };
    let list = || match operand {
        Value::Array(items) => Ok(items.clone()),
        _ => Err(ParseError::new(path, "must be an array")),
    };
    Ok(match operator {
        "$eq" => Test::Eq(operand.clone()),
        "$ne" => Test::Ne(operand.clone()),
        "$gt" => Test::Compare(Ordering::Greater, false, comparable()?),
        "$gte" => Test::Compare(Ordering::Greater, true, comparable()?),
        "$lt" => Test::Compare(Ordering::Less, false, comparable()?),
        "$lte" => Test::Compare(Ordering::Less, true, comparable()?),
        "$in" => Test::In(list()?),
        "$nin" => Test::Nin(list()?),
        "$exists" => match operand {
            Value::Bool(present) => Test::Exists(*present),
            _ => return Err(ParseError::new(path, "must be true or false")),
        },
        "$contains" => match operand {
            Value::Array(_) | Value::Object(_) => {
                return Err(ParseError::new(path, "must be a string, number or boolean"));
            }
            _ => Test::Contains(operand.clone()),
        },
        "$regex" => {
            let Value::String(pattern) = operand else {
                return Err(ParseError::new(path, "must be a string"));
            };
            let regex = regex::RegexBuilder::new(pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|err| ParseError::new(path, format!("is not a valid regex: {err}")))?;
            Test::Regex(regex)
        }
        "$not" => {
            if depth + 1 > MAX_DEPTH {
                return Err(ParseError::new(
                    path,
                    format!("nests deeper than {MAX_DEPTH} levels"),
                ));
            }
            match operand {
                Value::Object(map) if !map.is_empty() && map.keys().all(|k| k.starts_with('$')) => {
                    Test::Not(parse_tests(operand, path, depth + 1)?)
                }
                _ => return Err(ParseError::new(path, "must be an object of operators")),
            }
        }
        _ => {
            return Err(ParseError::new(
                path,
                "is not an operator (expected $eq $ne $gt $gte $lt $lte $in $nin $exists \
                 $contains $regex or $not)",
            ));
        }
    })
}

impl Node {
    fn matches(&self, facts: &Value) -> bool {
        match self {
            Self::All(nodes) => nodes.iter().all(|node| node.matches(facts)),
            Self::Any(nodes) => nodes.iter().any(|node| node.matches(facts)),
            Self::Not(node) => !node.matches(facts),
            Self::Field(path, tests) => {
                let value = lookup(facts, &path.segments);
                tests
                    .iter()
                    .all(|test| test.holds(value, path.is_risk_level))
            }
        }
    }
}

fn lookup<'a>(facts: &'a Value, segments: &[String]) -> Option<&'a Value> {
    segments
        .iter()
        .try_fold(facts, |value, segment| match value {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
}

impl Test {
    fn holds(&self, value: Option<&Value>, is_risk_level: bool) -> bool {
        match self {
            Self::Eq(expected) => value.is_some_and(|value| equals_or_contains(value, expected)),
            Self::Ne(expected) => !value.is_some_and(|value| equals_or_contains(value, expected)),
            Self::In(options) => value.is_some_and(|value| {
                options
                    .iter()
                    .any(|option| equals_or_contains(value, option))
            }),
            Self::Nin(options) => !value.is_some_and(|value| {
                options
                    .iter()
                    .any(|option| equals_or_contains(value, option))
            }),
            Self::Exists(present) => value.is_some() == *present,
            Self::Compare(direction, or_equal, bound) => value.is_some_and(|value| {
                compare(value, bound, is_risk_level).is_some_and(|ordering| {
                    ordering == *direction || (*or_equal && ordering.is_eq())
                })
            }),
            Self::Contains(needle) => match (value, needle) {
                (Some(Value::String(haystack)), Value::String(needle)) => {
                    haystack.contains(needle.as_str())
                }
                (Some(Value::Array(items)), needle) => {
                    items.iter().any(|item| json_equal(item, needle))
                }
                _ => false,
            },
            Self::Regex(regex) => match value {
                Some(Value::String(text)) => regex.is_match(text),
                Some(Value::Array(items)) => items
                    .iter()
                    .any(|item| item.as_str().is_some_and(|text| regex.is_match(text))),
                _ => false,
            },
            Self::Not(tests) => !tests.iter().all(|test| test.holds(value, is_risk_level)),
        }
    }
}

/// Equality, where a list field equals a scalar it contains.
fn equals_or_contains(value: &Value, expected: &Value) -> bool {
    json_equal(value, expected)
        || matches!((value, expected), (Value::Array(items), scalar) if !scalar.is_array()
            && items.iter().any(|item| json_equal(item, scalar)))
}

/// JSON equality with numbers compared by value.
fn json_equal(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(a), Value::Number(b)) => compare_numbers(a, b) == Some(Ordering::Equal),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, x)| b.get(key).is_some_and(|y| json_equal(x, y)))
        }
        _ => left == right,
    }
}

fn compare(value: &Value, bound: &Value, is_risk_level: bool) -> Option<Ordering> {
    match (value, bound) {
        (Value::Number(a), Value::Number(b)) => compare_numbers(a, b),
        (Value::String(a), Value::String(b)) if is_risk_level => {
            Some(RiskLevel::parse(a)?.cmp(&RiskLevel::parse(b)?))
        }
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

fn compare_numbers(a: &serde_json::Number, b: &serde_json::Number) -> Option<Ordering> {
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        return Some(a.cmp(&b));
    }
    if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
        return Some(a.cmp(&b));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts() -> Value {
        json!({
            "module": "payouts",
            "capability": "pause",
            "action_type": "payouts.pause",
            "source": "automated-agent",
            "requested_by": "ops-bot",
            "risk": { "score": 45, "level": "medium" },
            "connectors": ["stripe", "wave"],
            "flags": ["financial"],
            "impact": "pauses one merchant's payouts",
            "scope": "one merchant",
            "payload": { "amount": 1_000_000, "currency": "XOF", "merchant": { "id": "m-42", "tier": 2 } },
        })
    }

    fn matches(document: Value) -> bool {
        Criteria::parse(&document)
            .expect("valid criteria")
            .matches(&facts())
    }

    fn error(document: Value) -> ParseError {
        Criteria::parse(&document).expect_err("invalid criteria")
    }

    #[test]
    fn an_empty_document_matches_everything() {
        assert!(matches(json!({})));
        assert!(Criteria::always().matches(&facts()));
    }

    #[test]
    fn bare_values_mean_equality_and_list_membership() {
        assert!(matches(json!({ "action_type": "payouts.pause" })));
        assert!(!matches(json!({ "action_type": "payouts.resume" })));
        assert!(matches(json!({ "connectors": "stripe" })));
        assert!(matches(json!({ "connectors": ["stripe", "wave"] })));
        assert!(!matches(json!({ "connectors": ["stripe"] })));
        assert!(matches(json!({ "payload.amount": 1_000_000.0 })));
        assert!(matches(
            json!({ "payload.merchant": { "tier": 2.0, "id": "m-42" } })
        ));
    }

    #[test]
    fn comparison_operators_compare_numbers_strings_and_risk_levels() {
        assert!(matches(json!({ "payload.amount": { "$gte": 1_000_000 } })));
        assert!(!matches(json!({ "payload.amount": { "$gt": 1_000_000 } })));
        assert!(matches(json!({ "risk.score": { "$gt": 33, "$lte": 66 } })));
        assert!(matches(json!({ "risk.level": { "$gte": "medium" } })));
        assert!(!matches(json!({ "risk.level": { "$gte": "high" } })));
        assert!(matches(json!({ "payload.currency": { "$lt": "YEN" } })));
        assert!(!matches(json!({ "payload.currency": { "$lt": 5 } })));
    }

    #[test]
    fn set_and_existence_operators() {
        assert!(matches(
            json!({ "module": { "$in": ["payouts", "billing"] } })
        ));
        assert!(!matches(json!({ "module": { "$nin": ["payouts"] } })));
        assert!(matches(json!({ "flags": { "$in": ["pii", "financial"] } })));
        assert!(matches(
            json!({ "payload.merchant.id": { "$exists": true } })
        ));
        assert!(matches(json!({ "payload.reason": { "$exists": false } })));
        assert!(matches(json!({ "payload.reason": { "$ne": "fraud" } })));
        assert!(matches(json!({ "payload.reason": { "$nin": ["fraud"] } })));
        assert!(!matches(json!({ "payload.reason": "fraud" })));
        assert!(!matches(json!({ "payload.reason": { "$gt": 1 } })));
    }

    #[test]
    fn contains_and_regex_work_on_text_and_lists() {
        assert!(matches(
            json!({ "impact": { "$contains": "one merchant" } })
        ));
        assert!(matches(json!({ "connectors": { "$contains": "wave" } })));
        assert!(!matches(json!({ "connectors": { "$contains": "gmail" } })));
        assert!(matches(json!({ "source": { "$regex": "^automated" } })));
        assert!(matches(json!({ "flags": { "$regex": "(?i)FINANCIAL" } })));
        assert!(!matches(json!({ "source": { "$regex": "^board$" } })));
    }

    #[test]
    fn combinators_nest() {
        assert!(matches(json!({
            "$or": [{ "module": "billing" }, { "module": "payouts", "risk.score": { "$gte": 40 } }]
        })));
        assert!(!matches(
            json!({ "$and": [{ "module": "payouts" }, { "source": "board" }] })
        ));
        assert!(matches(json!({ "$not": { "source": "board" } })));
        assert!(matches(json!({ "risk.score": { "$not": { "$gt": 50 } } })));
        assert!(!matches(json!({ "risk.score": { "$not": { "$gt": 40 } } })));
        assert!(matches(
            json!({ "payload.merchant.tier": { "$in": [1, 2] }, "flags": "financial" })
        ));
    }

    #[test]
    fn array_indexes_reach_into_payload_lists() {
        let criteria = Criteria::parse(&json!({ "payload.items.1.sku": "B" })).expect("valid");
        assert!(
            criteria.matches(&json!({ "payload": { "items": [{ "sku": "A" }, { "sku": "B" }] } }))
        );
        assert!(!criteria.matches(&json!({ "payload": { "items": [{ "sku": "B" }] } })));
    }

    #[test]
    fn invalid_documents_are_refused_naming_the_offending_path() {
        let cases = [
            (json!([]), "criteria", "must be an object"),
            (
                json!({ "modul": "x" }),
                "criteria.modul",
                "unknown field `modul`",
            ),
            (
                json!({ "payload..a": 1 }),
                "criteria.payload..a",
                "empty path segment",
            ),
            (
                json!({ "risk.score": { "$gte": [1] } }),
                "criteria.risk.score.$gte",
                "number or a string",
            ),
            (
                json!({ "module": { "$in": "billing" } }),
                "criteria.module.$in",
                "must be an array",
            ),
            (
                json!({ "module": { "$exists": 1 } }),
                "criteria.module.$exists",
                "true or false",
            ),
            (
                json!({ "source": { "$regex": "(" } }),
                "criteria.source.$regex",
                "not a valid regex",
            ),
            (
                json!({ "module": { "$like": "b%" } }),
                "criteria.module.$like",
                "is not an operator",
            ),
            (
                json!({ "module": { "$eq": "a", "x": 1 } }),
                "criteria.module",
                "mixes operators",
            ),
            (
                json!({ "$xor": [] }),
                "criteria.$xor",
                "is not a combinator",
            ),
            (json!({ "$or": [] }), "criteria.$or", "must not be empty"),
            (
                json!({ "$or": [{ "module": "a" }, { "risk.lvl": "high" }] }),
                "criteria.$or[1].risk.lvl",
                "unknown field",
            ),
            (
                json!({ "$and": [{ "$not": { "flags": { "$contains": ["pii"] } } }] }),
                "criteria.$and[0].$not.flags.$contains",
                "string, number or boolean",
            ),
        ];
        for (document, path, message) in cases {
            let err = error(document.clone());
            assert_eq!(err.field, path, "{document}");
            assert!(err.message.contains(message), "{document}: {}", err.message);
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let mut document = json!({ "module": "x" });
        for _ in 0..=MAX_DEPTH {
            document = json!({ "$not": document });
        }
        assert!(error(document).message.contains("deeper"));
    }

    #[test]
    fn criteria_round_trip_through_serde_as_their_document() {
        let document = json!({ "risk.score": { "$gte": 67 } });
        let criteria: Criteria = serde_json::from_value(document.clone()).expect("valid");
        assert_eq!(
            serde_json::to_value(&criteria).expect("serializes"),
            document
        );
        assert!(serde_json::from_value::<Criteria>(json!({ "nope": 1 })).is_err());
    }
}
