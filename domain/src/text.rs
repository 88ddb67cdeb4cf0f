//! Human text and bounded lists, checked on construction.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::{ParseError, UserId};

/// Text a person reads: no control characters except newline and tab.
fn is_readable(value: &str) -> bool {
    value
        .chars()
        .all(|c| c == '\n' || c == '\t' || !c.is_control())
}

/// Whether a character changes how text around it displays without being seen itself:
/// bidirectional embeddings, overrides, isolates and marks, invisible separators and operators,
/// the byte order mark, interlinear annotations and tag characters. Zero-width joiner and
/// non-joiner stay allowed: emoji sequences and several scripts need them, and they cannot
/// reorder text.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'
            | '\u{200E}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

/// The characters [`is_readable`] and [`is_invisible_format`] refuse, as the inside of a regex
/// character class for the schemas. Escapes are `\uXXXX`, which JSON Schema's ECMA dialect,
/// Python's `re` and Rust's `regex` read alike; the tag characters above the BMP are written as
/// themselves, since those dialects spell astral escapes differently.
const FORBIDDEN_CLASS: &str = concat!(
    r"\u0000-\u0008\u000B-\u001F\u007F-\u009F",
    r"\u00AD\u061C\u180E\u200B\u200E\u200F\u202A-\u202E\u2060-\u2064\u2066-\u206F\uFEFF",
    r"\uFFF9-\uFFFB",
    "\u{E0000}-\u{E007F}",
);

/// The whitespace readable text may hold: Unicode `White_Space` (what `str::trim` removes)
/// less the control characters among it. Spelled out: `\s` differs between dialects.
const SPACE_CLASS: &str = r"\t\n \u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// The pattern of readable, visible text; with `non_blank`, text that also has a character
/// other than whitespace (what a minimum of one character, counted after trimming, means).
fn text_pattern(non_blank: bool) -> String {
    let f = FORBIDDEN_CLASS;
    if non_blank {
        format!("^[^{f}]*[^{SPACE_CLASS}{f}][^{f}]*$")
    } else {
        format!("^[^{f}]*$")
    }
}

/// The pattern of a name [`check_name`] accepts: 1 to `max` characters between optional
/// leading and trailing whitespace, readable and visible.
pub(crate) fn name_pattern(max: usize) -> String {
    let (f, s) = (FORBIDDEN_CLASS, SPACE_CLASS);
    let middle = max.saturating_sub(2);
    format!("^[{s}]*[^{s}{f}](?:[^{f}]{{0,{middle}}}[^{s}{f}])?[{s}]*$")
}

/// The schema of a `bounded_text!` type: its length limits and [`text_pattern`]. Only minimums
/// of 0 and 1 are expressed this way (the macro refuses others).
fn bounded_schema<const MIN: usize, const MAX: usize>(schema: &mut Schema) {
    if MIN > 0 {
        schema.insert("minLength".into(), MIN.into());
    }
    schema.insert("maxLength".into(), MAX.into());
    schema.insert("pattern".into(), text_pattern(MIN > 0).into());
}

/// A short name a person gives (a policy's, an API key's): 1 to `max` characters once trimmed,
/// readable (no control characters) and visible (see [`check_visible`]).
pub fn check_name(value: &str, field: &str, max: usize) -> Result<(), ParseError> {
    let length = value.trim().chars().count();
    if length == 0 || length > max {
        return Err(ParseError::new(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    if !is_readable(value) {
        return Err(ParseError::new(
            field,
            "must not contain control characters",
        ));
    }
    check_visible(value, field)
}

/// Refuses text that would display differently from what it says (see
/// [`is_invisible_format`]). Commands run it on every text a person will read; stored events are
/// decoded without it, so history recorded before the rule stays readable.
pub fn check_visible(value: &str, field: &str) -> Result<(), ParseError> {
    match value.chars().find(|c| is_invisible_format(*c)) {
        Some(c) => Err(ParseError::new(
            field,
            format!(
                "must not contain invisible formatting characters (found U+{:04X})",
                u32::from(c)
            ),
        )),
        None => Ok(()),
    }
}

/// Defines human text of `min` to `max` characters (a minimum counts characters after
/// trimming), readable. Commands also run [`check_visible`] on it; the schema states both, as a
/// pattern (a test holds the pattern and the checks together).
macro_rules! bounded_text {
    ($(#[$meta:meta])* $name:ident, $field:literal, min = $min:expr, max = $max:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schemars(transform = bounded_schema::<{ $min }, { $max }>)]
        pub struct $name(String);

        const _: () = assert!($min <= 1, "the schema pattern expresses minimums of 0 or 1");

        impl $name {
            pub fn parse(value: impl Into<String>) -> Result<Self, ParseError> {
                const MIN: usize = $min;
                let value = value.into();
                let length = value.chars().count();
                if MIN > 0 && (length < MIN || value.trim().chars().count() < MIN) {
                    return Err(ParseError::new($field, "must not be empty"));
                }
                if length > $max {
                    return Err(ParseError::new(
                        $field,
                        format!("must be at most {} characters", $max),
                    ));
                }
                if !is_readable(&value) {
                    return Err(ParseError::new($field, "must not contain control characters"));
                }
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

bounded_text!(
    /// What the action does, in words an approver understands ("Send weekly update email to 120
    /// leads").
    Summary, "summary", min = 1, max = 500
);
bounded_text!(
    /// Free description (impact, scope); may be empty.
    #[derive(Default)]
    Text, "text", min = 0, max = 2000
);
bounded_text!(
    /// A marker the submitter attaches (`pii`, `financial`, `customer-visible`).
    Flag, "flags", min = 1, max = 64
);
bounded_text!(
    /// Where the submission comes from (`board`, `automated-agent`, `billing-service`).
    Source, "source", min = 1, max = 128
);
bounded_text!(
    /// A voter's or canceller's explanation.
    Comment, "comment", min = 1, max = 2000
);

impl Source {
    /// The source recorded when a submitter names none.
    pub fn api() -> Self {
        Self("api".to_owned())
    }
}

/// A list with at least one element.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<T>", into = "Vec<T>")]
#[serde(bound(
    serialize = "T: Serialize + Clone",
    deserialize = "T: Deserialize<'de>"
))]
pub struct NonEmpty<T>(Vec<T>);

impl<T> NonEmpty<T> {
    pub fn new(items: Vec<T>) -> Result<Self, ParseError> {
        if items.is_empty() {
            return Err(ParseError::new("", "must not be empty"));
        }
        Ok(Self(items))
    }

    pub fn one(item: T) -> Self {
        Self(vec![item])
    }

    pub fn as_slice(&self) -> &[T] {
        &self.0
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl<T> TryFrom<Vec<T>> for NonEmpty<T> {
    type Error = ParseError;
    fn try_from(items: Vec<T>) -> Result<Self, Self::Error> {
        Self::new(items)
    }
}

impl<T> From<NonEmpty<T>> for Vec<T> {
    fn from(value: NonEmpty<T>) -> Self {
        value.0
    }
}

impl<'a, T> IntoIterator for &'a NonEmpty<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: fmt::Debug> fmt::Debug for NonEmpty<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: JsonSchema> JsonSchema for NonEmpty<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("NonEmpty_{}", T::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "array",
            "items": generator.subschema_for::<T>(),
            "minItems": 1,
        })
    }
}

/// A non-empty list of distinct users, in the order given (a pool or a list of required
/// signers). Duplicates are refused rather than merged: they would change pool arithmetic.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<UserId>", into = "Vec<UserId>")]
pub struct UserSet(Vec<UserId>);

impl UserSet {
    pub fn new(users: Vec<UserId>) -> Result<Self, ParseError> {
        if users.is_empty() {
            return Err(ParseError::new("", "must list at least one user"));
        }
        for (index, user) in users.iter().enumerate() {
            if users[..index].contains(user) {
                return Err(ParseError::new(
                    format!("[{index}]"),
                    format!("`{user}` is listed twice"),
                ));
            }
        }
        Ok(Self(users))
    }

    pub fn contains(&self, user: &UserId) -> bool {
        self.0.contains(user)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, UserId> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl TryFrom<Vec<UserId>> for UserSet {
    type Error = ParseError;
    fn try_from(users: Vec<UserId>) -> Result<Self, Self::Error> {
        Self::new(users)
    }
}

impl From<UserSet> for Vec<UserId> {
    fn from(value: UserSet) -> Self {
        value.0
    }
}

impl fmt::Debug for UserSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl JsonSchema for UserSet {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "UserSet".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "array",
            "items": generator.subschema_for::<UserId>(),
            "minItems": 1,
            "uniqueItems": true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_must_have_visible_text_and_no_control_characters() {
        assert!(Summary::parse("Refund order 1042").is_ok());
        assert_eq!(
            Summary::parse("   ").expect_err("blank").message,
            "must not be empty"
        );
        assert!(Summary::parse("a\u{0}b").is_err());
        assert!(Summary::parse("x".repeat(501)).is_err());
        assert!(Text::parse("").is_ok());
    }

    #[test]
    fn bidirectional_overrides_and_invisible_characters_are_refused_joiners_kept() {
        let error = check_visible("Refund \u{202E}0001 rodnev\u{202C} ok", "summary")
            .expect_err("override");
        assert_eq!(error.field, "summary");
        assert!(error.message.contains("U+202E"), "{error}");
        for hidden in [
            "\u{2066}x\u{2069}",
            "a\u{200B}b",
            "\u{FEFF}x",
            "x\u{E0041}",
            "\u{200F}",
        ] {
            assert!(check_visible(hidden, "comment").is_err(), "{hidden:?}");
        }
        assert!(check_visible("👨\u{200D}👩\u{200D}👧 family, مرحبا, नमस्ते", "comment").is_ok());
    }

    /// Characters worth comparing one by one: the BMP up to CJK, its end (BOM, specials), and
    /// the tag characters with their neighbours.
    fn probe_characters() -> impl Iterator<Item = char> {
        (0..=0x3100_u32)
            .chain(0xFE00..=0xFFFF)
            .chain(0xE0000..=0xE0081)
            .chain([0x1F600, 0x10FFFF])
            .filter_map(char::from_u32)
    }

    #[test]
    fn schema_patterns_accept_exactly_what_the_checks_accept() {
        let any = regex::Regex::new(&text_pattern(false)).expect("pattern compiles");
        let non_blank = regex::Regex::new(&text_pattern(true)).expect("pattern compiles");
        let name = regex::Regex::new(&name_pattern(3)).expect("pattern compiles");
        let visible = |text: &str| check_visible(text, "t").is_ok();
        for c in probe_characters() {
            for text in [
                c.to_string(),
                format!("a{c}"),
                format!("{c}a"),
                format!("{c}{c}"),
            ] {
                let accepted = Text::parse(text.clone()).is_ok() && visible(&text);
                assert_eq!(any.is_match(&text), accepted, "Text {text:?}");
                let accepted = Summary::parse(text.clone()).is_ok() && visible(&text);
                assert_eq!(non_blank.is_match(&text), accepted, "Summary {text:?}");
                let accepted = check_name(&text, "name", 3).is_ok();
                assert_eq!(name.is_match(&text), accepted, "name {text:?}");
            }
        }
        for text in [
            "", " ", "abc", "abcd", " abc ", "\tab c\n", "a  b", " a b c ", "\u{a0}x",
        ] {
            assert_eq!(
                name.is_match(text),
                check_name(text, "name", 3).is_ok(),
                "name {text:?}"
            );
        }
    }

    #[test]
    fn user_sets_refuse_duplicates_and_emptiness() {
        let ana = UserId::parse("ana").expect("valid");
        let bo = UserId::parse("bo").expect("valid");
        assert!(UserSet::new(vec![ana.clone(), bo]).is_ok());
        assert_eq!(
            UserSet::new(vec![ana.clone(), ana]).expect_err("dup").field,
            "[1]"
        );
        assert!(UserSet::new(vec![]).is_err());
        assert!(serde_json::from_str::<NonEmpty<u8>>("[]").is_err());
    }
}
