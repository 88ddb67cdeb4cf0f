//! Counting the votes of one stage.
//!
//! - A voter is eligible in a stage when some rule counts them (by role or by listing), when
//!   they can veto, or when they hold the escalation role after an escalation. Escalation role
//!   holders count toward `any` and `role` rules; listed pools never change.
//! - `any`/`role` rules count approvals from their eligible voters; `percentage` and
//!   `specific_users` count pool members who voted at all (abstentions included).
//! - The stage is **approved** when every rule holds, it has at least one approval, and
//!   approvals ÷ (approvals + rejections) ≥ `required_ratio`.
//! - The stage is **rejected** on a veto; or once every rule has its participation
//!   (approvals + rejections ≥ N for `any`/`role`, the votes a pool rule needs) and rejections ÷
//!   (approvals + rejections) > 1 − `required_ratio`; or, when every possible voter is listed,
//!   as soon as the stage could not be approved even if everyone who has not voted approved.
//! - Abstentions never count toward approvals or the ratio.
//!
//! All arithmetic is on integers (ratios are basis points), so a replay gives the same answer.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::canonical::ExecutionKey;
use crate::policy::{Rule, Stage};
use crate::{Comment, Role, Timestamp, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Vote {
    Approve,
    Reject,
    Abstain,
}

/// A voter's current vote in a stage, with the roles they held when casting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Ballot {
    pub vote: Vote,
    pub roles: BTreeSet<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<Comment>,
    pub cast_at: Timestamp,
    /// The execution key the vote was bound to, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_key: Option<ExecutionKey>,
    /// The delegate who cast this ballot in the voter's place, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cast_by: Option<UserId>,
    /// The voter's Ed25519 signature of the vote, when they signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::signing::VoteSignature>,
}

/// Votes counted in a stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Tally {
    pub approvals: u32,
    pub rejections: u32,
    pub abstentions: u32,
}

/// Why a stage was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StageRejection {
    /// Rejections exceeded `1 − required_ratio` once the rules had their participation.
    Ratio,
    /// A veto holder rejected.
    Veto { voter: UserId },
    /// No remaining eligible voter could bring the stage to approval.
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageOutcome {
    Pending,
    Approved,
    Rejected(StageRejection),
}

/// Progress of one rule, for approvers and views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RuleProgress {
    /// Votes that count toward the rule (approvals, or votes of pool members).
    pub counted: u32,
    /// Votes the rule needs.
    pub needed: u32,
    pub satisfied: bool,
}

/// Progress of a stage, for approvers and views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StageProgress {
    pub tally: Tally,
    pub rules: Vec<RuleProgress>,
}

/// Everything needed to judge one stage besides its ballots.
#[derive(Debug, Clone, Copy)]
pub struct StageContext<'a> {
    pub stage: &'a Stage,
    pub requester: &'a UserId,
    pub allow_self_approval: bool,
    /// The escalation role, once the action has escalated.
    pub escalation_role: Option<&'a Role>,
}

impl StageContext<'_> {
    fn holds_escalation_role(&self, roles: &BTreeSet<Role>) -> bool {
        self.escalation_role
            .is_some_and(|role| roles.contains(role))
    }

    fn counts_for(&self, rule: &Rule, voter: &UserId, roles: &BTreeSet<Role>) -> bool {
        match rule {
            Rule::Any { roles: named, .. } => {
                let holds = |role: &Role| roles.contains(role);
                (if named.is_empty() {
                    Rule::default_any_roles().iter().any(holds)
                } else {
                    named.iter().any(holds)
                }) || self.holds_escalation_role(roles)
            }
            Rule::Role { role, .. } => roles.contains(role) || self.holds_escalation_role(roles),
            Rule::Percentage { pool, .. } => pool.contains(voter),
            Rule::SpecificUsers { users } => users.contains(voter),
        }
    }

    fn can_veto(&self, voter: &UserId, roles: &BTreeSet<Role>) -> bool {
        let veto = &self.stage.veto;
        veto.users.contains(voter) || veto.roles.iter().any(|role| roles.contains(role))
    }

    /// Whether this voter may vote in the stage (self-approval is checked separately).
    pub fn is_eligible(&self, voter: &UserId, roles: &BTreeSet<Role>) -> bool {
        self.stage
            .rules
            .iter()
            .any(|rule| self.counts_for(rule, voter, roles))
            || self.can_veto(voter, roles)
            || self.holds_escalation_role(roles)
    }

    /// Who may vote in the stage: the roles whose holders may, and the users listed by name.
    /// A principal may vote when they hold one of the roles or are one of the users (and are
    /// not the requester, unless self-approval is allowed).
    pub fn electorate(&self) -> (BTreeSet<Role>, BTreeSet<UserId>) {
        let mut roles = BTreeSet::new();
        let mut users = BTreeSet::new();
        for rule in &self.stage.rules {
            match rule {
                Rule::Any { roles: named, .. } if named.is_empty() => {
                    roles.extend(Rule::default_any_roles());
                }
                Rule::Any { roles: named, .. } => roles.extend(named.iter().cloned()),
                Rule::Role { role, .. } => {
                    roles.insert(role.clone());
                }
                Rule::Percentage { pool: listed, .. } | Rule::SpecificUsers { users: listed } => {
                    users.extend(listed.iter().cloned());
                }
            }
        }
        roles.extend(self.stage.veto.roles.iter().cloned());
        users.extend(self.stage.veto.users.iter().cloned());
        roles.extend(self.escalation_role.cloned());
        (roles, users)
    }

    /// Whether this user could ever vote in the stage (excludes the requester without
    /// self-approval).
    fn may_vote(&self, voter: &UserId) -> bool {
        self.allow_self_approval || voter != self.requester
    }

    /// Every user who could vote, when that set is finite (only listed users can vote).
    fn finite_electorate(&self) -> Option<BTreeSet<&UserId>> {
        let stage = self.stage;
        let listed_only = stage.rules.iter().all(Rule::has_finite_pool)
            && stage.veto.roles.is_empty()
            && self.escalation_role.is_none();
        if !listed_only {
            return None;
        }
        let mut electorate: BTreeSet<&UserId> = stage.veto.users.iter().collect();
        for rule in &stage.rules {
            match rule {
                Rule::Percentage { pool: users, .. } | Rule::SpecificUsers { users } => {
                    electorate.extend(users.iter());
                }
                Rule::Any { .. } | Rule::Role { .. } => {}
            }
        }
        electorate.retain(|user| self.may_vote(user));
        Some(electorate)
    }

    /// Whether nobody at all may vote in the stage: every possible voter is listed, and none of
    /// them may vote (the requester without self-approval). An optional stage is then skipped.
    pub fn nobody_may_vote(&self) -> bool {
        self.finite_electorate()
            .is_some_and(|electorate| electorate.is_empty())
    }

    /// Whether `rule` (one of the stage's, or another judged on its ballots, such as the next
    /// stage's `skip_when`) holds on these ballots.
    pub fn rule_holds(&self, rule: &Rule, ballots: &BTreeMap<UserId, Ballot>) -> bool {
        let counts = self.rule_counts(rule, ballots);
        counts.counted >= counts.needed
    }

    fn rule_counts(&self, rule: &Rule, ballots: &BTreeMap<UserId, Ballot>) -> RuleCounts {
        let counted = ballots
            .iter()
            .filter(|(voter, ballot)| self.counts_for(rule, voter, &ballot.roles));
        match rule {
            Rule::Any { min_approvals, .. } | Rule::Role { min_approvals, .. } => {
                let (mut approvals, mut decisive) = (0, 0);
                for (_, ballot) in counted {
                    approvals += u32::from(ballot.vote == Vote::Approve);
                    decisive += u32::from(ballot.vote != Vote::Abstain);
                }
                RuleCounts {
                    counted: approvals,
                    participation: decisive,
                    needed: min_approvals.get(),
                }
            }
            Rule::Percentage { percentage, pool } => {
                let voted = count(counted);
                RuleCounts {
                    counted: voted,
                    participation: voted,
                    needed: u32::try_from(percentage.ceil_of(pool.len())).unwrap_or(u32::MAX),
                }
            }
            Rule::SpecificUsers { users } => {
                let voted = count(counted);
                RuleCounts {
                    counted: voted,
                    participation: voted,
                    needed: u32::try_from(users.len()).unwrap_or(u32::MAX),
                }
            }
        }
    }

    pub fn tally(ballots: &BTreeMap<UserId, Ballot>) -> Tally {
        let mut tally = Tally::default();
        for ballot in ballots.values() {
            match ballot.vote {
                Vote::Approve => tally.approvals += 1,
                Vote::Reject => tally.rejections += 1,
                Vote::Abstain => tally.abstentions += 1,
            }
        }
        tally
    }

    pub fn progress(&self, ballots: &BTreeMap<UserId, Ballot>) -> StageProgress {
        StageProgress {
            tally: Self::tally(ballots),
            rules: self
                .stage
                .rules
                .iter()
                .map(|rule| {
                    let counts = self.rule_counts(rule, ballots);
                    RuleProgress {
                        counted: counts.counted,
                        needed: counts.needed,
                        satisfied: counts.counted >= counts.needed,
                    }
                })
                .collect(),
        }
    }

    fn is_approved(&self, ballots: &BTreeMap<UserId, Ballot>) -> bool {
        let tally = Self::tally(ballots);
        let ratio = u64::from(self.stage.required_ratio.basis_points());
        let decisive = u64::from(tally.approvals) + u64::from(tally.rejections);
        tally.approvals > 0
            && u64::from(tally.approvals) * 10_000 >= ratio * decisive
            && self.stage.rules.iter().all(|rule| {
                let counts = self.rule_counts(rule, ballots);
                counts.counted >= counts.needed
            })
    }

    fn is_rejected_by_ratio(&self, ballots: &BTreeMap<UserId, Ballot>) -> bool {
        let tally = Self::tally(ballots);
        let tolerated = 10_000 - u64::from(self.stage.required_ratio.basis_points());
        let decisive = u64::from(tally.approvals) + u64::from(tally.rejections);
        u64::from(tally.rejections) * 10_000 > tolerated * decisive
            && self.stage.rules.iter().all(|rule| {
                let counts = self.rule_counts(rule, ballots);
                counts.participation >= counts.needed
            })
    }

    /// Judges the stage on its current ballots.
    pub fn evaluate(&self, ballots: &BTreeMap<UserId, Ballot>) -> StageOutcome {
        if let Some((voter, _)) = ballots.iter().find(|(voter, ballot)| {
            ballot.vote == Vote::Reject && self.can_veto(voter, &ballot.roles)
        }) {
            return StageOutcome::Rejected(StageRejection::Veto {
                voter: voter.clone(),
            });
        }
        if self.is_approved(ballots) {
            return StageOutcome::Approved;
        }
        if self.is_rejected_by_ratio(ballots) {
            return StageOutcome::Rejected(StageRejection::Ratio);
        }
        if let Some(electorate) = self.finite_electorate() {
            let mut best_case = ballots.clone();
            for voter in electorate {
                best_case.entry(voter.clone()).or_insert_with(|| Ballot {
                    vote: Vote::Approve,
                    roles: BTreeSet::new(),
                    comment: None,
                    cast_at: Timestamp::MIN_UTC,
                    execution_key: None,
                    cast_by: None,
                    signature: None,
                });
            }
            if !self.is_approved(&best_case) {
                return StageOutcome::Rejected(StageRejection::Unreachable);
            }
        }
        StageOutcome::Pending
    }
}

struct RuleCounts {
    counted: u32,
    participation: u32,
    needed: u32,
}

fn count<I: Iterator>(items: I) -> u32 {
    u32::try_from(items.count()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stage(document: serde_json::Value) -> Stage {
        serde_json::from_value(document).expect("valid stage")
    }

    fn user(id: &str) -> UserId {
        UserId::parse(id).expect("valid user")
    }

    fn ballots(votes: &[(&str, &[&str], Vote)]) -> BTreeMap<UserId, Ballot> {
        votes
            .iter()
            .map(|(voter, roles, vote)| {
                (
                    user(voter),
                    Ballot {
                        vote: *vote,
                        roles: roles
                            .iter()
                            .map(|r| Role::parse(*r).expect("role"))
                            .collect(),
                        comment: None,
                        cast_at: Timestamp::MIN_UTC,
                        execution_key: None,
                        cast_by: None,
                        signature: None,
                    },
                )
            })
            .collect()
    }

    fn judge(stage: &Stage, votes: &[(&str, &[&str], Vote)]) -> StageOutcome {
        let requester = user("requester");
        let context = StageContext {
            stage,
            requester: &requester,
            allow_self_approval: false,
            escalation_role: None,
        };
        context.evaluate(&ballots(votes))
    }

    use StageOutcome::{Approved, Pending, Rejected};
    use Vote::{Abstain, Approve, Reject};

    #[test]
    fn percentage_needs_the_ceiling_of_the_pool_share_to_vote() {
        let stage = stage(json!({
            "rules": [{ "type": "percentage", "percentage": 0.6, "pool": ["a", "b", "c", "d", "e"] }],
            "required_ratio": 0.5
        }));
        // ceil(0.6 × 5) = 3 voters.
        assert_eq!(
            judge(&stage, &[("a", &[], Approve), ("b", &[], Approve)]),
            Pending
        );
        assert_eq!(
            judge(
                &stage,
                &[
                    ("a", &[], Approve),
                    ("b", &[], Approve),
                    ("c", &[], Abstain)
                ]
            ),
            Approved
        );
        assert_eq!(
            judge(
                &stage,
                &[("a", &[], Approve), ("b", &[], Reject), ("c", &[], Abstain)]
            ),
            Approved
        );
        assert_eq!(
            judge(
                &stage,
                &[("a", &[], Approve), ("b", &[], Reject), ("c", &[], Reject)]
            ),
            Rejected(StageRejection::Ratio)
        );
    }

    #[test]
    fn ratio_rejection_waits_for_participation_on_open_pools() {
        let stage = stage(json!({
            "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 2 }],
            "required_ratio": 0.6
        }));
        let finance: &[&str] = &["finance_ops"];
        assert_eq!(judge(&stage, &[("a", finance, Reject)]), Pending);
        assert_eq!(
            judge(&stage, &[("a", finance, Reject), ("b", finance, Approve)]),
            Rejected(StageRejection::Ratio)
        );
        assert_eq!(
            judge(&stage, &[("a", finance, Approve), ("b", finance, Approve)]),
            Approved
        );
        // A voter outside the role counts toward the ratio but not the rule.
        assert_eq!(
            judge(
                &stage,
                &[("a", finance, Approve), ("x", &["approver"], Approve)]
            ),
            Pending
        );
    }

    #[test]
    fn a_finite_pool_rejects_as_soon_as_approval_is_out_of_reach() {
        let stage =
            stage(json!({ "rules": [{ "type": "specific_users", "users": ["ceo", "cfo"] }] }));
        assert_eq!(judge(&stage, &[("ceo", &[], Approve)]), Pending);
        assert_eq!(
            judge(&stage, &[("ceo", &[], Reject)]),
            Rejected(StageRejection::Unreachable)
        );
        assert_eq!(
            judge(&stage, &[("ceo", &[], Abstain), ("cfo", &[], Abstain)]),
            Rejected(StageRejection::Unreachable)
        );
        assert_eq!(
            judge(&stage, &[("ceo", &[], Approve), ("cfo", &[], Abstain)]),
            Approved
        );
    }

    #[test]
    fn the_requester_cannot_complete_a_pool_without_self_approval() {
        let stage = stage(
            json!({ "rules": [{ "type": "specific_users", "users": ["requester", "cfo"] }] }),
        );
        assert_eq!(judge(&stage, &[]), Rejected(StageRejection::Unreachable));
    }

    #[test]
    fn a_veto_rejects_at_once() {
        let stage = stage(json!({
            "rules": [{ "type": "any", "min_approvals": 3 }],
            "veto": { "users": ["cfo"], "roles": ["legal"] }
        }));
        assert_eq!(
            judge(
                &stage,
                &[("a", &["approver"], Approve), ("l", &["legal"], Reject)]
            ),
            Rejected(StageRejection::Veto { voter: user("l") })
        );
        assert_eq!(
            judge(&stage, &[("cfo", &[], Reject)]),
            Rejected(StageRejection::Veto { voter: user("cfo") })
        );
        assert_eq!(judge(&stage, &[("cfo", &[], Approve)]), Pending);
    }

    #[test]
    fn a_stage_needs_at_least_one_approval_even_with_a_zero_ratio() {
        let stage = stage(json!({
            "rules": [{ "type": "specific_users", "users": ["a"] }],
            "required_ratio": 0.0
        }));
        assert_eq!(
            judge(&stage, &[("a", &[], Abstain)]),
            Rejected(StageRejection::Unreachable)
        );
    }

    #[test]
    fn the_electorate_lists_exactly_who_is_eligible() {
        let stage = stage(json!({
            "rules": [
                { "type": "any", "min_approvals": 1 },
                { "type": "specific_users", "users": ["cfo"] }
            ],
            "veto": { "roles": ["legal"], "users": ["ceo"] }
        }));
        let requester = user("requester");
        let cfo_role = Role::parse("cfo").expect("role");
        let context = StageContext {
            stage: &stage,
            requester: &requester,
            allow_self_approval: false,
            escalation_role: Some(&cfo_role),
        };
        let (roles, users) = context.electorate();
        assert_eq!(
            roles.iter().map(Role::as_str).collect::<Vec<_>>(),
            ["admin", "approver", "cfo", "legal", "owner"]
        );
        assert_eq!(
            users.iter().map(UserId::as_str).collect::<Vec<_>>(),
            ["ceo", "cfo"]
        );
        for (voter, held) in [
            ("x", vec!["approver"]),
            ("y", vec!["auditor"]),
            ("cfo", vec![]),
            ("z", vec!["cfo"]),
        ] {
            let held: BTreeSet<Role> = held
                .into_iter()
                .map(|r| Role::parse(r).expect("role"))
                .collect();
            let listed = users.contains(&user(voter)) || held.iter().any(|r| roles.contains(r));
            assert_eq!(context.is_eligible(&user(voter), &held), listed, "{voter}");
        }
    }

    #[test]
    fn progress_reports_each_rule() {
        let stage = stage(json!({ "rules": [
            { "type": "role", "role": "finance_ops", "min_approvals": 2 },
            { "type": "specific_users", "users": ["cfo"] }
        ] }));
        let requester = user("requester");
        let context = StageContext {
            stage: &stage,
            requester: &requester,
            allow_self_approval: false,
            escalation_role: None,
        };
        let progress = context.progress(&ballots(&[
            ("a", &["finance_ops"], Approve),
            ("cfo", &[], Abstain),
        ]));
        assert_eq!(
            progress.tally,
            Tally {
                approvals: 1,
                rejections: 0,
                abstentions: 1
            }
        );
        assert_eq!(
            progress.rules,
            vec![
                RuleProgress {
                    counted: 1,
                    needed: 2,
                    satisfied: false
                },
                RuleProgress {
                    counted: 1,
                    needed: 1,
                    satisfied: true
                },
            ]
        );
    }
}
