//! # Error policy
//!
//! `ApiError` is the only place anything becomes an HTTP error. Every error answers RFC 9457
//! `application/problem+json` with a stable machine-readable `code` (and `field` when one input
//! field is at fault); clients branch on `code`, never on `detail`.
//!
//! - Domain refusals keep the domain's code (`not_eligible`, `invalid_state`, …) with the status
//!   the domain error documents.
//! - Another tenant's resource answers exactly like a missing one: 404 with the same code.
//! - Bad input (malformed JSON, wrong types, unknown fields, bad ids, cursors, query parameters)
//!   answers 400 or 422 naming the field, and changes nothing.
//! - Infrastructure failures are logged with their full context and answered `internal` (500)
//!   without details; an optimistic-concurrency conflict that outlived the retries is `conflict`
//!   (409, retryable).

use aide::OperationOutput;
use aide::generate::GenContext;
use aide::openapi::{
    MediaType, Operation, Response as OpenApiResponse, SchemaObject, StatusCode as OpenApiStatus,
};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use countersign_app::AppError;
use countersign_domain::ParseError;
use countersign_domain::action::ActionError;
use countersign_domain::tenant::TenantError;
use countersign_ledger::LedgerError;
use countersign_projections::QueryError;
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Serialize;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Problem {
    /// A URI naming the problem type: `https://countersign.dev/problems/<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable, machine-readable.
    pub code: String,
    /// The offending input field, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub field: Option<String>,
    pub retry_after: Option<u32>,
    pub www_authenticate: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            field: None,
            retry_after: None,
            www_authenticate: false,
        }
    }

    #[must_use]
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        self.field = (!field.is_empty()).then_some(field);
        self
    }

    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            www_authenticate: true,
            ..Self::new(StatusCode::UNAUTHORIZED, code, detail)
        }
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn not_found(code: &'static str, what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, format!("{what} not found"))
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn invalid_input(error: ParseError) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            error.to_string(),
        )
        .with_field(error.field)
    }

    /// Logs the error with its context and answers without details.
    /// A failure of the store or another dependency: 503 `store_unavailable` with `Retry-After`
    /// when the store could not be reached (down, restarting, paused, out of connections) — the
    /// client may retry, nothing was recorded — else 500 `internal`. Both are logged whole.
    pub fn failure(error: &anyhow::Error) -> Self {
        if countersign_ledger::store_unreachable(error) {
            tracing::warn!(error = format!("{error:#}"), "the store is unreachable");
            return Self {
                retry_after: Some(1),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store cannot be reached right now; nothing was recorded, retry",
                )
            };
        }
        Self::internal(format!("{error:#}"))
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(error = %error, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; it has been logged",
        )
    }

    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("https://countersign.dev/problems/{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_owned(),
            field: self.field.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("countersign_http_errors_total", "code" => self.code).increment(1);
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.www_authenticate {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl OperationOutput for ApiError {
    type Inner = Problem;

    fn operation_response(
        ctx: &mut GenContext,
        _operation: &mut Operation,
    ) -> Option<OpenApiResponse> {
        Some(OpenApiResponse {
            description: "An RFC 9457 problem with a stable `code`.".into(),
            content: IndexMap::from_iter([(
                "application/problem+json".into(),
                MediaType {
                    schema: Some(SchemaObject {
                        json_schema: ctx.schema.subschema_for::<Problem>(),
                        example: None,
                        external_docs: None,
                    }),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        })
    }

    fn inferred_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<OpenApiStatus>, OpenApiResponse)> {
        Self::operation_response(ctx, operation)
            .map(|response| {
                [400, 401, 403, 404, 409, 422, 429, 500]
                    .into_iter()
                    .map(|status| (Some(OpenApiStatus::Code(status)), response.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl From<ActionError> for ApiError {
    fn from(error: ActionError) -> Self {
        let status = match &error {
            ActionError::InvalidInput(parse) => return Self::invalid_input(parse.clone()),
            ActionError::NotFound => StatusCode::NOT_FOUND,
            ActionError::NotEligible { .. }
            | ActionError::SelfApprovalForbidden
            | ActionError::NotPermitted { .. } => StatusCode::FORBIDDEN,
            ActionError::IdempotencyKeyReused
            | ActionError::BadSignature(_)
            | ActionError::SignatureOutOfWindow(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ActionError::AlreadySubmitted { .. }
            | ActionError::InvalidState { .. }
            | ActionError::DeadlineNotReached { .. }
            | ActionError::ExecutionNotRequested
            | ActionError::SafeModeOn
            | ActionError::AlreadyExecuting { .. }
            | ActionError::AlreadyExecuted
            | ActionError::StaleAttempt { .. }
            | ActionError::AlreadyRolledBack { .. }
            | ActionError::NothingToRollBack
            | ActionError::PayloadChanged { .. }
            | ActionError::AlreadyVotedInStage { .. } => StatusCode::CONFLICT,
        };
        Self::new(status, error.code(), error.to_string())
    }
}

impl From<TenantError> for ApiError {
    fn from(error: TenantError) -> Self {
        let status = match &error {
            TenantError::InvalidInput(parse) => return Self::invalid_input(parse.clone()),
            TenantError::PolicyNotFound(_)
            | TenantError::ApiKeyNotFound(_)
            | TenantError::WrongTenant => StatusCode::NOT_FOUND,
            TenantError::NotPermitted { .. } => StatusCode::FORBIDDEN,
            TenantError::PolicyExists(_)
            | TenantError::ApiKeyExists(_)
            | TenantError::StaleVersion { .. } => StatusCode::CONFLICT,
        };
        Self::new(status, error.code(), error.to_string())
    }
}

impl<E> From<LedgerError<E>> for ApiError
where
    E: std::error::Error + Into<ApiError>,
{
    fn from(error: LedgerError<E>) -> Self {
        match error {
            LedgerError::Rejected(error) => error.into(),
            LedgerError::Conflict { attempts } => Self {
                retry_after: Some(1),
                ..Self::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!(
                        "the resource kept changing during {attempts} attempts; nothing was recorded, retry"
                    ),
                )
            },
            LedgerError::Store(source) => Self::failure(&source.context("the event store failed")),
            LedgerError::Unreadable(detail) => {
                tracing::warn!(%detail, "a command's event would not read back; refused");
                Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unreadable_input",
                    format!("the request cannot be recorded: {detail}"),
                )
            }
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> Self {
        match error {
            QueryError::InvalidCursor => {
                Self::bad_request("invalid_cursor", "the cursor is not one this query issued")
                    .with_field("cursor")
            }
            QueryError::NotReady(projection) => Self {
                retry_after: Some(1),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_ready",
                    format!("the {projection} read model is still being built"),
                )
            },
            QueryError::Store(error) => Self::failure(&error),
        }
    }
}

/// The application's refusals keep their codes; internal failures are logged with their whole
/// cause chain and answered without details.
impl From<AppError> for ApiError {
    fn from(error: AppError) -> Self {
        match error {
            AppError::Forbidden(detail) => Self::forbidden(detail),
            AppError::NotFound { code, what } => Self::not_found(code, what),
            AppError::Action(error) => error.into(),
            AppError::Tenant(error) => error.into(),
            AppError::InvalidInput(error) => Self::invalid_input(error),
            AppError::Conflict { attempts } => {
                LedgerError::<ActionError>::Conflict { attempts }.into()
            }
            AppError::Unreadable(detail) => LedgerError::<ActionError>::Unreadable(detail).into(),
            AppError::Unavailable { code, message } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
            }
            AppError::CannotDo { code, message } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            AppError::NotYet { code, message } => Self::new(StatusCode::CONFLICT, code, message),
            AppError::NotCaughtUp => Self {
                retry_after: Some(1),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_caught_up",
                    "the read model has not reached that write yet; retry",
                )
            },
            AppError::CursorAhead => Self::bad_request(
                "consistency_token_ahead",
                "consistent_with names a write the log does not hold; send a token from X-Consistency-Token",
            )
            .with_field("consistent_with"),
            AppError::Query(error) => error.into(),
            internal @ AppError::Internal { .. } => Self::failure(&anyhow::Error::from(internal)),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        Self::failure(&error)
    }
}
