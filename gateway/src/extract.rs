//! Request and response plumbing shared by the handlers: strict JSON bodies and query strings,
//! the correlation id, consistency tokens, and replies with a status.

use std::time::Duration;

use aide::generate::GenContext;
use aide::openapi::{Operation, Response as OpenApiResponse, StatusCode as OpenApiStatus};
use aide::{OperationInput, OperationOutput};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use countersign_domain::{ActionId, CorrelationId};
use countersign_ledger::LogCursor;
use countersign_projections::Projection;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::ApiError;

pub static CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
pub static CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("x-consistency-token");

/// A JSON body parsed strictly: unknown fields and wrong types are refused naming the field.
#[derive(Debug, Clone)]
pub struct StrictJson<T>(pub T);

fn json_error(path: String, error: &serde_json::Error) -> ApiError {
    let field = if path == "." { String::new() } else { path };
    if error.to_string().starts_with("recursion limit exceeded") {
        // Deeper than the parser goes: far beyond the documents' limit. Name the top field, not
        // a path of a hundred `[0]`s.
        let top = field
            .split(['.', '['])
            .next()
            .unwrap_or_default()
            .to_owned();
        return ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            format!(
                "{top}: nests deeper than {} levels",
                countersign_domain::document::MAX_DEPTH
            ),
        )
        .with_field(top);
    }
    let (status, code) = match error.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            (StatusCode::BAD_REQUEST, "malformed_json")
        }
        _ => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
    };
    let detail = if field.is_empty() {
        error.to_string()
    } else {
        format!("{field}: {error}")
    };
    ApiError::new(status, code, detail).with_field(field)
}

/// Parses JSON bytes into `T`, naming the path of the first offending field. Bytes that parse
/// are also scanned for what a parsed value hides (duplicate keys, `\u0000`, numbers that
/// would be rounded; see [`countersign_domain::document::scan`]).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|err| {
            let path = err.path().to_string();
            json_error(path, err.inner())
        })
        .and_then(|value| {
            deserializer
                .end()
                .map_err(|err| json_error(String::new(), &err))?;
            Ok(value)
        });
    // A syntax error is the parser's to name; anything else waits for the scan, which names
    // hostile bytes more precisely than a type error they caused.
    if let Err(error) = &parsed
        && error.code == "malformed_json"
    {
        return parsed;
    }
    countersign_domain::document::scan(bytes).map_err(ApiError::invalid_input)?;
    parsed
}

impl<T, S> FromRequest<S> for StrictJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/json") || value.contains("+json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "the request body is larger than this service accepts",
                    )
                } else {
                    ApiError::bad_request("unreadable_body", rejection.body_text())
                }
            })?;
        parse_json(&bytes).map(Self)
    }
}

impl<T: JsonSchema> OperationInput for StrictJson<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        axum::Json::<T>::operation_input(ctx, operation);
    }
}

/// A query string parsed strictly, naming the offending parameter.
#[derive(Debug, Clone)]
pub struct StrictQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for StrictQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Self)
            .map_err(|err| {
                let path = err.path().to_string();
                ApiError::bad_request("invalid_query", format!("{path}: {}", err.inner()))
                    .with_field(path)
            })
    }
}

impl<T: JsonSchema> OperationInput for StrictQuery<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        axum::extract::Query::<T>::operation_input(ctx, operation);
    }
}

/// Parses an action id from the path, answering 404 for anything that is not one (an id that
/// cannot exist is indistinguishable from a missing action).
pub fn action_id(raw: &str) -> Result<ActionId, ApiError> {
    ActionId::parse(raw).map_err(|_| ApiError::not_found("action_not_found", "action"))
}

/// The request's correlation id: `X-Correlation-Id` when valid, else the request id generated
/// for this request.
pub fn correlation_id(headers: &HeaderMap) -> Result<Option<CorrelationId>, ApiError> {
    let given = headers
        .get(&CORRELATION_ID)
        .or_else(|| headers.get("x-request-id"));
    match given.map(|value| value.to_str()) {
        None => Ok(None),
        Some(Ok(value)) => CorrelationId::parse(value).map(Some).map_err(|err| {
            ApiError::bad_request(
                "invalid_header",
                format!("X-Correlation-Id: {}", err.message),
            )
            .with_field("X-Correlation-Id")
        }),
        Some(Err(_)) => Err(ApiError::bad_request(
            "invalid_header",
            "X-Correlation-Id must be printable ASCII",
        )
        .with_field("X-Correlation-Id")),
    }
}

/// `<txid>.<position>`: where a write landed in the log. Reads that pass it as `consistent_with`
/// wait until the read model has reached it.
pub fn consistency_token(cursor: LogCursor) -> String {
    format!("{}.{}", cursor.txid, cursor.position)
}

pub fn parse_consistency_token(token: &str) -> Result<LogCursor, ApiError> {
    let (txid, position) = token
        .split_once('.')
        .and_then(|(txid, position)| Some((txid.parse().ok()?, position.parse().ok()?)))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_consistency_token",
                "consistent_with must be a token from X-Consistency-Token",
            )
            .with_field("consistent_with")
        })?;
    Ok(LogCursor { txid, position })
}

/// Refuses a token for a write the log does not hold: one above the readable head of the log
/// that is not the place of a stored event (on PostgreSQL a committed write can be briefly above
/// the readable head while an older transaction is still open). Waiting for it could only end
/// in `not_caught_up`, so it is refused at once.
async fn require_written(state: &AppState, wanted: LogCursor) -> Result<(), ApiError> {
    if wanted <= state.ledger.log_head().await? {
        return Ok(());
    }
    let stored = state.ledger.read_positions(&[wanted.position]).await?;
    if stored.iter().any(|event| event.cursor >= wanted) {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "consistency_token_ahead",
        "consistent_with names a write the log does not hold; send a token from X-Consistency-Token",
    )
    .with_field("consistent_with"))
}

/// Waits (up to 5 s) until `projection`'s live generation has reached `token`; a token for a
/// write the log does not hold is refused at once.
pub async fn wait_for(
    state: &AppState,
    projection: Projection,
    token: Option<&str>,
) -> Result<(), ApiError> {
    let Some(token) = token else { return Ok(()) };
    let wanted = parse_consistency_token(token)?;
    require_written(state, wanted).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reached = state
            .projections
            .live_checkpoint(projection)
            .await?
            .is_some_and(|checkpoint| checkpoint >= wanted);
        if reached {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_caught_up",
                    "the read model has not reached that write yet; retry",
                )
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A JSON reply with a status code and an optional consistency token header.
#[derive(Debug)]
pub struct Reply<T, const STATUS: u16 = 200> {
    pub body: T,
    pub token: Option<LogCursor>,
    pub no_store: bool,
}

impl<T, const STATUS: u16> Reply<T, STATUS> {
    pub fn new(body: T) -> Self {
        Self {
            body,
            token: None,
            no_store: false,
        }
    }

    #[must_use]
    pub fn at(mut self, cursor: Option<LogCursor>) -> Self {
        self.token = cursor;
        self
    }

    /// `Cache-Control: no-store` (admin endpoints).
    #[must_use]
    pub fn no_store(mut self) -> Self {
        self.no_store = true;
        self
    }
}

impl<T: Serialize, const STATUS: u16> IntoResponse for Reply<T, STATUS> {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(STATUS).unwrap_or(StatusCode::OK);
        let mut response = (status, axum::Json(self.body)).into_response();
        if let Some(cursor) = self.token
            && let Ok(value) = HeaderValue::from_str(&consistency_token(cursor))
        {
            response
                .headers_mut()
                .insert(CONSISTENCY_TOKEN.clone(), value);
        }
        if self.no_store {
            response.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
        }
        response
    }
}

impl<T: JsonSchema, const STATUS: u16> OperationOutput for Reply<T, STATUS> {
    type Inner = T;

    fn operation_response(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Option<OpenApiResponse> {
        axum::Json::<T>::operation_response(ctx, operation)
    }

    fn inferred_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<OpenApiStatus>, OpenApiResponse)> {
        Self::operation_response(ctx, operation)
            .map(|response| vec![(Some(OpenApiStatus::Code(STATUS)), response)])
            .unwrap_or_default()
    }
}

/// A JSON body that may be absent (an empty body means the type's default).
#[derive(Debug, Clone)]
pub struct OptionalJson<T>(pub T);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let has_body = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|length| length != "0")
            || request
                .headers()
                .contains_key(axum::http::header::CONTENT_TYPE);
        if !has_body {
            return Ok(Self(T::default()));
        }
        StrictJson::<T>::from_request(request, state)
            .await
            .map(|StrictJson(value)| Self(value))
    }
}

impl<T: JsonSchema> OperationInput for OptionalJson<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        axum::Json::<T>::operation_input(ctx, operation);
        if let Some(aide::openapi::ReferenceOr::Item(body)) = operation.request_body.as_mut() {
            body.required = false;
        }
    }
}

/// A server-sent event stream.
pub struct EventStream<S>(pub axum::response::sse::Sse<S>);

impl<S> std::fmt::Debug for EventStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStream")
    }
}

impl<S> IntoResponse for EventStream<S>
where
    S: futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>
        + Send
        + 'static,
{
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl<S> OperationOutput for EventStream<S> {
    type Inner = String;

    fn operation_response(
        _ctx: &mut GenContext,
        _operation: &mut Operation,
    ) -> Option<OpenApiResponse> {
        Some(OpenApiResponse {
            description: "text/event-stream: `status` first, then one event per change, named by its event type.".into(),
            content: indexmap::IndexMap::from_iter([("text/event-stream".into(), aide::openapi::MediaType::default())]),
            ..Default::default()
        })
    }

    fn inferred_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<OpenApiStatus>, OpenApiResponse)> {
        Self::operation_response(ctx, operation)
            .map(|response| vec![(Some(OpenApiStatus::Code(200)), response)])
            .unwrap_or_default()
    }
}

/// `{id}` in a path.
#[derive(Debug, Clone, serde::Deserialize, JsonSchema)]
pub struct IdPath {
    pub id: String,
}

/// `{key_id}` in a path.
#[derive(Debug, Clone, serde::Deserialize, JsonSchema)]
pub struct KeyPath {
    pub key_id: String,
}
