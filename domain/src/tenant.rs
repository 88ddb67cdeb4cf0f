//! A tenant's configuration as event-sourced aggregates, one stream each per tenant (aggregate
//! id = the tenant id): its approval policies (`policy_set`), its settings (`tenant_settings`:
//! mode and default policy) and its API keys (`api_keys`). Every change is an event, so the
//! policy in force at any past moment can be reconstructed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::address;
use crate::criteria::Criteria;
use crate::policy::{Policy, Requirements};
use crate::{
    CorrelationId, ParseError, PolicyId, Principal, Role, TenantId, TenantMode, Timestamp, UserId,
    check_name, document,
};

/// The longest policy name, in characters.
pub const MAX_POLICY_NAME: usize = 200;
/// The longest API key name, in characters.
pub const MAX_API_KEY_NAME: usize = 100;

/// The schema of a policy's name: what [`check_name`] accepts with [`MAX_POLICY_NAME`].
pub fn policy_name_schema(_: &mut SchemaGenerator) -> Schema {
    name_schema(MAX_POLICY_NAME)
}

/// The schema of an API key's name: what [`check_name`] accepts with [`MAX_API_KEY_NAME`].
pub fn api_key_name_schema(_: &mut SchemaGenerator) -> Schema {
    name_schema(MAX_API_KEY_NAME)
}

fn name_schema(max: usize) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": crate::text::name_pattern(max),
    })
}

/// Who, when and why, for tenant-level events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TenantEventContext {
    pub tenant: TenantId,
    pub actor: UserId,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<CorrelationId>,
}

/// Who asks, for which tenant, when (tenant-level commands).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TenantCommandContext {
    pub tenant: TenantId,
    pub by: Principal,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<CorrelationId>,
}

impl TenantCommandContext {
    fn event_context(&self) -> TenantEventContext {
        TenantEventContext {
            tenant: self.tenant.clone(),
            actor: self.by.id.clone(),
            at: self.at,
            correlation_id: self.correlation_id.clone(),
        }
    }
}

/// Why a tenant-level command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    /// A name or document in the command is not acceptable (see [`crate::document`] and
    /// [`crate::check_name`]). Handling: 422 naming the field.
    #[error(transparent)]
    InvalidInput(ParseError),
    /// Handling: 409.
    #[error("policy `{0}` already exists")]
    PolicyExists(PolicyId),
    /// Handling: 404.
    #[error("policy `{0}` not found")]
    PolicyNotFound(PolicyId),
    /// The command names another tenant than the stream's. Handling: 404.
    #[error("not found")]
    WrongTenant,
    /// Handling: 409.
    #[error("API key `{0}` already exists")]
    ApiKeyExists(String),
    /// Handling: 404.
    #[error("API key `{0}` not found")]
    ApiKeyNotFound(String),
    /// The principal may not grant what the command grants. Handling: 403.
    #[error("only an owner may {attempted}")]
    NotPermitted { attempted: &'static str },
    /// The update names a version that is no longer the current one. Handling: 409.
    #[error("policy `{id}` is at version {current}, not {expected}")]
    StaleVersion {
        id: PolicyId,
        current: u32,
        expected: u32,
    },
}

impl TenantError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "invalid_input",
            Self::PolicyExists(_) => "policy_exists",
            Self::PolicyNotFound(_) => "policy_not_found",
            Self::WrongTenant => "not_found",
            Self::ApiKeyExists(_) => "api_key_exists",
            Self::ApiKeyNotFound(_) => "api_key_not_found",
            Self::StaleVersion { .. } => "stale_version",
            Self::NotPermitted { .. } => "not_permitted",
        }
    }
}

// ------------------------------------------------------------------------------------ policies

/// A policy's editable fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyDraft {
    /// 1 to 200 characters once trimmed, readable and visible.
    #[schemars(schema_with = "policy_name_schema")]
    pub name: String,
    #[serde(default)]
    #[schemars(extend("minimum" = i32::MIN, "maximum" = i32::MAX))]
    pub priority: i32,
    #[serde(default = "match_all")]
    pub criteria: Criteria,
    pub requirements: Requirements,
}

impl PolicyDraft {
    /// What a new or changed policy must satisfy beyond its types: a visible name and a criteria
    /// document every reader of the log can decode.
    pub fn check(&self) -> Result<(), ParseError> {
        check_name(&self.name, "name", MAX_POLICY_NAME)?;
        document::check(self.criteria.document(), "criteria")
    }
}

fn match_all() -> Criteria {
    Criteria::always()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum PolicyCommand {
    CreatePolicy {
        context: TenantCommandContext,
        id: PolicyId,
        draft: PolicyDraft,
    },
    /// Replaces a policy's fields; `expected_version` guards against lost updates.
    UpdatePolicy {
        context: TenantCommandContext,
        id: PolicyId,
        draft: PolicyDraft,
        expected_version: Option<u32>,
    },
    DeletePolicy {
        context: TenantCommandContext,
        id: PolicyId,
    },
}

impl PolicyCommand {
    fn context(&self) -> &TenantCommandContext {
        match self {
            Self::CreatePolicy { context, .. }
            | Self::UpdatePolicy { context, .. }
            | Self::DeletePolicy { context, .. } => context,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum PolicyEvent {
    PolicyCreated {
        #[serde(flatten)]
        context: TenantEventContext,
        policy: Policy,
    },
    PolicyUpdated {
        #[serde(flatten)]
        context: TenantEventContext,
        policy: Policy,
    },
    PolicyDeleted {
        #[serde(flatten)]
        context: TenantEventContext,
        id: PolicyId,
        version: u32,
    },
}

impl cqrs_es::DomainEvent for PolicyEvent {
    fn event_type(&self) -> String {
        match self {
            Self::PolicyCreated { .. } => "PolicyCreated",
            Self::PolicyUpdated { .. } => "PolicyUpdated",
            Self::PolicyDeleted { .. } => "PolicyDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// A tenant's policies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicySet {
    pub tenant: Option<TenantId>,
    pub policies: BTreeMap<PolicyId, Policy>,
}

impl PolicySet {
    pub fn list(&self) -> Vec<Policy> {
        self.policies.values().cloned().collect()
    }

    fn check_tenant(&self, context: &TenantCommandContext) -> Result<(), TenantError> {
        match &self.tenant {
            Some(tenant) if *tenant != context.tenant => Err(TenantError::WrongTenant),
            _ => Ok(()),
        }
    }

    pub fn decide(&self, command: PolicyCommand) -> Result<Vec<PolicyEvent>, TenantError> {
        self.check_tenant(command.context())?;
        if let PolicyCommand::CreatePolicy { draft, .. }
        | PolicyCommand::UpdatePolicy { draft, .. } = &command
        {
            draft.check().map_err(TenantError::InvalidInput)?;
        }
        Ok(match command {
            PolicyCommand::CreatePolicy { context, id, draft } => {
                if self.policies.contains_key(&id) {
                    return Err(TenantError::PolicyExists(id));
                }
                vec![PolicyEvent::PolicyCreated {
                    policy: Policy {
                        id,
                        version: 1,
                        name: draft.name,
                        priority: draft.priority,
                        criteria: draft.criteria,
                        requirements: draft.requirements,
                        created_at: context.at,
                    },
                    context: context.event_context(),
                }]
            }
            PolicyCommand::UpdatePolicy {
                context,
                id,
                draft,
                expected_version,
            } => {
                let current = self
                    .policies
                    .get(&id)
                    .ok_or_else(|| TenantError::PolicyNotFound(id.clone()))?;
                if let Some(expected) = expected_version.filter(|v| *v != current.version) {
                    return Err(TenantError::StaleVersion {
                        id,
                        current: current.version,
                        expected,
                    });
                }
                let policy = Policy {
                    id,
                    version: current.version + 1,
                    name: draft.name,
                    priority: draft.priority,
                    criteria: draft.criteria,
                    requirements: draft.requirements,
                    created_at: current.created_at,
                };
                if policy.name == current.name
                    && policy.priority == current.priority
                    && policy.criteria == current.criteria
                    && policy.requirements == current.requirements
                {
                    return Ok(Vec::new());
                }
                vec![PolicyEvent::PolicyUpdated {
                    context: context.event_context(),
                    policy,
                }]
            }
            PolicyCommand::DeletePolicy { context, id } => {
                let current = self
                    .policies
                    .get(&id)
                    .ok_or_else(|| TenantError::PolicyNotFound(id.clone()))?;
                vec![PolicyEvent::PolicyDeleted {
                    context: context.event_context(),
                    version: current.version,
                    id,
                }]
            }
        })
    }

    pub fn apply(&mut self, event: PolicyEvent) {
        match event {
            PolicyEvent::PolicyCreated { context, policy }
            | PolicyEvent::PolicyUpdated { context, policy } => {
                self.tenant = Some(context.tenant);
                self.policies.insert(policy.id.clone(), policy);
            }
            PolicyEvent::PolicyDeleted { id, .. } => {
                self.policies.remove(&id);
            }
        }
    }
}

// ------------------------------------------------------------------------------------ settings

/// Where the `webhook.post` capability delivers this tenant's payloads: an `http` or `https` URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(extend(
    // No whitespace (Unicode `White_Space`, spelled out) and no U+0000, which no JSON body may
    // carry; at most 2048 bytes, which `maxLength` (characters) states for ASCII URLs.
    "pattern" = r"^https?://[^\u0000\t-\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]+$",
    "maxLength" = 2048
))]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn parse(value: impl Into<String>) -> Result<Self, ParseError> {
        let value = value.into();
        let scheme_ok = value.starts_with("http://") || value.starts_with("https://");
        let host = value.split("://").nth(1).unwrap_or_default();
        if !scheme_ok
            || host.is_empty()
            || value.len() > 2048
            || value.chars().any(char::is_whitespace)
        {
            return Err(ParseError::new(
                "webhook_url",
                "must be an http:// or https:// URL",
            ));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where the URL points, checked when a setting saves it. Parsed as the executor parses it
    /// (the `url` crate); an IP literal that no allow-list may open (unspecified, multicast,
    /// broadcast, the cloud metadata addresses: [`address::Refusal::always`]) is refused.
    /// Loopback and private literals pass here: whether they may be reached is the operator's
    /// allow-list (`COUNTERSIGN_OUTBOUND_ALLOW`), which only the executor knows and applies when
    /// it sends; names are resolved and checked then too. Not part of [`Self::parse`], so that
    /// settings already recorded always load.
    pub fn check_destination(&self) -> Result<(), ParseError> {
        let url = url::Url::parse(&self.0)
            .map_err(|err| ParseError::new("webhook_url", format!("not a valid URL: {err}")))?;
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(ParseError::new("webhook_url", "must name a host")),
        };
        match address::refusal(ip) {
            Some(refusal) if refusal.always() => Err(ParseError::new(
                "webhook_url",
                format!(
                    "refused: {ip} is {}, which no outbound request may reach",
                    refusal.describe()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The URL as shown to people: credentials in its userinfo (`https://user:pass@host/…`)
    /// replaced by `***` (`https://***@host/…`). Only the executor needs the real URL.
    pub fn redacted(&self) -> Self {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.clone();
        };
        // The authority ends where the path, query or fragment begins (`\` too, as URL parsers
        // treat it like `/` in http and https URLs); userinfo ends at its last `@`.
        let end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        match authority.rfind('@') {
            Some(at) => Self(format!(
                "{scheme}://{REDACTED}@{}{tail}",
                &authority[at + 1..]
            )),
            None => self.clone(),
        }
    }

    fn has_credentials(&self) -> bool {
        *self != self.redacted()
    }

    /// The authority's userinfo (`user:pass` of `https://user:pass@host/…`), if any.
    fn userinfo(&self) -> Option<&str> {
        let (_, rest) = self.0.split_once("://")?;
        let end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        authority.rfind('@').map(|at| &authority[..at])
    }

    /// Real credentials in the URL (not the redacted marker): what must be stored apart.
    pub fn credentials(&self) -> Option<&str> {
        self.userinfo().filter(|userinfo| *userinfo != REDACTED)
    }

    /// Whether the URL's credentials were stored apart (its userinfo is the redacted marker).
    pub fn has_stored_credentials(&self) -> bool {
        self.userinfo() == Some(REDACTED)
    }

    /// The URL with its redacted marker replaced by `credentials`, for the executor alone.
    #[must_use]
    pub fn with_credentials(&self, credentials: &str) -> Self {
        match self.0.split_once(&format!("://{REDACTED}@")) {
            Some((scheme, rest)) if self.has_stored_credentials() => {
                Self(format!("{scheme}://{credentials}@{rest}"))
            }
            _ => self.clone(),
        }
    }

    /// The name the URL's credentials are stored apart under: one per redacted URL, so that a
    /// secret never pairs with another URL's host.
    pub fn secret_name(&self) -> String {
        format!("webhook_url:{}", self.redacted().as_str())
    }
}

/// What replaces a webhook URL's credentials wherever it is shown.
pub const REDACTED: &str = "***";

impl TryFrom<String> for WebhookUrl {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<WebhookUrl> for String {
    fn from(value: WebhookUrl) -> Self {
        value.0
    }
}

/// A tenant's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub mode: TenantMode,
    /// What applies when no policy matches.
    pub default_requirements: Requirements,
    /// Where `webhook.post` actions deliver their payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<WebhookUrl>,
    /// How long after a break-glass approval its review is due (then it escalates). Settings
    /// recorded before it existed mean the default, a day.
    #[serde(default, skip_serializing_if = "ReviewWindow::is_default")]
    pub break_glass_review_seconds: ReviewWindow,
}

/// How long a break-glass review may wait, in seconds: one second to thirty days (default a day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "u32", into = "u32")]
#[schemars(extend("minimum" = 1, "maximum" = 2_592_000, "default" = 86_400))]
pub struct ReviewWindow(u32);

impl ReviewWindow {
    pub const MAX: u32 = 2_592_000;
    pub const DAY: Self = Self(86_400);

    pub fn parse(seconds: u32) -> Result<Self, ParseError> {
        if seconds == 0 || seconds > Self::MAX {
            return Err(ParseError::new(
                "break_glass_review_seconds",
                "must be between 1 and 2592000 seconds (30 days)",
            ));
        }
        Ok(Self(seconds))
    }

    pub fn duration(self) -> chrono::Duration {
        chrono::Duration::seconds(i64::from(self.0))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    fn is_default(&self) -> bool {
        *self == Self::DAY
    }
}

impl Default for ReviewWindow {
    fn default() -> Self {
        Self::DAY
    }
}

impl TryFrom<u32> for ReviewWindow {
    type Error = ParseError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<ReviewWindow> for u32 {
    fn from(value: ReviewWindow) -> Self {
        value.0
    }
}

impl Settings {
    /// The settings as shown to people: the webhook URL's credentials redacted.
    pub fn redacted(&self) -> Self {
        Self {
            webhook_url: self.webhook_url.as_ref().map(WebhookUrl::redacted),
            ..self.clone()
        }
    }

    /// `self` as sent back by a client that read `current` redacted: a webhook URL equal to
    /// the current one's redacted form keeps the current URL (its credentials were never
    /// shown, so the client could not send them).
    fn keeping_credentials_of(mut self, current: &Self) -> Self {
        if let (Some(sent), Some(current)) = (&self.webhook_url, &current.webhook_url)
            && current.has_credentials()
            && *sent == current.redacted()
        {
            self.webhook_url = Some(current.clone());
        }
        self
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mode: TenantMode::RequireApproval,
            default_requirements: Requirements::builtin_default(),
            webhook_url: None,
            break_glass_review_seconds: ReviewWindow::DAY,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum SettingsCommand {
    UpdateSettings {
        context: TenantCommandContext,
        settings: Settings,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum SettingsEvent {
    SettingsUpdated {
        #[serde(flatten)]
        context: TenantEventContext,
        settings: Settings,
    },
}

impl cqrs_es::DomainEvent for SettingsEvent {
    fn event_type(&self) -> String {
        "SettingsUpdated".to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// A tenant's settings stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantSettings {
    pub tenant: Option<TenantId>,
    pub settings: Settings,
}

impl TenantSettings {
    pub fn decide(&self, command: SettingsCommand) -> Result<Vec<SettingsEvent>, TenantError> {
        let SettingsCommand::UpdateSettings { context, settings } = command;
        let settings = settings.keeping_credentials_of(&self.settings);
        if self
            .tenant
            .as_ref()
            .is_some_and(|tenant| *tenant != context.tenant)
        {
            return Err(TenantError::WrongTenant);
        }
        if self.tenant.is_some() && settings == self.settings {
            return Ok(Vec::new());
        }
        // Only a new URL is checked: a recorded one never stops other settings (safe mode) from
        // changing.
        if let Some(url) = &settings.webhook_url
            && self.settings.webhook_url.as_ref() != Some(url)
        {
            url.check_destination().map_err(TenantError::InvalidInput)?;
        }
        Ok(vec![SettingsEvent::SettingsUpdated {
            context: context.event_context(),
            settings,
        }])
    }

    pub fn apply(&mut self, event: SettingsEvent) {
        let SettingsEvent::SettingsUpdated { context, settings } = event;
        self.tenant = Some(context.tenant);
        self.settings = settings;
    }
}

// ------------------------------------------------------------------------------------ API keys

/// An API key as stored: never the secret, only its keyed digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApiKeyRecord {
    pub key_id: String,
    pub name: String,
    pub roles: BTreeSet<Role>,
    /// Hex of the keyed blake3 digest of the secret.
    pub digest: String,
    pub created_by: UserId,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum ApiKeyCommand {
    CreateApiKey {
        context: TenantCommandContext,
        key_id: String,
        #[schemars(schema_with = "api_key_name_schema")]
        name: String,
        roles: BTreeSet<Role>,
        digest: String,
    },
    RevokeApiKey {
        context: TenantCommandContext,
        key_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum ApiKeyEvent {
    ApiKeyCreated {
        #[serde(flatten)]
        context: TenantEventContext,
        key_id: String,
        name: String,
        roles: BTreeSet<Role>,
        digest: String,
    },
    ApiKeyRevoked {
        #[serde(flatten)]
        context: TenantEventContext,
        key_id: String,
    },
}

impl cqrs_es::DomainEvent for ApiKeyEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ApiKeyCreated { .. } => "ApiKeyCreated",
            Self::ApiKeyRevoked { .. } => "ApiKeyRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// A tenant's API keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiKeys {
    pub tenant: Option<TenantId>,
    pub keys: BTreeMap<String, ApiKeyRecord>,
}

impl ApiKeys {
    pub fn decide(&self, command: ApiKeyCommand) -> Result<Vec<ApiKeyEvent>, TenantError> {
        let context = match &command {
            ApiKeyCommand::CreateApiKey { context, .. }
            | ApiKeyCommand::RevokeApiKey { context, .. } => context,
        };
        if self
            .tenant
            .as_ref()
            .is_some_and(|tenant| *tenant != context.tenant)
        {
            return Err(TenantError::WrongTenant);
        }
        Ok(match command {
            ApiKeyCommand::CreateApiKey {
                context,
                key_id,
                name,
                roles,
                digest,
            } => {
                check_name(&name, "name", MAX_API_KEY_NAME).map_err(TenantError::InvalidInput)?;
                if roles.contains(&Role::owner()) && !context.by.has_role(&Role::owner()) {
                    return Err(TenantError::NotPermitted {
                        attempted: "create a key with the owner role",
                    });
                }
                if self.keys.contains_key(&key_id) {
                    return Err(TenantError::ApiKeyExists(key_id));
                }
                vec![ApiKeyEvent::ApiKeyCreated {
                    context: context.event_context(),
                    key_id,
                    name,
                    roles,
                    digest,
                }]
            }
            ApiKeyCommand::RevokeApiKey { context, key_id } => match self.keys.get(&key_id) {
                None => return Err(TenantError::ApiKeyNotFound(key_id)),
                Some(key) if key.revoked_at.is_some() => Vec::new(),
                Some(_) => vec![ApiKeyEvent::ApiKeyRevoked {
                    context: context.event_context(),
                    key_id,
                }],
            },
        })
    }

    pub fn apply(&mut self, event: ApiKeyEvent) {
        match event {
            ApiKeyEvent::ApiKeyCreated {
                context,
                key_id,
                name,
                roles,
                digest,
            } => {
                self.tenant = Some(context.tenant);
                self.keys.insert(
                    key_id.clone(),
                    ApiKeyRecord {
                        key_id,
                        name,
                        roles,
                        digest,
                        created_by: context.actor,
                        created_at: context.at,
                        revoked_at: None,
                    },
                );
            }
            ApiKeyEvent::ApiKeyRevoked { context, key_id } => {
                if let Some(key) = self.keys.get_mut(&key_id) {
                    key.revoked_at = Some(context.at);
                }
            }
        }
    }
}

decided_aggregate!(
    PolicySet,
    "policy_set",
    PolicyCommand,
    PolicyEvent,
    TenantError
);
decided_aggregate!(
    TenantSettings,
    "tenant_settings",
    SettingsCommand,
    SettingsEvent,
    TenantError
);
decided_aggregate!(ApiKeys, "api_keys", ApiKeyCommand, ApiKeyEvent, TenantError);

/// Parses a policy draft from JSON, naming the offending path (criteria paths included).
pub fn parse_draft(document: &Value) -> Result<PolicyDraft, ParseError> {
    serde_path_to_error::deserialize(document).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner().to_string();
        ParseError::new(if path == "." { String::new() } else { path }, inner)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;
    use chrono::TimeZone;
    use serde_json::json;

    fn context(tenant: &str, seconds: i64) -> TenantCommandContext {
        TenantCommandContext {
            tenant: TenantId::parse(tenant).expect("tenant"),
            by: Principal::new(UserId::parse("ada").expect("user"), [Role::admin()]),
            at: chrono::Utc
                .timestamp_opt(1_800_000_000 + seconds, 0)
                .single()
                .expect("time"),
            correlation_id: None,
        }
    }

    fn draft(name: &str, priority: i32) -> PolicyDraft {
        parse_draft(&json!({
            "name": name, "priority": priority, "criteria": { "module": "billing" },
            "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 2 }] }] }
        }))
        .expect("draft")
    }

    fn run(set: &mut PolicySet, command: PolicyCommand) -> Result<usize, TenantError> {
        let events = set.decide(command)?;
        let count = events.len();
        for event in events {
            set.apply(event);
        }
        Ok(count)
    }

    #[test]
    fn policies_are_created_versioned_on_update_and_deleted() {
        let mut set = PolicySet::default();
        let id = PolicyId::parse("refunds").expect("id");
        run(
            &mut set,
            PolicyCommand::CreatePolicy {
                context: context("acme", 0),
                id: id.clone(),
                draft: draft("Refunds", 5),
            },
        )
        .expect("create");
        assert_eq!(set.policies[&id].version, 1);
        assert_eq!(
            run(
                &mut set,
                PolicyCommand::CreatePolicy {
                    context: context("acme", 1),
                    id: id.clone(),
                    draft: draft("Again", 1)
                }
            ),
            Err(TenantError::PolicyExists(id.clone()))
        );
        run(
            &mut set,
            PolicyCommand::UpdatePolicy {
                context: context("acme", 2),
                id: id.clone(),
                draft: draft("Refunds v2", 9),
                expected_version: Some(1),
            },
        )
        .expect("update");
        let updated = &set.policies[&id];
        assert_eq!(
            (updated.version, updated.priority, updated.name.as_str()),
            (2, 9, "Refunds v2")
        );
        assert_eq!(
            updated.created_at,
            context("acme", 0).at,
            "creation time is kept for priority ties"
        );
        assert_eq!(
            run(
                &mut set,
                PolicyCommand::UpdatePolicy {
                    context: context("acme", 3),
                    id: id.clone(),
                    draft: draft("x", 1),
                    expected_version: Some(1)
                }
            )
            .map_err(|e| e.code()),
            Err("stale_version")
        );
        assert_eq!(
            run(
                &mut set,
                PolicyCommand::UpdatePolicy {
                    context: context("acme", 4),
                    id: id.clone(),
                    draft: draft("Refunds v2", 9),
                    expected_version: None
                }
            ),
            Ok(0),
            "an identical update records nothing"
        );
        run(
            &mut set,
            PolicyCommand::DeletePolicy {
                context: context("acme", 5),
                id: id.clone(),
            },
        )
        .expect("delete");
        assert!(set.policies.is_empty());
        assert_eq!(
            run(
                &mut set,
                PolicyCommand::DeletePolicy {
                    context: context("acme", 6),
                    id: id.clone()
                }
            )
            .map_err(|e| e.code()),
            Err("policy_not_found")
        );
        assert_eq!(
            run(
                &mut set,
                PolicyCommand::CreatePolicy {
                    context: context("globex", 7),
                    id,
                    draft: draft("x", 1)
                }
            ),
            Err(TenantError::WrongTenant)
        );
    }

    #[test]
    fn invalid_drafts_name_the_offending_path() {
        let err = parse_draft(&json!({ "name": "x", "criteria": { "risk.lvl": "high" }, "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }] } }))
            .expect_err("invalid criteria");
        assert!(err.to_string().contains("criteria.risk.lvl"), "{err}");
        let err = parse_draft(&json!({ "name": "x", "requirements": { "stages": [] } }))
            .expect_err("no stages");
        assert_eq!(err.field, "requirements.stages");
    }

    #[test]
    fn webhook_url_credentials_split_apart_and_come_back_only_to_their_url() {
        let url = WebhookUrl::parse("https://crm:s3cr@t@hooks.example/in?x=1").expect("url");
        assert_eq!(url.credentials(), Some("crm:s3cr@t"));
        let stored = url.redacted();
        assert_eq!(stored.as_str(), "https://***@hooks.example/in?x=1");
        assert!(stored.has_stored_credentials() && stored.credentials().is_none());
        assert_eq!(stored.with_credentials("crm:s3cr@t"), url);
        assert_eq!(url.secret_name(), stored.secret_name());
        let other = WebhookUrl::parse("https://crm:s3cr@t@evil.example/in").expect("url");
        assert_ne!(other.secret_name(), url.secret_name());
        let plain = WebhookUrl::parse("https://hooks.example/in").expect("url");
        assert!(plain.credentials().is_none() && !plain.has_stored_credentials());
        assert_eq!(plain.with_credentials("x:y"), plain);
    }

    #[test]
    fn webhook_url_credentials_are_redacted_and_nothing_else() {
        let redacted = |url: &str| {
            WebhookUrl::parse(url)
                .expect("valid")
                .redacted()
                .as_str()
                .to_owned()
        };
        assert_eq!(
            redacted("https://user:pass@hooks.example.com/x?y=1"),
            "https://***@hooks.example.com/x?y=1"
        );
        assert_eq!(
            redacted("https://token@hooks.example.com"),
            "https://***@hooks.example.com"
        );
        assert_eq!(
            redacted("http://u:p@ss@hooks.example.com:8080/a@b"),
            "http://***@hooks.example.com:8080/a@b"
        );
        assert_eq!(
            redacted("https://hooks.example.com/a@b#c@d"),
            "https://hooks.example.com/a@b#c@d"
        );
        assert_eq!(
            redacted("https://u:p@hooks.example.com\\x@y"),
            "https://***@hooks.example.com\\x@y"
        );
    }

    #[test]
    fn settings_sent_back_redacted_keep_the_webhook_credentials() {
        let secret = WebhookUrl::parse("https://user:pass@hooks.example.com/x").expect("url");
        let mut current = TenantSettings::default();
        for event in current
            .decide(SettingsCommand::UpdateSettings {
                context: context("acme", 0),
                settings: Settings {
                    webhook_url: Some(secret.clone()),
                    ..Settings::default()
                },
            })
            .expect("update")
        {
            current.apply(event);
        }
        let mut echoed = current.settings.redacted();
        assert_eq!(
            echoed.webhook_url.as_ref().map(WebhookUrl::as_str),
            Some("https://***@hooks.example.com/x")
        );
        echoed.mode = TenantMode::Safe;
        let events = current
            .decide(SettingsCommand::UpdateSettings {
                context: context("acme", 1),
                settings: echoed,
            })
            .expect("update");
        let [SettingsEvent::SettingsUpdated { settings, .. }] = events.as_slice() else {
            panic!("one update: {events:?}");
        };
        assert_eq!(settings.webhook_url, Some(secret));
        assert_eq!(settings.mode, TenantMode::Safe);
        let replaced = WebhookUrl::parse("https://***@other.example.com/x").expect("url");
        let events = current
            .decide(SettingsCommand::UpdateSettings {
                context: context("acme", 2),
                settings: Settings {
                    webhook_url: Some(replaced.clone()),
                    ..Settings::default()
                },
            })
            .expect("update");
        let [SettingsEvent::SettingsUpdated { settings, .. }] = events.as_slice() else {
            panic!("one update: {events:?}");
        };
        assert_eq!(
            settings.webhook_url,
            Some(replaced),
            "another host is a new URL"
        );
    }

    #[test]
    fn a_new_webhook_url_to_an_address_nothing_may_reach_is_refused_when_saved() {
        let save = |current: &TenantSettings, url: &str, version| {
            current.decide(SettingsCommand::UpdateSettings {
                context: context("acme", version),
                settings: Settings {
                    webhook_url: Some(WebhookUrl::parse(url).expect("parses")),
                    ..Settings::default()
                },
            })
        };
        let empty = TenantSettings::default();
        for url in [
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:169.254.169.254]/",
            "http://[fd00:ec2::254]/",
            "http://0.0.0.0:5432/",
            "http://[::]/",
            "http://224.0.0.1/",
            "http://[ff02::1]/",
            "http://255.255.255.255/",
            "http://0/",
        ] {
            let Err(TenantError::InvalidInput(error)) = save(&empty, url, 0) else {
                panic!("{url} is refused");
            };
            assert_eq!(error.field, "webhook_url", "{url}");
            assert!(error.message.starts_with("refused: "), "{url}: {error}");
        }
        let Err(TenantError::InvalidInput(error)) = save(&empty, "http://[::1", 0) else {
            panic!("not a URL");
        };
        assert!(error.message.contains("not a valid URL"), "{error}");
        // The operator's allow-list decides these when the executor sends; names are resolved
        // only then.
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://10.0.0.1/",
            "http://[::1]/",
            "https://hooks.example.com/in",
            "http://localhost/",
        ] {
            assert!(save(&empty, url, 0).is_ok(), "{url}");
        }
        // A URL recorded before the check never stops another setting from changing.
        let mut recorded = TenantSettings::default();
        recorded.apply(SettingsEvent::SettingsUpdated {
            context: context("acme", 0).event_context(),
            settings: Settings {
                webhook_url: Some(WebhookUrl::parse("http://0.0.0.0/").expect("parses")),
                ..Settings::default()
            },
        });
        let mut safe = recorded.settings.clone();
        safe.mode = TenantMode::Safe;
        assert!(
            recorded
                .decide(SettingsCommand::UpdateSettings {
                    context: context("acme", 1),
                    settings: safe,
                })
                .is_ok()
        );
    }

    #[test]
    fn settings_and_api_keys_fold_their_events() {
        let mut settings = TenantSettings::default();
        assert_eq!(settings.settings.mode, TenantMode::RequireApproval);
        let update = Settings {
            mode: TenantMode::Safe,
            default_requirements: Requirements::builtin_default(),
            webhook_url: None,
            break_glass_review_seconds: ReviewWindow::DAY,
        };
        assert!(WebhookUrl::parse("ftp://x").is_err() && WebhookUrl::parse("https://").is_err());
        assert!(WebhookUrl::parse("https://hooks.example.com/countersign").is_ok());
        for event in settings
            .decide(SettingsCommand::UpdateSettings {
                context: context("acme", 0),
                settings: update.clone(),
            })
            .expect("update")
        {
            settings.apply(event);
        }
        assert_eq!(settings.settings.mode, TenantMode::Safe);
        assert!(
            settings
                .decide(SettingsCommand::UpdateSettings {
                    context: context("acme", 1),
                    settings: update
                })
                .expect("same")
                .is_empty()
        );

        let mut keys = ApiKeys::default();
        let create = ApiKeyCommand::CreateApiKey {
            context: context("acme", 0),
            key_id: "k1".into(),
            name: "billing service".into(),
            roles: [Role::parse("requester").expect("role")].into(),
            digest: "ab".repeat(32),
        };
        for event in keys.decide(create).expect("create") {
            keys.apply(event);
        }
        for event in keys
            .decide(ApiKeyCommand::RevokeApiKey {
                context: context("acme", 1),
                key_id: "k1".into(),
            })
            .expect("revoke")
        {
            keys.apply(event);
        }
        assert!(keys.keys["k1"].revoked_at.is_some());
        assert!(
            keys.decide(ApiKeyCommand::RevokeApiKey {
                context: context("acme", 2),
                key_id: "k1".into()
            })
            .expect("again")
            .is_empty()
        );
        assert_eq!(
            keys.decide(ApiKeyCommand::RevokeApiKey {
                context: context("acme", 2),
                key_id: "k9".into()
            })
            .map_err(|e| e.code()),
            Err("api_key_not_found")
        );
    }
}
