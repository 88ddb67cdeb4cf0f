//! Identifiers and names. Each is a newtype with a private field and a `parse` constructor, so a
//! value that exists is valid; serde goes through the same constructor.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ParseError;

/// Instants are UTC wall-clock times supplied by the caller; the domain never reads a clock.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Defines a string newtype whose values are checked by `$check` on every construction.
///
/// The schema states the same rule: serde reads the value as a `String` first, so schemars
/// describes that `String`, and the constraints go on the container (`extend`), where they
/// survive; the pattern says exactly what `$check` accepts (a test holds them together).
macro_rules! checked_string {
    (
        $(#[$meta:meta])* $name:ident, $field:literal, $max:expr, $pattern:expr, $check:expr,
        $rule:expr
    ) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schemars(extend("minLength" = 1, "maxLength" = $max, "pattern" = $pattern))]
        pub struct $name(String);

        impl $name {
            /// Checks `value` and wraps it.
            pub fn parse(value: impl Into<String>) -> Result<Self, ParseError> {
                let value = value.into();
                let check: fn(&str) -> bool = $check;
                if value.is_empty() {
                    return Err(ParseError::new($field, "must not be empty"));
                }
                if value.chars().count() > $max {
                    return Err(ParseError::new(
                        $field,
                        format!("must be at most {} characters", $max),
                    ));
                }
                if !check(&value) {
                    return Err(ParseError::new($field, $rule));
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
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

fn is_slug(value: &str) -> bool {
    let mut chars = value.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Printable text without control characters (user ids, correlation ids, keys, sources).
fn is_printable_token(value: &str) -> bool {
    value.chars().all(|c| !c.is_control() && !c.is_whitespace())
}

/// What [`is_slug`] accepts.
const SLUG: &str = "^[a-z0-9][a-z0-9_-]*$";
const SLUG_RULE: &str = "must match ^[a-z0-9][a-z0-9_-]*$";

/// What [`is_printable_token`] accepts: no control character (Unicode `Cc`: U+0000–U+001F,
/// U+007F–U+009F) and no whitespace (Unicode `White_Space`). Spelled out rather than `\s` and
/// `\p{Cc}`, which regex dialects read differently (ECMA's `\s` takes U+FEFF, Python's `re`
/// knows no `\p{..}`).
const TOKEN: &str =
    r"^[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]+$";
const TOKEN_RULE: &str = "must not contain whitespace or control characters";

checked_string!(
    /// An isolated customer. Every command, event, row and subject carries it.
    TenantId, "tenant", 64, SLUG, is_slug, SLUG_RULE
);
checked_string!(
    /// A role held by a principal: `owner`, `admin`, `approver`, `requester`, `auditor` or a
    /// custom one such as `finance_ops`.
    Role, "role", 64, SLUG, is_slug, SLUG_RULE
);
checked_string!(
    /// The module that owns a capability (`billing`, `email`, `webhook`).
    ModuleSlug, "module", 64, SLUG, is_slug, SLUG_RULE
);
checked_string!(
    /// What a module can do (`refund`, `send`, `delete-leads`).
    CapabilityName, "capability", 64, SLUG, is_slug, SLUG_RULE
);
checked_string!(
    /// A connector an action touches (`gmail`, `stripe`).
    Connector, "connectors", 64, SLUG, is_slug, SLUG_RULE
);
checked_string!(
    /// A person or service account, as the credential names it.
    UserId, "user", 128, TOKEN, is_printable_token, TOKEN_RULE
);
checked_string!(
    /// Ties together everything caused by one request or one upstream event.
    CorrelationId, "correlation_id", 128, TOKEN, is_printable_token, TOKEN_RULE
);
checked_string!(
    /// A submitter's key that makes a repeated submission land on the same action.
    IdempotencyKey, "idempotency_key", 255, TOKEN, is_printable_token, TOKEN_RULE
);
checked_string!(
    /// Names a policy within its tenant.
    PolicyId, "policy_id", 64, SLUG, is_slug, SLUG_RULE
);

impl Role {
    pub fn owner() -> Self {
        Self("owner".into())
    }
    pub fn admin() -> Self {
        Self("admin".into())
    }
    pub fn approver() -> Self {
        Self("approver".into())
    }
}

impl PolicyId {
    /// The id of the tenant default policy, used when no policy matches.
    pub fn default_policy() -> Self {
        Self("default".into())
    }
}

/// `module.capability`, the address of an action type.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(extend("pattern" = r"^[a-z0-9][a-z0-9_-]{0,63}\.[a-z0-9][a-z0-9_-]{0,63}$"))]
pub struct ActionType(String);

impl ActionType {
    pub fn new(module: &ModuleSlug, capability: &CapabilityName) -> Self {
        Self(format!("{module}.{capability}"))
    }

    pub fn parse(value: impl Into<String>) -> Result<Self, ParseError> {
        let value = value.into();
        let Some((module, capability)) = value.split_once('.') else {
            return Err(ParseError::new(
                "action_type",
                "must be `module.capability`",
            ));
        };
        Ok(Self::new(
            &ModuleSlug::parse(module)?,
            &CapabilityName::parse(capability)?,
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn module(&self) -> &str {
        self.0.split_once('.').map_or("", |(module, _)| module)
    }

    pub fn capability(&self) -> &str {
        self.0
            .split_once('.')
            .map_or("", |(_, capability)| capability)
    }
}

impl TryFrom<String> for ActionType {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<ActionType> for String {
    fn from(value: ActionType) -> Self {
        value.0
    }
}

impl fmt::Display for ActionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for ActionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActionType({:?})", self.0)
    }
}

/// The id of an action aggregate. Random (v7) when the gateway mints it, derived from the
/// tenant and the idempotency key when the submitter gives one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ActionId(Uuid);

impl ActionId {
    /// Wraps an id minted outside the domain (the gateway uses UUID v7).
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The id every submission with this key in this tenant lands on: a UUID v8 whose bits are
    /// the first 16 bytes of a keyed blake3 derivation, so it is stable across processes.
    pub fn for_idempotency_key(tenant: &TenantId, key: &IdempotencyKey) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("countersign 2026 action id v1");
        hasher.update(tenant.as_str().as_bytes());
        hasher.update(&[0]);
        hasher.update(key.as_str().as_bytes());
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest.as_bytes()[..16]);
        Self(Uuid::new_v8(bytes))
    }

    pub fn parse(value: &str) -> Result<Self, ParseError> {
        Uuid::parse_str(value)
            .map(Self)
            .map_err(|_| ParseError::new("action_id", "must be a UUID"))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActionId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_accept_lowercase_digits_dash_and_underscore() {
        assert!(TenantId::parse("acme-corp_2").is_ok());
        for bad in ["", "Acme", "-acme", "acme corp", "acme.corp", "é"] {
            let err = TenantId::parse(bad).expect_err(bad);
            assert_eq!(err.field, "tenant", "{bad}");
        }
        assert!(TenantId::parse("a".repeat(64)).is_ok());
        assert!(TenantId::parse("a".repeat(65)).is_err());
    }

    #[test]
    fn user_ids_refuse_whitespace_and_control_characters() {
        assert!(UserId::parse("user_2a9F@example.com").is_ok());
        assert!(UserId::parse("ana lopez").is_err());
        assert!(UserId::parse("ana\u{7}").is_err());
    }

    #[test]
    fn schema_patterns_accept_exactly_what_parse_accepts() {
        let slug = regex::Regex::new(SLUG).expect("pattern compiles");
        let token = regex::Regex::new(TOKEN).expect("pattern compiles");
        let characters = (0..=0x3100_u32)
            .chain(0xFE00..=0xFFFF)
            .chain([0x1F600, 0xE0001, 0x10FFFF])
            .filter_map(char::from_u32);
        for c in characters {
            for text in [c.to_string(), format!("a{c}"), format!("{c}a")] {
                assert_eq!(
                    slug.is_match(&text),
                    Role::parse(text.clone()).is_ok(),
                    "{text:?}"
                );
                assert_eq!(
                    token.is_match(&text),
                    UserId::parse(text.clone()).is_ok(),
                    "{text:?}"
                );
            }
        }
    }

    #[test]
    fn deserializing_goes_through_parse() {
        let err = serde_json::from_str::<Role>("\"Finance Ops\"").expect_err("invalid role");
        assert!(err.to_string().contains("role"), "{err}");
        let role: Role = serde_json::from_str("\"finance_ops\"").expect("valid role");
        assert_eq!(role.as_str(), "finance_ops");
    }

    #[test]
    fn action_type_splits_into_module_and_capability() {
        let action_type = ActionType::parse("billing.refund").expect("valid");
        assert_eq!(action_type.module(), "billing");
        assert_eq!(action_type.capability(), "refund");
        assert!(ActionType::parse("billing").is_err());
        assert!(ActionType::parse("billing.refund.now").is_err());
    }

    #[test]
    fn idempotent_action_ids_depend_on_tenant_and_key_only() {
        let acme = TenantId::parse("acme").expect("valid");
        let globex = TenantId::parse("globex").expect("valid");
        let key = IdempotencyKey::parse("refund-1042").expect("valid");
        let other = IdempotencyKey::parse("refund-1043").expect("valid");
        let id = ActionId::for_idempotency_key(&acme, &key);
        assert_eq!(id, ActionId::for_idempotency_key(&acme, &key));
        assert_ne!(id, ActionId::for_idempotency_key(&globex, &key));
        assert_ne!(id, ActionId::for_idempotency_key(&acme, &other));
        assert_eq!(id.as_uuid().get_version_num(), 8);
    }
}
