//! Risk scoring: a submission's score 0–100, its level and the reasons that produced it.
//!
//! Matching is a case-insensitive substring test; the score is the sum of the signals that fire,
//! clamped to 0–100; the level is low ≤ 33, medium 34–66, high ≥ 67. A signal that does not fire
//! gives no reason. The table lives in `docs/approvals.md`; change both together.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ParseError;
use crate::submission::Submission;

/// A submitter's own view of the risk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RiskTag {
    High,
    Medium,
}

/// 0–100.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "u8", into = "u8")]
pub struct RiskScore(#[schemars(range(max = 100))] u8);

impl RiskScore {
    pub const MAX: u8 = 100;

    pub fn parse(value: u8) -> Result<Self, ParseError> {
        if value > Self::MAX {
            return Err(ParseError::new("risk.score", "must be between 0 and 100"));
        }
        Ok(Self(value))
    }

    /// Clamps a raw sum of points into 0–100.
    pub fn clamped(points: u32) -> Self {
        Self(points.min(u32::from(Self::MAX)) as u8)
    }

    pub fn value(self) -> u8 {
        self.0
    }

    pub fn level(self) -> RiskLevel {
        match self.0 {
            0..=33 => RiskLevel::Low,
            34..=66 => RiskLevel::Medium,
            _ => RiskLevel::High,
        }
    }
}

impl TryFrom<u8> for RiskScore {
    type Error = ParseError;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<RiskScore> for u8 {
    fn from(value: RiskScore) -> Self {
        value.0
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    Low,
    Medium,
    High,
}

impl RiskLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "low" => Some(Self::Low),
            "medium" => Some(Self::Medium),
            "high" => Some(Self::High),
            _ => None,
        }
    }
}

impl fmt::Display for RiskLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The stable code of a risk signal. Stored in events: never rename a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RiskReasonCode {
    ModuleFinanceHeavy,
    CapabilityModifiesData,
    HighDescribedImpact,
    BroadScope,
    MultipleConnectors,
    FlaggedHighRisk,
    FlaggedMediumRisk,
    SensitiveData,
    AutomatedSource,
}

impl RiskReasonCode {
    pub fn label(self) -> &'static str {
        match self {
            Self::ModuleFinanceHeavy => "module finance-heavy",
            Self::CapabilityModifiesData => "capability modifies data",
            Self::HighDescribedImpact => "high described impact",
            Self::BroadScope => "broad scope",
            Self::MultipleConnectors => "multiple connectors affected",
            Self::FlaggedHighRisk => "module flagged high risk",
            Self::FlaggedMediumRisk => "module flagged medium risk",
            Self::SensitiveData => "touches sensitive data",
            Self::AutomatedSource => "automated source",
        }
    }
}

/// One signal that fired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RiskReason {
    pub code: RiskReasonCode,
    pub label: String,
    pub points: u8,
}

impl RiskReason {
    fn new(code: RiskReasonCode, points: u8) -> Self {
        Self {
            code,
            label: code.label().to_owned(),
            points,
        }
    }
}

/// The outcome of scoring, recorded in the submission event with the inputs it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RiskAssessment {
    pub score: RiskScore,
    pub level: RiskLevel,
    /// The sum of the reasons' points before clamping.
    pub points: u32,
    pub reasons: Vec<RiskReason>,
}

const SIGNAL_FINANCE_MODULE: (&[&str], u8) = (&["finance", "billing"], 20);
const SIGNAL_MODIFYING_CAPABILITY: (&[&str], u8) = (&["delete", "sync"], 15);
const BROAD_WORDS: &[&str] = &["mass", "global", "all tenants"];
const IMPACT_POINTS: u8 = 25;
const SCOPE_POINTS: u8 = 15;
const POINTS_PER_EXTRA_CONNECTOR: usize = 5;
const MAX_CONNECTOR_POINTS: usize = 20;
const TAG_HIGH_POINTS: u8 = 25;
const TAG_MEDIUM_POINTS: u8 = 10;
const SIGNAL_SENSITIVE_FLAG: (&[&str], u8) = (&["pii", "phi", "financial"], 20);
const SIGNAL_AUTOMATED_SOURCE: (&[&str], u8) = (&["automated"], 10);

fn mentions_any(text: &str, needles: &[&str]) -> bool {
    let text = text.to_lowercase();
    needles.iter().any(|needle| text.contains(needle))
}

/// Scores a submission. Pure and total: the same submission always gets the same assessment.
pub fn assess(submission: &Submission) -> RiskAssessment {
    let mut reasons = Vec::new();
    let mut signal = |fires: bool, code: RiskReasonCode, points: u8| {
        if fires {
            reasons.push(RiskReason::new(code, points));
        }
    };

    let (words, points) = SIGNAL_FINANCE_MODULE;
    signal(
        mentions_any(submission.module.as_str(), words),
        RiskReasonCode::ModuleFinanceHeavy,
        points,
    );
    let (words, points) = SIGNAL_MODIFYING_CAPABILITY;
    signal(
        mentions_any(submission.capability.as_str(), words),
        RiskReasonCode::CapabilityModifiesData,
        points,
    );
    signal(
        mentions_any(submission.impact.as_str(), BROAD_WORDS),
        RiskReasonCode::HighDescribedImpact,
        IMPACT_POINTS,
    );
    signal(
        mentions_any(submission.scope.as_str(), BROAD_WORDS),
        RiskReasonCode::BroadScope,
        SCOPE_POINTS,
    );
    let connector_points = submission
        .connectors
        .len()
        .saturating_sub(1)
        .saturating_mul(POINTS_PER_EXTRA_CONNECTOR)
        .min(MAX_CONNECTOR_POINTS);
    signal(
        connector_points > 0,
        RiskReasonCode::MultipleConnectors,
        connector_points as u8,
    );
    match submission.risk_tag {
        Some(RiskTag::High) => signal(true, RiskReasonCode::FlaggedHighRisk, TAG_HIGH_POINTS),
        Some(RiskTag::Medium) => signal(true, RiskReasonCode::FlaggedMediumRisk, TAG_MEDIUM_POINTS),
        None => {}
    }
    let (words, points) = SIGNAL_SENSITIVE_FLAG;
    signal(
        submission
            .flags
            .iter()
            .any(|flag| mentions_any(flag.as_str(), words)),
        RiskReasonCode::SensitiveData,
        points,
    );
    let (words, points) = SIGNAL_AUTOMATED_SOURCE;
    signal(
        mentions_any(submission.source.as_str(), words),
        RiskReasonCode::AutomatedSource,
        points,
    );

    let points: u32 = reasons.iter().map(|reason| u32::from(reason.points)).sum();
    let score = RiskScore::clamped(points);
    RiskAssessment {
        score,
        level: score.level(),
        points,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::submission::tests::plain_submission;
    use crate::{Connector, Flag, Source, Text};
    use RiskReasonCode as Code;

    fn codes(assessment: &RiskAssessment) -> Vec<(Code, u8)> {
        assessment
            .reasons
            .iter()
            .map(|reason| (reason.code, reason.points))
            .collect()
    }

    fn score_of(change: impl FnOnce(&mut Submission)) -> RiskAssessment {
        let mut submission = plain_submission();
        change(&mut submission);
        assess(&submission)
    }

    #[test]
    fn a_plain_submission_scores_zero_with_no_reasons() {
        let assessment = score_of(|_| {});
        assert_eq!(assessment.score.value(), 0);
        assert_eq!(assessment.level, RiskLevel::Low);
        assert!(assessment.reasons.is_empty());
    }

    #[test]
    fn finance_or_billing_modules_add_twenty_case_insensitively() {
        for module in ["finance", "billing", "billing-eu", "corefinance"] {
            let assessment =
                score_of(|s| s.module = crate::ModuleSlug::parse(module).expect("slug"));
            assert_eq!(
                codes(&assessment),
                vec![(Code::ModuleFinanceHeavy, 20)],
                "{module}"
            );
            assert_eq!(assessment.reasons[0].label, "module finance-heavy");
        }
    }

    #[test]
    fn delete_or_sync_capabilities_add_fifteen() {
        for capability in ["delete-leads", "sync", "resync_contacts"] {
            let assessment = score_of(|s| {
                s.capability = crate::CapabilityName::parse(capability).expect("slug")
            });
            assert_eq!(codes(&assessment), vec![(Code::CapabilityModifiesData, 15)]);
        }
    }

    #[test]
    fn broad_words_in_impact_add_twenty_five_and_in_scope_fifteen() {
        for words in ["MASS mailing", "a Global change", "touches All Tenants"] {
            let impact = score_of(|s| s.impact = Text::parse(words).expect("text"));
            assert_eq!(
                codes(&impact),
                vec![(Code::HighDescribedImpact, 25)],
                "{words}"
            );
            let scope = score_of(|s| s.scope = Text::parse(words).expect("text"));
            assert_eq!(codes(&scope), vec![(Code::BroadScope, 15)], "{words}");
            assert_eq!(scope.reasons[0].label, "broad scope");
        }
        let narrow = score_of(|s| s.impact = Text::parse("one tenant").expect("text"));
        assert!(narrow.reasons.is_empty());
    }

    #[test]
    fn connectors_add_five_for_each_beyond_the_first_up_to_twenty() {
        let expected = [
            (0, None),
            (1, None),
            (2, Some(5)),
            (3, Some(10)),
            (5, Some(20)),
            (9, Some(20)),
        ];
        for (count, points) in expected {
            let assessment = score_of(|s| {
                s.connectors = (0..count)
                    .map(|i| Connector::parse(format!("c{i}")).expect("slug"))
                    .collect();
            });
            let want: Vec<_> = points
                .map(|p| (Code::MultipleConnectors, p))
                .into_iter()
                .collect();
            assert_eq!(codes(&assessment), want, "{count} connectors");
        }
    }

    #[test]
    fn risk_tags_add_twenty_five_or_ten() {
        let high = score_of(|s| s.risk_tag = Some(RiskTag::High));
        assert_eq!(codes(&high), vec![(Code::FlaggedHighRisk, 25)]);
        assert_eq!(high.reasons[0].label, "module flagged high risk");
        let medium = score_of(|s| s.risk_tag = Some(RiskTag::Medium));
        assert_eq!(codes(&medium), vec![(Code::FlaggedMediumRisk, 10)]);
        assert_eq!(medium.reasons[0].label, "module flagged medium risk");
    }

    #[test]
    fn a_sensitive_flag_adds_twenty_once() {
        for flags in [vec!["PII"], vec!["contains-phi"], vec!["financial", "pii"]] {
            let assessment = score_of(|s| {
                s.flags = flags
                    .iter()
                    .map(|f| Flag::parse(*f).expect("flag"))
                    .collect();
            });
            assert_eq!(
                codes(&assessment),
                vec![(Code::SensitiveData, 20)],
                "{flags:?}"
            );
        }
        let harmless = score_of(|s| s.flags = vec![Flag::parse("customer-visible").expect("flag")]);
        assert!(harmless.reasons.is_empty());
    }

    #[test]
    fn an_automated_source_adds_ten() {
        let assessment = score_of(|s| s.source = Source::parse("Automated-Agent").expect("source"));
        assert_eq!(codes(&assessment), vec![(Code::AutomatedSource, 10)]);
    }

    #[test]
    fn every_signal_at_once_clamps_to_one_hundred_and_keeps_the_raw_sum() {
        let assessment = score_of(|s| {
            s.module = crate::ModuleSlug::parse("billing").expect("slug");
            s.capability = crate::CapabilityName::parse("delete").expect("slug");
            s.impact = Text::parse("global").expect("text");
            s.scope = Text::parse("all tenants").expect("text");
            s.connectors = (0..6)
                .map(|i| Connector::parse(format!("c{i}")).expect("slug"))
                .collect();
            s.risk_tag = Some(RiskTag::High);
            s.flags = vec![Flag::parse("pii").expect("flag")];
            s.source = Source::parse("automated").expect("source");
        });
        assert_eq!(assessment.points, 20 + 15 + 25 + 15 + 20 + 25 + 20 + 10);
        assert_eq!(assessment.score.value(), 100);
        assert_eq!(assessment.level, RiskLevel::High);
        assert_eq!(assessment.reasons.len(), 8);
    }

    #[test]
    fn levels_change_at_thirty_four_and_sixty_seven() {
        let level = |points| RiskScore::clamped(points).level();
        assert_eq!(level(0), RiskLevel::Low);
        assert_eq!(level(33), RiskLevel::Low);
        assert_eq!(level(34), RiskLevel::Medium);
        assert_eq!(level(66), RiskLevel::Medium);
        assert_eq!(level(67), RiskLevel::High);
        assert_eq!(level(100), RiskLevel::High);
        assert_eq!(RiskScore::clamped(250).value(), 100);
        assert!(RiskScore::parse(101).is_err());
    }

    #[test]
    fn reference_examples_land_on_the_documented_levels() {
        // billing (20) + medium tag (10) + automated source (10) = 40: medium.
        let medium = score_of(|s| {
            s.module = crate::ModuleSlug::parse("billing").expect("slug");
            s.risk_tag = Some(RiskTag::Medium);
            s.source = Source::parse("automated-agent").expect("source");
        });
        assert_eq!(
            (medium.score.value(), medium.level),
            (40, RiskLevel::Medium)
        );
        // finance (20) + delete (15) + mass impact (25) + pii (20) = 80: high.
        let high = score_of(|s| {
            s.module = crate::ModuleSlug::parse("finance").expect("slug");
            s.capability = crate::CapabilityName::parse("delete-ledger").expect("slug");
            s.impact = Text::parse("mass deletion").expect("text");
            s.flags = vec![Flag::parse("pii").expect("flag")];
        });
        assert_eq!((high.score.value(), high.level), (80, RiskLevel::High));
    }
}
