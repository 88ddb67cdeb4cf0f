//! Slack: `PUT, GET /v1/notifications/slack` (a tenant's incoming webhook and signing secret)
//! and `POST /v1/slack/interactions`, where Slack sends button clicks. The interactions
//! endpoint takes no bearer token: Slack's request signature is the credential, checked by
//! `countersign_app::notify::slack::interact` with the tenant's signing secret.

use aide::axum::ApiRouter;
use aide::axum::routing::get;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use countersign_app::notify::slack::{self, Interaction, SlackRefusal, SlackSettings, SlackStatus};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Acting, Reply, StrictJson};

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new().api_route("/v1/notifications/slack", get(read_settings).put(configure))
}

/// Routes outside the OpenAPI document: Slack's callbacks are not part of the client API.
pub fn callbacks() -> axum::Router<AppState> {
    axum::Router::new().route("/v1/slack/interactions", axum::routing::post(interactions))
}

/// Whether Slack is configured (owner, admin, auditor); the secrets are never shown.
async fn read_settings(
    State(state): State<AppState>,
    Acting(actor): Acting,
) -> Result<Reply<SlackStatus>, ApiError> {
    Ok(Reply::new(slack::status(&state.app, &actor).await?).no_store())
}

/// Store the tenant's Slack incoming webhook URL and signing secret (owner, admin). Both are
/// kept apart from the log.
async fn configure(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictJson(body): StrictJson<SlackSettings>,
) -> Result<Reply<SlackStatus>, ApiError> {
    Ok(Reply::new(slack::configure(&state.app, &actor, body).await?).no_store())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

/// A Slack `block_actions` callback (`application/x-www-form-urlencoded`, `payload=<json>`):
/// answered with the text that replaces the message, or 401 (bad or stale signature) / 400.
async fn interactions(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let payload: Option<Value> = form_urlencoded::parse(&body)
        .find(|(key, _)| key == "payload")
        .and_then(|(_, payload)| serde_json::from_str(&payload).ok());
    let Some(payload) = payload else {
        return ApiError::bad_request("invalid_payload", "no interaction payload").into_response();
    };
    let value = payload["actions"][0]["value"].as_str().unwrap_or_default();
    let user = payload["user"]["id"].as_str().unwrap_or_default();
    let interaction = Interaction {
        timestamp: header(&headers, "x-slack-request-timestamp"),
        signature: header(&headers, "x-slack-signature"),
        body: &body,
        value,
        user,
    };
    match slack::interact(&state.app, interaction).await {
        Ok(text) => (
            StatusCode::OK,
            axum::Json(json!({ "replace_original": true, "text": text })),
        )
            .into_response(),
        Err(refusal @ (SlackRefusal::BadSignature | SlackRefusal::Stale)) => {
            let code = if refusal == SlackRefusal::Stale {
                "stale_signature"
            } else {
                "invalid_signature"
            };
            ApiError::new(StatusCode::UNAUTHORIZED, code, refusal.to_string()).into_response()
        }
        Err(refusal @ SlackRefusal::Payload(_)) => {
            ApiError::bad_request("invalid_payload", refusal.to_string()).into_response()
        }
    }
}
