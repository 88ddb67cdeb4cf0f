//! Request and response plumbing shared by the handlers: strict JSON bodies and query strings,
//! the correlation id, consistency tokens, and replies with a status.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use aide::generate::GenContext;
use aide::openapi::{Operation, Response as OpenApiResponse, StatusCode as OpenApiStatus};
use aide::{OperationInput, OperationOutput};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use countersign_app::actions::{Submitted, Written};
use countersign_app::{Actor, Channel};
use countersign_domain::{ActionId, CorrelationId};
use countersign_ledger::LogCursor;
use countersign_projections::ActionDetail;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::auth::Caller;
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
/// would be rounded; see [`countersign_domain::document::scan`]). Where serde and the schema of
/// `T` (the OpenAPI document's) read JSON differently, the schema decides (see
/// `shape.rs`): an integer written with a zero fraction (`2.0`) is read as the integer, and
/// an array where an object goes is refused.
pub fn parse_json<T: DeserializeOwned + JsonSchema + 'static>(bytes: &[u8]) -> Result<T, ApiError> {
    let parsed = parse_strictly::<T>(bytes);
    let refused_for_types = matches!(&parsed, Err(error) if error.code == "invalid_input");
    // Without an array, nothing was read as an object that is not one; refused for anything
    // but its types (syntax, depth), the first answer stands.
    if (parsed.is_ok() && !bytes.contains(&b'[')) || !(parsed.is_ok() || refused_for_types) {
        return parsed;
    }
    // The scan's findings name the field with its place in the text: they stand too.
    if countersign_domain::document::scan(bytes).is_err() {
        return parsed;
    }
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return parsed;
    };
    let schema = schema_of::<T>();
    if let Some(path) = crate::shape::array_for_object(&value, &schema) {
        let detail = if path.is_empty() {
            "the body must be a JSON object, not an array".to_owned()
        } else {
            format!("{path}: must be an object, not an array")
        };
        return Err(
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", detail)
                .with_field(path),
        );
    }
    if parsed.is_ok() || !crate::shape::whole_numbers(&mut value, &schema) {
        return parsed;
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        json_error(path, err.inner())
    })
}

/// The JSON Schema of a body type, generated once per type.
fn schema_of<T: JsonSchema + 'static>() -> Arc<serde_json::Value> {
    static SCHEMAS: LazyLock<Mutex<HashMap<TypeId, Arc<serde_json::Value>>>> =
        LazyLock::new(Mutex::default);
    let mut schemas = SCHEMAS.lock().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(schemas.entry(TypeId::of::<T>()).or_insert_with(|| {
        Arc::new(
            schemars::SchemaGenerator::default()
                .into_root_schema_for::<T>()
                .to_value(),
        )
    }))
}

fn parse_strictly<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
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
    T: DeserializeOwned + JsonSchema + 'static,
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

    fn inferred_early_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<OpenApiStatus>, OpenApiResponse)> {
        body_problems(ctx, operation)
    }
}

/// What a JSON body can be refused with before its handler runs: 413 `body_too_large` and 415
/// `unsupported_media_type`, as the same problem document every other error is.
fn body_problems(
    ctx: &mut GenContext,
    operation: &mut Operation,
) -> Vec<(Option<OpenApiStatus>, OpenApiResponse)> {
    use aide::OperationOutput as _;
    ApiError::operation_response(ctx, operation)
        .map(|problem| {
            [413, 415]
                .into_iter()
                .map(|status| (Some(OpenApiStatus::Code(status)), problem.clone()))
                .collect()
        })
        .unwrap_or_default()
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

/// What `str::trim` removes (Unicode `White_Space`), as the inside of a regex class: spelled
/// out, since `\s` means different things in different regex dialects.
const TRIMMED_CLASS: &str = r"\t-\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// A regex (unanchored) for a comma list of `items`: at least one, whitespace around each
/// trimmed, as the list query parameters are read.
pub fn comma_list(items: &[&str]) -> String {
    let item = format!(
        "[{TRIMMED_CLASS}]*(?:{})[{TRIMMED_CLASS}]*",
        items.join("|")
    );
    format!("{item}(?:,{item})*")
}

/// The pattern of a query parameter that is a [`comma_list`] of `items`.
pub fn comma_list_pattern(items: &[&str]) -> String {
    format!("^{}$", comma_list(items))
}

/// Any string without U+0000, which no JSON body may carry (see `parse_json`).
pub const NO_NUL_PATTERN: &str = r"^[^\u0000]*$";

/// A page cursor is unpadded URL-safe base64 of what the query issued.
pub const CURSOR_PATTERN: &str = "^[A-Za-z0-9_-]+$";

/// Parses an action id from the path, answering 404 for anything that is not one (an id that
/// cannot exist is indistinguishable from a missing action).
pub fn action_id(raw: &str) -> Result<ActionId, ApiError> {
    // The hyphenated form only, as the schemas' `format: uuid` says (`Uuid::parse_str` would
    // also take the simple, braced and URN forms).
    if raw.len() != 36 {
        return Err(ApiError::not_found("action_not_found", "action"));
    }
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

/// The shape of a consistency token, for the schemas: `<digits>.<digits>`.
/// [`parse_consistency_token`] accepts exactly this shape (no sign, unlike `str::parse`).
pub const CONSISTENCY_TOKEN_PATTERN: &str = r"^[0-9]+\.[0-9]+$";

pub fn parse_consistency_token(token: &str) -> Result<LogCursor, ApiError> {
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    let Some((txid, position)) = token
        .split_once('.')
        .filter(|(txid, position)| digits(txid) && digits(position))
    else {
        return Err(ApiError::bad_request(
            "invalid_consistency_token",
            "consistent_with must be a token from X-Consistency-Token",
        )
        .with_field("consistent_with"));
    };
    match (txid.parse(), position.parse()) {
        (Ok(txid), Ok(position)) => Ok(LogCursor { txid, position }),
        // Well formed, but beyond any place in a log.
        _ => Err(token_ahead()),
    }
}

fn token_ahead() -> ApiError {
    ApiError::bad_request(
        "consistency_token_ahead",
        "consistent_with names a write the log does not hold; send a token from X-Consistency-Token",
    )
    .with_field("consistent_with")
}

/// The cursor a `consistent_with` token names, when one was sent.
pub fn consistent_with(token: Option<&str>) -> Result<Option<LogCursor>, ApiError> {
    token.map(parse_consistency_token).transpose()
}

impl ReadQuery {
    /// The write this read must reflect.
    pub fn cursor(&self) -> Result<Option<LogCursor>, ApiError> {
        consistent_with(self.consistent_with.as_deref())
    }
}

impl ActionPath {
    /// The action id, or 404 for anything that is not one.
    pub fn id(&self) -> Result<ActionId, ApiError> {
        action_id(&self.id)
    }
}

impl<T, const STATUS: u16> From<Written<T>> for Reply<T, STATUS> {
    fn from(written: Written<T>) -> Self {
        Reply::new(written.value).at(written.cursor)
    }
}

impl From<Submitted> for Created<ActionDetail> {
    fn from(submitted: Submitted) -> Self {
        match submitted {
            Submitted::New(written) => Self::New(written.into()),
            Submitted::Existing(written) => Self::Existing(written.into()),
        }
    }
}

/// The authenticated caller as the actor of a use case: through the API, with the request's id
/// and correlation id. Every `/v1` handler that acts takes it.
#[derive(Debug, Clone)]
pub struct Acting(pub Actor);

impl FromRequestParts<AppState> for Acting {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        Ok(Self(
            Actor::new(caller.tenant, caller.principal, Channel::Api)
                .with_request_id(caller.request_id)
                .with_correlation_id(correlation_id(&parts.headers)?),
        ))
    }
}

impl OperationInput for Acting {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        Caller::operation_input(ctx, operation);
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

/// 201 with a new resource, or 200 with the one an earlier identical request created (an
/// idempotent create); both are documented.
#[derive(Debug)]
pub enum Created<T> {
    New(Reply<T, 201>),
    Existing(Reply<T, 200>),
}

impl<T: Serialize> IntoResponse for Created<T> {
    fn into_response(self) -> Response {
        match self {
            Self::New(reply) => reply.into_response(),
            Self::Existing(reply) => reply.into_response(),
        }
    }
}

impl<T: JsonSchema> OperationOutput for Created<T> {
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
            .map(|response| {
                vec![
                    (Some(OpenApiStatus::Code(200)), response.clone()),
                    (Some(OpenApiStatus::Code(201)), response),
                ]
            })
            .unwrap_or_default()
    }
}

/// A JSON body that may be absent (an empty body means the type's default).
#[derive(Debug, Clone)]
pub struct OptionalJson<T>(pub T);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned + JsonSchema + Default + 'static,
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

    fn inferred_early_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<OpenApiStatus>, OpenApiResponse)> {
        body_problems(ctx, operation)
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

/// `{id}` of an action: a UUID (anything else answers 404, like a missing action).
#[derive(Debug, Clone, serde::Deserialize, JsonSchema)]
pub struct ActionPath {
    #[schemars(extend("format" = "uuid"))]
    pub id: String,
}

/// `?consistent_with=` alone, for reads served by a read model.
#[derive(Debug, Default, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// Wait until the read model reflects the write that returned this `X-Consistency-Token`.
    #[schemars(extend("pattern" = CONSISTENCY_TOKEN_PATTERN))]
    pub consistent_with: Option<String>,
}

/// `{key_id}` in a path.
#[derive(Debug, Clone, serde::Deserialize, JsonSchema)]
pub struct KeyPath {
    pub key_id: String,
}
