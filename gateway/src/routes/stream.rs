//! `/v1/stream`: the tenant-wide server-sent event stream the console stays live with.

use std::convert::Infallible;
use std::time::Duration;

use aide::axum::ApiRouter;
use aide::axum::routing::get_with;
use aide::generate::GenContext;
use aide::openapi::{
    HeaderStyle, MediaType, Operation, Parameter, ParameterData, ParameterSchemaOrContent,
    ReferenceOr, Response as OpenApiResponse, SchemaObject, StatusCode as OpenApiStatus,
};
use aide::{OperationInput, OperationOutput};
use axum::extract::{FromRequestParts, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::AppState;
use crate::auth::CredentialWatch;
use crate::error::ApiError;
use crate::extract::{Acting, StrictQuery};
use crate::stream::{TenantStream, invalid_resume_point};

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new().api_route(
        "/v1/stream",
        get_with(stream, |op| {
            op.summary("The tenant's live events").description(
                "Server-sent events of everything in the caller's tenant they may see: each event \
                 of the actions they may read and the tenant's settings changes, in log order. \
                 `ready` comes first; then each event's `event:` is its type, its `id:` its log \
                 cursor (`<txid>.<position>`), its `data:` a JSON summary (see docs/api.md). \
                 Resume with `Last-Event-ID` (or `?after=`): the events logged since are \
                 replayed, none twice. Ends with a `closed` event (a problem document) once the \
                 credential stops authenticating.",
            )
        }),
    )
}

/// The shape of a resume point, for the schemas.
const RESUME_PATTERN: &str = r"^[0-9]+\.[0-9]+$";

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Replay the events after this `id` of the stream (`Last-Event-ID` wins when both are sent).
    #[schemars(extend("pattern" = RESUME_PATTERN))]
    pub after: Option<String>,
}

/// The `Last-Event-ID` header, when sent (a value that is not text is refused like a malformed
/// one).
#[derive(Debug)]
pub struct LastEventId(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for LastEventId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts
            .headers
            .get("last-event-id")
            .map(|value| value.to_str())
        {
            None => Ok(Self(None)),
            Some(Ok(value)) => Ok(Self(Some(value.to_owned()))),
            Some(Err(_)) => Err(invalid_resume_point()),
        }
    }
}

impl OperationInput for LastEventId {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        let mut schema = ctx.schema.subschema_for::<String>();
        schema.insert("pattern".into(), RESUME_PATTERN.into());
        operation
            .parameters
            .push(ReferenceOr::Item(Parameter::Header {
                parameter_data: ParameterData {
                    name: "Last-Event-ID".into(),
                    description: Some(
                        "Replay the events after this `id` of the stream (sent by browsers when \
                         they reconnect)."
                            .into(),
                    ),
                    required: false,
                    deprecated: None,
                    format: ParameterSchemaOrContent::Schema(SchemaObject {
                        json_schema: schema,
                        external_docs: None,
                        example: None,
                    }),
                    example: None,
                    examples: indexmap::IndexMap::default(),
                    explode: None,
                    extensions: indexmap::IndexMap::default(),
                },
                style: HeaderStyle::Simple,
            }));
    }
}

/// The tenant's event stream as a response.
pub struct TenantEvents<S>(Sse<S>);

impl<S> std::fmt::Debug for TenantEvents<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TenantEvents")
    }
}

impl<S> IntoResponse for TenantEvents<S>
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl<S> OperationOutput for TenantEvents<S> {
    type Inner = String;

    fn operation_response(
        _ctx: &mut GenContext,
        _operation: &mut Operation,
    ) -> Option<OpenApiResponse> {
        Some(OpenApiResponse {
            description: "text/event-stream: `ready` first, then one event per logged event the \
                          caller may see, named by its type, with its log cursor as `id`."
                .into(),
            content: indexmap::IndexMap::from_iter([(
                "text/event-stream".into(),
                MediaType::default(),
            )]),
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

/// Everything of the caller's tenant they may see, live, resumable from `Last-Event-ID`.
async fn stream(
    State(state): State<AppState>,
    Acting(actor): Acting,
    headers: HeaderMap,
    LastEventId(last_event_id): LastEventId,
    StrictQuery(query): StrictQuery<StreamQuery>,
) -> Result<TenantEvents<impl Stream<Item = Result<Event, Infallible>> + Send + 'static>, ApiError>
{
    let resume = last_event_id.or(query.after);
    let credential = CredentialWatch::new(&state, &headers);
    let subscription = TenantStream::open(&state, &actor, resume.as_deref(), credential).await?;
    Ok(TenantEvents(
        Sse::new(subscription.into_stream())
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    ))
}
