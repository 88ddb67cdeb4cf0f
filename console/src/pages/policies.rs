//! Policies: the list, create and edit as JSON (a refusal names the offending field and marks
//! it), delete, and simulate a sample submission against the policies in force.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use countersign_app::AppError;
use countersign_app::policies;
use countersign_domain::PolicyId;
use countersign_domain::submission::Submission;
use countersign_domain::tenant::PolicyDraft;
use countersign_gateway::error::ApiError;
use serde::Deserialize;

use crate::Console;
use crate::error::PageError;
use crate::pages::request::SimulationFragment;
use crate::session::{Posted, Session};
use crate::view::{self, Layout};

#[derive(Debug)]
pub struct PolicyRow {
    pub id: String,
    pub name: String,
    pub priority: i32,
    pub version: u32,
    pub criteria: String,
    pub stages: usize,
}

#[derive(Template, WebTemplate)]
#[template(path = "policies.html")]
struct ListPage {
    layout: Layout,
    policies: Vec<PolicyRow>,
    sample: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct NoticeQuery {
    notice: Option<String>,
}

impl NoticeQuery {
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }
}

const SAMPLE: &str = r#"{
  "module": "billing",
  "capability": "refund",
  "summary": "Refund order 1042",
  "payload": {"order": 1042, "amount": 125}
}"#;

const NEW_DRAFT: &str = r#"{
  "name": "Large refunds",
  "priority": 10,
  "criteria": {"module": "billing", "payload.amount": {"$gte": 1000}},
  "requirements": {
    "stages": [{"name": "finance", "rules": [{"type": "role", "role": "finance_ops", "min_approvals": 2}]}],
    "timeout_seconds": 86400
  }
}"#;

/// `GET /policies`.
pub async fn list(
    State(console): State<Console>,
    session: Session,
    Query(query): Query<NoticeQuery>,
) -> Result<Response, PageError> {
    let layout = Layout::new(&console, &session, "policies")
        .await?
        .with_notice(query.notice.as_deref());
    let policies = policies::list(&console.gateway.app, &session.actor, None).await?;
    let mut rows: Vec<PolicyRow> = policies
        .into_iter()
        .map(|policy| PolicyRow {
            id: policy.id.to_string(),
            name: policy.name,
            priority: policy.priority,
            version: policy.version,
            criteria: serde_json::to_string(&policy.criteria).unwrap_or_default(),
            stages: policy.requirements.stages.as_slice().len(),
        })
        .collect();
    rows.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
    Ok(ListPage {
        layout,
        policies: rows,
        sample: SAMPLE.to_owned(),
    }
    .into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "policy_edit.html")]
struct EditPage {
    layout: Layout,
    /// Empty for a new policy.
    existing: String,
    id: String,
    version: String,
    document: String,
    error: Option<(String, String)>,
}

/// `GET /policies/new`.
pub async fn new(State(console): State<Console>, session: Session) -> Result<Response, PageError> {
    let layout = Layout::new(&console, &session, "policies").await?;
    Ok(EditPage {
        layout,
        existing: String::new(),
        id: String::new(),
        version: String::new(),
        document: NEW_DRAFT.to_owned(),
        error: None,
    }
    .into_response())
}

fn policy_id(raw: &str) -> Result<PolicyId, PageError> {
    PolicyId::parse(raw)
        .map_err(|_| PageError::from(AppError::not_found("policy_not_found", "policy")))
}

/// `GET /policies/{id}`: the policy's editable fields as JSON.
pub async fn edit(
    State(console): State<Console>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let id = policy_id(&id)?;
    let layout = Layout::new(&console, &session, "policies").await?;
    let policy = policies::read(&console.gateway.app, &session.actor, &id).await?;
    let draft = PolicyDraft {
        name: policy.name.clone(),
        priority: policy.priority,
        criteria: policy.criteria.clone(),
        requirements: policy.requirements.clone(),
    };
    Ok(EditPage {
        layout,
        existing: id.to_string(),
        id: id.to_string(),
        version: policy.version.to_string(),
        document: view::pretty(&draft),
        error: None,
    }
    .into_response())
}

/// The draft in the form, or the refusal naming its field.
fn draft(posted: &Posted) -> Result<PolicyDraft, (String, String)> {
    let document = posted.get("document").unwrap_or_default();
    let draft = countersign_gateway::extract::parse_json::<PolicyDraft>(document.as_bytes())
        .map_err(|err: ApiError| (err.field.clone().unwrap_or_default(), err.detail))?;
    draft
        .check()
        .map_err(|err| (err.field.clone(), err.to_string()))?;
    Ok(draft)
}

async fn refused(
    console: &Console,
    posted: &Posted,
    existing: String,
    error: (String, String),
) -> Result<Response, PageError> {
    let layout = Layout::new(console, &posted.session, "policies").await?;
    Ok((
        StatusCode::UNPROCESSABLE_ENTITY,
        EditPage {
            layout,
            existing,
            id: posted.get("id").unwrap_or_default().to_owned(),
            version: posted.get("version").unwrap_or_default().to_owned(),
            document: posted.get("document").unwrap_or_default().to_owned(),
            error: Some(error),
        },
    )
        .into_response())
}

fn app_refusal(err: AppError) -> Result<(String, String), PageError> {
    match err {
        err @ (AppError::Forbidden(_) | AppError::Internal { .. }) => Err(err.into()),
        err => {
            let refusal = ApiError::from(err);
            Ok((
                refusal.field.clone().unwrap_or_default(),
                format!("{} ({})", refusal.detail, refusal.code),
            ))
        }
    }
}

/// `POST /policies`: creates a policy.
pub async fn create(State(console): State<Console>, posted: Posted) -> Result<Response, PageError> {
    let id = match PolicyId::parse(posted.get("id").unwrap_or_default()) {
        Ok(id) => id,
        Err(err) => {
            return refused(
                &console,
                &posted,
                String::new(),
                ("id".into(), err.to_string()),
            )
            .await;
        }
    };
    let draft = match draft(&posted) {
        Ok(draft) => draft,
        Err(error) => return refused(&console, &posted, String::new(), error).await,
    };
    match policies::create(&console.gateway.app, &posted.session.actor, id, draft).await {
        Ok(_) => Ok(Redirect::to("/policies?notice=policy").into_response()),
        Err(err) => {
            let error = app_refusal(err)?;
            refused(&console, &posted, String::new(), error).await
        }
    }
}

/// `POST /policies/{id}`: replaces a policy's fields (refused when someone changed it since
/// the form was rendered).
pub async fn update(
    State(console): State<Console>,
    Path(id): Path<String>,
    posted: Posted,
) -> Result<Response, PageError> {
    let id = policy_id(&id)?;
    let draft = match draft(&posted) {
        Ok(draft) => draft,
        Err(error) => return refused(&console, &posted, id.to_string(), error).await,
    };
    let version = posted.get("version").and_then(|raw| raw.parse().ok());
    match policies::update(
        &console.gateway.app,
        &posted.session.actor,
        id.clone(),
        draft,
        version,
    )
    .await
    {
        Ok(_) => Ok(Redirect::to("/policies?notice=policy").into_response()),
        Err(err) => {
            let error = app_refusal(err)?;
            refused(&console, &posted, id.to_string(), error).await
        }
    }
}

/// `POST /policies/{id}/delete`.
pub async fn delete(
    State(console): State<Console>,
    Path(id): Path<String>,
    posted: Posted,
) -> Result<Response, PageError> {
    let id = policy_id(&id)?;
    policies::delete(&console.gateway.app, &posted.session.actor, id).await?;
    Ok(Redirect::to("/policies?notice=policy_deleted").into_response())
}

/// `POST /policies/simulate`: which policy, risk and requirements a sample submission gets.
pub async fn simulate(
    State(console): State<Console>,
    posted: Posted,
) -> Result<Response, PageError> {
    let sample = posted.get("sample").unwrap_or_default();
    let result = match countersign_gateway::extract::parse_json::<Submission>(sample.as_bytes()) {
        Ok(submission) => {
            policies::simulate(&console.gateway.app, &posted.session.actor, &submission)
                .await
                .map_err(|err| {
                    let refusal = ApiError::from(err);
                    (refusal.field.clone().unwrap_or_default(), refusal.detail)
                })
        }
        Err(err) => Err((err.field.clone().unwrap_or_default(), err.detail)),
    };
    Ok(SimulationFragment::of(result).into_response())
}
