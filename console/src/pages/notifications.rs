//! The signed-in person's in-app notifications (newest first, unread marked, marked read one by
//! one or all at once with plain forms) and their notification preferences. The nav shows the
//! unread count; pages refresh it when the live stream says something happened.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use countersign_app::{members, notify};
use countersign_domain::members::{
    KindSwitches, NotificationChannel, NotificationKind, Preferences,
};
use countersign_domain::risk::RiskLevel;
use serde::Deserialize;

use crate::Console;
use crate::error::PageError;
use crate::session::{Posted, Session};
use crate::view::{self, Layout};

/// One notification as the feed shows it.
#[derive(Debug)]
pub struct Row {
    pub id: String,
    pub kind: String,
    pub title: String,
    pub action_id: Option<String>,
    pub when: String,
    pub stamp: String,
    pub unread: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "notifications.html")]
struct FeedPage {
    layout: Layout,
    rows: Vec<Row>,
    unread: i64,
    next: Option<String>,
    unread_only: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct FeedQuery {
    cursor: Option<String>,
    unread: Option<String>,
    notice: Option<String>,
}

/// `GET /notifications`: anyone signed in, their own notifications only.
pub async fn page(
    State(console): State<Console>,
    session: Session,
    Query(query): Query<FeedQuery>,
) -> Result<Response, PageError> {
    let layout = Layout::new(&console, &session, "notifications")
        .await?
        .with_notice(query.notice.as_deref());
    let unread_only = query.unread.as_deref() == Some("1");
    let cursor = query.cursor.as_deref().filter(|cursor| !cursor.is_empty());
    let feed = notify::feed(
        &console.gateway.app,
        &session.actor,
        cursor,
        Some(50),
        unread_only,
    )
    .await?;
    let rows = feed
        .notifications
        .into_iter()
        .map(|notification| Row {
            unread: notification.read_at.is_none(),
            when: notification
                .created_at
                .map(view::relative)
                .unwrap_or_default(),
            stamp: notification.created_at.map(view::stamp).unwrap_or_default(),
            id: notification.id,
            kind: notification.kind,
            title: notification.title,
            action_id: notification.action_id,
        })
        .collect();
    Ok(FeedPage {
        layout,
        rows,
        unread: feed.unread,
        next: feed.next_cursor,
        unread_only,
    }
    .into_response())
}

/// `GET /notifications/badge`: the unread count (empty when none), for the nav.
pub async fn badge(
    State(console): State<Console>,
    session: Session,
) -> Result<Response, PageError> {
    let stats = notify::stats(&console.gateway.app, &session.actor).await?;
    let text = if stats.unread > 0 {
        stats.unread.to_string()
    } else {
        String::new()
    };
    Ok(text.into_response())
}

/// `POST /notifications/{id}/read`.
pub async fn mark_read(
    State(console): State<Console>,
    Path(id): Path<String>,
    posted: Posted,
) -> Result<Response, PageError> {
    notify::mark_read(&console.gateway.app, &posted.session.actor, &id).await?;
    Ok(Redirect::to("/notifications?notice=read").into_response())
}

/// `POST /notifications/read-all`.
pub async fn mark_all_read(
    State(console): State<Console>,
    posted: Posted,
) -> Result<Response, PageError> {
    notify::mark_all_read(&console.gateway.app, &posted.session.actor).await?;
    Ok(Redirect::to("/notifications?notice=all_read").into_response())
}

/// One channel's row of switches.
#[derive(Debug)]
pub struct ChannelRow {
    pub name: &'static str,
    /// `(kind, on)` in the order of [`NotificationKind::ALL`].
    pub kinds: Vec<(&'static str, bool)>,
}

#[derive(Template, WebTemplate)]
#[template(path = "preferences.html")]
struct PreferencesPage {
    layout: Layout,
    kinds: Vec<&'static str>,
    channels: Vec<ChannelRow>,
    min_risk: &'static str,
    risks: [&'static str; 3],
    daily_digest: bool,
    custom: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct NoticeOnly {
    notice: Option<String>,
}

/// `GET /preferences`: the signed-in person's preferences as they apply.
pub async fn preferences(
    State(console): State<Console>,
    session: Session,
    Query(query): Query<NoticeOnly>,
) -> Result<Response, PageError> {
    let layout = Layout::new(&console, &session, "preferences")
        .await?
        .with_notice(query.notice.as_deref());
    let view = members::my_preferences(&console.gateway.app, &session.actor).await?;
    let preferences = view.preferences;
    Ok(PreferencesPage {
        layout,
        kinds: NotificationKind::ALL
            .iter()
            .map(|kind| kind.as_str())
            .collect(),
        channels: NotificationChannel::ALL
            .iter()
            .map(|channel| ChannelRow {
                name: channel.as_str(),
                kinds: NotificationKind::ALL
                    .iter()
                    .map(|kind| (kind.as_str(), preferences.channel(*channel).allows(*kind)))
                    .collect(),
            })
            .collect(),
        min_risk: preferences.min_risk.as_str(),
        risks: ["low", "medium", "high"],
        daily_digest: preferences.daily_digest,
        custom: view.custom,
    }
    .into_response())
}

fn switches(posted: &Posted, channel: NotificationChannel) -> KindSwitches {
    let on = |kind: NotificationKind| {
        posted
            .get(&format!("{}.{}", channel.as_str(), kind.as_str()))
            .is_some()
    };
    KindSwitches {
        assigned: on(NotificationKind::Assigned),
        decided: on(NotificationKind::Decided),
        outcome: on(NotificationKind::Outcome),
        escalated: on(NotificationKind::Escalated),
        reminder: on(NotificationKind::Reminder),
    }
}

/// `POST /preferences`: saves the form (a checkbox left unticked is off), or with `reset` goes
/// back to the tenant's defaults.
pub async fn save_preferences(
    State(console): State<Console>,
    posted: Posted,
) -> Result<Response, PageError> {
    let preferences = if posted.get("reset").is_some() {
        None
    } else {
        let min_risk = posted
            .get("min_risk")
            .and_then(RiskLevel::parse)
            .ok_or_else(|| {
                PageError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "min_risk: choose low, medium or high",
                )
            })?;
        Some(Preferences {
            in_app: switches(&posted, NotificationChannel::InApp),
            email: switches(&posted, NotificationChannel::Email),
            slack: switches(&posted, NotificationChannel::Slack),
            webhook: switches(&posted, NotificationChannel::Webhook),
            min_risk,
            daily_digest: posted.get("daily_digest").is_some(),
        })
    };
    members::set_my_preferences(&console.gateway.app, &posted.session.actor, preferences).await?;
    Ok(Redirect::to("/preferences?notice=preferences").into_response())
}
