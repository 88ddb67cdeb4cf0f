//! Settings: the tenant's mode (safe, require approval, auto) and what applies when no policy
//! matches; while the tenant is in safe mode every page shows a banner.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use countersign_app::settings;
use countersign_domain::TenantMode;

use crate::Console;
use crate::error::PageError;
use crate::pages::policies::NoticeQuery;
use crate::session::{Posted, Session};
use crate::view::{self, Layout};

#[derive(Template, WebTemplate)]
#[template(path = "settings.html")]
struct SettingsPage {
    layout: Layout,
    mode: &'static str,
    defaults: String,
    webhook: String,
}

fn mode_name(mode: TenantMode) -> &'static str {
    match mode {
        TenantMode::Safe => "safe",
        TenantMode::RequireApproval => "require_approval",
        TenantMode::Auto => "auto",
    }
}

/// `GET /settings` (owner, admin, auditor).
pub async fn page(
    State(console): State<Console>,
    session: Session,
    Query(query): Query<NoticeQuery>,
) -> Result<Response, PageError> {
    let layout = Layout::new(&console, &session, "settings")
        .await?
        .with_notice(query.notice());
    let current = settings::read(&console.gateway.app, &session.actor).await?;
    Ok(SettingsPage {
        layout,
        mode: mode_name(current.mode),
        defaults: view::pretty(&current.default_requirements),
        webhook: current
            .webhook_url
            .as_ref()
            .map(|url| view::pretty(url).trim_matches('"').to_owned())
            .unwrap_or_default(),
    }
    .into_response())
}

/// `POST /settings`: changes the mode (owner, admin); the rest stays as it is.
pub async fn update(State(console): State<Console>, posted: Posted) -> Result<Response, PageError> {
    let mode = match posted.get("mode") {
        Some("safe") => TenantMode::Safe,
        Some("require_approval") => TenantMode::RequireApproval,
        Some("auto") => TenantMode::Auto,
        _ => {
            return Err(PageError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "mode: choose safe, require_approval or auto",
            ));
        }
    };
    let app = &console.gateway.app;
    let mut current = settings::read(app, &posted.session.actor).await?;
    current.mode = mode;
    settings::update(app, &posted.session.actor, current).await?;
    Ok(Redirect::to("/settings?notice=settings").into_response())
}
