//! Trends computed on read from the actions read model, for charts over time: the decision
//! latency (from submission to decision) of each UTC day, as its median and 95th percentile.
//!
//! Nothing is stored for them: a day's figures are the decided actions of that day in the live
//! generation of the actions projection, so a rebuild changes nothing and no new table or
//! projection version is needed. Cancelled actions are left out, as in the stats' latency
//! histogram (a cancellation is not a decision anyone waited for). Percentiles are exact
//! (nearest rank) rather than the histogram's 10% buckets.

use chrono::{DateTime, Days, NaiveDate, Utc};
use countersign_domain::TenantId;
use serde::Serialize;
use sqlx::{Any, Row, Transaction};

use crate::query::QueryError;
use crate::store::ProjectionStore;
use crate::{Projection, micros};

/// The longest window a trend covers.
pub const MAX_DAYS: u32 = 366;

/// One UTC day's decision latency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayLatency {
    pub day: NaiveDate,
    /// Actions decided that day (approved, rejected, expired; not cancelled).
    pub decided: u64,
    pub p50_seconds: f64,
    pub p95_seconds: f64,
}

/// The decision latency of each day of a window, oldest first; days without a decision are
/// left out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionTrend {
    /// The first and last day of the window (inclusive).
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub days: Vec<DayLatency>,
}

/// The nearest-rank percentile `p` (0 < p ≤ 1) of sorted values.
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank between 1 and the number of values"
    )]
    let rank = (p * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Groups `(decided_at, latency in seconds)` samples by the UTC day of `decided_at` and gives
/// each day's count and nearest-rank p50 and p95, oldest day first.
pub fn daily_latency(samples: impl IntoIterator<Item = (DateTime<Utc>, f64)>) -> Vec<DayLatency> {
    let mut by_day: std::collections::BTreeMap<NaiveDate, Vec<f64>> =
        std::collections::BTreeMap::new();
    for (decided_at, seconds) in samples {
        by_day
            .entry(decided_at.date_naive())
            .or_default()
            .push(seconds.max(0.0));
    }
    by_day
        .into_iter()
        .map(|(day, mut latencies)| {
            latencies.sort_by(f64::total_cmp);
            DayLatency {
                day,
                decided: latencies.len() as u64,
                p50_seconds: nearest_rank(&latencies, 0.50),
                p95_seconds: nearest_rank(&latencies, 0.95),
            }
        })
        .collect()
}

impl ProjectionStore {
    /// The decision latency of `tenant` per UTC day over the `days` days ending with the day of
    /// `now` (at most [`MAX_DAYS`]).
    pub async fn decision_trend(
        &self,
        tenant: &TenantId,
        now: DateTime<Utc>,
        days: u32,
    ) -> Result<DecisionTrend, QueryError> {
        match self.decision_trend_once(tenant, now, days).await {
            // The generation's tables were dropped after the read found them (a rebuild was
            // swapped in): read the new live one.
            Err(QueryError::Store(err))
                if {
                    let text = format!("{err:#}");
                    text.contains("does not exist") || text.contains("no such table")
                } =>
            {
                self.decision_trend_once(tenant, now, days).await
            }
            other => other,
        }
    }

    async fn decision_trend_once(
        &self,
        tenant: &TenantId,
        now: DateTime<Utc>,
        days: u32,
    ) -> Result<DecisionTrend, QueryError> {
        let to = now.date_naive();
        let from = to
            .checked_sub_days(Days::new(u64::from(days.clamp(1, MAX_DAYS) - 1)))
            .unwrap_or(to);
        let start = from
            .and_hms_opt(0, 0, 0)
            .map_or(now, |start| start.and_utc());
        let (mut tx, g) = self.trend_reader(tenant).await?;
        let rows = sqlx::query(&format!(
            "SELECT decided_at, submitted_at FROM p_actions_g{g}
              WHERE tenant = $1 AND decided_at >= $2 AND status <> 'cancelled'"
        ))
        .bind(tenant.as_str())
        .bind(micros(start))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut samples = Vec::with_capacity(rows.len());
        for row in &rows {
            let decided: i64 = row.try_get("decided_at")?;
            let submitted: i64 = row.try_get("submitted_at")?;
            #[expect(
                clippy::cast_precision_loss,
                reason = "a latency in microseconds, far below 2^52"
            )]
            let seconds = decided.saturating_sub(submitted) as f64 / 1_000_000.0;
            samples.push((crate::instant(decided), seconds));
        }
        let mut days = daily_latency(samples);
        // A decision stamped after `now` (clock skew between processes) stays out of the window.
        days.retain(|day| day.day <= to);
        Ok(DecisionTrend { from, to, days })
    }

    /// A read transaction scoped to `tenant` (row-level security on PostgreSQL, as every read
    /// of the projections), and the live generation of the actions projection.
    async fn trend_reader(
        &self,
        tenant: &TenantId,
    ) -> Result<(Transaction<'static, Any>, i64), QueryError> {
        let mut tx = self.pool.begin().await?;
        if self.postgres {
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
                .bind(Projection::Actions.name())
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get(0))
                .transpose()?;
        let generation = generation.ok_or(QueryError::NotReady(Projection::Actions))?;
        Ok((tx, generation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        NaiveDate::from_ymd_opt(2026, 11, day)
            .and_then(|date| date.and_hms_opt(hour, 0, 0))
            .map(|naive| naive.and_utc())
            .unwrap_or_default()
    }

    #[test]
    fn each_day_has_its_own_nearest_rank_percentiles() {
        let mut samples: Vec<(DateTime<Utc>, f64)> =
            (1..=20).map(|n| (at(3, 10), f64::from(n) * 60.0)).collect();
        samples.push((at(1, 23), 5.0));
        samples.push((at(1, 0), -2.0));
        let days = daily_latency(samples);
        assert_eq!(days.len(), 2);
        assert_eq!(days[0].day, at(1, 0).date_naive());
        assert_eq!(days[0].decided, 2);
        // A negative latency (clock skew) counts as zero.
        assert!((days[0].p50_seconds - 0.0).abs() < f64::EPSILON);
        assert!((days[0].p95_seconds - 5.0).abs() < f64::EPSILON);
        assert_eq!(days[1].decided, 20);
        // Ranks ceil(0.5·20) = 10 and ceil(0.95·20) = 19.
        assert!((days[1].p50_seconds - 600.0).abs() < f64::EPSILON);
        assert!((days[1].p95_seconds - 1140.0).abs() < f64::EPSILON);
    }

    #[test]
    fn no_samples_no_days() {
        assert!(daily_latency(Vec::new()).is_empty());
    }
}
