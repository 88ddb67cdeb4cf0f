//! Applying a batch of log events to one generation's tables, inside the caller's transaction.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use countersign_domain::action::{Action, ActionEvent, ActionState};
use countersign_ledger::LoggedEvent;
use cqrs_es::Aggregate;
use sqlx::{AnyConnection, Row};

use crate::Projection;
use crate::rows::{ActionRow, audit_row, eligibility, stats_delta, vote_row};

/// Rows per multi-row statement (well under both stores' parameter limits).
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

/// Applies `events` to generation `generation` of `projection`.
pub(crate) async fn apply_batch(
    connection: &mut AnyConnection,
    projection: Projection,
    generation: i64,
    events: &[LoggedEvent],
) -> anyhow::Result<()> {
    let decoded = decode(events)?;
    if decoded.is_empty() {
        return Ok(());
    }
    match projection {
        Projection::Actions => apply_actions(connection, generation, &decoded).await,
        Projection::Audit => apply_audit(connection, generation, &decoded).await,
    }
}

async fn load_states(
    connection: &mut AnyConnection,
    generation: i64,
    ids: &BTreeSet<&str>,
) -> anyhow::Result<BTreeMap<String, Action>> {
    let mut states = BTreeMap::new();
    let ids: Vec<&str> = ids.iter().copied().collect();
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
            let action: Action = serde_json::from_str(&state)
                .with_context(|| format!("action {id}: stored state"))?;
            states.insert(id, action);
        }
    }
    Ok(states)
}

async fn apply_actions(
    connection: &mut AnyConnection,
    generation: i64,
    events: &[(&LoggedEvent, ActionEvent)],
) -> anyhow::Result<()> {
    let ids: BTreeSet<&str> = events
        .iter()
        .map(|(logged, _)| logged.aggregate_id.as_str())
        .collect();
    let mut actions = load_states(connection, generation, &ids).await?;
    let before: BTreeMap<String, Option<ActionState>> = ids
        .iter()
        .map(|id| {
            (
                (*id).to_owned(),
                actions.get(*id).and_then(|a| a.state().cloned()),
            )
        })
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
            .apply(event.clone());
    }

    let mut action_rows = Vec::new();
    let mut eligibility_rows = Vec::new();
    let mut stats: BTreeMap<(String, &'static str, String), i64> = BTreeMap::new();
    for id in &ids {
        let Some(state) = actions.get(*id).and_then(Action::state) else {
            continue;
        };
        let row = ActionRow::from_state(state, positions.get(id).copied().unwrap_or_default())?;
        action_rows.push(vec![
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
            Param::Int(row.position),
            Param::Text(row.state),
        ]);
        for row in eligibility(state) {
            eligibility_rows.push(vec![
                Param::Text(row.action_id),
                Param::Text(row.tenant),
                Param::Text(row.kind.to_owned()),
                Param::Text(row.principal),
            ]);
        }
        let previous = before.get(*id).and_then(Option::as_ref);
        for (metric, key, delta) in
            stats_delta(previous, state, votes.get(id).copied().unwrap_or(0))
        {
            *stats
                .entry((state.tenant.to_string(), metric, key))
                .or_default() += delta;
        }
    }

    let columns = [
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
        "position",
        "state",
    ];
    let updates = columns[2..]
        .iter()
        .map(|column| format!("{column} = excluded.{column}"))
        .collect::<Vec<_>>()
        .join(", ");
    insert_rows(
        connection,
        &format!("p_actions_g{generation}"),
        &columns,
        action_rows,
        &format!("ON CONFLICT (action_id) DO UPDATE SET {updates}"),
    )
    .await?;

    let touched: Vec<&str> = ids.iter().copied().collect();
    for chunk in touched.chunks(CHUNK) {
        let sql = format!(
            "DELETE FROM p_eligibility_g{generation} WHERE action_id IN ({})",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(*id);
        }
        query
            .execute(&mut *connection)
            .await
            .context("clearing eligibility")?;
    }
    insert_rows(
        connection,
        &format!("p_eligibility_g{generation}"),
        &["action_id", "tenant", "kind", "principal"],
        eligibility_rows,
        "",
    )
    .await?;

    let stats_rows = stats
        .into_iter()
        .filter(|(_, delta)| *delta != 0)
        .map(|((tenant, metric, key), delta)| {
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

async fn apply_audit(
    connection: &mut AnyConnection,
    generation: i64,
    events: &[(&LoggedEvent, ActionEvent)],
) -> anyhow::Result<()> {
    let mut audit_rows = Vec::new();
    let mut vote_rows = Vec::new();
    for (logged, event) in events {
        let row = audit_row(logged, event)?;
        audit_rows.push(vec![
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
        ]);
        if let Some(vote) = vote_row(logged, event)? {
            vote_rows.push(vec![
                Param::Text(vote.action_id),
                Param::Int(vote.sequence),
                Param::Text(vote.tenant),
                Param::Text(vote.voter),
                Param::Int(vote.stage),
                Param::Text(vote.vote.to_owned()),
                Param::MaybeText(vote.comment),
                Param::Text(vote.roles),
                Param::Int(vote.at),
            ]);
        }
    }
    insert_rows(
        connection,
        &format!("p_audit_g{generation}"),
        &[
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
        ],
        audit_rows,
        "ON CONFLICT (action_id, sequence) DO NOTHING",
    )
    .await?;
    insert_rows(
        connection,
        &format!("p_votes_g{generation}"),
        &[
            "action_id",
            "sequence",
            "tenant",
            "voter",
            "stage",
            "vote",
            "comment",
            "roles",
            "at",
        ],
        vote_rows,
        "ON CONFLICT (action_id, sequence) DO NOTHING",
    )
    .await
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
