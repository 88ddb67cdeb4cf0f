//! Where serde reads a JSON body differently from the body's schema (the OpenAPI document's),
//! settled by walking the parsed body alongside that schema:
//!
//! - JSON Schema counts `2.0` as an integer; serde refuses it where a count or a priority is
//!   expected. [`whole_numbers`] rewrites such numbers as integers exactly where the schema admits
//!   only an integer, leaving free-form documents (payloads, criteria) as they were written.
//! - serde reads a struct from an array of its fields in order (`[]` for `{}`); the schema admits
//!   only an object. [`array_for_object`] finds such an array, so that it is refused.

use serde_json::{Number, Value};

/// The largest magnitude at which every integer is a double, so `2.0`-style spellings above it
/// are not whole numbers anyone wrote on purpose.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// How deep a schema is followed through references (the body's own nesting is bounded by the
/// parser).
const MAX_DEPTH: usize = 64;

/// Rewrites, in `value`, every number with a zero fraction that `schema` (a root schema with
/// `$defs`) admits only as an integer. Returns whether anything changed.
pub fn whole_numbers(value: &mut Value, schema: &Value) -> bool {
    rewrite(value, &root_branches(schema), schema, 0)
}

/// The path (`votes[0]`, `requirements.stages[1]`; empty for the body itself) of the first
/// array in `value` where `schema` admits only an object.
pub fn array_for_object(value: &Value, schema: &Value) -> Option<String> {
    find_array(value, &root_branches(schema), schema, String::new(), 0)
}

fn root_branches(schema: &Value) -> Vec<&Value> {
    let mut branches = Vec::new();
    flatten(schema, schema, &mut branches, 0);
    branches
}

/// `schema` and what it refers to or combines (`$ref`, `allOf`, `anyOf`, `oneOf`), as a flat
/// list of alternatives and constraints.
fn flatten<'a>(schema: &'a Value, root: &'a Value, out: &mut Vec<&'a Value>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    out.push(schema);
    let Value::Object(object) = schema else {
        return;
    };
    if let Some(target) = object
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|reference| reference.strip_prefix('#'))
        .and_then(|pointer| root.pointer(pointer))
    {
        flatten(target, root, out, depth + 1);
    }
    for keyword in ["allOf", "anyOf", "oneOf"] {
        for part in object
            .get(keyword)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            flatten(part, root, out, depth + 1);
        }
    }
}

/// The alternatives for the items of an array under `branches`.
fn item_branches<'a>(branches: &[&'a Value], root: &'a Value) -> Vec<&'a Value> {
    let mut inner = Vec::new();
    for branch in branches {
        if let Some(schema) = branch.get("items") {
            flatten(schema, root, &mut inner, 0);
        }
    }
    inner
}

/// The alternatives for the member `key` of an object under `branches`.
fn member_branches<'a>(branches: &[&'a Value], key: &str, root: &'a Value) -> Vec<&'a Value> {
    let mut inner = Vec::new();
    for branch in branches {
        let schema = branch
            .get("properties")
            .and_then(|properties| properties.get(key))
            .or_else(|| branch.get("additionalProperties"));
        if let Some(schema) = schema {
            flatten(schema, root, &mut inner, 0);
        }
    }
    inner
}

/// The JSON types a schema names (`type`), if it names any.
fn types(schema: &Value) -> Option<Vec<&str>> {
    match schema.get("type")? {
        Value::String(name) => Some(vec![name.as_str()]),
        Value::Array(names) => Some(names.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

/// Whether a schema says nothing about its value's kind (`true`, or only annotations): a
/// free-form document.
fn is_any(schema: &Value) -> bool {
    match schema {
        Value::Bool(admits) => *admits,
        Value::Object(object) => ![
            "type",
            "$ref",
            "allOf",
            "anyOf",
            "oneOf",
            "enum",
            "const",
            "properties",
            "items",
        ]
        .iter()
        .any(|keyword| object.contains_key(*keyword)),
        _ => false,
    }
}

/// Whether the alternatives admit a value of JSON type `wanted`, and none of the types in
/// `excluded` (nor anything at all).
fn only(branches: &[&Value], wanted: &str, excluded: &[&str]) -> bool {
    let mut admitted = false;
    for branch in branches {
        if is_any(branch) {
            return false;
        }
        if let Some(names) = types(branch) {
            if names.iter().any(|name| excluded.contains(name)) {
                return false;
            }
            admitted |= names.contains(&wanted);
        }
    }
    admitted
}

fn rewrite(value: &mut Value, branches: &[&Value], root: &Value, depth: usize) -> bool {
    if depth > MAX_DEPTH || branches.is_empty() {
        return false;
    }
    match value {
        Value::Number(number) => {
            let Some(float) = number.as_f64().filter(|_| number.is_f64()) else {
                return false;
            };
            if float.fract() != 0.0
                || float.abs() > EXACT
                || !only(branches, "integer", &["number"])
            {
                return false;
            }
            // In range and whole: the conversion is exact.
            #[expect(clippy::cast_possible_truncation, reason = "whole and within 2^53")]
            let integer = float as i64;
            *number = Number::from(integer);
            true
        }
        Value::Array(items) => {
            let inner = item_branches(branches, root);
            let mut changed = false;
            for item in items {
                changed |= rewrite(item, &inner, root, depth + 1);
            }
            changed
        }
        Value::Object(map) => {
            let mut changed = false;
            for (key, item) in map.iter_mut() {
                let inner = member_branches(branches, key, root);
                changed |= rewrite(item, &inner, root, depth + 1);
            }
            changed
        }
        _ => false,
    }
}

fn find_array(
    value: &Value,
    branches: &[&Value],
    root: &Value,
    path: String,
    depth: usize,
) -> Option<String> {
    if depth > MAX_DEPTH || branches.is_empty() {
        return None;
    }
    match value {
        Value::Array(_) if only(branches, "object", &["array"]) => Some(path),
        Value::Array(items) => {
            let inner = item_branches(branches, root);
            items.iter().enumerate().find_map(|(index, item)| {
                find_array(item, &inner, root, format!("{path}[{index}]"), depth + 1)
            })
        }
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let inner = member_branches(branches, key, root);
            let here = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            find_array(item, &inner, root, here, depth + 1)
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "count": { "type": "integer", "minimum": 1 },
                "maybe": { "type": ["integer", "null"] },
                "ratio": { "type": "number" },
                "payload": { "description": "anything" },
                "rules": { "type": "array", "items": { "$ref": "#/$defs/Rule" } },
            },
            "$defs": {
                "Rule": {
                    "oneOf": [
                        { "type": "object", "properties": { "n": { "type": "integer" } } },
                        { "type": "object", "properties": { "share": { "type": "number" } } },
                    ]
                }
            }
        })
    }

    #[test]
    fn whole_floats_become_integers_only_where_the_schema_wants_an_integer() {
        let mut body = json!({
            "count": 2.0,
            "maybe": 3.0,
            "ratio": 1.0,
            "payload": { "amount": 5.0 },
            "rules": [{ "n": 4.0 }, { "share": 1.0 }],
        });
        assert!(whole_numbers(&mut body, &schema()));
        assert_eq!(
            body.to_string(),
            json!({
                "count": 2,
                "maybe": 3,
                "ratio": 1.0,
                "payload": { "amount": 5.0 },
                "rules": [{ "n": 4 }, { "share": 1.0 }],
            })
            .to_string()
        );
    }

    #[test]
    fn fractions_and_huge_floats_are_left_for_serde_to_refuse() {
        for written in [
            json!({ "count": 2.5 }),
            json!({ "count": 1e300 }),
            json!({ "count": 2 }),
        ] {
            let mut body = written.clone();
            assert!(!whole_numbers(&mut body, &schema()), "{written}");
            assert_eq!(body, written);
        }
    }

    #[test]
    fn an_array_where_only_an_object_goes_is_found_by_its_path() {
        let schema = schema();
        assert_eq!(array_for_object(&json!([]), &schema).as_deref(), Some(""));
        assert_eq!(
            array_for_object(&json!({ "rules": [{ "n": 1 }, [2]] }), &schema).as_deref(),
            Some("rules[1]")
        );
        // Documents may hold arrays anywhere, and lists are arrays.
        let fine = json!({ "payload": [[1], { "a": [] }], "rules": [] });
        assert_eq!(array_for_object(&fine, &schema), None);
    }
}
