//! What a submitter asks for: the fields of an action request.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::risk::{RiskAssessment, RiskTag};
use crate::{
    ActionType, CapabilityName, Connector, Flag, ModuleSlug, ParseError, Source, Summary, Text,
    UserId, check_visible, document,
};

/// The submitter's description of an action. Every field is checked on construction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    /// The module that owns the capability, e.g. `billing`.
    pub module: ModuleSlug,
    /// The capability to run, e.g. `refund`.
    pub capability: CapabilityName,
    /// Arguments for the capability.
    #[serde(default = "empty_object")]
    #[schemars(with = "document::Document")]
    pub payload: Value,
    /// What the action does, for the approver.
    pub summary: Summary,
    /// Connectors the action touches.
    #[serde(default)]
    pub connectors: Vec<Connector>,
    /// Described impact ("mass email to 120 leads").
    #[serde(default)]
    pub impact: Text,
    /// Described scope ("one tenant", "all tenants").
    #[serde(default)]
    pub scope: Text,
    /// The submitter's own risk flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_tag: Option<RiskTag>,
    /// Markers such as `pii`, `phi`, `financial`.
    #[serde(default)]
    pub flags: Vec<Flag>,
    /// Where the request comes from (`board`, `automated-agent`); `api` when not given.
    #[serde(default = "default_source")]
    pub source: Source,
    /// Arguments that would reverse the action, kept for rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<document::Document>")]
    pub undo_payload: Option<Value>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

fn default_source() -> Source {
    Source::api()
}

impl Submission {
    /// What a new submission must satisfy beyond its types (see [`crate::document`]): documents
    /// every reader of the log can decode, and text that displays as it reads.
    pub fn check(&self) -> Result<(), ParseError> {
        document::check(&self.payload, "payload")?;
        if let Some(undo) = &self.undo_payload {
            document::check(undo, "undo_payload")?;
        }
        check_visible(self.summary.as_str(), "summary")?;
        check_visible(self.impact.as_str(), "impact")?;
        check_visible(self.scope.as_str(), "scope")?;
        check_visible(self.source.as_str(), "source")?;
        self.flags
            .iter()
            .enumerate()
            .try_for_each(|(index, flag)| check_visible(flag.as_str(), &format!("flags[{index}]")))
    }

    pub fn action_type(&self) -> ActionType {
        ActionType::new(&self.module, &self.capability)
    }

    /// The document policy criteria are matched against. Field names are the criteria
    /// language's: `module`, `capability`, `action_type`, `source`, `requested_by`,
    /// `risk.score`, `risk.level`, `connectors`, `flags`, `impact`, `scope`, `payload.…`.
    pub fn facts(&self, requested_by: &UserId, risk: &RiskAssessment) -> Value {
        json!({
            "module": self.module.as_str(),
            "capability": self.capability.as_str(),
            "action_type": self.action_type().as_str(),
            "source": self.source.as_str(),
            "requested_by": requested_by.as_str(),
            "risk": { "score": risk.score.value(), "level": risk.level.as_str() },
            "connectors": self.connectors.iter().map(Connector::as_str).collect::<Vec<_>>(),
            "flags": self.flags.iter().map(Flag::as_str).collect::<Vec<_>>(),
            "impact": self.impact.as_str(),
            "scope": self.scope.as_str(),
            "payload": self.payload,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A submission no risk signal fires on.
    pub(crate) fn plain_submission() -> Submission {
        serde_json::from_value(json!({
            "module": "crm",
            "capability": "tag-contact",
            "payload": { "contact": 7 },
            "summary": "Tag contact 7 as VIP",
            "source": "board",
        }))
        .expect("valid submission")
    }

    #[test]
    fn optional_fields_take_their_defaults() {
        let submission: Submission = serde_json::from_value(json!({
            "module": "email", "capability": "send", "summary": "Send weekly update"
        }))
        .expect("valid");
        assert_eq!(submission.payload, json!({}));
        assert_eq!(submission.source.as_str(), "api");
        assert!(submission.connectors.is_empty() && submission.flags.is_empty());
        assert_eq!(submission.action_type().as_str(), "email.send");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused_naming_the_problem() {
        let unknown = serde_json::from_value::<Submission>(json!({
            "module": "email", "capability": "send", "summary": "x", "priority": 1
        }))
        .expect_err("unknown field");
        assert!(unknown.to_string().contains("priority"), "{unknown}");
        let bad_module = serde_json::from_value::<Submission>(json!({
            "module": "E Mail", "capability": "send", "summary": "x"
        }))
        .expect_err("bad module");
        assert!(bad_module.to_string().contains("module"), "{bad_module}");
        let bad_tag = serde_json::from_value::<Submission>(json!({
            "module": "email", "capability": "send", "summary": "x", "risk_tag": "extreme"
        }))
        .expect_err("bad tag");
        assert!(bad_tag.to_string().contains("extreme"), "{bad_tag}");
    }
}
