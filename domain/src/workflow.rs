//! Workflows: a tenant's rules that turn domain events (CloudEvents published by its services)
//! into governed actions. Three aggregates, all pure:
//!
//! - [`WorkflowSet`] (`workflow_set`, one stream per tenant): the tenant's versioned definitions —
//!   triggers (event types), a condition in the criteria language of policies evaluated over the
//!   event, constants, ordered steps, an enabled flag.
//! - [`IntakeEvent`] (`intake_event`, one stream per tenant and event id): the event as received
//!   and the runs it starts. The stream's uniqueness (optimistic concurrency on its first event)
//!   is what makes a repeated event id a no-op, whatever the transport's duplicate window.
//! - [`WorkflowRun`] (`workflow_run`, one stream per run): a run's timeline, from the snapshot
//!   of the workflow and the event it started with; the next step is decided from the run alone.
//!
//! Payload templates are rendered with minijinja, in an environment that sees only the event
//! and the workflow's constants, with bounded fuel and a bounded output.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::criteria::Criteria;
use crate::submission::Submission;
use crate::tenant::{TenantCommandContext, TenantEventContext};
use crate::{ActionId, ParseError, TenantId, Timestamp, check_name, document};

/// The longest workflow name, in characters.
pub const MAX_NAME: usize = 200;
/// The most event types one workflow listens to.
pub const MAX_TRIGGERS: usize = 20;
/// The most steps in one workflow.
pub const MAX_STEPS: usize = 20;
/// The longest CloudEvents `type`, `source`, `id` and `subject`, in bytes.
pub const MAX_EVENT_TYPE: usize = 128;
pub const MAX_EVENT_ID: usize = 128;
pub const MAX_EVENT_SOURCE: usize = 512;
pub const MAX_EVENT_SUBJECT: usize = 512;
/// The largest `data` of one event, as compact JSON.
pub const MAX_EVENT_DATA: usize = 32 * 1024;
/// The largest output of one rendered template, in bytes.
pub const MAX_RENDERED: usize = 16 * 1024;
/// The fuel one template may burn (minijinja instructions): loops cannot run away.
const TEMPLATE_FUEL: u64 = 50_000;

// -------------------------------------------------------------------------------------- ids

/// Names a workflow within its tenant: `^[a-z0-9][a-z0-9_-]*$`, at most 64 characters.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schemars(extend("minLength" = 1, "maxLength" = 64, "pattern" = "^[a-z0-9][a-z0-9_-]*$"))]
pub struct WorkflowId(String);

impl WorkflowId {
    pub fn parse(value: impl Into<String>) -> Result<Self, ParseError> {
        let value = value.into();
        let mut chars = value.chars();
        let ok = value.len() <= 64
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if ok {
            Ok(Self(value))
        } else {
            Err(ParseError::new(
                "id",
                "must match ^[a-z0-9][a-z0-9_-]*$ (at most 64 characters)",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WorkflowId {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<WorkflowId> for String {
    fn from(value: WorkflowId) -> Self {
        value.0
    }
}

impl std::fmt::Display for WorkflowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A CloudEvents `type` (`order.refunded`): 1 to 128 of `[A-Za-z0-9._-]`, starting with a
/// letter or digit, with no empty dot-separated part — so that it is also a NATS subject tail.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schemars(extend(
    "minLength" = 1,
    "maxLength" = 128,
    "pattern" = "^[A-Za-z0-9][A-Za-z0-9_-]*(\\.[A-Za-z0-9_-]+)*$"
))]
pub struct EventType(String);

impl EventType {
    pub fn parse(value: impl Into<String>) -> Result<Self, ParseError> {
        let value = value.into();
        let part_ok = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        let ok = !value.is_empty()
            && value.len() <= MAX_EVENT_TYPE
            && value
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && value.split('.').all(part_ok);
        if ok {
            Ok(Self(value))
        } else {
            Err(ParseError::new(
                "type",
                format!(
                    "must be 1 to {MAX_EVENT_TYPE} characters of [A-Za-z0-9._-], dot-separated parts not empty"
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EventType {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<EventType> for String {
    fn from(value: EventType) -> Self {
        value.0
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn derived_uuid(context: &str, parts: &[&str]) -> Uuid {
    let mut hasher = blake3::Hasher::new_derive_key(context);
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    Uuid::new_v8(bytes)
}

/// The stream of one received event: derived from (tenant, event id), so a repeat lands on the
/// same stream.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub struct IntakeKey(Uuid);

impl IntakeKey {
    pub fn of(tenant: &TenantId, event_id: &str) -> Self {
        Self(derived_uuid(
            "countersign 2026 intake event v1",
            &[tenant.as_str(), event_id],
        ))
    }
}

impl std::fmt::Display for IntakeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A run: derived from (tenant, event id, workflow), so one event starts a workflow once.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub struct RunId(Uuid);

impl RunId {
    pub fn of(tenant: &TenantId, event_id: &str, workflow: &WorkflowId) -> Self {
        Self(derived_uuid(
            "countersign 2026 workflow run v1",
            &[tenant.as_str(), event_id, workflow.as_str()],
        ))
    }

    pub fn parse(value: &str) -> Result<Self, ParseError> {
        Uuid::parse_str(value)
            .map(Self)
            .map_err(|_| ParseError::new("run_id", "must be a UUID"))
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

// ------------------------------------------------------------------------------ cloud events

/// A CloudEvents 1.0 event (JSON format), as accepted: `specversion` `1.0`, `id`, `source`,
/// `type` required; `time`, `subject`, `datacontenttype`, `data` optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CloudEvent {
    /// `1.0`.
    #[schemars(extend("enum" = ["1.0"]))]
    pub specversion: String,
    /// 1 to 128 bytes, no control characters.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")
    )]
    pub id: String,
    /// 1 to 512 bytes, no control characters.
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")
    )]
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
    /// 1 to 512 bytes, no control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")
    )]
    pub subject: Option<String>,
    /// `application/json` (with parameters, if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^application/json"))]
    pub datacontenttype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<document::Document>")]
    pub data: Option<Value>,
}

fn visible_token(value: &str, field: &str, max: usize) -> Result<(), ParseError> {
    if value.is_empty() || value.len() > max {
        return Err(ParseError::new(field, format!("must be 1 to {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(ParseError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

impl CloudEvent {
    /// Parses one event from its JSON form, naming the offending field.
    pub fn parse(value: &Value) -> Result<Self, ParseError> {
        let Value::Object(map) = value else {
            return Err(ParseError::new("", "a CloudEvent is a JSON object"));
        };
        for field in ["specversion", "id", "source", "type"] {
            if !map.get(field).is_some_and(Value::is_string) {
                return Err(ParseError::new(field, "is required (a string)"));
            }
        }
        let event: Self = serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner().to_string();
            // A field's own parse error already names it (`type: must be …`).
            let message = inner
                .strip_prefix(&format!("{path}: "))
                .map_or(inner.clone(), str::to_owned);
            ParseError::new(if path == "." { String::new() } else { path }, message)
        })?;
        event.check()?;
        Ok(event)
    }

    /// What an accepted event satisfies beyond its types.
    pub fn check(&self) -> Result<(), ParseError> {
        if self.specversion != "1.0" {
            return Err(ParseError::new("specversion", "must be \"1.0\""));
        }
        visible_token(&self.id, "id", MAX_EVENT_ID)?;
        visible_token(&self.source, "source", MAX_EVENT_SOURCE)?;
        if let Some(subject) = &self.subject {
            visible_token(subject, "subject", MAX_EVENT_SUBJECT)?;
        }
        if let Some(kind) = &self.datacontenttype
            && !kind.starts_with("application/json")
        {
            return Err(ParseError::new(
                "datacontenttype",
                "only application/json data is accepted",
            ));
        }
        if let Some(data) = &self.data {
            let size = serde_json::to_vec(data)
                .map(|bytes| bytes.len())
                .unwrap_or(usize::MAX);
            if size > MAX_EVENT_DATA {
                return Err(ParseError::new(
                    "data",
                    format!("is {size} bytes; at most {MAX_EVENT_DATA}"),
                ));
            }
            document::check(data, "data")?;
        }
        Ok(())
    }

    /// What a condition is matched against, in the criteria engine's vocabulary (see
    /// [`Condition`]).
    fn facts(&self) -> Value {
        serde_json::json!({
            "action_type": self.event_type.as_str(),
            "source": self.source,
            "scope": self.subject.clone().unwrap_or_default(),
            "impact": self.id,
            "payload": self.data.clone().unwrap_or(Value::Null),
        })
    }

    /// What templates see as `event`.
    fn template_context(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "source": self.source,
            "type": self.event_type.as_str(),
            "time": self.time.map(|time| time.to_rfc3339()),
            "subject": self.subject,
            "data": self.data.clone().unwrap_or(Value::Null),
        })
    }
}

// ------------------------------------------------------------------------------- condition

/// A workflow's condition: a criteria document (the language of policies: `$and`, `$or`,
/// `$not`, and the operators `$eq $ne $gt $gte $lt $lte $in $nin $exists $contains $regex`) over
/// the event's fields `type`, `source`, `subject`, `id`, `data` and `data.<dotted.path>`.
#[derive(Clone)]
pub struct Condition {
    document: Value,
    criteria: Criteria,
}

/// The event fields a condition names, and the criteria field each is evaluated as.
const CONDITION_FIELDS: [(&str, &str); 5] = [
    ("type", "action_type"),
    ("source", "source"),
    ("subject", "scope"),
    ("id", "impact"),
    ("data", "payload"),
];

fn translate(value: &Value, path: &str, depth: usize) -> Result<Value, ParseError> {
    if depth > 16 {
        return Err(ParseError::new(path, "nests too deeply"));
    }
    let Value::Object(map) = value else {
        return Err(ParseError::new(path, "must be an object"));
    };
    let mut out = Map::new();
    for (key, inner) in map {
        let here = format!("{path}.{key}");
        let translated = match key.as_str() {
            "$and" | "$or" => match inner {
                Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| translate(item, &format!("{here}[{i}]"), depth + 1))
                        .collect::<Result<_, _>>()?,
                ),
                _ => return Err(ParseError::new(here, "must be an array of conditions")),
            },
            "$not" => translate(inner, &here, depth + 1)?,
            _ => inner.clone(),
        };
        let name = if key.starts_with('$') {
            key.clone()
        } else if let Some(rest) = key.strip_prefix("data.") {
            format!("payload.{rest}")
        } else if let Some((_, field)) = CONDITION_FIELDS.iter().find(|(name, _)| name == key) {
            (*field).to_owned()
        } else {
            return Err(ParseError::new(
                here,
                "unknown field (expected one of type, source, subject, id, data, or data.<path>)",
            ));
        };
        out.insert(name, translated);
    }
    Ok(Value::Object(out))
}

impl Condition {
    pub fn always() -> Self {
        Self {
            document: Value::Object(Map::new()),
            criteria: Criteria::always(),
        }
    }

    pub fn parse(document: &Value) -> Result<Self, ParseError> {
        let translated = translate(document, "condition", 0)?;
        let criteria = Criteria::parse(&translated).map_err(|err| {
            let field = err
                .field
                .replacen("criteria", "condition", 1)
                .replace("payload", "data")
                .replace("action_type", "type")
                .replace("scope", "subject");
            ParseError::new(field, err.message)
        })?;
        Ok(Self {
            document: document.clone(),
            criteria,
        })
    }

    pub fn document(&self) -> &Value {
        &self.document
    }

    pub fn matches(&self, event: &CloudEvent) -> bool {
        self.criteria.matches(&event.facts())
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.document == other.document
    }
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Condition({})", self.document)
    }
}

impl Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.document.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let document = Value::deserialize(deserializer)?;
        Self::parse(&document).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Condition {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WorkflowCondition".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "A criteria document over the event: keys type, source, subject, id, data, data.<path>, $and, $or, $not.",
        })
    }
}

// ------------------------------------------------------------------------------ definitions

/// One step: a capability run with a payload rendered from the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The capability, `module.capability` (`notify.webhook`, `webhook.post`, `orders.tag`).
    pub capability: crate::ActionType,
    /// What the approver reads: a template (`Refund of {{ event.data.amount }}`).
    pub summary: String,
    /// The payload: every string in it is a template; a string that is exactly one
    /// `{{ expression }}` keeps the expression's JSON type (a number stays a number).
    #[serde(default = "empty_object")]
    #[schemars(with = "document::Document")]
    pub payload: Value,
    /// Wait for votes even when the governing policy would approve at once.
    #[serde(default)]
    pub require_approval: bool,
    /// A failed step does not end the run: the next step runs.
    #[serde(default)]
    pub continue_on_failure: bool,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

fn always() -> Condition {
    Condition::always()
}

fn yes() -> bool {
    true
}

/// A workflow's editable fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDraft {
    /// 1 to 200 characters once trimmed, readable and visible.
    #[schemars(schema_with = "workflow_name_schema")]
    pub name: String,
    /// The event types that start it (1 to 20).
    #[schemars(length(min = 1, max = 20))]
    pub triggers: Vec<EventType>,
    /// Which events of those types start it (default: all).
    #[serde(default = "always")]
    pub condition: Condition,
    /// Values templates see as `constants` (an object).
    #[serde(default = "empty_object")]
    #[schemars(with = "document::Document")]
    pub constants: Value,
    /// What a run does, in order (1 to 20).
    #[schemars(length(min = 1, max = 20))]
    pub steps: Vec<Step>,
    /// Whether events start runs (default: true).
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn workflow_name_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": crate::text::name_pattern(MAX_NAME),
    })
}

impl WorkflowDraft {
    /// What a new or changed workflow must satisfy beyond its types: a visible name, bounded
    /// triggers and steps, documents every reader can decode, and templates that compile.
    pub fn check(&self) -> Result<(), ParseError> {
        check_name(&self.name, "name", MAX_NAME)?;
        if self.triggers.is_empty() || self.triggers.len() > MAX_TRIGGERS {
            return Err(ParseError::new(
                "triggers",
                format!("between 1 and {MAX_TRIGGERS} event types"),
            ));
        }
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return Err(ParseError::new(
                "steps",
                format!("between 1 and {MAX_STEPS} steps"),
            ));
        }
        if !self.constants.is_object() {
            return Err(ParseError::new("constants", "must be an object"));
        }
        document::check(&self.constants, "constants")?;
        document::check(self.condition.document(), "condition")?;
        for (index, step) in self.steps.iter().enumerate() {
            let at = format!("steps[{index}]");
            document::check(&step.payload, &format!("{at}.payload"))?;
            compile_templates(&step.summary, &format!("{at}.summary"))?;
            visit_strings(
                &step.payload,
                &format!("{at}.payload"),
                &mut |text, path| compile_templates(text, path),
            )?;
        }
        Ok(())
    }
}

/// A workflow as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Workflow {
    pub id: WorkflowId,
    pub version: u32,
    pub name: String,
    pub triggers: Vec<EventType>,
    pub condition: Condition,
    #[schemars(with = "document::Document")]
    pub constants: Value,
    pub steps: Vec<Step>,
    pub enabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Workflow {
    /// Whether an event of this type, with these contents, starts a run — and if not, why.
    pub fn admits(&self, event: &CloudEvent) -> Admission {
        if !self.triggers.contains(&event.event_type) {
            Admission::NotTriggered
        } else if !self.enabled {
            Admission::Skipped(SkipReason::Disabled)
        } else if !self.condition.matches(event) {
            Admission::Skipped(SkipReason::ConditionNotMet)
        } else {
            Admission::Starts
        }
    }
}

/// What an event does to one workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The workflow does not listen to the event's type.
    NotTriggered,
    Skipped(SkipReason),
    Starts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    Disabled,
    ConditionNotMet,
}

// ---------------------------------------------------------------------------------- templates

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_recursion_limit(16);
    env
}

fn template_error(path: &str, err: &minijinja::Error) -> ParseError {
    ParseError::new(path, format!("template: {err}"))
}

fn single_expression(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%")).then_some(inner)
}

fn compile_templates(text: &str, path: &str) -> Result<(), ParseError> {
    let env = environment();
    match single_expression(text) {
        Some(expression) => env
            .compile_expression(expression)
            .map(|_| ())
            .map_err(|err| template_error(path, &err)),
        None => env
            .template_from_str(text)
            .map(|_| ())
            .map_err(|err| template_error(path, &err)),
    }
}

fn visit_strings(
    value: &Value,
    path: &str,
    visit: &mut impl FnMut(&str, &str) -> Result<(), ParseError>,
) -> Result<(), ParseError> {
    match value {
        Value::String(text) => visit(text, path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| visit_strings(item, &format!("{path}[{i}]"), visit)),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(key, item)| visit_strings(item, &format!("{path}.{key}"), visit)),
        _ => Ok(()),
    }
}

fn render_string(
    env: &minijinja::Environment<'_>,
    context: &minijinja::Value,
    text: &str,
    path: &str,
) -> Result<Value, ParseError> {
    let rendered = match single_expression(text) {
        Some(expression) => {
            let value = env
                .compile_expression(expression)
                .and_then(|expr| expr.eval(context))
                .map_err(|err| template_error(path, &err))?;
            serde_json::to_value(&value).map_err(|err| ParseError::new(path, err.to_string()))?
        }
        None => Value::String(
            env.render_str(text, context)
                .map_err(|err| template_error(path, &err))?,
        ),
    };
    let size = serde_json::to_vec(&rendered)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if size > MAX_RENDERED {
        return Err(ParseError::new(
            path,
            format!("renders to {size} bytes; at most {MAX_RENDERED}"),
        ));
    }
    Ok(rendered)
}

fn render_value(
    env: &minijinja::Environment<'_>,
    context: &minijinja::Value,
    value: &Value,
    path: &str,
) -> Result<Value, ParseError> {
    Ok(match value {
        Value::String(text) => render_string(env, context, text, path)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| render_value(env, context, item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, item)| {
                    render_value(env, context, item, &format!("{path}.{key}"))
                        .map(|rendered| (key.clone(), rendered))
                })
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

/// The submission a step makes for an event: summary and payload rendered (templates see only
/// `event` and `constants`), source `workflow`.
pub fn render_step(
    step: &Step,
    index: usize,
    event: &CloudEvent,
    constants: &Value,
) -> Result<Submission, ParseError> {
    let env = environment();
    let context = minijinja::Value::from_serialize(serde_json::json!({
        "event": event.template_context(),
        "constants": constants,
    }));
    let at = format!("steps[{index}]");
    let summary = match render_string(&env, &context, &step.summary, &format!("{at}.summary"))? {
        Value::String(text) => text,
        other => other.to_string(),
    };
    let payload = render_value(&env, &context, &step.payload, &format!("{at}.payload"))?;
    let document = serde_json::json!({
        "module": step.capability.module(),
        "capability": step.capability.capability(),
        "payload": payload,
        "summary": summary.chars().take(500).collect::<String>(),
        "source": "workflow",
    });
    let submission: Submission = serde_json::from_value(document)
        .map_err(|err| ParseError::new(at.clone(), err.to_string()))?;
    submission.check().map_err(|err| err.within(&at))?;
    Ok(submission)
}

// ------------------------------------------------------------------------------------ errors

/// Why a workflow command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    /// Handling: 422 naming the field.
    #[error(transparent)]
    InvalidInput(ParseError),
    /// Handling: 409.
    #[error("workflow `{0}` already exists")]
    Exists(WorkflowId),
    /// Handling: 404 (another tenant's answers the same).
    #[error("workflow not found")]
    NotFound,
    /// Handling: 409.
    #[error("workflow `{id}` is at version {current}, not {expected}")]
    StaleVersion {
        id: WorkflowId,
        current: u32,
        expected: u32,
    },
    /// The event id was received before for this tenant. Handling: accepted, ignored.
    #[error("event already received")]
    AlreadyReceived,
    /// The run exists already. Handling: ignored (replays, redeliveries).
    #[error("run already started")]
    AlreadyStarted,
    /// The run is not where the command assumes (a stale engine). Handling: ignored, re-read.
    #[error("the run is not at that step")]
    NotAtStep,
}

impl WorkflowError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "invalid_input",
            Self::Exists(_) => "workflow_exists",
            Self::NotFound => "workflow_not_found",
            Self::StaleVersion { .. } => "stale_version",
            Self::AlreadyReceived => "already_received",
            Self::AlreadyStarted => "already_started",
            Self::NotAtStep => "not_at_step",
        }
    }
}

// ------------------------------------------------------------------------------- WorkflowSet

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum WorkflowCommand {
    CreateWorkflow {
        context: TenantCommandContext,
        id: WorkflowId,
        draft: WorkflowDraft,
    },
    /// Replaces a workflow's fields; `expected_version` guards against lost updates.
    UpdateWorkflow {
        context: TenantCommandContext,
        id: WorkflowId,
        draft: WorkflowDraft,
        expected_version: Option<u32>,
    },
    SetEnabled {
        context: TenantCommandContext,
        id: WorkflowId,
        enabled: bool,
    },
    DeleteWorkflow {
        context: TenantCommandContext,
        id: WorkflowId,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum WorkflowEvent {
    WorkflowCreated {
        #[serde(flatten)]
        context: TenantEventContext,
        workflow: Workflow,
    },
    WorkflowUpdated {
        #[serde(flatten)]
        context: TenantEventContext,
        workflow: Workflow,
    },
    WorkflowDeleted {
        #[serde(flatten)]
        context: TenantEventContext,
        id: WorkflowId,
        version: u32,
    },
}

impl cqrs_es::DomainEvent for WorkflowEvent {
    fn event_type(&self) -> String {
        match self {
            Self::WorkflowCreated { .. } => "WorkflowCreated",
            Self::WorkflowUpdated { .. } => "WorkflowUpdated",
            Self::WorkflowDeleted { .. } => "WorkflowDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

fn event_context(context: &TenantCommandContext) -> TenantEventContext {
    TenantEventContext {
        tenant: context.tenant.clone(),
        actor: context.by.id.clone(),
        at: context.at,
        correlation_id: context.correlation_id.clone(),
    }
}

/// A tenant's workflows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkflowSet {
    pub tenant: Option<TenantId>,
    pub workflows: BTreeMap<WorkflowId, Workflow>,
}

impl WorkflowSet {
    pub fn list(&self) -> Vec<Workflow> {
        self.workflows.values().cloned().collect()
    }

    pub fn decide(&self, command: WorkflowCommand) -> Result<Vec<WorkflowEvent>, WorkflowError> {
        let context = match &command {
            WorkflowCommand::CreateWorkflow { context, .. }
            | WorkflowCommand::UpdateWorkflow { context, .. }
            | WorkflowCommand::SetEnabled { context, .. }
            | WorkflowCommand::DeleteWorkflow { context, .. } => context,
        };
        if self.tenant.as_ref().is_some_and(|t| *t != context.tenant) {
            return Err(WorkflowError::NotFound);
        }
        Ok(match command {
            WorkflowCommand::CreateWorkflow { context, id, draft } => {
                draft.check().map_err(WorkflowError::InvalidInput)?;
                if self.workflows.contains_key(&id) {
                    return Err(WorkflowError::Exists(id));
                }
                vec![WorkflowEvent::WorkflowCreated {
                    workflow: Workflow {
                        id,
                        version: 1,
                        name: draft.name,
                        triggers: draft.triggers,
                        condition: draft.condition,
                        constants: draft.constants,
                        steps: draft.steps,
                        enabled: draft.enabled,
                        created_at: context.at,
                        updated_at: context.at,
                    },
                    context: event_context(&context),
                }]
            }
            WorkflowCommand::UpdateWorkflow {
                context,
                id,
                draft,
                expected_version,
            } => {
                draft.check().map_err(WorkflowError::InvalidInput)?;
                let current = self.workflows.get(&id).ok_or(WorkflowError::NotFound)?;
                if let Some(expected) = expected_version.filter(|v| *v != current.version) {
                    return Err(WorkflowError::StaleVersion {
                        id,
                        current: current.version,
                        expected,
                    });
                }
                let workflow = Workflow {
                    id,
                    version: current.version + 1,
                    name: draft.name,
                    triggers: draft.triggers,
                    condition: draft.condition,
                    constants: draft.constants,
                    steps: draft.steps,
                    enabled: draft.enabled,
                    created_at: current.created_at,
                    updated_at: context.at,
                };
                vec![WorkflowEvent::WorkflowUpdated {
                    context: event_context(&context),
                    workflow,
                }]
            }
            WorkflowCommand::SetEnabled {
                context,
                id,
                enabled,
            } => {
                let current = self.workflows.get(&id).ok_or(WorkflowError::NotFound)?;
                if current.enabled == enabled {
                    return Ok(Vec::new());
                }
                vec![WorkflowEvent::WorkflowUpdated {
                    context: event_context(&context),
                    workflow: Workflow {
                        version: current.version + 1,
                        enabled,
                        updated_at: context.at,
                        ..current.clone()
                    },
                }]
            }
            WorkflowCommand::DeleteWorkflow { context, id } => {
                let current = self.workflows.get(&id).ok_or(WorkflowError::NotFound)?;
                vec![WorkflowEvent::WorkflowDeleted {
                    context: event_context(&context),
                    version: current.version,
                    id,
                }]
            }
        })
    }

    pub fn apply(&mut self, event: WorkflowEvent) {
        match event {
            WorkflowEvent::WorkflowCreated { context, workflow }
            | WorkflowEvent::WorkflowUpdated { context, workflow } => {
                self.tenant = Some(context.tenant);
                self.workflows.insert(workflow.id.clone(), workflow);
            }
            WorkflowEvent::WorkflowDeleted { id, .. } => {
                self.workflows.remove(&id);
            }
        }
    }
}

// ------------------------------------------------------------------------------- IntakeEvent

/// A run an event starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunStart {
    pub run_id: RunId,
    pub workflow: Workflow,
}

/// A workflow listening to the event's type that it did not start, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Skipped {
    pub workflow_id: WorkflowId,
    pub version: u32,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum IntakeCommand {
    /// Records an event and the runs it starts (decided by the caller against the workflows in
    /// force; see [`admit`]).
    RecordEvent {
        tenant: TenantId,
        at: Timestamp,
        channel: String,
        event: CloudEvent,
        starts: Vec<RunStart>,
        skipped: Vec<Skipped>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum IntakeEventEvent {
    EventReceived {
        tenant: TenantId,
        at: Timestamp,
        /// `http` or `nats`.
        channel: String,
        event: CloudEvent,
        starts: Vec<RunStart>,
        skipped: Vec<Skipped>,
    },
}

impl cqrs_es::DomainEvent for IntakeEventEvent {
    fn event_type(&self) -> String {
        "EventReceived".to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// What the workflows in force do with an event: the runs it starts and the workflows it skips.
pub fn admit(
    tenant: &TenantId,
    workflows: &WorkflowSet,
    event: &CloudEvent,
) -> (Vec<RunStart>, Vec<Skipped>) {
    let (mut starts, mut skipped) = (Vec::new(), Vec::new());
    for workflow in workflows.workflows.values() {
        match workflow.admits(event) {
            Admission::NotTriggered => {}
            Admission::Skipped(reason) => skipped.push(Skipped {
                workflow_id: workflow.id.clone(),
                version: workflow.version,
                reason,
            }),
            Admission::Starts => starts.push(RunStart {
                run_id: RunId::of(tenant, &event.id, &workflow.id),
                workflow: workflow.clone(),
            }),
        }
    }
    (starts, skipped)
}

/// One received event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IntakeEvent {
    pub received: Option<Box<IntakeEventEvent>>,
}

impl IntakeEvent {
    pub fn decide(&self, command: IntakeCommand) -> Result<Vec<IntakeEventEvent>, WorkflowError> {
        if self.received.is_some() {
            return Err(WorkflowError::AlreadyReceived);
        }
        let IntakeCommand::RecordEvent {
            tenant,
            at,
            channel,
            event,
            starts,
            skipped,
        } = command;
        event.check().map_err(WorkflowError::InvalidInput)?;
        Ok(vec![IntakeEventEvent::EventReceived {
            tenant,
            at,
            channel,
            event,
            starts,
            skipped,
        }])
    }

    pub fn apply(&mut self, event: IntakeEventEvent) {
        self.received = Some(Box::new(event));
    }
}

// ------------------------------------------------------------------------------- WorkflowRun

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// A step is being submitted or is running.
    Running,
    /// A step's action waits for votes.
    PendingApproval,
    Completed,
    Failed,
    Denied,
}

impl RunStatus {
    pub const ALL: [Self; 5] = [
        Self::Running,
        Self::PendingApproval,
        Self::Completed,
        Self::Failed,
        Self::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::PendingApproval => "pending_approval",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Denied => "denied",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Denied)
    }
}

/// How a step's action ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StepOutcome {
    Executed,
    Failed { reason: String },
    Denied { reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum RunCommand {
    StartRun {
        tenant: TenantId,
        at: Timestamp,
        run_id: RunId,
        workflow: Box<Workflow>,
        event: Box<CloudEvent>,
    },
    /// The step's action was submitted (`pending`: it waits for votes).
    RecordSubmitted {
        at: Timestamp,
        step: usize,
        action_id: ActionId,
        pending: bool,
    },
    /// The step's action waits for votes (after it was recorded as submitted).
    RecordPending { at: Timestamp, step: usize },
    RecordOutcome {
        at: Timestamp,
        step: usize,
        outcome: StepOutcome,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunEvent {
    RunTriggered {
        tenant: TenantId,
        at: Timestamp,
        run_id: RunId,
        workflow: Box<Workflow>,
        event: Box<CloudEvent>,
    },
    StepSubmitted {
        at: Timestamp,
        step: usize,
        action_id: ActionId,
    },
    StepPendingApproval {
        at: Timestamp,
        step: usize,
        action_id: ActionId,
    },
    StepExecuted {
        at: Timestamp,
        step: usize,
        action_id: Option<ActionId>,
    },
    StepFailed {
        at: Timestamp,
        step: usize,
        action_id: Option<ActionId>,
        reason: String,
    },
    StepDenied {
        at: Timestamp,
        step: usize,
        action_id: Option<ActionId>,
        reason: String,
    },
    RunCompleted {
        at: Timestamp,
    },
    RunFailed {
        at: Timestamp,
        step: usize,
    },
    RunDenied {
        at: Timestamp,
        step: usize,
    },
}

impl cqrs_es::DomainEvent for RunEvent {
    fn event_type(&self) -> String {
        match self {
            Self::RunTriggered { .. } => "RunTriggered",
            Self::StepSubmitted { .. } => "StepSubmitted",
            Self::StepPendingApproval { .. } => "StepPendingApproval",
            Self::StepExecuted { .. } => "StepExecuted",
            Self::StepFailed { .. } => "StepFailed",
            Self::StepDenied { .. } => "StepDenied",
            Self::RunCompleted { .. } => "RunCompleted",
            Self::RunFailed { .. } => "RunFailed",
            Self::RunDenied { .. } => "RunDenied",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// A run as folded from its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunState {
    pub run_id: RunId,
    pub tenant: TenantId,
    pub workflow: Workflow,
    pub event: CloudEvent,
    pub status: RunStatus,
    /// The step now running (its index), or the steps' count once the run ended.
    pub step: usize,
    /// The action of each step submitted so far, by step index.
    pub actions: BTreeMap<usize, ActionId>,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
}

impl RunState {
    /// The action of the step now running, once submitted.
    pub fn current_action(&self) -> Option<ActionId> {
        (!self.status.is_final())
            .then(|| self.actions.get(&self.step).copied())
            .flatten()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRun {
    pub state: Option<Box<RunState>>,
}

impl WorkflowRun {
    pub fn decide(&self, command: RunCommand) -> Result<Vec<RunEvent>, WorkflowError> {
        let state = match (&self.state, command) {
            (
                None,
                RunCommand::StartRun {
                    tenant,
                    at,
                    run_id,
                    workflow,
                    event,
                },
            ) => {
                return Ok(vec![RunEvent::RunTriggered {
                    tenant,
                    at,
                    run_id,
                    workflow,
                    event,
                }]);
            }
            (Some(_), RunCommand::StartRun { .. }) => return Err(WorkflowError::AlreadyStarted),
            (None, _) => return Err(WorkflowError::NotFound),
            (Some(state), command) => (state, command),
        };
        let (state, command) = state;
        if state.status.is_final() {
            return Err(WorkflowError::NotAtStep);
        }
        match command {
            RunCommand::StartRun { .. } => Err(WorkflowError::AlreadyStarted),
            RunCommand::RecordSubmitted {
                at,
                step,
                action_id,
                pending,
            } => {
                if step != state.step || state.actions.contains_key(&step) {
                    return Err(WorkflowError::NotAtStep);
                }
                let mut events = vec![RunEvent::StepSubmitted {
                    at,
                    step,
                    action_id,
                }];
                if pending {
                    events.push(RunEvent::StepPendingApproval {
                        at,
                        step,
                        action_id,
                    });
                }
                Ok(events)
            }
            RunCommand::RecordPending { at, step } => {
                let action_id = state.actions.get(&step).copied();
                match action_id {
                    Some(action_id) if step == state.step && state.status == RunStatus::Running => {
                        Ok(vec![RunEvent::StepPendingApproval {
                            at,
                            step,
                            action_id,
                        }])
                    }
                    _ => Err(WorkflowError::NotAtStep),
                }
            }
            RunCommand::RecordOutcome { at, step, outcome } => {
                if step != state.step {
                    return Err(WorkflowError::NotAtStep);
                }
                let action_id = state.actions.get(&step).copied();
                let last = step + 1 >= state.workflow.steps.len();
                let continues = state
                    .workflow
                    .steps
                    .get(step)
                    .is_some_and(|s| s.continue_on_failure);
                Ok(match outcome {
                    StepOutcome::Executed => {
                        let mut events = vec![RunEvent::StepExecuted {
                            at,
                            step,
                            action_id,
                        }];
                        if last {
                            events.push(RunEvent::RunCompleted { at });
                        }
                        events
                    }
                    StepOutcome::Failed { reason } => {
                        let mut events = vec![RunEvent::StepFailed {
                            at,
                            step,
                            action_id,
                            reason,
                        }];
                        if !continues {
                            events.push(RunEvent::RunFailed { at, step });
                        } else if last {
                            events.push(RunEvent::RunCompleted { at });
                        }
                        events
                    }
                    StepOutcome::Denied { reason } => vec![
                        RunEvent::StepDenied {
                            at,
                            step,
                            action_id,
                            reason,
                        },
                        RunEvent::RunDenied { at, step },
                    ],
                })
            }
        }
    }

    pub fn apply(&mut self, event: RunEvent) {
        if let RunEvent::RunTriggered {
            tenant,
            at,
            run_id,
            workflow,
            event,
        } = event
        {
            self.state = Some(Box::new(RunState {
                run_id,
                tenant,
                workflow: *workflow,
                event: *event,
                status: RunStatus::Running,
                step: 0,
                actions: BTreeMap::new(),
                started_at: at,
                updated_at: at,
            }));
            return;
        }
        let Some(state) = self.state.as_deref_mut() else {
            return;
        };
        match event {
            RunEvent::RunTriggered { .. } => {}
            RunEvent::StepSubmitted {
                at,
                step,
                action_id,
            } => {
                state.actions.insert(step, action_id);
                state.updated_at = at;
            }
            RunEvent::StepPendingApproval { at, .. } => {
                state.status = RunStatus::PendingApproval;
                state.updated_at = at;
            }
            RunEvent::StepExecuted { at, step, .. }
            | RunEvent::StepFailed { at, step, .. }
            | RunEvent::StepDenied { at, step, .. } => {
                state.status = RunStatus::Running;
                state.step = step + 1;
                state.updated_at = at;
            }
            RunEvent::RunCompleted { at } => {
                state.status = RunStatus::Completed;
                state.updated_at = at;
            }
            RunEvent::RunFailed { at, .. } => {
                state.status = RunStatus::Failed;
                state.updated_at = at;
            }
            RunEvent::RunDenied { at, .. } => {
                state.status = RunStatus::Denied;
                state.updated_at = at;
            }
        }
    }
}

decided_aggregate!(
    WorkflowSet,
    "workflow_set",
    WorkflowCommand,
    WorkflowEvent,
    WorkflowError
);
decided_aggregate!(
    IntakeEvent,
    "intake_event",
    IntakeCommand,
    IntakeEventEvent,
    WorkflowError
);
decided_aggregate!(
    WorkflowRun,
    "workflow_run",
    RunCommand,
    RunEvent,
    WorkflowError
);

/// Parses a workflow draft from JSON, naming the offending path.
pub fn parse_draft(document: &Value) -> Result<WorkflowDraft, ParseError> {
    serde_path_to_error::deserialize(document).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner().to_string();
        ParseError::new(if path == "." { String::new() } else { path }, inner)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(data: Value) -> CloudEvent {
        CloudEvent::parse(&json!({
            "specversion": "1.0", "id": "e-1", "source": "shop", "type": "order.refunded",
            "subject": "order-1042", "data": data,
        }))
        .expect("valid event")
    }

    fn draft(payload: Value) -> WorkflowDraft {
        parse_draft(&json!({
            "name": "Refunds",
            "triggers": ["order.refunded"],
            "condition": { "data.amount": { "$gt": 100 } },
            "constants": { "ledger": "https://ledger.example/hook" },
            "steps": [{ "capability": "notify.webhook", "summary": "Refund {{ event.data.amount }}", "payload": payload }],
        }))
        .expect("valid draft")
    }

    #[test]
    fn a_condition_reads_the_event_fields() {
        let condition = Condition::parse(&json!({
            "type": "order.refunded", "subject": { "$regex": "^order-" },
            "data.amount": { "$gte": 100 }, "source": "shop",
        }))
        .expect("valid");
        assert!(condition.matches(&event(json!({ "amount": 150 }))));
        assert!(!condition.matches(&event(json!({ "amount": 50 }))));
        let err = Condition::parse(&json!({ "module": "x" })).expect_err("unknown field");
        assert_eq!(err.field, "condition.module");
        let err = Condition::parse(&json!({ "data.amount": { "$bogus": 1 } })).expect_err("bad op");
        assert!(err.field.starts_with("condition.data.amount"), "{err:?}");
    }

    #[test]
    fn templates_render_typed_values_and_only_see_event_and_constants() {
        let refunds = draft(
            json!({ "url": "{{ constants.ledger }}", "amount": "{{ event.data.amount }}", "note": "order {{ event.subject }}" }),
        );
        refunds.check().expect("valid");
        let submission = render_step(
            &refunds.steps[0],
            0,
            &event(json!({ "amount": 150 })),
            &refunds.constants,
        )
        .expect("renders");
        assert_eq!(
            submission.payload,
            json!({ "url": "https://ledger.example/hook", "amount": 150, "note": "order order-1042" })
        );
        assert_eq!(submission.summary.as_str(), "Refund 150");
        let unknown = render_step(
            &draft(json!({ "x": "{{ env.HOME }}" })).steps[0],
            0,
            &event(json!({ "amount": 1 })),
            &json!({}),
        )
        .expect_err("no env");
        assert_eq!(unknown.field, "steps[0].payload.x");
    }

    #[test]
    fn a_template_that_does_not_compile_names_its_step() {
        let err = draft(json!({ "x": "{{ event.data. }}" }))
            .check()
            .expect_err("bad");
        assert_eq!(err.field, "steps[0].payload.x");
        let runaway = draft(
            json!({ "x": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}" }),
        );
        runaway.check().expect("compiles");
        let err = render_step(
            &runaway.steps[0],
            0,
            &event(json!({ "amount": 1 })),
            &json!({}),
        )
        .expect_err("out of fuel");
        assert_eq!(err.field, "steps[0].payload.x");
    }

    #[test]
    fn malformed_events_are_refused_naming_the_field() {
        for (document, field) in [
            (
                json!({ "id": "1", "source": "s", "type": "a" }),
                "specversion",
            ),
            (
                json!({ "specversion": "0.3", "id": "1", "source": "s", "type": "a" }),
                "specversion",
            ),
            (
                json!({ "specversion": "1.0", "source": "s", "type": "a" }),
                "id",
            ),
            (
                json!({ "specversion": "1.0", "id": "1", "source": "s", "type": "a b" }),
                "type",
            ),
            (
                json!({ "specversion": "1.0", "id": "1", "source": "s", "type": "x".repeat(200) }),
                "type",
            ),
            (
                json!({ "specversion": "1.0", "id": "1", "source": "s", "type": "a", "data": "x".repeat(MAX_EVENT_DATA + 1) }),
                "data",
            ),
        ] {
            let err = CloudEvent::parse(&document).expect_err("refused");
            assert_eq!(err.field, field, "{document}: {err}");
        }
    }

    #[test]
    fn a_run_waits_fails_or_completes_as_its_steps_say() {
        let tenant = TenantId::parse("acme").expect("tenant");
        let mut draft = draft(json!({}));
        draft.steps.push(Step {
            continue_on_failure: true,
            ..draft.steps[0].clone()
        });
        let workflow = Workflow {
            id: WorkflowId::parse("refunds").expect("id"),
            version: 1,
            name: draft.name,
            triggers: draft.triggers,
            condition: draft.condition,
            constants: draft.constants,
            steps: draft.steps,
            enabled: true,
            created_at: Timestamp::default(),
            updated_at: Timestamp::default(),
        };
        let mut run = WorkflowRun::default();
        let at = Timestamp::default();
        let run_id = RunId::of(&tenant, "e-1", &workflow.id);
        let step = |run: &mut WorkflowRun, command| {
            for event in run.decide(command).expect("decided") {
                run.apply(event);
            }
        };
        step(
            &mut run,
            RunCommand::StartRun {
                tenant: tenant.clone(),
                at,
                run_id,
                workflow: Box::new(workflow.clone()),
                event: Box::new(event(json!({}))),
            },
        );
        assert_eq!(
            run.decide(RunCommand::StartRun {
                tenant,
                at,
                run_id,
                workflow: Box::new(workflow),
                event: Box::new(event(json!({})))
            }),
            Err(WorkflowError::AlreadyStarted)
        );
        let action = ActionId::from_uuid(Uuid::nil());
        step(
            &mut run,
            RunCommand::RecordSubmitted {
                at,
                step: 0,
                action_id: action,
                pending: true,
            },
        );
        let state = run.state.as_deref().expect("state");
        assert_eq!(state.status, RunStatus::PendingApproval);
        assert_eq!(state.current_action(), Some(action));
        step(
            &mut run,
            RunCommand::RecordOutcome {
                at,
                step: 0,
                outcome: StepOutcome::Executed,
            },
        );
        assert_eq!(
            run.state.as_deref().map(|s| (s.status, s.step)),
            Some((RunStatus::Running, 1))
        );
        step(
            &mut run,
            RunCommand::RecordSubmitted {
                at,
                step: 1,
                action_id: action,
                pending: false,
            },
        );
        step(
            &mut run,
            RunCommand::RecordOutcome {
                at,
                step: 1,
                outcome: StepOutcome::Failed {
                    reason: "boom".into(),
                },
            },
        );
        assert_eq!(
            run.state.as_deref().map(|s| s.status),
            Some(RunStatus::Completed)
        );
    }
}
