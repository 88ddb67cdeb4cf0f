//! What every page shows around its content (the layout) and how values are written for people:
//! relative times, risk badges, stage progress, payload previews. Everything here becomes text
//! the templates escape.

use countersign_app::{actions, roles};
use countersign_domain::TenantMode;
use countersign_domain::policy::Rule;
use countersign_domain::quorum::StageProgress;
use countersign_projections::{ActionDetail, InboxItem};
use serde_json::Value;

use crate::Console;
use crate::assets::{Assets, paths};
use crate::error::PageError;
use crate::session::Session;

/// The frame of every signed-in page.
#[derive(Debug, Clone)]
pub struct Layout {
    pub assets: Assets,
    pub user: String,
    pub tenant: String,
    pub roles: String,
    pub csrf: String,
    /// The tenant is in safe mode: a banner says nothing executes.
    pub safe_mode: bool,
    /// The navigation entry of this page.
    pub active: &'static str,
    pub can_request: bool,
    pub can_admin: bool,
    pub can_audit: bool,
    pub can_stats: bool,
    /// A short confirmation of what the last form did.
    pub notice: Option<String>,
}

impl Layout {
    pub async fn new(
        console: &Console,
        session: &Session,
        active: &'static str,
    ) -> Result<Self, PageError> {
        let mode = actions::current_mode(console.gateway.app.ledger(), &session.actor.tenant)
            .await
            .map_err(PageError::from)?;
        let principal = &session.actor.principal;
        Ok(Self {
            assets: paths(),
            user: principal.id.to_string(),
            tenant: session.actor.tenant.to_string(),
            roles: principal
                .roles
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            csrf: session.csrf.clone(),
            safe_mode: mode == TenantMode::Safe,
            active,
            can_request: session.has_any(&[
                roles::OWNER,
                roles::ADMIN,
                roles::APPROVER,
                roles::REQUESTER,
            ]),
            can_admin: session.has_any(&[roles::OWNER, roles::ADMIN]),
            can_audit: session.has_any(&[roles::OWNER, roles::ADMIN, roles::AUDITOR]),
            can_stats: session.has_any(&[
                roles::OWNER,
                roles::ADMIN,
                roles::AUDITOR,
                roles::APPROVER,
            ]),
            notice: None,
        })
    }

    #[must_use]
    pub fn with_notice(mut self, notice: Option<&str>) -> Self {
        self.notice = notice.and_then(notice_text).map(str::to_owned);
        self
    }
}

/// The confirmations a redirect may ask for, by code (never text from the URL).
fn notice_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "approve" => "Your approval was recorded.",
        "reject" => "Your rejection was recorded.",
        "abstain" => "Your abstention was recorded.",
        "cancelled" => "The action was cancelled.",
        "execution" => "Execution was requested.",
        "rollback" => "A rollback action was submitted.",
        "submitted" => "Your request was submitted.",
        "policy" => "The policy was saved.",
        "policy_deleted" => "The policy was deleted.",
        "settings" => "The settings were saved.",
        "read" => "The notification was marked read.",
        "all_read" => "Every notification was marked read.",
        "preferences" => "Your preferences were saved.",
        "workflow_enabled" => "The workflow was enabled.",
        "workflow_disabled" => "The workflow was disabled.",
        "delegation_granted" => "The delegation was granted.",
        "delegation_revoked" => "The delegation was revoked.",
        "break_glass" => {
            "The action was approved by break-glass; its approvers and owners were told."
        }
        "review" => "Your review of the break-glass approval was recorded.",
        _ => return None,
    })
}

/// A risk badge: the level in words and the score, so colour is never the only signal.
#[derive(Debug, Clone)]
pub struct Risk {
    pub level: &'static str,
    pub score: u8,
}

impl Risk {
    pub fn new(level: countersign_domain::risk::RiskLevel, score: u8) -> Self {
        Self {
            level: level.as_str(),
            score,
        }
    }
}

/// `3 min ago`, `in 2 h 5 min`.
pub fn relative(at: chrono::DateTime<chrono::Utc>) -> String {
    let now = chrono::Utc::now();
    let seconds = (at - now).num_seconds();
    let span = duration(seconds.unsigned_abs());
    if seconds.abs() < 45 {
        "just now".to_owned()
    } else if seconds < 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`.
pub fn duration(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        3600..86_400 => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{} d {} h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

/// An RFC 3339 timestamp to the second, as `datetime` attributes and titles show it.
pub fn stamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Who a rule counts: `finance_ops`, `approvers`, `listed users`.
pub fn rule_name(rule: &Rule) -> String {
    match rule {
        Rule::Any { roles, .. } if roles.is_empty() => "approvers".to_owned(),
        Rule::Any { roles, .. } => roles
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" or "),
        Rule::Role { role, .. } => role.to_string(),
        Rule::Percentage { .. } => "pool".to_owned(),
        Rule::SpecificUsers { .. } => "listed users".to_owned(),
    }
}

/// What a rule asks, in words.
pub fn rule_text(rule: &Rule) -> String {
    match rule {
        Rule::Any { min_approvals, .. } => {
            format!("{min_approvals} approval(s) from {}", rule_name(rule))
        }
        Rule::Role {
            role,
            min_approvals,
        } => format!("{min_approvals} approval(s) from holders of {role}"),
        Rule::Percentage { percentage, .. } => {
            format!(
                "votes from {}% of a listed pool",
                f64::from(percentage.basis_points()) / 100.0
            )
        }
        Rule::SpecificUsers { .. } => "a vote from every listed user".to_owned(),
    }
}

/// `stage 1 of 2 · finance_ops 1/2` for the current stage of an open action; the outcome for a
/// closed one.
pub fn stage_progress(detail: &ActionDetail) -> String {
    let stages = detail.policy.requirements.stages.as_slice();
    let index = detail.current_stage as usize;
    progress_text(
        index,
        stages.len(),
        stages.get(index).map(|stage| stage.rules.as_slice()),
        detail
            .stages
            .get(index)
            .and_then(|view| view.progress.as_ref()),
    )
}

/// An inbox item's stage progress, in the drawer's words ([`stage_progress`]), from what the
/// read model keeps of it (`None` when it keeps no stage rules).
pub fn item_progress(item: &InboxItem) -> Option<String> {
    let shape = item.stage_rules.as_ref()?;
    Some(progress_text(
        item.stage as usize,
        shape.stages as usize,
        Some(shape.rules.as_slice()),
        item.vote_summary.as_ref(),
    ))
}

/// "stage 1 of 2 · finance_ops 1/2": the stage, then each of its rules' counted/needed.
fn progress_text(
    index: usize,
    stages: usize,
    rules: Option<&[Rule]>,
    progress: Option<&StageProgress>,
) -> String {
    let mut text = format!("stage {} of {}", index + 1, stages);
    if let (Some(rules), Some(progress)) = (rules, progress) {
        for (rule, counted) in rules.iter().zip(&progress.rules) {
            text.push_str(&format!(
                " · {} {}/{}",
                rule_name(rule),
                counted.counted,
                counted.needed
            ));
        }
    }
    text
}

/// One top-level entry of a payload preview; long values are collapsed.
#[derive(Debug, Clone)]
pub struct PayloadEntry {
    pub key: String,
    pub value: String,
    pub long: bool,
}

/// Values longer than this many characters are collapsed behind a `<details>`.
const LONG_VALUE: usize = 160;

/// The payload as pretty JSON, entry by entry (the whole document when it is not an object).
pub fn payload_entries(payload: &Value) -> Vec<PayloadEntry> {
    let pretty = |value: &Value| serde_json::to_string_pretty(value).unwrap_or_default();
    match payload {
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| {
                let value = pretty(value);
                PayloadEntry {
                    key: key.clone(),
                    long: value.chars().count() > LONG_VALUE,
                    value,
                }
            })
            .collect(),
        other => {
            let value = pretty(other);
            vec![PayloadEntry {
                key: "(document)".to_owned(),
                long: value.chars().count() > LONG_VALUE,
                value,
            }]
        }
    }
}

/// Pretty JSON of anything serializable (empty when it is not).
pub fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// A path a form may come back to: a local path only (never another site, never `//host`).
pub fn local_path(raw: Option<&str>) -> Option<String> {
    let raw = raw?;
    (raw.starts_with('/') && !raw.starts_with("//") && !raw.contains('\\')).then(|| raw.to_owned())
}

/// Adds `notice=<code>` to a local path.
pub fn with_notice(path: &str, code: &str) -> String {
    let separator = if path.contains('?') { '&' } else { '?' };
    format!("{path}{separator}notice={code}")
}
