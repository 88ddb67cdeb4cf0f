//! Applying a batch of log events to one generation's tables, inside the runner's transaction.
//!
//! A batch is decoded and folded in memory first ([`ActionChanges`], [`AuditChanges`]: the rows
//! of [`crate::rows`]), then written: on PostgreSQL with one statement per projection whatever
//! the batch's size, so that under load, when batches grow, the cost per event falls.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use countersign_domain::action::{Action, ActionEvent, ActionState};
use countersign_ledger::LoggedEvent;
use cqrs_es::Aggregate;
use sqlx::{AnyConnection, Row};

use crate::Projection;
use crate::rows::{
    ActionRow, AuditRow, EligibilityRow, VoteRow, audit_row, eligibility, stats_delta, vote_row,
};
use crate::store::BatchTransaction;

/// Rows per multi-row statement on SQLite (well under its parameter limit).
const CHUNK: usize = 400;

/// A bound value.
#[derive(Debug, Clone)]
enum Param {
    Int(i64),
    Text(String),
    MaybeInt(Option<i64>),
    MaybeText(Option<String>),
}

/// `INSERT INTO table (columns) VALUES ($1, …), (…) <suffix>` for `rows` rows.
fn insert_sql(table: &str, columns: &[&str], rows: usize, suffix: &str) -> String {
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
    let mut n = 0;
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns.len() {
            if column > 0 {
                sql.push_str(", ");
            }
            n += 1;
            sql.push_str(&format!("${n}"));
        }
        sql.push(')');
    }
    sql.push(' ');
    sql.push_str(suffix);
    sql
}

/// `$start, $start+1, …` for `count` values.
pub(crate) fn placeholders(start: usize, count: usize) -> String {
    (start..start + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn insert_rows(
    connection: &mut AnyConnection,
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Param>>,
    suffix: &str,
) -> anyhow::Result<()> {
    for chunk in rows.chunks(CHUNK) {
        let sql = insert_sql(table, columns, chunk.len(), suffix);
        let mut query = sqlx::query(&sql);
        for value in chunk.iter().flatten() {
            query = match value.clone() {
                Param::Int(v) => query.bind(v),
                Param::Text(v) => query.bind(v),
                Param::MaybeInt(v) => query.bind(v),
                Param::MaybeText(v) => query.bind(v),
            };
        }
        query
            .execute(&mut *connection)
            .await
            .with_context(|| format!("writing {table}"))?;
    }
    Ok(())
}

fn decode(events: &[LoggedEvent]) -> anyhow::Result<Vec<(&LoggedEvent, ActionEvent)>> {
    events
        .iter()
        .filter(|event| event.aggregate_type == Action::TYPE)
        .map(|event| Ok((event, event.decode::<Action>()?)))
        .collect()
}

/// Applies `events` to generation `generation` of `projection`, in the batch's transaction.
pub(crate) async fn apply_batch(
    tx: &mut BatchTransaction,
    projection: Projection,
    generation: i64,
    events: &[LoggedEvent],
) -> anyhow::Result<()> {
    let decoded = decode(events)?;
    if decoded.is_empty() {
        return Ok(());
    }
    match projection {
        Projection::Actions => {
            let earlier = folded_earlier(&decoded);
            let before = match tx {
                BatchTransaction::Postgres(tx) => {
                    postgres::load_states(tx, generation, &earlier).await?
                }
                BatchTransaction::Portable(tx) => {
                    portable::load_states(tx, generation, &earlier).await?
                }
            };
            let changes = ActionChanges::fold(before, earlier, decoded)?;
            match tx {
                BatchTransaction::Postgres(tx) => {
                    postgres::write_actions(tx, generation, changes).await
                }
                BatchTransaction::Portable(tx) => {
                    portable::write_actions(tx, generation, changes).await
                }
            }
        }
        Projection::Audit => {
            let changes = AuditChanges::new(&decoded)?;
            match tx {
                BatchTransaction::Postgres(tx) => {
                    postgres::write_audit(tx, generation, changes).await
                }
                BatchTransaction::Portable(tx) => {
                    portable::write_audit(tx, generation, changes).await
                }
            }
        }
    }
}

/// The actions of the batch that have events before it (their rows hold the state to fold
/// on): those whose first event here is not the first of their stream. A stream that starts in
/// this batch has no row yet, so a rebuild, whose batches hold whole actions, reads almost
/// nothing back.
fn folded_earlier(events: &[(&LoggedEvent, ActionEvent)]) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut earlier = BTreeSet::new();
    for (logged, _) in events {
        if seen.insert(logged.aggregate_id.as_str()) && logged.sequence > 1 {
            earlier.insert(logged.aggregate_id.clone());
        }
    }
    earlier
}

/// What one batch changes in the `actions` projection's tables.
#[derive(Debug, Default)]
struct ActionChanges {
    /// The new row of every action the batch touched (upserted).
    actions: Vec<ActionRow>,
    /// Actions whose eligibility rows may exist already: rows of theirs not in `eligibility`
    /// are deleted.
    revisited: Vec<String>,
    /// The eligibility rows of every touched action.
    eligibility: Vec<EligibilityRow>,
    /// Counter changes, summed per (tenant, metric, key), none zero.
    stats: Vec<(String, &'static str, String, i64)>,
}

impl ActionChanges {
    /// Folds `events` onto the states `before` (of the actions in `earlier` that have a row).
    fn fold(
        mut actions: BTreeMap<String, Action>,
        earlier: BTreeSet<String>,
        events: Vec<(&LoggedEvent, ActionEvent)>,
    ) -> anyhow::Result<Self> {
        let ids: BTreeSet<&str> = events
            .iter()
            .map(|(logged, _)| logged.aggregate_id.as_str())
            .collect();
        let before: BTreeMap<&str, Option<ActionState>> = ids
            .iter()
            .map(|id| (*id, actions.get(*id).and_then(|a| a.state().cloned())))
            .collect();
        let mut votes: BTreeMap<&str, i64> = BTreeMap::new();
        let mut positions: BTreeMap<&str, i64> = BTreeMap::new();
        for (logged, event) in events {
            if matches!(event, ActionEvent::VoteCast(_)) {
                *votes.entry(&logged.aggregate_id).or_default() += 1;
            }
            positions.insert(&logged.aggregate_id, logged.cursor.position);
            actions
                .entry(logged.aggregate_id.clone())
                .or_default()
                .apply(event);
        }
        let mut changes = Self {
            revisited: earlier.into_iter().collect(),
            ..Self::default()
        };
        let mut stats: BTreeMap<(String, &'static str, String), i64> = BTreeMap::new();
        for id in &ids {
            let Some(state) = actions.get(*id).and_then(Action::state) else {
                continue;
            };
            changes.actions.push(ActionRow::from_state(
                state,
                positions.get(id).copied().unwrap_or_default(),
            )?);
            changes.eligibility.extend(eligibility(state));
            let previous = before.get(id).and_then(Option::as_ref);
            for (metric, key, delta) in
                stats_delta(previous, state, votes.get(id).copied().unwrap_or(0))
            {
                *stats
                    .entry((state.tenant.to_string(), metric, key))
                    .or_default() += delta;
            }
        }
        changes.stats = stats
            .into_iter()
            .filter(|(_, delta)| *delta != 0)
            .map(|((tenant, metric, key), delta)| (tenant, metric, key, delta))
            .collect();
        Ok(changes)
    }
}

/// What one batch adds to the `audit` projection's tables.
#[derive(Debug, Default)]
struct AuditChanges {
    audit: Vec<AuditRow>,
    votes: Vec<VoteRow>,
}

impl AuditChanges {
    fn new(events: &[(&LoggedEvent, ActionEvent)]) -> anyhow::Result<Self> {
        let mut changes = Self::default();
        for (logged, event) in events {
            changes.audit.push(audit_row(logged, event)?);
            if let Some(vote) = vote_row(logged, event)? {
                changes.votes.push(vote);
            }
        }
        Ok(changes)
    }
}

fn parse_state(id: &str, state: &str) -> anyhow::Result<Action> {
    serde_json::from_str(state).with_context(|| format!("action {id}: stored state"))
}

/// The `actions` columns after the key, each set from the new row on conflict.
const ACTION_COLUMNS: [&str; 22] = [
    "action_id",
    "tenant",
    "status",
    "action_type",
    "module",
    "capability",
    "summary",
    "requested_by",
    "risk_score",
    "risk_level",
    "stage",
    "escalations",
    "allow_self_approval",
    "submitted_at",
    "expires_at",
    "decided_at",
    "review_due",
    "vote_summary",
    "break_glass",
    "stage_rules",
    "position",
    "state",
];

const AUDIT_COLUMNS: [&str; 11] = [
    "action_id",
    "sequence",
    "tenant",
    "position",
    "event_type",
    "event_version",
    "actor",
    "at",
    "recorded_at",
    "correlation_id",
    "content",
];

const VOTE_COLUMNS: [&str; 9] = [
    "action_id",
    "sequence",
    "tenant",
    "voter",
    "stage",
    "vote",
    "comment",
    "roles",
    "at",
];

fn action_updates() -> String {
    ACTION_COLUMNS[2..]
        .iter()
        .map(|column| format!("{column} = excluded.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// PostgreSQL: a batch is one read (the states folded on, when any) and one write statement per
/// projection, its rows bound as arrays (`INSERT … SELECT FROM UNNEST(…)`): the statement's text
/// does not depend on the batch's size, so it is parsed and planned once per connection, and
/// its parameters travel in binary.
mod postgres {
    use super::*;
    use sqlx::PgConnection;

    pub(super) async fn load_states(
        connection: &mut PgConnection,
        generation: i64,
        ids: &BTreeSet<String>,
    ) -> anyhow::Result<BTreeMap<String, Action>> {
        let mut states = BTreeMap::new();
        if ids.is_empty() {
            return Ok(states);
        }
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT action_id, state FROM p_actions_g{generation} WHERE action_id = ANY($1)"
        ))
        // Planned for the table as it is now: see `write_actions`.
        .persistent(false)
        .bind(ids)
        .fetch_all(&mut *connection)
        .await
        .context("loading action rows")?;
        for (id, state) in rows {
            let action = parse_state(&id, &state)?;
            states.insert(id, action);
        }
        Ok(states)
    }

    /// One statement: the actions upserted, the eligibility of revisited actions that no longer
    /// holds deleted and the new eligibility inserted (disjoint rows, so the statement's parts
    /// cannot see each other's changes and need not), the counters added to.
    pub(super) async fn write_actions(
        connection: &mut PgConnection,
        g: i64,
        changes: ActionChanges,
    ) -> anyhow::Result<()> {
        let n = changes.actions.len();
        let mut action_id = Vec::with_capacity(n);
        let mut tenant = Vec::with_capacity(n);
        let mut status = Vec::with_capacity(n);
        let mut action_type = Vec::with_capacity(n);
        let mut module = Vec::with_capacity(n);
        let mut capability = Vec::with_capacity(n);
        let mut summary = Vec::with_capacity(n);
        let mut requested_by = Vec::with_capacity(n);
        let mut risk_score = Vec::with_capacity(n);
        let mut risk_level = Vec::with_capacity(n);
        let mut stage = Vec::with_capacity(n);
        let mut escalations = Vec::with_capacity(n);
        let mut allow_self_approval = Vec::with_capacity(n);
        let mut submitted_at = Vec::with_capacity(n);
        let mut expires_at = Vec::with_capacity(n);
        let mut decided_at = Vec::with_capacity(n);
        let mut review_due = Vec::with_capacity(n);
        let mut vote_summary = Vec::with_capacity(n);
        let mut break_glass = Vec::with_capacity(n);
        let mut stage_rules = Vec::with_capacity(n);
        let mut position = Vec::with_capacity(n);
        let mut state = Vec::with_capacity(n);
        for row in changes.actions {
            action_id.push(row.action_id);
            tenant.push(row.tenant);
            status.push(row.status);
            action_type.push(row.action_type);
            module.push(row.module);
            capability.push(row.capability);
            summary.push(row.summary);
            requested_by.push(row.requested_by);
            risk_score.push(row.risk_score);
            risk_level.push(row.risk_level);
            stage.push(row.stage);
            escalations.push(row.escalations);
            allow_self_approval.push(row.allow_self_approval);
            submitted_at.push(row.submitted_at);
            expires_at.push(row.expires_at);
            decided_at.push(row.decided_at);
            review_due.push(row.review_due);
            vote_summary.push(row.vote_summary);
            break_glass.push(row.break_glass);
            stage_rules.push(row.stage_rules);
            position.push(row.position);
            state.push(row.state);
        }
        let m = changes.eligibility.len();
        let (mut e_action, mut e_tenant, mut e_kind, mut e_principal) = (
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
        );
        for row in changes.eligibility {
            e_action.push(row.action_id);
            e_tenant.push(row.tenant);
            e_kind.push(row.kind);
            e_principal.push(row.principal);
        }
        let k = changes.stats.len();
        let (mut s_tenant, mut s_metric, mut s_key, mut s_value) = (
            Vec::with_capacity(k),
            Vec::with_capacity(k),
            Vec::with_capacity(k),
            Vec::with_capacity(k),
        );
        for (tenant, metric, key, value) in changes.stats {
            s_tenant.push(tenant);
            s_metric.push(metric);
            s_key.push(key);
            s_value.push(value);
        }
        let sql = format!(
            "WITH upserted AS (
                INSERT INTO p_actions_g{g} ({columns})
                SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                     $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[],
                                     $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[],
                                     $15::bigint[], $16::bigint[], $17::bigint[], $18::text[],
                                     $19::text[], $20::text[], $21::bigint[], $22::text[])
                ON CONFLICT (action_id) DO UPDATE SET {updates}
             ), cleared AS (
                DELETE FROM p_eligibility_g{g} AS e
                 WHERE e.action_id = ANY($23::text[])
                   AND NOT EXISTS (
                       SELECT 1 FROM UNNEST($24::text[], $26::text[], $27::text[]) AS n(action_id, kind, principal)
                        WHERE n.action_id = e.action_id AND n.kind = e.kind AND n.principal = e.principal)
             ), eligible AS (
                INSERT INTO p_eligibility_g{g} (action_id, tenant, kind, principal)
                SELECT * FROM UNNEST($24::text[], $25::text[], $26::text[], $27::text[])
                ON CONFLICT (action_id, kind, principal) DO NOTHING
             )
             INSERT INTO p_stats_g{g} (tenant, metric, key, value)
             SELECT * FROM UNNEST($28::text[], $29::text[], $30::text[], $31::bigint[])
             ON CONFLICT (tenant, metric, key) DO UPDATE SET value = p_stats_g{g}.value + excluded.value",
            columns = ACTION_COLUMNS.join(", "),
            updates = action_updates(),
        );
        // Not a cached prepared statement: PostgreSQL would keep the generic plan it made while
        // the generation's tables were small (no statistics until an ANALYZE, never with
        // autovacuum off) and the `cleared` delete stayed a sequential scan of the whole
        // eligibility table per batch (1,603 scans reading 15.9M rows in a 20 s load). An
        // unnamed statement is planned with this batch's arrays against the table as it is.
        sqlx::query(&sql)
            .persistent(false)
            .bind(action_id)
            .bind(tenant)
            .bind(status)
            .bind(action_type)
            .bind(module)
            .bind(capability)
            .bind(summary)
            .bind(requested_by)
            .bind(risk_score)
            .bind(risk_level)
            .bind(stage)
            .bind(escalations)
            .bind(allow_self_approval)
            .bind(submitted_at)
            .bind(expires_at)
            .bind(decided_at)
            .bind(review_due)
            .bind(vote_summary)
            .bind(break_glass)
            .bind(stage_rules)
            .bind(position)
            .bind(state)
            .bind(changes.revisited)
            .bind(e_action)
            .bind(e_tenant)
            .bind(e_kind)
            .bind(e_principal)
            .bind(s_tenant)
            .bind(s_metric)
            .bind(s_key)
            .bind(s_value)
            .execute(&mut *connection)
            .await
            .context("writing actions, eligibility and stats")?;
        Ok(())
    }

    /// One statement: the events' audit rows and the votes' rows.
    pub(super) async fn write_audit(
        connection: &mut PgConnection,
        g: i64,
        changes: AuditChanges,
    ) -> anyhow::Result<()> {
        let n = changes.audit.len();
        let mut action_id = Vec::with_capacity(n);
        let mut sequence = Vec::with_capacity(n);
        let mut tenant = Vec::with_capacity(n);
        let mut position = Vec::with_capacity(n);
        let mut event_type = Vec::with_capacity(n);
        let mut event_version = Vec::with_capacity(n);
        let mut actor = Vec::with_capacity(n);
        let mut at = Vec::with_capacity(n);
        let mut recorded_at = Vec::with_capacity(n);
        let mut correlation_id = Vec::with_capacity(n);
        let mut content = Vec::with_capacity(n);
        for row in changes.audit {
            action_id.push(row.action_id);
            sequence.push(row.sequence);
            tenant.push(row.tenant);
            position.push(row.position);
            event_type.push(row.event_type);
            event_version.push(row.event_version);
            actor.push(row.actor);
            at.push(row.at);
            recorded_at.push(row.recorded_at);
            correlation_id.push(row.correlation_id);
            content.push(row.content);
        }
        let m = changes.votes.len();
        let mut v_action = Vec::with_capacity(m);
        let mut v_sequence = Vec::with_capacity(m);
        let mut v_tenant = Vec::with_capacity(m);
        let mut v_voter = Vec::with_capacity(m);
        let mut v_stage = Vec::with_capacity(m);
        let mut v_vote = Vec::with_capacity(m);
        let mut v_comment = Vec::with_capacity(m);
        let mut v_roles = Vec::with_capacity(m);
        let mut v_at = Vec::with_capacity(m);
        for row in changes.votes {
            v_action.push(row.action_id);
            v_sequence.push(row.sequence);
            v_tenant.push(row.tenant);
            v_voter.push(row.voter);
            v_stage.push(row.stage);
            v_vote.push(row.vote);
            v_comment.push(row.comment);
            v_roles.push(row.roles);
            v_at.push(row.at);
        }
        let sql = format!(
            "WITH audited AS (
                INSERT INTO p_audit_g{g} ({audit})
                SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[],
                                     $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::text[],
                                     $11::text[])
                ON CONFLICT (action_id, sequence) DO NOTHING
             )
             INSERT INTO p_votes_g{g} ({votes})
             SELECT * FROM UNNEST($12::text[], $13::bigint[], $14::text[], $15::text[], $16::bigint[],
                                  $17::text[], $18::text[], $19::text[], $20::bigint[])
             ON CONFLICT (action_id, sequence) DO NOTHING",
            audit = AUDIT_COLUMNS.join(", "),
            votes = VOTE_COLUMNS.join(", "),
        );
        sqlx::query(&sql)
            .bind(action_id)
            .bind(sequence)
            .bind(tenant)
            .bind(position)
            .bind(event_type)
            .bind(event_version)
            .bind(actor)
            .bind(at)
            .bind(recorded_at)
            .bind(correlation_id)
            .bind(content)
            .bind(v_action)
            .bind(v_sequence)
            .bind(v_tenant)
            .bind(v_voter)
            .bind(v_stage)
            .bind(v_vote)
            .bind(v_comment)
            .bind(v_roles)
            .bind(v_at)
            .execute(&mut *connection)
            .await
            .context("writing audit and votes")?;
        Ok(())
    }
}

/// SQLite (sqlx's `Any` driver, no arrays): multi-row statements of up to [`CHUNK`] rows, in
/// process.
mod portable {
    use super::*;

    pub(super) async fn load_states(
        connection: &mut AnyConnection,
        generation: i64,
        ids: &BTreeSet<String>,
    ) -> anyhow::Result<BTreeMap<String, Action>> {
        let mut states = BTreeMap::new();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT action_id, state FROM p_actions_g{generation} WHERE action_id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query
                .fetch_all(&mut *connection)
                .await
                .context("loading action rows")?
            {
                let id: String = row.try_get(0)?;
                let state: String = row.try_get(1)?;
                let action = parse_state(&id, &state)?;
                states.insert(id, action);
            }
        }
        Ok(states)
    }

    pub(super) async fn write_actions(
        connection: &mut AnyConnection,
        generation: i64,
        changes: ActionChanges,
    ) -> anyhow::Result<()> {
        let action_rows = changes
            .actions
            .into_iter()
            .map(|row| {
                vec![
                    Param::Text(row.action_id),
                    Param::Text(row.tenant),
                    Param::Text(row.status.to_owned()),
                    Param::Text(row.action_type),
                    Param::Text(row.module),
                    Param::Text(row.capability),
                    Param::Text(row.summary),
                    Param::Text(row.requested_by),
                    Param::Int(row.risk_score),
                    Param::Text(row.risk_level.to_owned()),
                    Param::Int(row.stage),
                    Param::Int(row.escalations),
                    Param::Int(row.allow_self_approval),
                    Param::Int(row.submitted_at),
                    Param::Int(row.expires_at),
                    Param::MaybeInt(row.decided_at),
                    Param::MaybeInt(row.review_due),
                    Param::MaybeText(row.vote_summary),
                    Param::MaybeText(row.break_glass),
                    Param::MaybeText(row.stage_rules),
                    Param::Int(row.position),
                    Param::Text(row.state),
                ]
            })
            .collect();
        insert_rows(
            connection,
            &format!("p_actions_g{generation}"),
            &ACTION_COLUMNS,
            action_rows,
            &format!("ON CONFLICT (action_id) DO UPDATE SET {}", action_updates()),
        )
        .await?;

        for chunk in changes.revisited.chunks(CHUNK) {
            let sql = format!(
                "DELETE FROM p_eligibility_g{generation} WHERE action_id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.as_str());
            }
            query
                .execute(&mut *connection)
                .await
                .context("clearing eligibility")?;
        }
        let eligibility_rows = changes
            .eligibility
            .into_iter()
            .map(|row| {
                vec![
                    Param::Text(row.action_id),
                    Param::Text(row.tenant),
                    Param::Text(row.kind.to_owned()),
                    Param::Text(row.principal),
                ]
            })
            .collect();
        insert_rows(
            connection,
            &format!("p_eligibility_g{generation}"),
            &["action_id", "tenant", "kind", "principal"],
            eligibility_rows,
            "",
        )
        .await?;

        let stats_rows = changes
            .stats
            .into_iter()
            .map(|(tenant, metric, key, delta)| {
                vec![
                    Param::Text(tenant),
                    Param::Text(metric.to_owned()),
                    Param::Text(key),
                    Param::Int(delta),
                ]
            })
            .collect();
        insert_rows(
            connection,
            &format!("p_stats_g{generation}"),
            &["tenant", "metric", "key", "value"],
            stats_rows,
            &format!("ON CONFLICT (tenant, metric, key) DO UPDATE SET value = p_stats_g{generation}.value + excluded.value"),
        )
        .await
    }

    pub(super) async fn write_audit(
        connection: &mut AnyConnection,
        generation: i64,
        changes: AuditChanges,
    ) -> anyhow::Result<()> {
        let audit_rows = changes
            .audit
            .into_iter()
            .map(|row| {
                vec![
                    Param::Text(row.action_id),
                    Param::Int(row.sequence),
                    Param::Text(row.tenant),
                    Param::Int(row.position),
                    Param::Text(row.event_type),
                    Param::Text(row.event_version),
                    Param::Text(row.actor),
                    Param::Int(row.at),
                    Param::Int(row.recorded_at),
                    Param::MaybeText(row.correlation_id),
                    Param::Text(row.content),
                ]
            })
            .collect();
        insert_rows(
            connection,
            &format!("p_audit_g{generation}"),
            &AUDIT_COLUMNS,
            audit_rows,
            "ON CONFLICT (action_id, sequence) DO NOTHING",
        )
        .await?;
        let vote_rows = changes
            .votes
            .into_iter()
            .map(|vote| {
                vec![
                    Param::Text(vote.action_id),
                    Param::Int(vote.sequence),
                    Param::Text(vote.tenant),
                    Param::Text(vote.voter),
                    Param::Int(vote.stage),
                    Param::Text(vote.vote.to_owned()),
                    Param::MaybeText(vote.comment),
                    Param::Text(vote.roles),
                    Param::Int(vote.at),
                ]
            })
            .collect();
        insert_rows(
            connection,
            &format!("p_votes_g{generation}"),
            &VOTE_COLUMNS,
            vote_rows,
            "ON CONFLICT (action_id, sequence) DO NOTHING",
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_numbers_every_placeholder_once_in_order() {
        assert_eq!(
            insert_sql("t", &["a", "b"], 2, "ON CONFLICT DO NOTHING"),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) ON CONFLICT DO NOTHING"
        );
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
    }
}
