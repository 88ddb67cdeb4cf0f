//! "Request approval": a form to submit an action. As one types, htmx asks `simulate` for the
//! risk score, its reasons and the policy that would govern it; the form carries an idempotency
//! key generated when it was rendered, so a double click creates one action.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use countersign_app::actions::{self, Submitted};
use countersign_app::policies::{self, Simulation};
use countersign_domain::IdempotencyKey;
use countersign_domain::submission::Submission;
use serde_json::{Map, Value};

use crate::Console;
use crate::error::PageError;
use crate::session::{Posted, Session};
use crate::view::{self, Layout, Risk};

/// The form's values, kept across a refused submission.
#[derive(Debug, Default, Clone)]
pub struct Draft {
    pub module: String,
    pub capability: String,
    pub summary: String,
    pub payload: String,
    pub connectors: String,
    pub flags: String,
    pub impact: String,
    pub scope: String,
    pub idempotency_key: String,
}

impl Draft {
    fn from(posted: &Posted) -> Self {
        let get = |name: &str| posted.get(name).unwrap_or_default().to_owned();
        Self {
            module: get("module"),
            capability: get("capability"),
            summary: get("summary"),
            payload: get("payload"),
            connectors: get("connectors"),
            flags: get("flags"),
            impact: get("impact"),
            scope: get("scope"),
            idempotency_key: get("idempotency_key"),
        }
    }

    /// The submission these values describe; a refusal names the field at fault.
    fn submission(&self) -> Result<Submission, (String, String)> {
        let payload: Value = if self.payload.is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_str(&self.payload)
                .map_err(|err| ("payload".to_owned(), format!("payload: not JSON: {err}")))?
        };
        let list = |raw: &str| -> Vec<Value> {
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Value::String(item.to_owned()))
                .collect()
        };
        let document = serde_json::json!({
            "module": self.module,
            "capability": self.capability,
            "summary": self.summary,
            "payload": payload,
            "connectors": list(&self.connectors),
            "flags": list(&self.flags),
            "impact": self.impact,
            "scope": self.scope,
            "source": "console",
        });
        let bytes = serde_json::to_vec(&document).unwrap_or_default();
        let submission = countersign_gateway::extract::parse_json::<Submission>(&bytes)
            .map_err(|err| (err.field.clone().unwrap_or_default(), err.detail))?;
        submission
            .check()
            .map_err(|err| (err.field.clone(), err.to_string()))?;
        Ok(submission)
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "request.html")]
struct RequestPage {
    layout: Layout,
    draft: Draft,
    error: Option<(String, String)>,
}

impl RequestPage {
    /// Whether the refusal names `field` (or a path inside it).
    fn bad(&self, field: &str) -> bool {
        self.error
            .as_ref()
            .is_some_and(|(name, _)| name == field || name.starts_with(&format!("{field}.")))
    }
}

fn fresh_key() -> String {
    format!("console-{}", uuid::Uuid::now_v7())
}

/// `GET /request`.
pub async fn form(State(console): State<Console>, session: Session) -> Result<Response, PageError> {
    let layout = Layout::new(&console, &session, "request").await?;
    Ok(RequestPage {
        layout,
        draft: Draft {
            payload: "{}".to_owned(),
            idempotency_key: fresh_key(),
            ..Draft::default()
        },
        error: None,
    }
    .into_response())
}

/// `POST /request`: submits, then shows the action (the same one for a repeated key).
pub async fn submit(State(console): State<Console>, posted: Posted) -> Result<Response, PageError> {
    let draft = Draft::from(&posted);
    let refused = |draft: Draft, error: (String, String)| async {
        let layout = Layout::new(&console, &posted.session, "request").await?;
        Ok::<_, PageError>(
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                RequestPage {
                    layout,
                    draft,
                    error: Some(error),
                },
            )
                .into_response(),
        )
    };
    let submission = match draft.submission() {
        Ok(submission) => submission,
        Err(error) => return refused(draft, error).await,
    };
    let key = match IdempotencyKey::parse(draft.idempotency_key.clone()) {
        Ok(key) => Some(key),
        Err(_) if draft.idempotency_key.is_empty() => None,
        Err(err) => {
            return refused(draft, ("idempotency_key".into(), err.to_string())).await;
        }
    };
    let outcome =
        actions::submit(&console.gateway.app, &posted.session.actor, submission, key).await;
    match outcome {
        Ok(Submitted::New(written) | Submitted::Existing(written)) => Ok(Redirect::to(&format!(
            "/actions/{}?notice=submitted",
            written.value.id
        ))
        .into_response()),
        Err(err @ countersign_app::AppError::Forbidden(_)) => Err(err.into()),
        Err(err) => {
            let refusal = countersign_gateway::error::ApiError::from(err);
            refused(
                draft,
                (
                    refusal.field.clone().unwrap_or_default(),
                    format!("{} ({})", refusal.detail, refusal.code),
                ),
            )
            .await
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "simulation.html")]
pub struct SimulationFragment {
    pub error: Option<(String, String)>,
    pub risk: Option<Risk>,
    pub reasons: Vec<(String, u8)>,
    pub policy: String,
    pub policy_default: bool,
    pub rules: Vec<String>,
}

impl SimulationFragment {
    pub fn of(result: Result<Simulation, (String, String)>) -> Self {
        match result {
            Ok(simulation) => Self {
                error: None,
                risk: Some(Risk::new(
                    simulation.risk.level,
                    simulation.risk.score.value(),
                )),
                reasons: simulation
                    .risk
                    .reasons
                    .iter()
                    .map(|reason| (reason.label.clone(), reason.points))
                    .collect(),
                policy: format!(
                    "{} (v{}, priority {})",
                    simulation.policy.name, simulation.policy.version, simulation.policy.priority
                ),
                policy_default: simulation.policy.is_default,
                rules: simulation
                    .policy
                    .requirements
                    .stages
                    .as_slice()
                    .iter()
                    .enumerate()
                    .map(|(index, stage)| {
                        let rules: Vec<String> =
                            stage.rules.as_slice().iter().map(view::rule_text).collect();
                        format!("stage {}: {}", index + 1, rules.join("; "))
                    })
                    .collect(),
            },
            Err(error) => Self {
                error: Some(error),
                risk: None,
                reasons: Vec::new(),
                policy: String::new(),
                policy_default: false,
                rules: Vec::new(),
            },
        }
    }
}

/// `POST /request/simulate`: the risk and the governing policy of the form as it stands
/// (always 200, so htmx shows a refusal where the result goes).
pub async fn simulate(
    State(console): State<Console>,
    posted: Posted,
) -> Result<Response, PageError> {
    let draft = Draft::from(&posted);
    let result = match draft.submission() {
        Ok(submission) => {
            match policies::simulate(&console.gateway.app, &posted.session.actor, &submission).await
            {
                Ok(simulation) => Ok(simulation),
                Err(err) => {
                    let refusal = countersign_gateway::error::ApiError::from(err);
                    Err((refusal.field.clone().unwrap_or_default(), refusal.detail))
                }
            }
        }
        Err(error) => Err(error),
    };
    Ok(SimulationFragment::of(result).into_response())
}
