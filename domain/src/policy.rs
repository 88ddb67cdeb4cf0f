//! Approval policies: which submissions a policy governs, and what it requires of them.
//!
//! The highest-priority policy whose criteria match wins; ties go to the older policy, then to the
//! smaller id. When nothing matches, the tenant's default applies. What is resolved is copied
//! into the submission event as a [`PolicySnapshot`], so later edits never change the rules of a
//! pending action.

use std::num::NonZeroU32;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::criteria::Criteria;
use crate::{NonEmpty, ParseError, PolicyId, Role, Timestamp, UserId, UserSet};

/// A share between 0 and 1, held exactly in basis points (1/10,000) so that quorum arithmetic
/// is integer arithmetic and replays bit-for-bit.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "f64", into = "f64")]
#[schemars(extend("minimum" = 0, "maximum" = 1))]
pub struct Ratio(u16);

impl Ratio {
    pub const ONE: Self = Self(10_000);
    pub const ZERO: Self = Self(0);

    pub fn parse(value: f64) -> Result<Self, ParseError> {
        if !(0.0..=1.0).contains(&value) {
            return Err(ParseError::new("", "must be a number between 0 and 1"));
        }
        Ok(Self((value * 10_000.0).round() as u16))
    }

    pub fn from_basis_points(points: u16) -> Result<Self, ParseError> {
        if points > 10_000 {
            return Err(ParseError::new("", "must be at most 10000 basis points"));
        }
        Ok(Self(points))
    }

    pub fn basis_points(self) -> u16 {
        self.0
    }

    /// `ceil(self × count)`, exactly.
    pub fn ceil_of(self, count: usize) -> usize {
        (count * usize::from(self.0)).div_ceil(10_000)
    }
}

impl TryFrom<f64> for Ratio {
    type Error = ParseError;
    fn try_from(value: f64) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<Ratio> for f64 {
    fn from(value: Ratio) -> Self {
        f64::from(value.0) / 10_000.0
    }
}

/// One requirement of a stage. All of a stage's rules must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// N approvals from distinct eligible voters: holders of `approver`, `admin` or `owner`, or
    /// of the roles listed.
    Any {
        #[schemars(extend("maximum" = u32::MAX))]
        min_approvals: NonZeroU32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        roles: Vec<Role>,
    },
    /// N approvals from holders of one role.
    Role {
        role: Role,
        #[schemars(extend("maximum" = u32::MAX))]
        min_approvals: NonZeroU32,
    },
    /// At least `ceil(percentage × pool size)` members of the pool have voted (any vote).
    Percentage { percentage: Ratio, pool: UserSet },
    /// Every listed user has voted (any vote).
    SpecificUsers { users: UserSet },
}

impl Rule {
    /// The roles whose holders may vote toward an `any` rule that names none.
    pub fn default_any_roles() -> [Role; 3] {
        [Role::approver(), Role::admin(), Role::owner()]
    }

    /// Whether the rule's voters are a finite, listed set of users.
    pub fn has_finite_pool(&self) -> bool {
        matches!(self, Self::Percentage { .. } | Self::SpecificUsers { .. })
    }
}

/// Voters whose single rejection rejects the action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Veto {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
}

impl Veto {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.roles.is_empty()
    }
}

/// One step of an approval chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Shown to approvers ("owner", "finance review").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = r"^[^\u0000]*$"))]
    pub name: Option<String>,
    pub rules: NonEmpty<Rule>,
    /// approvals ÷ (approvals + rejections) must reach this; 1 (the default) means any
    /// rejection among the counted votes rejects.
    #[serde(default = "unanimous")]
    pub required_ratio: Ratio,
    #[serde(default, skip_serializing_if = "Veto::is_empty")]
    pub veto: Veto,
    /// The stage may be skipped — recorded as `StageSkipped`, never silently passed — when
    /// `skip_when` holds as it opens, or when nobody may vote in it (every listed voter is the
    /// requester, who may not approve their own action). Never the first stage.
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
    /// A rule judged on the previous stage's ballots as this optional stage opens: when it
    /// holds, the stage is skipped (`{"type": "role", "role": "owner", "min_approvals": 1}`:
    /// "no reviewer needed once an owner approved").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_when: Option<Rule>,
    /// This stage's deadline, from the moment it opens (default: the policy's `timeout_seconds`).
    /// Once any stage sets a deadline, an escalation role or `on_timeout`, every stage gets a
    /// deadline of its own from the moment it opens, and escalations count per stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<TimeoutSeconds>,
    /// Holders of this role become eligible in this stage when its deadline passes (default: the
    /// policy's `escalation_role`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation_role: Option<Role>,
    /// What happens when this stage's deadline passes and no escalation remains (default: the
    /// policy's `on_timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<OnTimeout>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Reads the stages and checks what one stage cannot check alone: the first stage is never
/// optional, and `skip_when` belongs to an optional stage.
fn checked_stages<'de, D>(deserializer: D) -> Result<NonEmpty<Stage>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let stages = NonEmpty::<Stage>::deserialize(deserializer)?;
    check_stages(stages.as_slice()).map_err(serde::de::Error::custom)?;
    Ok(stages)
}

fn check_stages(stages: &[Stage]) -> Result<(), String> {
    for (index, stage) in stages.iter().enumerate() {
        if index == 0 && stage.optional {
            return Err("stages[0].optional: the first stage cannot be optional".into());
        }
        if stage.skip_when.is_some() && !stage.optional {
            return Err(format!(
                "stages[{index}].skip_when: only an optional stage can be skipped"
            ));
        }
    }
    Ok(())
}

fn unanimous() -> Ratio {
    Ratio::ONE
}

/// What happens when the deadline passes and no escalation remains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    #[default]
    Expire,
    Reject,
}

/// Seconds, between one second and one year.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "u32", into = "u32")]
#[schemars(extend("minimum" = 1, "maximum" = 31_536_000))]
pub struct TimeoutSeconds(u32);

impl TimeoutSeconds {
    pub const MAX: u32 = 31_536_000;
    pub const DAY: Self = Self(86_400);

    pub fn parse(seconds: u32) -> Result<Self, ParseError> {
        if seconds == 0 || seconds > Self::MAX {
            return Err(ParseError::new(
                "",
                "must be between 1 and 31536000 seconds",
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
}

impl TryFrom<u32> for TimeoutSeconds {
    type Error = ParseError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<TimeoutSeconds> for u32 {
    fn from(value: TimeoutSeconds) -> Self {
        value.0
    }
}

/// What a policy demands of the actions it governs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// Approval stages, in order.
    #[serde(deserialize_with = "checked_stages")]
    pub stages: NonEmpty<Stage>,
    /// Seconds from submission (or from the previous deadline, after an escalation) until the
    /// deadline.
    #[serde(default = "a_day")]
    pub timeout_seconds: TimeoutSeconds,
    /// Holders of this role become eligible in the current stage when the deadline passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation_role: Option<Role>,
    /// How many times the deadline may escalate before `on_timeout` applies.
    #[serde(default = "one")]
    #[schemars(extend("maximum" = u32::MAX))]
    pub max_escalations: u32,
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// Run the action as soon as it is approved.
    #[serde(default)]
    pub auto_execute: bool,
    /// In `auto` mode, approve at submission without votes.
    #[serde(default)]
    pub auto_approve: bool,
    /// Whether the requester may vote on their own action.
    #[serde(default)]
    pub allow_self_approval: bool,
    /// Execution attempts before the action fails for good.
    #[serde(default = "three")]
    #[schemars(extend("maximum" = u32::MAX))]
    pub max_attempts: NonZeroU32,
}

fn a_day() -> TimeoutSeconds {
    TimeoutSeconds::DAY
}
fn one() -> u32 {
    1
}
fn three() -> NonZeroU32 {
    NonZeroU32::MIN.saturating_add(2)
}

impl Requirements {
    /// Out of the box: one approval from an owner or admin, a 24-hour timeout, then expiry.
    pub fn builtin_default() -> Self {
        Self {
            stages: NonEmpty::one(Stage {
                name: Some("owner or admin".into()),
                rules: NonEmpty::one(Rule::Any {
                    min_approvals: NonZeroU32::MIN,
                    roles: vec![Role::owner(), Role::admin()],
                }),
                required_ratio: Ratio::ONE,
                veto: Veto::default(),
                optional: false,
                skip_when: None,
                timeout_seconds: None,
                escalation_role: None,
                on_timeout: None,
            }),
            timeout_seconds: TimeoutSeconds::DAY,
            escalation_role: None,
            max_escalations: 1,
            on_timeout: OnTimeout::Expire,
            auto_execute: false,
            auto_approve: false,
            allow_self_approval: false,
            max_attempts: three(),
        }
    }

    /// Whether stages have deadlines of their own: once any stage sets `timeout_seconds`,
    /// `escalation_role` or `on_timeout`, each stage's deadline runs from the moment it opens
    /// and escalations count per stage. Otherwise (every policy written before stages could)
    /// one deadline runs from submission across all stages.
    pub fn per_stage_deadlines(&self) -> bool {
        self.stages.iter().any(|stage| {
            stage.timeout_seconds.is_some()
                || stage.escalation_role.is_some()
                || stage.on_timeout.is_some()
        })
    }

    /// The deadline of stage `index`: its own, else the policy's.
    pub fn stage_timeout(&self, index: u32) -> TimeoutSeconds {
        self.stage(index)
            .and_then(|stage| stage.timeout_seconds)
            .unwrap_or(self.timeout_seconds)
    }

    /// The escalation role of stage `index`: its own, else the policy's.
    pub fn stage_escalation_role(&self, index: u32) -> Option<&Role> {
        self.stage(index)
            .and_then(|stage| stage.escalation_role.as_ref())
            .or(self.escalation_role.as_ref())
    }

    /// What stage `index` does at its deadline: its own, else the policy's.
    pub fn stage_on_timeout(&self, index: u32) -> OnTimeout {
        self.stage(index)
            .and_then(|stage| stage.on_timeout)
            .unwrap_or(self.on_timeout)
    }

    pub fn stage(&self, index: u32) -> Option<&Stage> {
        self.stages.as_slice().get(index as usize)
    }

    /// Parses requirements from JSON; errors name the path under `requirements`.
    pub fn parse(document: &Value) -> Result<Self, ParseError> {
        serde_path_to_error::deserialize(document).map_err(|err| {
            let path = err.path().to_string();
            let field = if path == "." {
                "requirements".to_owned()
            } else {
                format!("requirements.{path}")
            };
            ParseError::new(field, err.into_inner().to_string())
        })
    }
}

/// A tenant's policy as it is stored and edited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub id: PolicyId,
    /// Incremented on every edit.
    pub version: u32,
    pub name: String,
    /// Higher wins.
    #[serde(default)]
    pub priority: i32,
    pub criteria: Criteria,
    pub requirements: Requirements,
    /// When the policy was first created; older wins a priority tie.
    pub created_at: Timestamp,
}

/// The policy an action is governed by, frozen into its submission event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PolicySnapshot {
    pub id: PolicyId,
    pub version: u32,
    pub name: String,
    pub priority: i32,
    /// True when no policy matched and the tenant default applied.
    pub is_default: bool,
    pub requirements: Requirements,
}

impl PolicySnapshot {
    /// The tenant default with the given requirements.
    pub fn tenant_default(requirements: Requirements) -> Self {
        Self {
            id: PolicyId::default_policy(),
            version: 1,
            name: "Tenant default".into(),
            priority: i32::MIN,
            is_default: true,
            requirements,
        }
    }
}

impl From<&Policy> for PolicySnapshot {
    fn from(policy: &Policy) -> Self {
        Self {
            id: policy.id.clone(),
            version: policy.version,
            name: policy.name.clone(),
            priority: policy.priority,
            is_default: false,
            requirements: policy.requirements.clone(),
        }
    }
}

/// Picks the policy for a submission's facts: highest priority among the matches, then the older,
/// then the smaller id; the tenant default when none matches.
pub fn resolve(policies: &[Policy], facts: &Value, default: &Requirements) -> PolicySnapshot {
    policies
        .iter()
        .filter(|policy| policy.criteria.matches(facts))
        .min_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.created_at.cmp(&b.created_at))
                .then(a.id.cmp(&b.id))
        })
        .map_or_else(
            || PolicySnapshot::tenant_default(default.clone()),
            PolicySnapshot::from,
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn at(seconds: i64) -> Timestamp {
        chrono::Utc
            .timestamp_opt(1_700_000_000 + seconds, 0)
            .single()
            .expect("valid time")
    }

    fn policy(id: &str, priority: i32, created: i64, criteria: Value) -> Policy {
        serde_json::from_value(json!({
            "id": id,
            "version": 1,
            "name": id,
            "priority": priority,
            "criteria": criteria,
            "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }] },
            "created_at": at(created),
        }))
        .expect("valid policy")
    }

    #[test]
    fn ratio_is_exact_in_basis_points() {
        assert_eq!(Ratio::parse(0.6).expect("valid").basis_points(), 6000);
        assert_eq!(Ratio::parse(0.6).expect("valid").ceil_of(5), 3);
        assert_eq!(Ratio::parse(0.5).expect("valid").ceil_of(3), 2);
        assert_eq!(Ratio::ONE.ceil_of(4), 4);
        assert_eq!(Ratio::ZERO.ceil_of(4), 0);
        assert_eq!(Ratio::parse(1.0 / 3.0).expect("valid").ceil_of(3), 1);
        assert!(Ratio::parse(1.01).is_err());
        assert!(Ratio::parse(-0.1).is_err());
        assert!(Ratio::parse(f64::NAN).is_err());
        assert_eq!(
            serde_json::to_value(Ratio::parse(0.6).expect("valid")).expect("json"),
            json!(0.6)
        );
    }

    #[test]
    fn requirements_fill_defaults() {
        let requirements = Requirements::parse(&json!({
            "stages": [{ "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 2 }] }]
        }))
        .expect("valid");
        assert_eq!(requirements.timeout_seconds, TimeoutSeconds::DAY);
        assert_eq!(requirements.on_timeout, OnTimeout::Expire);
        assert_eq!(requirements.max_attempts.get(), 3);
        assert_eq!(requirements.stages.as_slice()[0].required_ratio, Ratio::ONE);
        assert!(!requirements.allow_self_approval && !requirements.auto_execute);
    }

    #[test]
    fn invalid_requirements_are_refused_with_the_reason() {
        let cases = [
            (
                json!({ "stages": [] }),
                "requirements.stages",
                "must not be empty",
            ),
            (
                json!({ "stages": [{ "rules": [] }] }),
                "requirements.stages[0].rules",
                "must not be empty",
            ),
            (
                json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 0 }] }] }),
                "requirements.stages[0].rules[0]",
                "nonzero",
            ),
            (
                json!({ "stages": [{ "rules": [{ "type": "quorum" }] }] }),
                "requirements.stages[0].rules[0]",
                "unknown variant `quorum`",
            ),
            (
                json!({ "stages": [{ "rules": [{ "type": "specific_users", "users": ["a", "a"] }] }] }),
                "requirements.stages[0].rules[0]",
                "listed twice",
            ),
            (
                json!({ "stages": [{ "rules": [{ "type": "percentage", "percentage": 1.5, "pool": ["a"] }] }] }),
                "requirements.stages[0].rules[0]",
                "between 0 and 1",
            ),
            (
                json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }], "required_ratio": 2 }] }),
                "requirements.stages[0].required_ratio",
                "between 0 and 1",
            ),
            (
                json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }], "timeout_seconds": 0 }),
                "requirements.timeout_seconds",
                "between 1 and",
            ),
            (
                json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }], "max_attempts": 0 }),
                "requirements.max_attempts",
                "nonzero",
            ),
            (
                json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }], "quorum": 2 }),
                "requirements",
                "unknown field `quorum`",
            ),
        ];
        for (document, path, message) in cases {
            let err = Requirements::parse(&document).expect_err("invalid");
            assert!(err.field.starts_with(path), "{document}: {}", err.field);
            assert!(err.message.contains(message), "{document}: {}", err.message);
        }
    }

    #[test]
    fn the_highest_priority_match_wins() {
        let policies = [
            policy("low", 1, 0, json!({})),
            policy("high", 10, 5, json!({ "module": "billing" })),
            policy("unmatched", 99, 0, json!({ "module": "crm" })),
        ];
        let resolved = resolve(
            &policies,
            &json!({ "module": "billing" }),
            &Requirements::builtin_default(),
        );
        assert_eq!(resolved.id.as_str(), "high");
        assert!(!resolved.is_default);
    }

    #[test]
    fn priority_ties_go_to_the_older_policy_then_the_smaller_id() {
        let older = [policy("b", 5, 0, json!({})), policy("a", 5, 10, json!({}))];
        assert_eq!(
            resolve(&older, &json!({}), &Requirements::builtin_default())
                .id
                .as_str(),
            "b"
        );
        let same_age = [policy("b", 5, 0, json!({})), policy("a", 5, 0, json!({}))];
        assert_eq!(
            resolve(&same_age, &json!({}), &Requirements::builtin_default())
                .id
                .as_str(),
            "a"
        );
    }

    #[test]
    fn nothing_matching_resolves_to_the_tenant_default() {
        let policies = [policy("crm", 5, 0, json!({ "module": "crm" }))];
        let resolved = resolve(
            &policies,
            &json!({ "module": "billing" }),
            &Requirements::builtin_default(),
        );
        assert!(resolved.is_default);
        assert_eq!(resolved.id.as_str(), "default");
        assert_eq!(resolved.requirements, Requirements::builtin_default());
    }

    #[test]
    fn the_builtin_default_is_one_owner_or_admin_approval_then_expiry_after_a_day() {
        let default = Requirements::builtin_default();
        assert_eq!(default.stages.len(), 1);
        let stage = &default.stages.as_slice()[0];
        assert_eq!(
            stage.rules.as_slice(),
            &[Rule::Any {
                min_approvals: NonZeroU32::MIN,
                roles: vec![Role::owner(), Role::admin()]
            }]
        );
        assert_eq!(default.timeout_seconds.get(), 86_400);
        assert_eq!(default.on_timeout, OnTimeout::Expire);
        assert!(default.escalation_role.is_none());
    }

    #[test]
    fn the_documented_example_policies_parse() {
        let examples: Vec<Policy> =
            serde_json::from_str(include_str!("../../docs/examples/policies.json"))
                .expect("docs examples parse");
        assert_eq!(examples.len(), 3);
        let payout = json!({ "action_type": "payouts.pause", "payload": { "amount": 1_500_000 } });
        assert_eq!(
            resolve(&examples, &payout, &Requirements::builtin_default())
                .id
                .as_str(),
            "high-value-payout"
        );
        let small_payout = json!({ "action_type": "payouts.pause", "payload": { "amount": 10 }, "risk": { "level": "low" } });
        assert_eq!(
            resolve(&examples, &small_payout, &Requirements::builtin_default())
                .id
                .as_str(),
            "low-risk-action"
        );
        let freeze = json!({ "action_type": "merchants.freeze", "risk": { "level": "high" } });
        assert_eq!(
            resolve(&examples, &freeze, &Requirements::builtin_default())
                .id
                .as_str(),
            "merchant-freeze"
        );
    }
}
