//! How a page refuses: a person who is not signed in goes to the sign-in page; every other
//! refusal renders an error page with the status and the stable code the `/v1` API would answer
//! (the gateway's `ApiError` mapping, so the two front doors never disagree), and changes
//! nothing. Internal failures are logged there and shown without details.

use askama::Template;
use askama_web::WebTemplate;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use countersign_app::AppError;
use countersign_gateway::error::ApiError;

use crate::assets::{Assets, paths};

#[derive(Debug)]
pub enum PageError {
    /// No session, or its credential no longer authenticates.
    SignIn { reason: Option<String> },
    /// Any other refusal.
    Refused {
        status: StatusCode,
        code: &'static str,
        detail: String,
    },
}

impl PageError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self::Refused {
            status,
            code: "refused",
            detail: detail.into(),
        }
    }

    pub fn csrf() -> Self {
        Self::Refused {
            status: StatusCode::FORBIDDEN,
            code: "csrf_token_invalid",
            detail: "This form's security token is missing or belongs to another session. \
                     Nothing was recorded; reload the page and try again."
                .into(),
        }
    }
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        Self::Refused {
            status: error.status,
            code: error.code,
            detail: error.detail,
        }
    }
}

impl From<AppError> for PageError {
    fn from(error: AppError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<countersign_gateway::rate_limit::RateLimited> for PageError {
    fn from(limited: countersign_gateway::rate_limit::RateLimited) -> Self {
        ApiError::from(limited).into()
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "error.html")]
struct ErrorPage {
    assets: Assets,
    status: u16,
    title: String,
    code: &'static str,
    detail: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            Self::SignIn { reason } => {
                let target = if reason.is_some() {
                    "/sign-in?ended=1"
                } else {
                    "/sign-in"
                };
                let mut response = Redirect::to(target).into_response();
                // htmx follows a redirect inside the fragment it asked for; this makes it
                // navigate the whole page instead.
                response
                    .headers_mut()
                    .insert("hx-redirect", HeaderValue::from_static("/sign-in"));
                response
            }
            Self::Refused {
                status,
                code,
                detail,
            } => {
                let page = ErrorPage {
                    assets: paths(),
                    status: status.as_u16(),
                    title: status.canonical_reason().unwrap_or("Error").to_owned(),
                    code,
                    detail,
                };
                let mut response = (status, page).into_response();
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
        }
    }
}
