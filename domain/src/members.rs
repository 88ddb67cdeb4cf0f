//! A tenant's member directory as an event-sourced aggregate (`member_directory`, one stream per
//! tenant, aggregate id = the tenant id): who is who (user id, display name, email address,
//! Slack user id, roles) and how each wants to be notified, with the tenant's default
//! preferences. The notifier resolves recipients from the directory as it stood when an event
//! was recorded, so the directory is kept as events like policies and settings.

use std::collections::{BTreeMap, BTreeSet};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::risk::RiskLevel;
use crate::signing::VotePublicKey;
use crate::tenant::{TenantCommandContext, TenantEventContext};
use crate::{ParseError, Role, TenantId, Timestamp, UserId, check_name};

/// The longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 200;
/// The longest email address, in characters (RFC 5321's path limit, counted as the schema's
/// `maxLength` counts, so that every address the schema allows is accepted).
pub const MAX_EMAIL: usize = 254;

/// What [`Email::parse`] accepts, as the schema's pattern: a local part without whitespace,
/// control characters or header-breaking characters, then a domain of at least two labels of
/// 1 to 63 letters, digits and hyphens that neither start nor end with a hyphen. A test holds
/// the two to each other: an address the schema allows is never refused.
pub const EMAIL_PATTERN: &str = r"^[^\s@<>(),;:\u0022\[\]\\\x00-\x1f\x7f-\x9f]+@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$";

/// The schema of a display name: what [`check_name`] accepts with [`MAX_DISPLAY_NAME`].
pub fn display_name_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": crate::text::name_pattern(MAX_DISPLAY_NAME),
    })
}

/// An email address: `local@domain`, at most 254 bytes, no whitespace, control characters or
/// characters that would break a header (`<>(),;:"[]\`), a domain with at least one dot and
/// labels of letters, digits and hyphens. Stored lowercase in its domain part.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schemars(extend("pattern" = EMAIL_PATTERN, "maxLength" = MAX_EMAIL))]
pub struct Email(String);

impl Email {
    pub fn parse(value: impl Into<String>) -> Result<Self, ParseError> {
        let value: String = value.into();
        let invalid = |message: &str| ParseError::new("email", message.to_owned());
        let value = value.trim();
        if value.is_empty() || value.chars().count() > MAX_EMAIL {
            return Err(invalid("must be an email address of 1 to 254 characters"));
        }
        let Some((local, domain)) = value.rsplit_once('@') else {
            return Err(invalid("must be an email address (local@domain)"));
        };
        let bad_char = |c: char| {
            c.is_whitespace() || c.is_control() || "@<>(),;:\"[]\\".contains(c) || c == '\u{0}'
        };
        if local.is_empty() || local.chars().any(bad_char) {
            return Err(invalid("the part before `@` is not acceptable"));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2
            || labels.iter().any(|label| {
                label.is_empty()
                    || label.len() > 63
                    || label.starts_with('-')
                    || label.ends_with('-')
                    || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
        {
            return Err(invalid(
                "the domain must be dot-separated labels of letters, digits and hyphens",
            ));
        }
        Ok(Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<Email> for String {
    fn from(value: Email) -> Self {
        value.0
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Slack user id (`U0123ABCD` or `W0123ABCD`): what Slack's interaction callbacks name.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schemars(extend("pattern" = r"^[UW][A-Z0-9]{2,30}$"))]
pub struct SlackUserId(String);

impl SlackUserId {
    pub fn parse(value: impl Into<String>) -> Result<Self, ParseError> {
        let value: String = value.into();
        let ok = (value.starts_with('U') || value.starts_with('W'))
            && (3..=31).contains(&value.len())
            && value
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if ok {
            Ok(Self(value))
        } else {
            Err(ParseError::new(
                "slack_user_id",
                "must be a Slack user id (U or W, then capital letters and digits)",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SlackUserId {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<SlackUserId> for String {
    fn from(value: SlackUserId) -> Self {
        value.0
    }
}

/// What a notification is about. Stored in delivery rows: never renamed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// An approval waits for the recipient's vote (submission, or a new stage opened).
    Assigned,
    /// The recipient's request was approved, rejected, expired or cancelled.
    Decided,
    /// An action the recipient requested or voted on ran, failed for good or was skipped.
    Outcome,
    /// An action was escalated to a role the recipient holds.
    Escalated,
    /// 75% of an approval's deadline passed without the recipient's vote.
    Reminder,
    /// An action the recipient could approve (or, as an owner, oversees) was approved alone in
    /// an emergency. Always delivered: not one of the switchable kinds in [`Self::ALL`].
    BreakGlass,
}

impl NotificationKind {
    pub const ALL: [Self; 5] = [
        Self::Assigned,
        Self::Decided,
        Self::Outcome,
        Self::Escalated,
        Self::Reminder,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Assigned => "assigned",
            Self::Decided => "decided",
            Self::Outcome => "outcome",
            Self::Escalated => "escalated",
            Self::Reminder => "reminder",
            Self::BreakGlass => "break_glass",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .chain([Self::BreakGlass])
            .find(|kind| kind.as_str() == value)
    }
}

/// Where a notification goes. Stored in delivery rows: never renamed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NotificationChannel {
    InApp,
    Email,
    Slack,
    Webhook,
}

impl NotificationChannel {
    pub const ALL: [Self; 4] = [Self::InApp, Self::Email, Self::Slack, Self::Webhook];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InApp => "in_app",
            Self::Email => "email",
            Self::Slack => "slack",
            Self::Webhook => "webhook",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|channel| channel.as_str() == value)
    }
}

/// One channel's switches, per kind of notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KindSwitches {
    #[serde(default = "on")]
    pub assigned: bool,
    #[serde(default = "on")]
    pub decided: bool,
    #[serde(default = "on")]
    pub outcome: bool,
    #[serde(default = "on")]
    pub escalated: bool,
    #[serde(default = "on")]
    pub reminder: bool,
}

fn on() -> bool {
    true
}

impl KindSwitches {
    pub const ALL_ON: Self = Self {
        assigned: true,
        decided: true,
        outcome: true,
        escalated: true,
        reminder: true,
    };

    pub fn allows(&self, kind: NotificationKind) -> bool {
        match kind {
            NotificationKind::Assigned => self.assigned,
            NotificationKind::Decided => self.decided,
            NotificationKind::Outcome => self.outcome,
            NotificationKind::Escalated => self.escalated,
            NotificationKind::Reminder => self.reminder,
            NotificationKind::BreakGlass => true,
        }
    }
}

impl Default for KindSwitches {
    fn default() -> Self {
        Self::ALL_ON
    }
}

/// How one member wants to be notified (or a tenant's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    #[serde(default)]
    pub in_app: KindSwitches,
    #[serde(default)]
    pub email: KindSwitches,
    #[serde(default)]
    pub slack: KindSwitches,
    #[serde(default)]
    pub webhook: KindSwitches,
    /// Notifications about actions of a lower risk level are not sent (on any channel).
    #[serde(default = "lowest")]
    pub min_risk: RiskLevel,
    /// Email arrives once a day as a digest instead of one message per notification.
    #[serde(default)]
    pub daily_digest: bool,
}

fn lowest() -> RiskLevel {
    RiskLevel::Low
}

impl Default for Preferences {
    fn default() -> Self {
        Self {
            in_app: KindSwitches::ALL_ON,
            email: KindSwitches::ALL_ON,
            slack: KindSwitches::ALL_ON,
            webhook: KindSwitches::ALL_ON,
            min_risk: RiskLevel::Low,
            daily_digest: false,
        }
    }
}

impl Preferences {
    pub fn channel(&self, channel: NotificationChannel) -> &KindSwitches {
        match channel {
            NotificationChannel::InApp => &self.in_app,
            NotificationChannel::Email => &self.email,
            NotificationChannel::Slack => &self.slack,
            NotificationChannel::Webhook => &self.webhook,
        }
    }

    /// Whether a notification of `kind` about an action of `risk` goes out on `channel`.
    pub fn wants(
        &self,
        channel: NotificationChannel,
        kind: NotificationKind,
        risk: RiskLevel,
    ) -> bool {
        risk >= self.min_risk && self.channel(channel).allows(kind)
    }
}

/// A member's editable fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberDraft {
    /// 1 to 200 characters once trimmed, readable and visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "display_name_schema")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<Email>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack_user_id: Option<SlackUserId>,
    /// The roles the member holds in this tenant, for finding who may vote (a vote still needs
    /// a credential carrying the role). Each at most once.
    #[serde(default, deserialize_with = "distinct_roles")]
    pub roles: BTreeSet<Role>,
    /// The member's own preferences; none: the tenant's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferences: Option<Preferences>,
}

/// Reads a list of roles that names each role at most once: a role listed twice is refused
/// (naming it and its place) rather than merged, as the schema's `uniqueItems` says, since it
/// is most likely a client's mistake. Stored sets never hold one twice, so history reads back.
pub fn distinct_roles<'de, D>(deserializer: D) -> Result<BTreeSet<Role>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let listed = Vec::<Role>::deserialize(deserializer)?;
    let mut roles = BTreeSet::new();
    for (index, role) in listed.into_iter().enumerate() {
        if roles.contains(&role) {
            return Err(serde::de::Error::custom(format!(
                "[{index}]: `{role}` is listed twice"
            )));
        }
        roles.insert(role);
    }
    Ok(roles)
}

impl MemberDraft {
    pub fn check(&self) -> Result<(), ParseError> {
        if let Some(name) = &self.display_name {
            check_name(name, "display_name", MAX_DISPLAY_NAME)?;
        }
        Ok(())
    }
}

/// One member of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Member {
    pub user_id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<Email>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack_user_id: Option<SlackUserId>,
    #[serde(default)]
    pub roles: BTreeSet<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferences: Option<Preferences>,
    pub added_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Member {
    fn from_draft(user_id: UserId, draft: MemberDraft, added_at: Timestamp, at: Timestamp) -> Self {
        Self {
            user_id,
            display_name: draft.display_name.map(|name| name.trim().to_owned()),
            email: draft.email,
            slack_user_id: draft.slack_user_id,
            roles: draft.roles,
            preferences: draft.preferences,
            added_at,
            updated_at: at,
        }
    }

    fn same_fields(&self, other: &Self) -> bool {
        self.display_name == other.display_name
            && self.email == other.email
            && self.slack_user_id == other.slack_user_id
            && self.roles == other.roles
            && self.preferences == other.preferences
    }
}

/// A member's Ed25519 key for signing votes, as the directory keeps it. A member has at most
/// one active key; registering another retires it, and a retired key stays listed for good, so
/// that votes it signed can be checked forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SigningKeyEntry {
    /// The key's id (`crate::signing`), recorded in each vote it signs.
    pub key_id: String,
    pub public_key: VotePublicKey,
    pub registered_at: Timestamp,
    /// When the key stopped signing votes (replaced or removed); none while active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<Timestamp>,
    /// Who retired it: the member registering its successor, or who removed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_by: Option<UserId>,
}

impl SigningKeyEntry {
    pub fn is_active(&self) -> bool {
        self.retired_at.is_none()
    }
}

/// Why a directory command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    /// Handling: 422 naming the field.
    #[error(transparent)]
    InvalidInput(ParseError),
    /// Handling: 409.
    #[error("member `{0}` already exists")]
    MemberExists(UserId),
    /// Handling: 404.
    #[error("member `{0}` not found")]
    MemberNotFound(UserId),
    /// The command names another tenant than the stream's. Handling: 404.
    #[error("not found")]
    WrongTenant,
    /// Handling: 403.
    #[error("only an owner may {attempted}")]
    NotPermitted { attempted: &'static str },
    /// A signing key is the member's own business: only they register one; they, an owner or
    /// an admin remove it. Handling: 403.
    #[error("only the member, an owner or an admin may {attempted}")]
    NotKeyHolder { attempted: &'static str },
    /// The public key is (or was) registered already, by this member or another: a key names
    /// one member for good. Handling: 409.
    #[error("this public key is already registered (key {0}); generate a new key")]
    SigningKeyInUse(String),
    /// The member has no active signing key. Handling: 404.
    #[error("member `{0}` has no active signing key")]
    NoSigningKey(UserId),
}

impl MemberError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "invalid_input",
            Self::MemberExists(_) => "member_exists",
            Self::MemberNotFound(_) => "member_not_found",
            Self::WrongTenant => "not_found",
            Self::NotPermitted { .. } | Self::NotKeyHolder { .. } => "not_permitted",
            Self::SigningKeyInUse(_) => "signing_key_in_use",
            Self::NoSigningKey(_) => "signing_key_not_found",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum MemberCommand {
    AddMember {
        context: TenantCommandContext,
        user_id: UserId,
        draft: MemberDraft,
    },
    /// Replaces a member's fields.
    UpdateMember {
        context: TenantCommandContext,
        user_id: UserId,
        draft: MemberDraft,
    },
    RemoveMember {
        context: TenantCommandContext,
        user_id: UserId,
    },
    /// A member's own preferences (none: the tenant's defaults).
    SetPreferences {
        context: TenantCommandContext,
        user_id: UserId,
        preferences: Option<Preferences>,
    },
    /// What the token of a signed-in member says about them (`name`, `email`): adds them when
    /// missing, updates what changed, records nothing when nothing did.
    RecordClaims {
        context: TenantCommandContext,
        display_name: Option<String>,
        email: Option<Email>,
    },
    SetDefaultPreferences {
        context: TenantCommandContext,
        defaults: Preferences,
    },
    /// The member (`context.by`) registers their public key for signing votes; their active
    /// key, if any, is retired. Registering the active key again records nothing.
    SetSigningKey {
        context: TenantCommandContext,
        public_key: VotePublicKey,
    },
    /// Retires a member's active signing key (the member, an owner or an admin). Votes it
    /// signed stay checkable: the key stays listed, retired.
    RemoveSigningKey {
        context: TenantCommandContext,
        user_id: UserId,
    },
}

impl MemberCommand {
    fn context(&self) -> &TenantCommandContext {
        match self {
            Self::AddMember { context, .. }
            | Self::UpdateMember { context, .. }
            | Self::RemoveMember { context, .. }
            | Self::SetPreferences { context, .. }
            | Self::RecordClaims { context, .. }
            | Self::SetDefaultPreferences { context, .. }
            | Self::SetSigningKey { context, .. }
            | Self::RemoveSigningKey { context, .. } => context,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum MemberEvent {
    MemberAdded {
        #[serde(flatten)]
        context: TenantEventContext,
        member: Member,
    },
    MemberUpdated {
        #[serde(flatten)]
        context: TenantEventContext,
        member: Member,
    },
    MemberRemoved {
        #[serde(flatten)]
        context: TenantEventContext,
        user_id: UserId,
    },
    DefaultPreferencesSet {
        #[serde(flatten)]
        context: TenantEventContext,
        defaults: Preferences,
    },
    /// `user_id` registered a public key for signing votes (`actor` is the member themselves);
    /// `replaces` is the id of their key it retires, if any.
    SigningKeyRegistered {
        #[serde(flatten)]
        context: TenantEventContext,
        user_id: UserId,
        key_id: String,
        public_key: VotePublicKey,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<String>,
    },
    /// `user_id`'s active signing key was retired by `actor` (the member, an owner or an admin).
    SigningKeyRemoved {
        #[serde(flatten)]
        context: TenantEventContext,
        user_id: UserId,
        key_id: String,
    },
}

impl cqrs_es::DomainEvent for MemberEvent {
    fn event_type(&self) -> String {
        match self {
            Self::MemberAdded { .. } => "MemberAdded",
            Self::MemberUpdated { .. } => "MemberUpdated",
            Self::MemberRemoved { .. } => "MemberRemoved",
            Self::DefaultPreferencesSet { .. } => "DefaultPreferencesSet",
            Self::SigningKeyRegistered { .. } => "SigningKeyRegistered",
            Self::SigningKeyRemoved { .. } => "SigningKeyRemoved",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// A tenant's members and default preferences.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberDirectory {
    pub tenant: Option<TenantId>,
    pub members: BTreeMap<UserId, Member>,
    pub defaults: Preferences,
    /// Every signing key each member ever registered, oldest first (kept when a member is
    /// removed: the votes their keys signed stay checkable).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub signing_keys: BTreeMap<UserId, Vec<SigningKeyEntry>>,
}

impl MemberDirectory {
    pub fn get(&self, user: &UserId) -> Option<&Member> {
        self.members.get(user)
    }

    /// The member's active signing key, if they registered one.
    pub fn active_signing_key(&self, user: &UserId) -> Option<&SigningKeyEntry> {
        self.signing_keys
            .get(user)
            .and_then(|keys| keys.iter().rev().find(|key| key.is_active()))
    }

    /// Every key the member registered, oldest first.
    pub fn signing_keys_of(&self, user: &UserId) -> &[SigningKeyEntry] {
        self.signing_keys.get(user).map_or(&[], Vec::as_slice)
    }

    /// Whether a key with this id was ever registered, by anyone.
    pub fn key_registered(&self, key_id: &str) -> bool {
        self.signing_keys
            .values()
            .flatten()
            .any(|key| key.key_id == key_id)
    }

    /// The preferences that apply to `member`: their own, else the tenant's defaults.
    pub fn preferences_of(&self, member: &Member) -> Preferences {
        member.preferences.unwrap_or(self.defaults)
    }

    /// Members holding any of `roles` or listed in `users`.
    pub fn matching<'a>(
        &'a self,
        roles: &'a BTreeSet<Role>,
        users: &'a BTreeSet<UserId>,
    ) -> impl Iterator<Item = &'a Member> + 'a {
        self.members.values().filter(move |member| {
            users.contains(&member.user_id) || member.roles.iter().any(|r| roles.contains(r))
        })
    }

    fn grants_owner(context: &TenantCommandContext, roles: &BTreeSet<Role>) -> bool {
        roles.contains(&Role::owner()) && !context.by.has_role(&Role::owner())
    }

    pub fn decide(&self, command: MemberCommand) -> Result<Vec<MemberEvent>, MemberError> {
        let context = command.context();
        if self
            .tenant
            .as_ref()
            .is_some_and(|tenant| *tenant != context.tenant)
        {
            return Err(MemberError::WrongTenant);
        }
        let event_context = TenantEventContext {
            tenant: context.tenant.clone(),
            actor: context.by.id.clone(),
            at: context.at,
            correlation_id: context.correlation_id.clone(),
        };
        Ok(match command {
            MemberCommand::AddMember {
                context,
                user_id,
                draft,
            } => {
                draft.check().map_err(MemberError::InvalidInput)?;
                if self.members.contains_key(&user_id) {
                    return Err(MemberError::MemberExists(user_id));
                }
                if Self::grants_owner(&context, &draft.roles) {
                    return Err(MemberError::NotPermitted {
                        attempted: "add a member with the owner role",
                    });
                }
                let member = Member::from_draft(user_id, draft, context.at, context.at);
                vec![MemberEvent::MemberAdded {
                    context: event_context,
                    member,
                }]
            }
            MemberCommand::UpdateMember {
                context,
                user_id,
                draft,
            } => {
                draft.check().map_err(MemberError::InvalidInput)?;
                let current = self
                    .members
                    .get(&user_id)
                    .ok_or_else(|| MemberError::MemberNotFound(user_id.clone()))?;
                let changes_owner =
                    draft.roles.contains(&Role::owner()) != current.roles.contains(&Role::owner());
                if changes_owner && !context.by.has_role(&Role::owner()) {
                    return Err(MemberError::NotPermitted {
                        attempted: "grant or take the owner role",
                    });
                }
                let member = Member::from_draft(user_id, draft, current.added_at, context.at);
                if member.same_fields(current) {
                    return Ok(Vec::new());
                }
                vec![MemberEvent::MemberUpdated {
                    context: event_context,
                    member,
                }]
            }
            MemberCommand::RemoveMember { context, user_id } => {
                let current = self
                    .members
                    .get(&user_id)
                    .ok_or_else(|| MemberError::MemberNotFound(user_id.clone()))?;
                if current.roles.contains(&Role::owner()) && !context.by.has_role(&Role::owner()) {
                    return Err(MemberError::NotPermitted {
                        attempted: "remove an owner",
                    });
                }
                vec![MemberEvent::MemberRemoved {
                    context: event_context,
                    user_id,
                }]
            }
            MemberCommand::SetPreferences {
                context,
                user_id,
                preferences,
            } => {
                let current = self
                    .members
                    .get(&user_id)
                    .ok_or_else(|| MemberError::MemberNotFound(user_id.clone()))?;
                if current.preferences == preferences {
                    return Ok(Vec::new());
                }
                vec![MemberEvent::MemberUpdated {
                    context: event_context,
                    member: Member {
                        preferences,
                        updated_at: context.at,
                        ..current.clone()
                    },
                }]
            }
            MemberCommand::RecordClaims {
                context,
                display_name,
                email,
            } => {
                let display_name = display_name
                    .map(|name| name.trim().to_owned())
                    .filter(|name| check_name(name, "display_name", MAX_DISPLAY_NAME).is_ok());
                match self.members.get(&context.by.id) {
                    None => vec![MemberEvent::MemberAdded {
                        context: event_context,
                        member: Member {
                            user_id: context.by.id.clone(),
                            display_name,
                            email,
                            slack_user_id: None,
                            roles: context.by.roles.clone(),
                            preferences: None,
                            added_at: context.at,
                            updated_at: context.at,
                        },
                    }],
                    Some(current) => {
                        let member = Member {
                            display_name: display_name.or_else(|| current.display_name.clone()),
                            email: email.or_else(|| current.email.clone()),
                            updated_at: context.at,
                            ..current.clone()
                        };
                        if member.same_fields(current) {
                            return Ok(Vec::new());
                        }
                        vec![MemberEvent::MemberUpdated {
                            context: event_context,
                            member,
                        }]
                    }
                }
            }
            MemberCommand::SetSigningKey {
                context,
                public_key,
            } => {
                let user_id = context.by.id.clone();
                if !self.members.contains_key(&user_id) {
                    return Err(MemberError::MemberNotFound(user_id));
                }
                let active = self.active_signing_key(&user_id);
                if active.is_some_and(|key| key.public_key == public_key) {
                    return Ok(Vec::new());
                }
                let key_id = public_key.key_id();
                if self.key_registered(&key_id) {
                    return Err(MemberError::SigningKeyInUse(key_id));
                }
                vec![MemberEvent::SigningKeyRegistered {
                    context: event_context,
                    user_id,
                    key_id,
                    public_key,
                    replaces: active.map(|key| key.key_id.clone()),
                }]
            }
            MemberCommand::RemoveSigningKey { context, user_id } => {
                if context.by.id != user_id && !context.by.is_admin() {
                    return Err(MemberError::NotKeyHolder {
                        attempted: "remove a member's signing key",
                    });
                }
                let key = self
                    .active_signing_key(&user_id)
                    .ok_or_else(|| MemberError::NoSigningKey(user_id.clone()))?;
                vec![MemberEvent::SigningKeyRemoved {
                    context: event_context,
                    key_id: key.key_id.clone(),
                    user_id,
                }]
            }
            MemberCommand::SetDefaultPreferences { defaults, .. } => {
                if self.tenant.is_some() && defaults == self.defaults {
                    return Ok(Vec::new());
                }
                vec![MemberEvent::DefaultPreferencesSet {
                    context: event_context,
                    defaults,
                }]
            }
        })
    }

    pub fn apply(&mut self, event: MemberEvent) {
        match event {
            MemberEvent::MemberAdded { context, member }
            | MemberEvent::MemberUpdated { context, member } => {
                self.tenant = Some(context.tenant);
                self.members.insert(member.user_id.clone(), member);
            }
            MemberEvent::MemberRemoved { context, user_id } => {
                self.tenant = Some(context.tenant);
                self.members.remove(&user_id);
            }
            MemberEvent::DefaultPreferencesSet { context, defaults } => {
                self.tenant = Some(context.tenant);
                self.defaults = defaults;
            }
            MemberEvent::SigningKeyRegistered {
                context,
                user_id,
                key_id,
                public_key,
                ..
            } => {
                let keys = self.signing_keys.entry(user_id).or_default();
                for key in keys.iter_mut().filter(|key| key.is_active()) {
                    key.retired_at = Some(context.at);
                    key.retired_by = Some(context.actor.clone());
                }
                keys.push(SigningKeyEntry {
                    key_id,
                    public_key,
                    registered_at: context.at,
                    retired_at: None,
                    retired_by: None,
                });
                self.tenant = Some(context.tenant);
            }
            MemberEvent::SigningKeyRemoved {
                context,
                user_id,
                key_id,
            } => {
                if let Some(key) = self
                    .signing_keys
                    .get_mut(&user_id)
                    .and_then(|keys| keys.iter_mut().find(|key| key.key_id == key_id))
                {
                    key.retired_at = Some(context.at);
                    key.retired_by = Some(context.actor.clone());
                }
                self.tenant = Some(context.tenant);
            }
        }
    }
}

decided_aggregate!(
    MemberDirectory,
    "member_directory",
    MemberCommand,
    MemberEvent,
    MemberError
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Principal;
    use chrono::TimeZone;

    fn context(roles: &[Role], seconds: i64) -> TenantCommandContext {
        TenantCommandContext {
            tenant: TenantId::parse("acme").expect("tenant"),
            by: Principal::new(UserId::parse("ada").expect("user"), roles.iter().cloned()),
            at: chrono::Utc
                .timestamp_opt(1_800_000_000 + seconds, 0)
                .single()
                .expect("time"),
            correlation_id: None,
        }
    }

    fn run(directory: &mut MemberDirectory, command: MemberCommand) -> Result<usize, MemberError> {
        let events = directory.decide(command)?;
        let count = events.len();
        for event in events {
            directory.apply(event);
        }
        Ok(count)
    }

    fn user(id: &str) -> UserId {
        UserId::parse(id).expect("user")
    }

    #[test]
    fn emails_are_checked_and_their_domain_lowercased() {
        assert_eq!(
            Email::parse(" Bob.Smith+x@Example.COM ")
                .expect("valid")
                .as_str(),
            "Bob.Smith+x@example.com"
        );
        for bad in [
            "",
            "bob",
            "@example.com",
            "bob@",
            "bob@localhost",
            "bob smith@example.com",
            "bob@exa mple.com",
            "bob@-example.com",
            "bob<x>@example.com",
            "bob@example..com",
            "bob\r\nBcc: eve@example.com",
        ] {
            let error = Email::parse(bad).expect_err(bad);
            assert_eq!(error.field, "email", "{bad}");
        }
        assert!(Email::parse(format!("{}@example.com", "a".repeat(250))).is_err());
    }

    /// The schema's pattern and `maxLength` describe exactly what `Email::parse` accepts: a
    /// fuzzer generating from the schema once found `…@q.0.I6.-0Qa….rascGc02` allowed by the
    /// pattern and refused by the parser.
    #[test]
    fn the_email_schema_allows_only_what_parse_accepts() {
        let pattern = regex::Regex::new(EMAIL_PATTERN).expect("pattern compiles");
        let long_label = "a".repeat(63);
        let too_long_label = "a".repeat(64);
        let at_limit = format!("{}@example.com", "é".repeat(MAX_EMAIL - 12));
        let over_limit = format!("{}@example.com", "é".repeat(MAX_EMAIL - 11));
        let candidates = [
            "bob@example.com",
            "Ō½\u{6ec23}n^*😍y3@q.0.I6.fQN.lhDEF-QSV.YId.-0QaIbqLAogCK0yL.rascGc02",
            "Ōy@q.0.I6.fQN.lhDEF-QSV.YId.0Qa-b.rascGc02",
            "bob@example-.com",
            "bob@ex--ample.com",
            "bob@a.b",
            &format!("bob@{long_label}.com"),
            &format!("bob@{too_long_label}.com"),
            &at_limit,
            &over_limit,
            "bob@example",
            "b\u{85}b@example.com",
            "b\u{a0}b@example.com",
            "bob\u{7f}@example.com",
            "bo\"b@example.com",
            "bob@exa_mple.com",
            "bob@1.2",
        ];
        for candidate in candidates {
            let allowed = pattern.is_match(candidate) && candidate.chars().count() <= MAX_EMAIL;
            let accepted = Email::parse(candidate).is_ok();
            assert_eq!(allowed, accepted, "{candidate:?}");
        }
        assert!(Email::parse(at_limit.as_str()).is_ok());
    }

    #[test]
    fn members_are_added_updated_and_removed_and_unknown_ones_are_refused() {
        let admin = [Role::admin()];
        let mut directory = MemberDirectory::default();
        let draft = MemberDraft {
            display_name: Some(" Bob ".into()),
            email: Some(Email::parse("bob@example.com").expect("email")),
            slack_user_id: Some(SlackUserId::parse("U123ABC").expect("slack")),
            roles: [Role::approver()].into(),
            preferences: None,
        };
        run(
            &mut directory,
            MemberCommand::AddMember {
                context: context(&admin, 0),
                user_id: user("bob"),
                draft: draft.clone(),
            },
        )
        .expect("added");
        assert_eq!(
            directory.members[&user("bob")].display_name.as_deref(),
            Some("Bob")
        );
        assert_eq!(
            run(
                &mut directory,
                MemberCommand::AddMember {
                    context: context(&admin, 1),
                    user_id: user("bob"),
                    draft: draft.clone(),
                }
            )
            .map_err(|e| e.code()),
            Err("member_exists")
        );
        assert_eq!(
            run(
                &mut directory,
                MemberCommand::UpdateMember {
                    context: context(&admin, 2),
                    user_id: user("bob"),
                    draft: draft.clone(),
                }
            ),
            Ok(0),
            "an identical update records nothing"
        );
        assert_eq!(
            run(
                &mut directory,
                MemberCommand::UpdateMember {
                    context: context(&admin, 3),
                    user_id: user("nobody"),
                    draft: draft.clone(),
                }
            )
            .map_err(|e| e.code()),
            Err("member_not_found")
        );
        assert_eq!(
            run(
                &mut directory,
                MemberCommand::UpdateMember {
                    context: context(&admin, 4),
                    user_id: user("bob"),
                    draft: MemberDraft {
                        roles: [Role::owner()].into(),
                        ..draft.clone()
                    },
                }
            )
            .map_err(|e| e.code()),
            Err("not_permitted"),
            "only an owner grants owner"
        );
        assert_eq!(
            run(
                &mut directory,
                MemberCommand::AddMember {
                    context: context(&admin, 4),
                    user_id: user("carl"),
                    draft: MemberDraft {
                        display_name: Some("   ".into()),
                        ..draft.clone()
                    },
                }
            )
            .map_err(|e| e.code()),
            Err("invalid_input")
        );
        run(
            &mut directory,
            MemberCommand::RemoveMember {
                context: context(&admin, 5),
                user_id: user("bob"),
            },
        )
        .expect("removed");
        assert!(directory.members.is_empty());
    }

    #[test]
    fn preferences_fall_back_to_the_tenant_defaults_and_filter_by_kind_and_risk() {
        let mut directory = MemberDirectory::default();
        run(
            &mut directory,
            MemberCommand::RecordClaims {
                context: context(&[Role::approver()], 0),
                display_name: Some("Ada".into()),
                email: None,
            },
        )
        .expect("claims add the member");
        let ada = directory.members[&user("ada")].clone();
        assert_eq!(ada.roles, [Role::approver()].into());
        let defaults = Preferences {
            min_risk: RiskLevel::Medium,
            ..Preferences::default()
        };
        run(
            &mut directory,
            MemberCommand::SetDefaultPreferences {
                context: context(&[Role::admin()], 1),
                defaults,
            },
        )
        .expect("defaults");
        let prefs = directory.preferences_of(&ada);
        assert!(!prefs.wants(
            NotificationChannel::Email,
            NotificationKind::Assigned,
            RiskLevel::Low
        ));
        assert!(prefs.wants(
            NotificationChannel::Email,
            NotificationKind::Assigned,
            RiskLevel::High
        ));
        let own = Preferences {
            email: KindSwitches {
                reminder: false,
                ..KindSwitches::ALL_ON
            },
            ..Preferences::default()
        };
        run(
            &mut directory,
            MemberCommand::SetPreferences {
                context: context(&[Role::approver()], 2),
                user_id: user("ada"),
                preferences: Some(own),
            },
        )
        .expect("own preferences");
        let prefs = directory.preferences_of(&directory.members[&user("ada")]);
        assert!(prefs.wants(
            NotificationChannel::Email,
            NotificationKind::Assigned,
            RiskLevel::Low
        ));
        assert!(!prefs.wants(
            NotificationChannel::Email,
            NotificationKind::Reminder,
            RiskLevel::High
        ));
        assert_eq!(
            run(
                &mut directory,
                MemberCommand::RecordClaims {
                    context: context(&[Role::approver()], 3),
                    display_name: Some("Ada".into()),
                    email: None,
                },
            ),
            Ok(0),
            "unchanged claims record nothing"
        );
    }

    #[test]
    fn a_member_registers_rotates_and_loses_a_signing_key_and_old_keys_stay_listed() {
        let mut directory = MemberDirectory::default();
        let ada = [Role::approver()];
        let first = crate::signing::VoteSigner::from_seed([1; 32]).public_key();
        let second = crate::signing::VoteSigner::from_seed([2; 32]).public_key();
        let set = |key: &VotePublicKey, seconds| MemberCommand::SetSigningKey {
            context: context(&ada, seconds),
            public_key: key.clone(),
        };
        assert_eq!(
            run(&mut directory, set(&first, 0)).map_err(|e| e.code()),
            Err("member_not_found"),
            "a member of the directory registers a key"
        );
        run(
            &mut directory,
            MemberCommand::RecordClaims {
                context: context(&ada, 0),
                display_name: None,
                email: None,
            },
        )
        .expect("added");
        assert_eq!(run(&mut directory, set(&first, 1)), Ok(1));
        assert_eq!(
            run(&mut directory, set(&first, 2)),
            Ok(0),
            "same key: nothing"
        );
        assert_eq!(run(&mut directory, set(&second, 3)), Ok(1), "rotation");
        assert_eq!(
            run(&mut directory, set(&first, 4)).map_err(|e| e.code()),
            Err("signing_key_in_use"),
            "a retired key never comes back"
        );
        let keys = directory.signing_keys_of(&user("ada"));
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].public_key, first);
        assert!(!keys[0].is_active() && keys[1].is_active());
        assert_eq!(
            directory
                .active_signing_key(&user("ada"))
                .map(|key| key.public_key.clone()),
            Some(second)
        );
        assert_eq!(
            run(
                &mut directory,
                MemberCommand::RemoveSigningKey {
                    context: TenantCommandContext {
                        by: Principal::new(user("bob"), [Role::approver()]),
                        ..context(&[], 5)
                    },
                    user_id: user("ada"),
                }
            )
            .map_err(|e| e.code()),
            Err("not_permitted"),
            "another member may not remove it"
        );
        let remove = MemberCommand::RemoveSigningKey {
            context: TenantCommandContext {
                by: Principal::new(user("olga"), [Role::admin()]),
                ..context(&[], 6)
            },
            user_id: user("ada"),
        };
        assert_eq!(run(&mut directory, remove.clone()), Ok(1));
        assert!(directory.active_signing_key(&user("ada")).is_none());
        assert_eq!(directory.signing_keys_of(&user("ada")).len(), 2, "kept");
        assert_eq!(
            run(&mut directory, remove).map_err(|e| e.code()),
            Err("signing_key_not_found")
        );
    }
}
