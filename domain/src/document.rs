//! What a user-supplied JSON document may be, stated once for every writer and every reader.
//!
//! A document that one reader of the log cannot decode stops that reader for every tenant, so
//! every limit here is a limit of some reader: serde_json refuses to nest deeper than 128 levels
//! (an event wraps its documents in a few more), PostgreSQL's `jsonb` refuses `\u0000`, and a
//! number that does not survive a parse and a print is not what the approver was shown.
//!
//! Two checks, applied where they can see what they check:
//!
//! - [`scan`] reads the raw bytes a front door received (an HTTP body, a NATS message): no key
//!   twice in one object, no `\u0000`, and every number exactly representable (an integer that
//!   fits in 64 bits, or a decimal that reads back as written from an IEEE-754 double). A parsed
//!   `Value` can no longer show a duplicate key or a rounded number, so this runs on the bytes.
//! - [`check`] reads a parsed document (a payload, an undo payload, a criteria document, a
//!   capability's result): at most [`MAX_DEPTH`] levels of arrays and objects, no `\u0000` in a
//!   key or a string, at most [`MAX_BYTES`] bytes as stored. Commands run it before they decide,
//!   so whatever the front door, nothing beyond these limits reaches the log.
//!
//! Stored events are decoded without these checks: a limit added later must never make history
//! unreadable.

use std::borrow::Cow;
use std::io;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::Value;

use crate::ParseError;

/// The deepest a document may nest arrays and objects (`[[1]]` is 2 levels deep).
pub const MAX_DEPTH: usize = 32;

/// The largest a document may be, as stored (compact JSON).
pub const MAX_BYTES: usize = 128 * 1024;

/// The schema of a document (`#[schemars(with = "Document")]` on a `Value`): any JSON value,
/// with what a schema can say of the limits here (no U+0000 in a string or a key) and the rest
/// in its description. The 64-bit bound of integers is one of the rest: it holds for integers as
/// written, and JSON Schema compares values (`1e300`, a decimal a double holds exactly, is
/// accepted, and equals an integer far beyond 64 bits).
#[derive(Debug)]
pub struct Document;

/// Any string without U+0000.
pub(crate) const NO_NUL: &str = r"^[^\u0000]*$";

impl JsonSchema for Document {
    fn schema_name() -> Cow<'static, str> {
        "Document".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let document = generator.subschema_for::<Self>();
        json_schema!({
            "description": "A JSON document as it is stored: at most 32 levels of arrays and \
                objects, 128 KiB as compact JSON, no U+0000 in a string or a key, no key twice \
                in one object, integers written as such within 64 bits and other numbers that a \
                double holds as written (send other numbers as strings). See docs/api.md.",
            "anyOf": [
                { "type": ["null", "boolean"] },
                { "type": "string", "pattern": NO_NUL },
                { "type": "number" },
                { "type": "array", "items": document.clone() },
                {
                    "type": "object",
                    "propertyNames": { "pattern": NO_NUL },
                    "additionalProperties": document,
                },
            ],
        })
    }
}

/// Checks a parsed document against the limits every reader of the log shares.
pub fn check(value: &Value, field: &str) -> Result<(), ParseError> {
    walk(value, field, 0)?;
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value)
        .map_err(|err| ParseError::new(field, format!("cannot be stored: {err}")))?;
    if counter.0 > MAX_BYTES {
        return Err(ParseError::new(
            field,
            format!("is {} bytes; at most {MAX_BYTES} are accepted", counter.0),
        ));
    }
    Ok(())
}

fn walk(value: &Value, path: &str, depth: usize) -> Result<(), ParseError> {
    match value {
        Value::Array(_) | Value::Object(_) if depth >= MAX_DEPTH => Err(ParseError::new(
            path,
            format!("nests deeper than {MAX_DEPTH} levels"),
        )),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(index, item)| walk(item, &format!("{path}[{index}]"), depth + 1)),
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            let here = format!("{path}.{key}");
            if key.contains('\0') {
                return Err(ParseError::new(
                    format!("{path}.{}", key.escape_default()),
                    "keys must not contain U+0000",
                ));
            }
            walk(item, &here, depth + 1)
        }),
        Value::String(text) if text.contains('\0') => {
            Err(ParseError::new(path, "must not contain U+0000"))
        }
        _ => Ok(()),
    }
}

/// Counts bytes written, so a size check allocates nothing.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks the raw bytes of a JSON text for what a parsed value hides: duplicate keys, `\u0000`
/// and numbers that would be stored as something other than what was written. Syntax errors
/// are left to the parser (this returns `Ok` on bytes it cannot follow); run it on bytes the
/// parser accepted, or before parsing and let the parser report them.
pub fn scan(bytes: &[u8]) -> Result<(), ParseError> {
    Scanner {
        bytes,
        at: 0,
        frames: Vec::new(),
    }
    .run()
}

enum Frame {
    /// An object: the keys seen so far and the key whose value is being read.
    Object {
        keys: Vec<String>,
        current: Option<String>,
    },
    Array {
        index: usize,
    },
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
    frames: Vec<Frame>,
}

impl Scanner<'_> {
    /// The path of the value being read, as `a.b[2]` (no leading dot).
    fn path(&self) -> String {
        let mut path = String::new();
        for frame in &self.frames {
            match frame {
                Frame::Object {
                    current: Some(key), ..
                } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                }
                Frame::Object { current: None, .. } => {}
                Frame::Array { index } => path.push_str(&format!("[{index}]")),
            }
        }
        path
    }

    fn run(mut self) -> Result<(), ParseError> {
        while let Some(&byte) = self.bytes.get(self.at) {
            match byte {
                b'{' => {
                    self.frames.push(Frame::Object {
                        keys: Vec::new(),
                        current: None,
                    });
                    self.at += 1;
                }
                b'[' => {
                    self.frames.push(Frame::Array { index: 0 });
                    self.at += 1;
                }
                b'}' | b']' => {
                    self.frames.pop();
                    self.at += 1;
                }
                b',' => {
                    match self.frames.last_mut() {
                        Some(Frame::Array { index }) => *index += 1,
                        Some(Frame::Object { current, .. }) => *current = None,
                        None => {}
                    }
                    self.at += 1;
                }
                b'"' => {
                    let Some(text) = self.string()? else {
                        return Ok(());
                    };
                    let is_key = matches!(
                        self.frames.last(),
                        Some(Frame::Object { current: None, .. })
                    );
                    if is_key {
                        let path = self.path();
                        if let Some(Frame::Object { keys, current }) = self.frames.last_mut() {
                            if keys.contains(&text) {
                                let field = if path.is_empty() {
                                    text.clone()
                                } else {
                                    format!("{path}.{text}")
                                };
                                return Err(ParseError::new(
                                    field,
                                    "appears twice in one object; send each key once",
                                ));
                            }
                            keys.push(text.clone());
                            *current = Some(text);
                        }
                    }
                }
                b'-' | b'0'..=b'9' => self.number()?,
                _ => self.at += 1,
            }
        }
        Ok(())
    }

    /// Reads a string starting at its opening quote; `None` when it does not end.
    fn string(&mut self) -> Result<Option<String>, ParseError> {
        let start = self.at + 1;
        let mut end = start;
        let mut escaped = false;
        let mut has_escape = false;
        loop {
            let Some(&byte) = self.bytes.get(end) else {
                return Ok(None);
            };
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => {
                    escaped = true;
                    has_escape = true;
                }
                (false, b'"') => break,
                _ => {}
            }
            end += 1;
        }
        self.at = end + 1;
        let raw = &self.bytes[start..end];
        let text = if has_escape {
            let mut quoted = Vec::with_capacity(raw.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(raw);
            quoted.push(b'"');
            match serde_json::from_slice::<String>(&quoted) {
                Ok(text) => text,
                // Not ours to report: the parser names the syntax error.
                Err(_) => return Ok(None),
            }
        } else {
            String::from_utf8_lossy(raw).into_owned()
        };
        if text.contains('\0') {
            let path = self.path();
            let is_key = matches!(
                self.frames.last(),
                Some(Frame::Object { current: None, .. })
            );
            return Err(ParseError::new(
                path,
                if is_key {
                    "keys must not contain U+0000"
                } else {
                    "must not contain U+0000"
                },
            ));
        }
        Ok(Some(text))
    }

    fn number(&mut self) -> Result<(), ParseError> {
        let start = self.at;
        while let Some(&byte) = self.bytes.get(self.at) {
            if byte.is_ascii_digit() || matches!(byte, b'-' | b'+' | b'.' | b'e' | b'E') {
                self.at += 1;
            } else {
                break;
            }
        }
        let literal = String::from_utf8_lossy(&self.bytes[start..self.at]);
        if exact(&literal) {
            Ok(())
        } else {
            Err(ParseError::new(
                self.path(),
                format!(
                    "the number {literal} cannot be stored exactly (integers must fit in 64 bits, \
                     decimals in a double without rounding); send it as a string"
                ),
            ))
        }
    }
}

/// Whether a JSON number literal reads back as written: an integer within `i64`/`u64`, or a
/// decimal whose double prints as the same decimal value.
fn exact(literal: &str) -> bool {
    let is_integer = !literal.contains(['.', 'e', 'E']);
    if is_integer {
        return literal.parse::<i64>().is_ok() || literal.parse::<u64>().is_ok();
    }
    let Ok(double) = literal.parse::<f64>() else {
        // Not a number at all: the parser reports it.
        return true;
    };
    double.is_finite() && decimal(literal) == decimal(&format!("{double:e}"))
}

/// A decimal literal as (negative, significant digits, exponent of the last digit), so that
/// `1.50`, `15e-1` and `1.5e0` compare equal.
fn decimal(literal: &str) -> Option<(bool, String, i64)> {
    let (negative, unsigned) = match literal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, literal),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, exponent.parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let fraction_len = i64::try_from(fraction.len()).ok()?;
    let digits = format!("{whole}{fraction}");
    let significant = digits.trim_start_matches('0');
    let trimmed = significant.trim_end_matches('0');
    if trimmed.is_empty() {
        return Some((false, String::new(), 0));
    }
    let trailing = i64::try_from(significant.len() - trimmed.len()).ok()?;
    Some((
        negative,
        trimmed.to_owned(),
        exponent - fraction_len + trailing,
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn nested(levels: usize) -> Value {
        (0..levels).fold(json!(1), |inner, _| json!([inner]))
    }

    #[test]
    fn depth_is_counted_in_arrays_and_objects_up_to_the_limit() {
        assert!(check(&nested(MAX_DEPTH), "payload").is_ok());
        let error = check(&nested(MAX_DEPTH + 1), "payload").expect_err("too deep");
        assert!(error.field.starts_with("payload"), "{error}");
        assert!(error.message.contains("deeper than 32"), "{error}");
        assert!(check(&json!({"a": {"b": nested(MAX_DEPTH - 2)}}), "p").is_ok());
        assert!(check(&json!({"a": {"b": nested(MAX_DEPTH - 1)}}), "p").is_err());
    }

    #[test]
    fn nul_is_refused_in_strings_and_keys_and_size_is_bounded() {
        assert_eq!(
            check(&json!({"a": ["x\u{0}y"]}), "payload")
                .expect_err("nul")
                .field,
            "payload.a[0]"
        );
        assert!(check(&json!({"k\u{0}": 1}), "payload").is_err());
        assert!(check(&json!("x".repeat(MAX_BYTES)), "payload").is_err());
        assert!(check(&json!("x".repeat(MAX_BYTES - 2)), "payload").is_ok());
    }

    #[test]
    fn scan_refuses_duplicate_keys_naming_their_path() {
        let error = scan(br#"{"payload":{"amount":1,"amount":1000000}}"#).expect_err("dup");
        assert_eq!(error.field, "payload.amount");
        assert!(scan(br#"{"a":{"x":1},"b":{"x":1},"c":[{"x":1},{"x":2}]}"#).is_ok());
        assert_eq!(
            scan(br#"{"a":[{"x":1},{"y":1,"y":2}]}"#)
                .expect_err("dup")
                .field,
            "a[1].y"
        );
        // An escaped spelling of the same key is the same key.
        assert!(scan(br#"{"ab":1,"\u0061b":2}"#).is_err());
        // A key-shaped string inside a string is text.
        assert!(scan(br#"{"s":"\"s\":1"}"#).is_ok());
    }

    #[test]
    fn scan_refuses_nul_anywhere() {
        assert_eq!(
            scan(br#"{"name":"a\u0000b"}"#).expect_err("nul").field,
            "name"
        );
        assert!(scan(br#"{"payload":{"k\u0000":1}}"#).is_err());
        assert!(
            scan(br#"{"name":"a\\u0000b"}"#).is_ok(),
            "an escaped backslash"
        );
    }

    #[test]
    fn numbers_must_read_back_as_written() {
        for ok in [
            "0",
            "-0",
            "42",
            "-9223372036854775808",
            "18446744073709551615",
            "0.1",
            "1.50",
            "1e20",
            "1E+2",
            "-2.5e-3",
            "123456.789",
            "0.30000000000000004",
        ] {
            assert!(exact(ok), "{ok} should be exact");
        }
        for lossy in [
            "123456789012345678901234567890",
            "18446744073709551616",
            "-9223372036854775809",
            "1.2345678901234567890",
            "0.1000000000000000055511151231257827",
            "1e400",
        ] {
            assert!(!exact(lossy), "{lossy} should be refused");
        }
        let error = scan(br#"{"payload":{"amounts":[1, 123456789012345678901234567890]}}"#)
            .expect_err("lossy");
        assert_eq!(error.field, "payload.amounts[1]");
    }
}
