//! Tenant-wide views: stats and user histories.

use countersign_domain::UserId;
use countersign_ledger::LogCursor;
use countersign_projections::{InboxFilter, InboxPage, Projection, TenantStats, VoteRecord};

use crate::{Actor, App, AppError, roles};

/// The tenant's approval statistics (owner, admin, auditor, approver).
pub async fn stats(
    app: &App,
    actor: &Actor,
    consistent_with: Option<LogCursor>,
) -> Result<TenantStats, AppError> {
    actor.require(
        &[roles::OWNER, roles::ADMIN, roles::AUDITOR, roles::APPROVER],
        "reading stats",
    )?;
    app.wait_for(Projection::Actions, consistent_with).await?;
    Ok(app.projections.stats(&actor.tenant).await?)
}

/// The tenant's decision latency (p50, p95) per UTC day over the last `days` days (the same
/// roles as [`stats`]).
pub async fn decision_trend(
    app: &App,
    actor: &Actor,
    days: u32,
) -> Result<countersign_projections::trends::DecisionTrend, AppError> {
    actor.require(
        &[roles::OWNER, roles::ADMIN, roles::AUDITOR, roles::APPROVER],
        "reading stats",
    )?;
    Ok(app
        .projections
        .decision_trend(&actor.tenant, chrono::Utc::now(), days)
        .await?)
}

/// Actions `user` requested, newest first (the user, owner, admin, auditor).
pub async fn actions_of(
    app: &App,
    actor: &Actor,
    user: &UserId,
    cursor: Option<String>,
    limit: u32,
) -> Result<InboxPage, AppError> {
    actor.may_read_history_of(user.as_str())?;
    let filter = InboxFilter {
        requested_by: Some(user.to_string()),
        cursor,
        limit,
        ..InboxFilter::default()
    };
    Ok(app.projections.inbox(&actor.tenant, &filter).await?)
}

/// Votes `user` cast, newest first (the user, owner, admin, auditor).
pub async fn votes_of(
    app: &App,
    actor: &Actor,
    user: &UserId,
    limit: u32,
) -> Result<Vec<VoteRecord>, AppError> {
    actor.may_read_history_of(user.as_str())?;
    Ok(app
        .projections
        .votes_by(&actor.tenant, user.as_str(), limit)
        .await?)
}
