//! Reading the projections: the inbox, an action's detail, its audit trail, tenant stats and
//! user history. Every read names its tenant; on PostgreSQL it also runs as
//! `countersign_reader` with `countersign.tenant` set, so row-level security holds even where a
//! filter were forgotten.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use countersign_domain::action::{
    Action, ActionState, ActionStatus, Decision, ExecutionState, StageSkip,
};
use countersign_domain::canonical::ExecutionKey;
use countersign_domain::policy::{PolicySnapshot, Rule};
use countersign_domain::quorum::{Ballot, StageProgress};
use countersign_domain::risk::{RiskAssessment, RiskLevel};
use countersign_domain::submission::Submission;
use countersign_domain::{ActionId, Principal, Role, TenantId, TenantMode, Timestamp, UserId};
use countersign_ledger::LogCursor;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::apply::placeholders;
use crate::rows::{latency_bucket_bound, metric};
use crate::store::ProjectionStore;
use crate::{Projection, instant, micros};

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The pagination cursor is not one this API issued for this sort.
    #[error("the cursor is not valid for this query")]
    InvalidCursor,
    /// The projection has no live generation yet.
    #[error("the {0} projection is not ready")]
    NotReady(Projection),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

impl From<sqlx::Error> for QueryError {
    fn from(err: sqlx::Error) -> Self {
        Self::Store(err.into())
    }
}

/// How the inbox is ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InboxSort {
    /// Newest first.
    #[default]
    Created,
    /// Highest risk first.
    Risk,
    /// Soonest deadline first.
    Deadline,
}

impl InboxSort {
    fn column(self) -> &'static str {
        match self {
            Self::Created => "submitted_at",
            Self::Risk => "risk_score",
            Self::Deadline => "expires_at",
        }
    }

    fn descending(self) -> bool {
        !matches!(self, Self::Deadline)
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Risk => "risk",
            Self::Deadline => "deadline",
        }
    }
}

/// Inbox filters. Empty lists and `None` mean "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxFilter {
    /// Statuses to include (the gateway defaults to the open ones: pending and escalated).
    pub statuses: Vec<ActionStatus>,
    pub risk_levels: Vec<RiskLevel>,
    pub min_score: Option<u8>,
    pub max_score: Option<u8>,
    pub module: Option<String>,
    pub capability: Option<String>,
    pub requested_by: Option<String>,
    pub created_from: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    /// Only actions this principal may vote on now and has not voted on in the current stage.
    pub eligible: Option<Principal>,
    pub sort: InboxSort,
    pub cursor: Option<String>,
    pub limit: u32,
}

/// One line of the inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InboxItem {
    pub id: String,
    pub status: ActionStatus,
    pub action_type: String,
    pub module: String,
    pub capability: String,
    pub summary: String,
    pub requested_by: String,
    pub risk_score: u8,
    pub risk_level: RiskLevel,
    /// Zero-based index of the current stage.
    pub stage: u32,
    pub escalations: u32,
    pub submitted_at: Timestamp,
    pub expires_at: Timestamp,
    pub decided_at: Option<Timestamp>,
    /// The member in whose place the reader may vote on it through a delegation window active
    /// now, when the reader may not vote on it as themselves (only in the `eligible=me` view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// The current stage's votes: approvals, rejections and abstentions, and each rule's
    /// counted/needed (in the order of the stage's `rules`).
    pub vote_summary: Option<StageProgress>,
    /// Present when the action was approved alone in an emergency (break-glass): who, when, and
    /// where its review after the fact stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<BreakGlassMark>,
    /// How many stages its policy has and the current stage's rules, for words like "stage 1 of
    /// 2 · finance_ops 1/2" (the console's; not part of the API's item).
    #[serde(skip)]
    pub stage_rules: Option<StageRules>,
}

/// How many stages an action's policy has, and the rules of its current stage (in the order
/// of `vote_summary.rules`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRules {
    pub stages: u32,
    pub rules: Vec<Rule>,
}

impl StageRules {
    pub fn of(state: &ActionState) -> Self {
        let stages = state.policy.requirements.stages.as_slice();
        Self {
            stages: u32::try_from(stages.len()).unwrap_or(u32::MAX),
            rules: stages
                .get(state.stage as usize)
                .map(|stage| stage.rules.as_slice().to_vec())
                .unwrap_or_default(),
        }
    }
}

/// A break-glass approval as the inbox marks it (the detail's `break_glass` has all of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BreakGlassMark {
    /// Who approved alone.
    pub by: String,
    pub at: Timestamp,
    /// When its review after the fact is due.
    pub review_due: Timestamp,
    pub review: BreakGlassReviewState,
}

/// Where a break-glass approval's review stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakGlassReviewState {
    /// Not reviewed yet, and not yet due.
    Pending,
    /// Not reviewed in time: escalated, still to review.
    Overdue,
    /// Reviewed: the approval was right.
    Upheld,
    /// Reviewed: the approval was wrong.
    Disputed,
}

impl BreakGlassReviewState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Overdue => "overdue",
            Self::Upheld => "upheld",
            Self::Disputed => "disputed",
        }
    }
}

impl BreakGlassMark {
    pub fn of(glass: &countersign_domain::action::BreakGlass) -> Self {
        use countersign_domain::action::ReviewVerdict;
        let review = match (&glass.review, &glass.overdue) {
            (Some(review), _) => match review.verdict {
                ReviewVerdict::Upheld => BreakGlassReviewState::Upheld,
                ReviewVerdict::Disputed => BreakGlassReviewState::Disputed,
            },
            (None, Some(_)) => BreakGlassReviewState::Overdue,
            (None, None) => BreakGlassReviewState::Pending,
        };
        Self {
            by: glass.by.to_string(),
            at: glass.at,
            review_due: glass.review_due,
            review,
        }
    }
}

impl InboxItem {
    pub fn from_state(state: &ActionState) -> Self {
        Self {
            id: state.id.to_string(),
            status: state.status,
            action_type: state.action_type.to_string(),
            module: state.submission.module.to_string(),
            capability: state.submission.capability.to_string(),
            summary: state.submission.summary.to_string(),
            requested_by: state.requester.id.to_string(),
            risk_score: state.risk.score.value(),
            risk_level: state.risk.level,
            stage: state.stage,
            escalations: state.escalations,
            submitted_at: state.submitted_at,
            expires_at: state.expires_at,
            decided_at: state.decision.as_ref().map(|decision| decision.at),
            on_behalf_of: None,
            vote_summary: state.stage_progress().get(state.stage as usize).cloned(),
            break_glass: state.break_glass.as_ref().map(BreakGlassMark::of),
            stage_rules: Some(StageRules::of(state)),
        }
    }
}

/// A page of the inbox; `next_cursor` fetches the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InboxPage {
    pub items: Vec<InboxItem>,
    pub next_cursor: Option<String>,
}

/// One stage of an action, with its votes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StageView {
    pub index: u32,
    pub name: Option<String>,
    /// `approved`, `skipped`, `current`, `closed` (decided otherwise while it was current) or
    /// `waiting`.
    pub state: String,
    /// Why the stage was skipped, when it was (`state` is then `skipped`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<StageSkip>,
    pub progress: Option<StageProgress>,
    pub votes: Vec<VoteView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VoteView {
    pub voter: UserId,
    #[serde(flatten)]
    pub ballot: Ballot,
}

/// Everything about one action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ActionDetail {
    pub id: ActionId,
    pub tenant: TenantId,
    pub status: ActionStatus,
    pub action_type: String,
    pub request: Submission,
    pub requested_by: Principal,
    pub risk: RiskAssessment,
    pub policy: PolicySnapshot,
    pub mode: TenantMode,
    pub submitted_at: Timestamp,
    pub expires_at: Timestamp,
    pub escalations: u32,
    pub current_stage: u32,
    pub stages: Vec<StageView>,
    pub decision: Option<Decision>,
    pub execution_key: ExecutionKey,
    pub execution: ExecutionState,
    pub idempotency_key: Option<String>,
    pub correlation_id: Option<String>,
    /// The executed action this one rolls back.
    pub rollback_of: Option<ActionId>,
    /// The action that rolls this one back.
    pub rolled_back_by: Option<ActionId>,
    /// How it was approved alone in an emergency, and its review, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<countersign_domain::action::BreakGlass>,
    /// The global position of the last event reflected here.
    pub position: i64,
}

impl ActionDetail {
    pub fn from_state(state: &ActionState, position: i64) -> Self {
        let progress = state.stage_progress();
        let stages = state
            .policy
            .requirements
            .stages
            .iter()
            .enumerate()
            .map(|(index, stage)| {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                let skipped = state.skipped_stages.get(&index).cloned();
                let stage_state = match index.cmp(&state.stage) {
                    _ if skipped.is_some() => "skipped",
                    std::cmp::Ordering::Less => "approved",
                    std::cmp::Ordering::Equal
                        if state.status == ActionStatus::Pending
                            || state.status == ActionStatus::Escalated =>
                    {
                        "current"
                    }
                    std::cmp::Ordering::Equal
                        if state
                            .decision
                            .as_ref()
                            .is_some_and(|d| d.status != ActionStatus::Approved) =>
                    {
                        "closed"
                    }
                    std::cmp::Ordering::Equal => "approved",
                    std::cmp::Ordering::Greater => "waiting",
                };
                StageView {
                    index,
                    name: stage.name.clone(),
                    state: stage_state.to_owned(),
                    skipped,
                    progress: progress.get(index as usize).cloned(),
                    votes: state
                        .ballots
                        .get(index as usize)
                        .map(|ballots| {
                            ballots
                                .iter()
                                .map(|(voter, ballot)| VoteView {
                                    voter: voter.clone(),
                                    ballot: ballot.clone(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        Self {
            id: state.id,
            tenant: state.tenant.clone(),
            status: state.status,
            action_type: state.action_type.to_string(),
            request: state.submission.clone(),
            requested_by: state.requester.clone(),
            risk: state.risk.clone(),
            policy: state.policy.clone(),
            mode: state.mode,
            submitted_at: state.submitted_at,
            expires_at: state.expires_at,
            escalations: state.escalations,
            current_stage: state.stage,
            stages,
            decision: state.decision.clone(),
            execution_key: state.execution_key.clone(),
            execution: state.execution.clone(),
            idempotency_key: state.idempotency_key.as_ref().map(ToString::to_string),
            correlation_id: state.correlation_id.as_ref().map(ToString::to_string),
            rollback_of: state.rollback_of,
            rolled_back_by: state.rolled_back_by,
            break_glass: state.break_glass.clone(),
            position,
        }
    }
}

/// One event of an action's audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditEntry {
    pub position: i64,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub actor: String,
    pub at: Timestamp,
    pub recorded_at: Timestamp,
    pub correlation_id: Option<String>,
    pub content: Value,
}

impl AuditEntry {
    /// The entry of one logged action event, exactly as the audit projection stores it.
    pub fn from_logged(
        logged: &countersign_ledger::LoggedEvent,
        event: &countersign_domain::action::ActionEvent,
    ) -> anyhow::Result<Self> {
        let row = crate::rows::audit_row(logged, event)?;
        Ok(Self {
            position: row.position,
            sequence: row.sequence,
            event_type: row.event_type,
            event_version: row.event_version,
            actor: row.actor,
            at: instant(row.at),
            recorded_at: instant(row.recorded_at),
            correlation_id: row.correlation_id,
            content: serde_json::from_str(&row.content)?,
        })
    }
}

/// One vote a user cast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VoteRecord {
    pub action_id: String,
    pub sequence: i64,
    /// Whose ballot it is.
    pub voter: String,
    /// The delegate who cast it in the voter's place, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cast_by: Option<String>,
    pub stage: u32,
    pub vote: String,
    pub comment: Option<String>,
    pub roles: Vec<String>,
    pub at: Timestamp,
}

/// A tenant's approval statistics (the metrics of reference 002).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TenantStats {
    /// Actions per current status.
    pub by_status: BTreeMap<String, i64>,
    /// Submissions per risk level.
    pub by_risk: BTreeMap<String, i64>,
    /// Submissions per module.
    pub by_module: BTreeMap<String, i64>,
    pub submitted: i64,
    /// Decisions by outcome: approved, rejected, expired, cancelled.
    pub decisions: BTreeMap<String, i64>,
    /// Decision latency in seconds (submission to approval, rejection or expiry), from a
    /// histogram whose buckets are 10% wide.
    pub decision_latency_p50_seconds: Option<f64>,
    pub decision_latency_p95_seconds: Option<f64>,
    /// Shares of decisions (cancellations excluded).
    pub approval_rate: Option<f64>,
    pub rejection_rate: Option<f64>,
    /// Decisions reached by the deadline (expired, or rejected on timeout).
    pub timeout_rate: Option<f64>,
    /// Share of submissions that escalated at least once.
    pub escalation_rate: Option<f64>,
    /// Succeeded ÷ (succeeded + failed) executions.
    pub execution_success_rate: Option<f64>,
    pub votes_cast: i64,
    /// Actions approved alone in an emergency (break-glass).
    #[serde(default)]
    pub break_glass: i64,
    /// Break-glass approvals whose review was not recorded in time (escalated).
    #[serde(default)]
    pub break_glass_overdue: i64,
    /// Share of decided actions that received at least one vote.
    pub vote_participation: Option<f64>,
}

fn ratio(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

struct Cursor {
    value: i64,
    id: String,
}

fn encode_cursor(sort: InboxSort, value: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{value}|{id}", sort.as_str()))
}

fn decode_cursor(sort: InboxSort, cursor: &str) -> Result<Cursor, QueryError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| QueryError::InvalidCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| QueryError::InvalidCursor)?;
    let mut parts = text.splitn(3, '|');
    let (Some(kind), Some(value), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(QueryError::InvalidCursor);
    };
    if kind != sort.as_str() || ActionId::parse(id).is_err() {
        return Err(QueryError::InvalidCursor);
    }
    Ok(Cursor {
        value: value.parse().map_err(|_| QueryError::InvalidCursor)?,
        id: id.to_owned(),
    })
}

/// A SQL condition builder that numbers placeholders in order.
#[derive(Default)]
struct Conditions {
    sql: Vec<String>,
    params: Vec<Bind>,
}

#[derive(Clone)]
enum Bind {
    Int(i64),
    Text(String),
}

impl Conditions {
    fn next(&self) -> usize {
        self.params.len() + 1
    }

    fn push(&mut self, condition: impl FnOnce(usize) -> String, param: Bind) {
        let n = self.next();
        self.sql.push(condition(n));
        self.params.push(param);
    }

    fn push_list(&mut self, column: &str, values: Vec<String>) {
        if values.is_empty() {
            return;
        }
        let start = self.next();
        self.sql.push(format!(
            "{column} IN ({})",
            placeholders(start, values.len())
        ));
        self.params.extend(values.into_iter().map(Bind::Text));
    }
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    params: &[Bind],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    for param in params {
        query = match param.clone() {
            Bind::Int(value) => query.bind(value),
            Bind::Text(value) => query.bind(value),
        };
    }
    query
}

/// An inbox line; `delegated`: the query computed `on_behalf_of`.
fn inbox_item(row: &AnyRow, delegated: bool) -> Result<InboxItem, QueryError> {
    let status: String = row.try_get("status")?;
    let level: String = row.try_get("risk_level")?;
    let parse_status = ActionStatus::ALL
        .into_iter()
        .find(|candidate| candidate.as_str() == status)
        .ok_or_else(|| anyhow::anyhow!("unknown status {status} in the actions projection"))?;
    Ok(InboxItem {
        id: row.try_get("action_id")?,
        status: parse_status,
        action_type: row.try_get("action_type")?,
        module: row.try_get("module")?,
        capability: row.try_get("capability")?,
        summary: row.try_get("summary")?,
        requested_by: row.try_get("requested_by")?,
        risk_score: u8::try_from(row.try_get::<i64, _>("risk_score")?).unwrap_or(u8::MAX),
        risk_level: RiskLevel::parse(&level)
            .ok_or_else(|| anyhow::anyhow!("unknown risk level {level}"))?,
        stage: u32::try_from(row.try_get::<i64, _>("stage")?).unwrap_or_default(),
        escalations: u32::try_from(row.try_get::<i64, _>("escalations")?).unwrap_or_default(),
        submitted_at: instant(row.try_get("submitted_at")?),
        expires_at: instant(row.try_get("expires_at")?),
        decided_at: row.try_get::<Option<i64>, _>("decided_at")?.map(instant),
        on_behalf_of: if delegated {
            row.try_get("on_behalf_of")?
        } else {
            None
        },
        vote_summary: row
            .try_get::<Option<String>, _>("vote_summary")?
            .map(|summary| serde_json::from_str(&summary))
            .transpose()
            .context("the vote summary in the actions projection")?,
        break_glass: row
            .try_get::<Option<String>, _>("break_glass")?
            .map(|mark| serde_json::from_str(&mark))
            .transpose()
            .context("the break-glass mark in the actions projection")?,
        stage_rules: row
            .try_get::<Option<String>, _>("stage_rules")?
            .map(|rules| serde_json::from_str(&rules))
            .transpose()
            .context("the stage rules in the actions projection")?,
    })
}

const INBOX_COLUMNS: &str = "action_id, status, action_type, module, capability, summary, requested_by, \
    risk_score, risk_level, stage, escalations, submitted_at, expires_at, decided_at, vote_summary, break_glass, \
    stage_rules";

impl ProjectionStore {
    /// Opens a read transaction scoped to `tenant`, and finds the live generation of `projection`.
    async fn reader(
        &self,
        tenant: &TenantId,
        projection: Projection,
    ) -> Result<(Transaction<'static, Any>, i64), QueryError> {
        let mut tx = self.pool.begin().await?;
        if self.postgres {
            // One round trip: `set_config('role', …, true)` is `SET LOCAL ROLE`.
            let sql = if self.reader_role {
                "SELECT set_config('countersign.tenant', $1, true), set_config('role', 'countersign_reader', true)"
            } else {
                "SELECT set_config('countersign.tenant', $1, true)"
            };
            sqlx::query(sql)
                .bind(tenant.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let generation: Option<i64> =
            sqlx::query("SELECT generation FROM projections WHERE name = $1 AND state = 'live'")
                .bind(projection.name())
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get(0))
                .transpose()?;
        let generation = generation.ok_or(QueryError::NotReady(projection))?;
        Ok((tx, generation))
    }

    /// Actions a system component should look at (cross-tenant, not for callers): open ones whose
    /// deadline has passed, approved or executing ones (to run, retry or reclaim), and
    /// break-glass approvals whose review is overdue and not yet escalated.
    pub async fn actions_needing_attention(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<ActionId>, QueryError> {
        let Some(live) = self.live(Projection::Actions).await? else {
            return Ok(Vec::new());
        };
        let g = live.generation;
        let rows = sqlx::query(&format!(
            "SELECT action_id FROM p_actions_g{g}
              WHERE (status IN ('pending', 'escalated') AND expires_at <= $1) OR status IN ('approved', 'executing')
                 OR review_due <= $1
              ORDER BY expires_at, action_id LIMIT {}",
            limit.max(1)
        ))
        .bind(micros(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id = row.try_get::<String, _>(0)?;
                ActionId::parse(&id)
                    .with_context(|| format!("the action id {id:?} in the actions projection"))
                    .map_err(QueryError::from)
            })
            .collect()
    }

    /// The log position a projection's live generation has reached.
    pub async fn live_checkpoint(
        &self,
        projection: Projection,
    ) -> anyhow::Result<Option<LogCursor>> {
        Ok(self
            .live(projection)
            .await?
            .map(|generation| generation.checkpoint))
    }

    /// A page of the inbox.
    async fn inbox_once(
        &self,
        tenant: &TenantId,
        filter: &InboxFilter,
        delegators: &[Principal],
    ) -> Result<InboxPage, QueryError> {
        let (mut tx, g) = self.reader(tenant, Projection::Actions).await?;
        let mut conditions = Conditions::default();
        conditions.push(
            |n| format!("a.tenant = ${n}"),
            Bind::Text(tenant.to_string()),
        );
        conditions.push_list(
            "a.risk_level",
            filter
                .risk_levels
                .iter()
                .map(|l| l.as_str().to_owned())
                .collect(),
        );
        if let Some(min) = filter.min_score {
            conditions.push(
                |n| format!("a.risk_score >= ${n}"),
                Bind::Int(i64::from(min)),
            );
        }
        if let Some(max) = filter.max_score {
            conditions.push(
                |n| format!("a.risk_score <= ${n}"),
                Bind::Int(i64::from(max)),
            );
        }
        for (column, value) in [
            ("a.module", &filter.module),
            ("a.capability", &filter.capability),
            ("a.requested_by", &filter.requested_by),
        ] {
            if let Some(value) = value {
                conditions.push(|n| format!("{column} = ${n}"), Bind::Text(value.clone()));
            }
        }
        if let Some(from) = filter.created_from {
            conditions.push(
                |n| format!("a.submitted_at >= ${n}"),
                Bind::Int(micros(from)),
            );
        }
        if let Some(before) = filter.created_before {
            conditions.push(
                |n| format!("a.submitted_at < ${n}"),
                Bind::Int(micros(before)),
            );
        }
        let mut delegated_column = None;
        if let Some(me) = &filter.eligible {
            // Who may vote on an action: `who`, as a user or through one of `roles`.
            let eligible = |conditions: &mut Conditions, who: &UserId, roles: &[String]| {
                let start = conditions.next();
                let mut principal = format!("(e.kind = 'user' AND e.principal = ${start})");
                conditions.params.push(Bind::Text(who.to_string()));
                if !roles.is_empty() {
                    principal = format!(
                        "({principal} OR (e.kind = 'role' AND e.principal IN ({})))",
                        placeholders(start + 1, roles.len())
                    );
                    conditions
                        .params
                        .extend(roles.iter().cloned().map(Bind::Text));
                }
                format!(
                    "EXISTS (SELECT 1 FROM p_eligibility_g{g} e WHERE e.action_id = a.action_id AND {principal})"
                )
            };
            // Whether `who` holds a ballot of the current stage or cast one in another's place.
            // `v.tenant = $1` (the tenant is always the first parameter) lets the planner read
            // these rows from the (tenant, kind, principal) index instead of hashing the whole
            // table.
            let voted = |conditions: &mut Conditions, who: &UserId| {
                let n = conditions.next();
                conditions.params.push(Bind::Text(who.to_string()));
                format!(
                    "EXISTS (SELECT 1 FROM p_eligibility_g{g} v WHERE v.tenant = $1 AND v.action_id = a.action_id AND v.kind = 'voted' AND v.principal = ${n})"
                )
            };
            let not_requester = |conditions: &mut Conditions, who: &UserId| {
                let n = conditions.next();
                conditions.params.push(Bind::Text(who.to_string()));
                format!("(a.requested_by <> ${n} OR a.allow_self_approval = 1)")
            };
            let roles: Vec<String> = me.roles.iter().map(Role::to_string).collect();
            let own = eligible(&mut conditions, &me.id, &roles);
            let me_voted = voted(&mut conditions, &me.id);
            let me_not_requester = not_requester(&mut conditions, &me.id);
            conditions.sql.push(format!("NOT {me_voted}"));
            conditions.sql.push(me_not_requester);
            // In a delegator's place: the delegator may vote (with the roles they lent), has not,
            // and did not request it.
            let mut places = Vec::new();
            for delegator in delegators.iter().filter(|d| d.id != me.id) {
                let roles: Vec<String> = delegator.roles.iter().map(Role::to_string).collect();
                let may = eligible(&mut conditions, &delegator.id, &roles);
                let has_voted = voted(&mut conditions, &delegator.id);
                let not_theirs = not_requester(&mut conditions, &delegator.id);
                let n = conditions.next();
                conditions.params.push(Bind::Text(delegator.id.to_string()));
                places.push((format!("({may} AND NOT {has_voted} AND {not_theirs})"), n));
            }
            let mut any = vec![own.clone()];
            any.extend(places.iter().map(|(condition, _)| condition.clone()));
            conditions.sql.push(format!("({})", any.join(" OR ")));
            if !places.is_empty() {
                let whens: String = places
                    .iter()
                    .map(|(condition, n)| format!(" WHEN {condition} THEN ${n}"))
                    .collect();
                delegated_column = Some(format!(
                    "CASE WHEN {own} THEN NULL{whens} ELSE NULL END AS on_behalf_of"
                ));
            }
        }
        let column = filter.sort.column();
        let (order, comparison) = if filter.sort.descending() {
            ("DESC", "<")
        } else {
            ("ASC", ">")
        };
        if let Some(cursor) = &filter.cursor {
            let cursor = decode_cursor(filter.sort, cursor)?;
            let n = conditions.next();
            conditions.sql.push(format!(
                "(a.{column}, a.action_id) {comparison} (${n}, ${})",
                n + 1
            ));
            conditions.params.push(Bind::Int(cursor.value));
            conditions.params.push(Bind::Text(cursor.id));
        }
        let limit = filter.limit.clamp(1, 500);
        let ordering = format!(
            "ORDER BY {column} {order}, action_id {order} LIMIT {}",
            limit + 1
        );
        let mut statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        statuses.sort_unstable();
        statuses.dedup();
        let (inner_columns, outer_columns) = match &delegated_column {
            Some(column) => (
                format!("{INBOX_COLUMNS}, {column}"),
                format!("{INBOX_COLUMNS}, on_behalf_of"),
            ),
            None => (INBOX_COLUMNS.to_owned(), INBOX_COLUMNS.to_owned()),
        };
        let sql = if statuses.is_empty() {
            format!(
                "SELECT {inner_columns} FROM p_actions_g{g} a WHERE {} {ordering}",
                conditions.sql.join(" AND ")
            )
        } else {
            // One ordered index walk per status (the indexes lead with tenant and status), merged:
            // `status IN (…)` would read every matching row of the tenant and sort them.
            let shared = conditions.sql.join(" AND ");
            let first = conditions.next();
            let branches: Vec<String> = statuses
                .iter()
                .enumerate()
                .map(|(i, _)| {
                    format!(
                        "SELECT * FROM (SELECT {inner_columns} FROM p_actions_g{g} a \
                         WHERE {shared} AND a.status = ${} {ordering}) s{i}",
                        first + i
                    )
                })
                .collect();
            conditions.params.extend(
                statuses
                    .iter()
                    .map(|status| Bind::Text((*status).to_owned())),
            );
            format!(
                "SELECT {outer_columns} FROM ({}) u {ordering}",
                branches.join(" UNION ALL ")
            )
        };
        let rows = bind_all(sqlx::query(&sql), &conditions.params)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let delegated = delegated_column.is_some();
        let mut items = rows
            .iter()
            .map(|row| inbox_item(row, delegated))
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|last| {
                let value = match filter.sort {
                    InboxSort::Created => micros(last.submitted_at),
                    InboxSort::Risk => i64::from(last.risk_score),
                    InboxSort::Deadline => micros(last.expires_at),
                };
                encode_cursor(filter.sort, value, &last.id)
            })
        } else {
            None
        };
        Ok(InboxPage { items, next_cursor })
    }

    /// Which of `ids` `voter` may vote on now as themselves and has not in the current stage
    /// (the `eligible` view's rule, without delegations), in one read.
    async fn votable_among_once(
        &self,
        tenant: &TenantId,
        voter: &Principal,
        ids: &[String],
    ) -> Result<BTreeSet<String>, QueryError> {
        if ids.is_empty() {
            return Ok(BTreeSet::new());
        }
        let (mut tx, g) = self.reader(tenant, Projection::Actions).await?;
        let roles: Vec<String> = voter.roles.iter().map(Role::to_string).collect();
        // $1 the tenant, $2 the voter, then the ids, then the voter's roles.
        let mut principal = "(e.kind = 'user' AND e.principal = $2)".to_owned();
        if !roles.is_empty() {
            principal = format!(
                "({principal} OR (e.kind = 'role' AND e.principal IN ({})))",
                placeholders(3 + ids.len(), roles.len())
            );
        }
        let sql = format!(
            "SELECT a.action_id FROM p_actions_g{g} a
              WHERE a.tenant = $1 AND a.action_id IN ({})
                AND a.status IN ('pending', 'escalated')
                AND (a.requested_by <> $2 OR a.allow_self_approval = 1)
                AND EXISTS (SELECT 1 FROM p_eligibility_g{g} e WHERE e.action_id = a.action_id AND {principal})
                AND NOT EXISTS (SELECT 1 FROM p_eligibility_g{g} v WHERE v.tenant = $1 AND v.action_id = a.action_id AND v.kind = 'voted' AND v.principal = $2)",
            placeholders(3, ids.len())
        );
        let mut query = sqlx::query(&sql)
            .bind(tenant.to_string())
            .bind(voter.id.to_string());
        for id in ids {
            query = query.bind(id.clone());
        }
        for role in roles {
            query = query.bind(role);
        }
        let rows = query.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| Ok(row.try_get::<String, _>(0)?))
            .collect()
    }

    /// One action's state, when it exists in this tenant.
    async fn action_state_once(
        &self,
        tenant: &TenantId,
        id: &ActionId,
    ) -> Result<Option<(ActionState, i64)>, QueryError> {
        let (mut tx, g) = self.reader(tenant, Projection::Actions).await?;
        let row = sqlx::query(&format!(
            "SELECT state, position FROM p_actions_g{g} WHERE action_id = $1 AND tenant = $2"
        ))
        .bind(id.to_string())
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let Some(row) = row else { return Ok(None) };
        let state: String = row.try_get(0)?;
        let action: Action = serde_json::from_str(&state).map_err(anyhow::Error::from)?;
        Ok(action
            .state()
            .cloned()
            .map(|state| (state, row.try_get(1).unwrap_or_default())))
    }

    /// One action's detail, when it exists in this tenant.
    pub async fn action(
        &self,
        tenant: &TenantId,
        id: &ActionId,
    ) -> Result<Option<ActionDetail>, QueryError> {
        Ok(self
            .action_state(tenant, id)
            .await?
            .map(|(state, position)| ActionDetail::from_state(&state, position)))
    }

    /// Every event of an action, in order (empty when the action does not exist in this tenant).
    async fn audit_once(
        &self,
        tenant: &TenantId,
        id: &ActionId,
    ) -> Result<Vec<AuditEntry>, QueryError> {
        let (mut tx, g) = self.reader(tenant, Projection::Audit).await?;
        let rows = sqlx::query(&format!(
            "SELECT position, sequence, event_type, event_version, actor, at, recorded_at, correlation_id, content
               FROM p_audit_g{g} WHERE action_id = $1 AND tenant = $2 ORDER BY sequence"
        ))
        .bind(id.to_string())
        .bind(tenant.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                let content: String = row.try_get("content")?;
                Ok(AuditEntry {
                    position: row.try_get("position")?,
                    sequence: row.try_get("sequence")?,
                    event_type: row.try_get("event_type")?,
                    event_version: row.try_get("event_version")?,
                    actor: row.try_get("actor")?,
                    at: instant(row.try_get("at")?),
                    recorded_at: instant(row.try_get("recorded_at")?),
                    correlation_id: row.try_get("correlation_id")?,
                    content: serde_json::from_str(&content).map_err(anyhow::Error::from)?,
                })
            })
            .collect()
    }

    /// Votes a user cast, newest first.
    async fn votes_by_once(
        &self,
        tenant: &TenantId,
        voter: &str,
        limit: u32,
    ) -> Result<Vec<VoteRecord>, QueryError> {
        let (mut tx, g) = self.reader(tenant, Projection::Audit).await?;
        let rows = sqlx::query(&format!(
            "SELECT v.action_id, v.sequence, v.voter, v.stage, v.vote, v.comment, v.roles, v.at, au.actor
               FROM p_votes_g{g} v
               LEFT JOIN p_audit_g{g} au ON au.action_id = v.action_id AND au.sequence = v.sequence
              WHERE v.tenant = $1 AND v.voter = $2
              ORDER BY v.at DESC, v.action_id DESC, v.sequence DESC LIMIT {}",
            limit.clamp(1, 500)
        ))
        .bind(tenant.as_str())
        .bind(voter)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                let roles: String = row.try_get("roles")?;
                let voter: String = row.try_get("voter")?;
                // The event's actor: the delegate, when it is not the ballot's holder.
                let actor: Option<String> = row.try_get("actor")?;
                Ok(VoteRecord {
                    action_id: row.try_get("action_id")?,
                    sequence: row.try_get("sequence")?,
                    cast_by: actor.filter(|actor| *actor != voter),
                    voter,
                    stage: u32::try_from(row.try_get::<i64, _>("stage")?).unwrap_or_default(),
                    vote: row.try_get("vote")?,
                    comment: row.try_get("comment")?,
                    roles: serde_json::from_str(&roles).map_err(anyhow::Error::from)?,
                    at: instant(row.try_get("at")?),
                })
            })
            .collect()
    }

    /// A tenant's statistics.
    async fn stats_once(&self, tenant: &TenantId) -> Result<TenantStats, QueryError> {
        let (mut tx, g) = self.reader(tenant, Projection::Actions).await?;
        let rows = sqlx::query(&format!(
            "SELECT metric, key, value FROM p_stats_g{g} WHERE tenant = $1"
        ))
        .bind(tenant.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut counters: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for row in &rows {
            counters
                .entry(row.try_get("metric")?)
                .or_default()
                .insert(row.try_get("key")?, row.try_get("value")?);
        }
        Ok(stats_from_counters(&counters))
    }
}

/// Whether an error means a generation's tables were dropped after the read resolved them (a
/// rebuild was swapped in): the read is retried once against the new live generation.
fn is_dropped_table(err: &QueryError) -> bool {
    let QueryError::Store(err) = err else {
        return false;
    };
    let text = format!("{err:#}");
    text.contains("does not exist") || text.contains("no such table")
}

macro_rules! retried {
    ($call:expr) => {{
        match $call.await {
            Err(err) if is_dropped_table(&err) => $call.await,
            other => other,
        }
    }};
}

impl ProjectionStore {
    /// A page of the inbox.
    pub async fn inbox(
        &self,
        tenant: &TenantId,
        filter: &InboxFilter,
    ) -> Result<InboxPage, QueryError> {
        retried!(self.inbox_once(tenant, filter, &[]))
    }

    /// A page of the inbox where the `eligible` view also holds what `delegators` — the members
    /// who lent their eligibility to the `eligible` principal through a window active now, with
    /// the roles they lent — may vote on and have not, each marked with `on_behalf_of`.
    pub async fn inbox_with_delegations(
        &self,
        tenant: &TenantId,
        filter: &InboxFilter,
        delegators: &[Principal],
    ) -> Result<InboxPage, QueryError> {
        retried!(self.inbox_once(tenant, filter, delegators))
    }

    /// Which of `ids` (actions of `tenant`) `voter` may vote on now as themselves and has not
    /// in the current stage: the `eligible` view's rule, without delegations, in one read.
    pub async fn votable_among(
        &self,
        tenant: &TenantId,
        voter: &Principal,
        ids: &[String],
    ) -> Result<BTreeSet<String>, QueryError> {
        retried!(self.votable_among_once(tenant, voter, ids))
    }

    /// One action's state and the position it reflects, when it exists in this tenant.
    pub async fn action_state(
        &self,
        tenant: &TenantId,
        id: &ActionId,
    ) -> Result<Option<(ActionState, i64)>, QueryError> {
        retried!(self.action_state_once(tenant, id))
    }

    /// Every event of an action, in order (empty when the action does not exist in this tenant).
    pub async fn audit(
        &self,
        tenant: &TenantId,
        id: &ActionId,
    ) -> Result<Vec<AuditEntry>, QueryError> {
        retried!(self.audit_once(tenant, id))
    }

    /// Votes a user cast, newest first.
    pub async fn votes_by(
        &self,
        tenant: &TenantId,
        voter: &str,
        limit: u32,
    ) -> Result<Vec<VoteRecord>, QueryError> {
        retried!(self.votes_by_once(tenant, voter, limit))
    }

    /// A tenant's statistics.
    pub async fn stats(&self, tenant: &TenantId) -> Result<TenantStats, QueryError> {
        retried!(self.stats_once(tenant))
    }
}

/// Turns the stats counters into the figures of [`TenantStats`].
pub fn stats_from_counters(counters: &BTreeMap<String, BTreeMap<String, i64>>) -> TenantStats {
    let empty = BTreeMap::new();
    let get = |metric: &str| counters.get(metric).unwrap_or(&empty);
    let count = |metric: &str, key: &str| get(metric).get(key).copied().unwrap_or(0);
    let mut by_status = get(metric::STATUS).clone();
    by_status.retain(|_, count| *count != 0);
    let outcomes = get(metric::OUTCOME);
    let decisions: BTreeMap<String, i64> = ["approved", "rejected", "expired", "cancelled"]
        .into_iter()
        .filter_map(|key| outcomes.get(key).map(|count| (key.to_owned(), *count)))
        .collect();
    let decided = count(metric::OUTCOME, "approved")
        + count(metric::OUTCOME, "rejected")
        + count(metric::OUTCOME, "expired");
    let mut buckets: Vec<(i64, i64)> = get(metric::LATENCY)
        .iter()
        .filter_map(|(bucket, count)| Some((bucket.parse().ok()?, *count)))
        .collect();
    buckets.sort_unstable();
    let total: i64 = buckets.iter().map(|(_, count)| count).sum();
    let percentile = |p: f64| {
        let wanted = (p * total as f64).ceil().max(1.0) as i64;
        let mut seen = 0;
        buckets.iter().find_map(|(bucket, count)| {
            seen += count;
            (seen >= wanted).then(|| latency_bucket_bound(*bucket))
        })
    };
    let submitted = count(metric::OUTCOME, "submitted");
    TenantStats {
        by_status,
        by_risk: get(metric::RISK).clone(),
        by_module: get(metric::MODULE).clone(),
        submitted,
        decisions,
        decision_latency_p50_seconds: percentile(0.5),
        decision_latency_p95_seconds: percentile(0.95),
        approval_rate: ratio(count(metric::OUTCOME, "approved"), decided),
        rejection_rate: ratio(count(metric::OUTCOME, "rejected"), decided),
        timeout_rate: ratio(count(metric::OUTCOME, "timed_out"), decided),
        escalation_rate: ratio(count(metric::OUTCOME, "escalated"), submitted),
        execution_success_rate: ratio(
            count(metric::EXECUTION, "succeeded"),
            count(metric::EXECUTION, "succeeded") + count(metric::EXECUTION, "failed"),
        ),
        votes_cast: count(metric::VOTES, "cast"),
        break_glass: count(metric::OUTCOME, "break_glass"),
        break_glass_overdue: count(metric::OUTCOME, "break_glass_overdue"),
        vote_participation: ratio(
            count(metric::VOTES, "decided_with_votes"),
            decided + count(metric::OUTCOME, "cancelled"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_tampering() {
        let id = "01a20084-93ec-73df-a1fa-7721ab59fda4";
        let cursor = encode_cursor(InboxSort::Risk, 87, id);
        let decoded = decode_cursor(InboxSort::Risk, &cursor).expect("valid");
        assert_eq!((decoded.value, decoded.id.as_str()), (87, id));
        assert!(matches!(
            decode_cursor(InboxSort::Created, &cursor),
            Err(QueryError::InvalidCursor)
        ));
        for bad in [
            "",
            "%%%",
            "bm90IGEgY3Vyc29y",
            &URL_SAFE_NO_PAD.encode("risk|x|y"),
        ] {
            assert!(
                matches!(
                    decode_cursor(InboxSort::Risk, bad),
                    Err(QueryError::InvalidCursor)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn stats_percentiles_come_from_the_latency_histogram() {
        let mut counters: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        let latency = counters.entry(metric::LATENCY.to_owned()).or_default();
        latency.insert("0".into(), 50);
        latency.insert("10".into(), 45);
        latency.insert("40".into(), 5);
        let outcome = counters.entry(metric::OUTCOME.to_owned()).or_default();
        outcome.insert("submitted".into(), 120);
        outcome.insert("approved".into(), 80);
        outcome.insert("rejected".into(), 15);
        outcome.insert("expired".into(), 5);
        outcome.insert("timed_out".into(), 5);
        outcome.insert("escalated".into(), 12);
        let stats = stats_from_counters(&counters);
        assert_eq!(stats.decision_latency_p50_seconds, Some(1.0));
        assert_eq!(
            stats.decision_latency_p95_seconds,
            Some(latency_bucket_bound(10))
        );
        assert_eq!(stats.approval_rate, Some(0.8));
        assert_eq!(stats.timeout_rate, Some(0.05));
        assert_eq!(stats.escalation_rate, Some(0.1));
        assert_eq!(stats.execution_success_rate, None);
    }
}

/// What the projection store sets up on PostgreSQL.
#[cfg(test)]
mod postgres_tests {
    use super::*;
    use crate::store::GenerationState;

    /// Every read runs as `countersign_reader` with the caller's tenant set, so row-level security
    /// applies to whatever SQL follows.
    #[tokio::test]
    async fn a_reader_runs_as_the_reader_role_scoped_to_its_tenant() -> anyhow::Result<()> {
        let test = countersign_ledger::testing::TestStore::postgres().await?;
        let store = ProjectionStore::open(&test.config).await?;
        store
            .create_generation(Projection::Actions, GenerationState::Live)
            .await?;
        let tenant = TenantId::parse("acme")?;
        let (mut tx, _) = store.reader(&tenant, Projection::Actions).await?;
        let row = sqlx::query("SELECT current_user::text, current_setting('countersign.tenant')")
            .fetch_one(&mut *tx)
            .await?;
        let (user, scoped): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        assert_eq!(scoped, "acme");
        assert_eq!(user, "countersign_reader");
        Ok(())
    }

    /// Large texts are compressed with lz4 where the server has it (this one does).
    #[tokio::test]
    async fn generations_compress_their_large_texts_with_lz4() -> anyhow::Result<()> {
        let test = countersign_ledger::testing::TestStore::postgres().await?;
        let store = ProjectionStore::open(&test.config).await?;
        let actions = store
            .create_generation(Projection::Actions, GenerationState::Live)
            .await?;
        let audit = store
            .create_generation(Projection::Audit, GenerationState::Live)
            .await?;
        let countersign_ledger::Backend::Postgres(pool) = test.ledger.backend() else {
            anyhow::bail!("a PostgreSQL store");
        };
        for (table, column) in [
            (format!("p_actions_g{}", actions.generation), "state"),
            (format!("p_audit_g{}", audit.generation), "content"),
        ] {
            let method: String = sqlx::query_scalar(
                "SELECT attcompression::text FROM pg_attribute
                  WHERE attrelid = $1::regclass AND attname = $2",
            )
            .bind(&table)
            .bind(column)
            .fetch_one(pool)
            .await?;
            assert_eq!(method, "l", "{table}.{column}");
        }
        Ok(())
    }
}
