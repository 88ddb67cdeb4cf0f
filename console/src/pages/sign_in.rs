//! Signing in and out. `GET /sign-in?token=…` only fills the form in (a GET never signs anyone
//! in); `POST /sign-in` verifies the credential exactly as `/v1` would and sets the session
//! cookie, living no longer than the credential.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::Cookie;
use serde::Deserialize;

use crate::Console;
use crate::assets::{Assets, paths};
use crate::error::PageError;
use crate::session::{
    Posted, SESSION_COOKIE, SIGN_IN_COOKIE, authenticate, cookie, field, lifetime, over_tls,
    read_fields,
};

#[derive(Template, WebTemplate)]
#[template(path = "sign_in.html")]
struct SignInPage {
    assets: Assets,
    csrf: String,
    credential: String,
    error: Option<String>,
    ended: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct SignInQuery {
    token: Option<String>,
    ended: Option<String>,
}

/// A fresh sign-in form, bound to a new pre-session cookie.
fn form_response(
    console: &Console,
    headers: &HeaderMap,
    status: StatusCode,
    credential: String,
    error: Option<String>,
    ended: bool,
) -> Response {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let page = SignInPage {
        assets: paths(),
        csrf: console.keys.csrf_token(&format!("sign-in:{nonce}")),
        credential,
        error,
        ended,
    };
    let jar = console
        .keys
        .jar(headers)
        .add(cookie(SIGN_IN_COOKIE, nonce, 3600, over_tls(headers)));
    (status, jar, page).into_response()
}

/// `GET /sign-in`.
pub async fn form(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(query): Query<SignInQuery>,
) -> Response {
    form_response(
        &console,
        &headers,
        StatusCode::OK,
        query.token.unwrap_or_default(),
        None,
        query.ended.is_some(),
    )
}

/// `POST /sign-in`: verifies the credential and starts a session.
pub async fn submit(State(console): State<Console>, request: Request) -> Response {
    let headers = request.headers().clone();
    let fields = match read_fields(request).await {
        Ok(fields) => fields,
        Err(refusal) => return refusal.into_response(),
    };
    let jar = console.keys.jar(&headers);
    let nonce = jar
        .get(SIGN_IN_COOKIE)
        .map(|cookie| cookie.value().to_owned())
        .unwrap_or_default();
    let token = field(&fields, "csrf").unwrap_or_default();
    if nonce.is_empty()
        || !console
            .keys
            .csrf_matches(&format!("sign-in:{nonce}"), token)
    {
        return PageError::csrf().into_response();
    }
    let credential = field(&fields, "credential").unwrap_or_default().to_owned();
    if credential.is_empty() {
        return form_response(
            &console,
            &headers,
            StatusCode::UNPROCESSABLE_ENTITY,
            String::new(),
            Some("Paste a token or an API key.".into()),
            false,
        );
    }
    match authenticate(&console, &credential).await {
        Ok(caller) => {
            tracing::info!(
                tenant = %caller.tenant,
                principal = %caller.principal.id,
                "console: signed in"
            );
            let seconds = lifetime(&credential);
            let jar = jar
                .remove(Cookie::build(SIGN_IN_COOKIE).path("/"))
                .add(cookie(
                    SESSION_COOKIE,
                    credential,
                    seconds,
                    over_tls(&headers),
                ));
            (jar, Redirect::to("/inbox")).into_response()
        }
        Err(refusal) => form_response(
            &console,
            &headers,
            StatusCode::UNAUTHORIZED,
            String::new(),
            Some(format!(
                "Signing in failed: {} ({})",
                refusal.detail, refusal.code
            )),
            false,
        ),
    }
}

/// `POST /sign-out`: ends the session (the form carries the session's CSRF token).
pub async fn sign_out(
    State(console): State<Console>,
    headers: HeaderMap,
    posted: Posted,
) -> Response {
    tracing::info!(
        tenant = %posted.session.actor.tenant,
        principal = %posted.session.actor.principal.id,
        "console: signed out"
    );
    let jar = console
        .keys
        .jar(&headers)
        .remove(Cookie::build(SESSION_COOKIE).path("/"));
    (jar, Redirect::to("/sign-in")).into_response()
}
