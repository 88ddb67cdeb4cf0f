//! Stats: decision latency, rates and counts by risk, module and outcome, drawn as bar charts
//! in SVG on the server (no script, no external library), each with its numbers as text; and
//! the decision latency p50/p95 of each UTC day of the last 30 days as a line chart (computed on
//! read by `countersign_projections::trends`), each point titled with its figures.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use countersign_app::reads;

use crate::Console;
use crate::error::PageError;
use crate::session::Session;
use crate::view::{self, Layout};

/// One bar of a chart.
#[derive(Debug)]
pub struct Bar {
    pub label: String,
    pub value: String,
    pub width: u32,
    pub y: u32,
    pub text_y: u32,
}

/// A horizontal bar chart.
#[derive(Debug)]
pub struct Chart {
    pub id: String,
    pub title: String,
    pub bars: Vec<Bar>,
    pub height: u32,
}

const BAR_WIDTH: f64 = 360.0;
const ROW: u32 = 28;

impl Chart {
    fn new(id: &str, title: &str, rows: Vec<(String, f64, String)>) -> Self {
        let max = rows
            .iter()
            .map(|(_, value, _)| *value)
            .fold(0.0_f64, f64::max);
        let bars = rows
            .into_iter()
            .zip(0u32..)
            .map(|((label, value, text), index)| Bar {
                label,
                value: text,
                width: if max > 0.0 {
                    // Bounded by BAR_WIDTH: the cast cannot overflow.
                    #[expect(
                        clippy::cast_possible_truncation,
                        clippy::cast_sign_loss,
                        reason = "a width between 0 and BAR_WIDTH pixels"
                    )]
                    let width = (value / max * BAR_WIDTH).round().max(1.0) as u32;
                    width
                } else {
                    0
                },
                y: index * ROW,
                text_y: index * ROW + 17,
            })
            .collect::<Vec<_>>();
        let height = u32::try_from(bars.len()).unwrap_or(0).max(1) * ROW;
        Self {
            id: id.to_owned(),
            title: title.to_owned(),
            bars,
            height,
        }
    }
}

fn counts(map: &std::collections::BTreeMap<String, i64>) -> Vec<(String, f64, String)> {
    map.iter()
        .map(|(label, count)| (label.clone(), *count as f64, count.to_string()))
        .collect()
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a latency in whole seconds"
)]
fn whole_seconds(seconds: f64) -> u64 {
    seconds.max(0.0) as u64
}

fn percent(rate: Option<f64>) -> (f64, String) {
    match rate {
        Some(rate) => (rate * 100.0, format!("{:.1} %", rate * 100.0)),
        None => (0.0, "no decisions yet".to_owned()),
    }
}

/// Days the latency trend covers, today included.
pub const TREND_DAYS: u32 = 30;

/// One day's point of the trend chart, for one series.
#[derive(Debug)]
pub struct TrendPoint {
    pub day: String,
    pub seconds: f64,
    pub x: f64,
    pub y: f64,
    /// The point's `<title>`: the day and its figures in words.
    pub title: String,
}

/// One series (p50 or p95) of the trend chart.
#[derive(Debug)]
pub struct Series {
    pub name: &'static str,
    /// The `points` attribute of its polyline.
    pub line: String,
    pub points: Vec<TrendPoint>,
}

/// The decision latency p50/p95 per day, as a line chart.
#[derive(Debug)]
pub struct Trend {
    pub from: String,
    pub to: String,
    /// The top of the y axis, in words.
    pub top: String,
    pub decided: u64,
    pub series: Vec<Series>,
}

/// The plot area of the trend chart, in SVG units.
const PLOT_LEFT: f64 = 64.0;
const PLOT_WIDTH: f64 = 560.0;
const PLOT_TOP: f64 = 12.0;
const PLOT_HEIGHT: f64 = 160.0;

impl Trend {
    fn new(trend: &countersign_projections::trends::DecisionTrend) -> Self {
        let span = (trend.to - trend.from).num_days().max(1) as f64;
        let top = trend
            .days
            .iter()
            .map(|day| day.p95_seconds.max(day.p50_seconds))
            .fold(0.0_f64, f64::max);
        // A little headroom, and never a zero scale.
        let scale = (top * 1.1).max(1.0);
        let place = |day: chrono::NaiveDate, seconds: f64| {
            let x = PLOT_LEFT + (day - trend.from).num_days() as f64 / span * PLOT_WIDTH;
            let y = PLOT_TOP + PLOT_HEIGHT - seconds / scale * PLOT_HEIGHT;
            ((x * 10.0).round() / 10.0, (y * 10.0).round() / 10.0)
        };
        let series = [("p50", 0), ("p95", 1)]
            .into_iter()
            .map(|(name, which)| {
                let points: Vec<TrendPoint> = trend
                    .days
                    .iter()
                    .map(|day| {
                        let seconds = if which == 0 {
                            day.p50_seconds
                        } else {
                            day.p95_seconds
                        };
                        let (x, y) = place(day.day, seconds);
                        TrendPoint {
                            day: day.day.to_string(),
                            seconds,
                            x,
                            y,
                            title: format!(
                                "{}: {name} {} ({} decided)",
                                day.day,
                                view::duration(whole_seconds(seconds)),
                                day.decided
                            ),
                        }
                    })
                    .collect();
                Series {
                    name,
                    line: points
                        .iter()
                        .map(|point| format!("{},{}", point.x, point.y))
                        .collect::<Vec<_>>()
                        .join(" "),
                    points,
                }
            })
            .collect();
        Self {
            from: trend.from.to_string(),
            to: trend.to.to_string(),
            top: view::duration(whole_seconds(scale)),
            decided: trend.days.iter().map(|day| day.decided).sum(),
            series,
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "stats.html")]
struct StatsPage {
    layout: Layout,
    submitted: i64,
    votes: i64,
    trend: Trend,
    charts: Vec<Chart>,
}

/// `GET /stats` (owner, admin, auditor, approver).
pub async fn page(State(console): State<Console>, session: Session) -> Result<Response, PageError> {
    let layout = Layout::new(&console, &session, "stats").await?;
    let stats = reads::stats(&console.gateway.app, &session.actor, None).await?;
    let trend = reads::decision_trend(&console.gateway.app, &session.actor, TREND_DAYS).await?;
    let latency = |label: &str, seconds: Option<f64>| {
        let text = seconds.map_or_else(
            || "no decisions yet".to_owned(),
            |seconds| view::duration(whole_seconds(seconds)),
        );
        (label.to_owned(), seconds.unwrap_or(0.0), text)
    };
    let rate = |label: &str, value: Option<f64>| {
        let (value, text) = percent(value);
        (label.to_owned(), value, text)
    };
    let charts = vec![
        Chart::new(
            "latency",
            "Decision latency",
            vec![
                latency("p50", stats.decision_latency_p50_seconds),
                latency("p95", stats.decision_latency_p95_seconds),
            ],
        ),
        Chart::new(
            "rates",
            "Rates",
            vec![
                rate("approved", stats.approval_rate),
                rate("rejected", stats.rejection_rate),
                rate("timed out", stats.timeout_rate),
                rate("escalated", stats.escalation_rate),
                rate("executions succeeded", stats.execution_success_rate),
                rate("decided with votes", stats.vote_participation),
            ],
        ),
        Chart::new("decisions", "Decisions", counts(&stats.decisions)),
        Chart::new("risk", "Submissions by risk", counts(&stats.by_risk)),
        Chart::new("module", "Submissions by module", counts(&stats.by_module)),
        Chart::new("status", "Actions by status now", counts(&stats.by_status)),
    ];
    Ok(StatsPage {
        layout,
        submitted: stats.submitted,
        votes: stats.votes_cast,
        trend: Trend::new(&trend),
        charts,
    }
    .into_response())
}
