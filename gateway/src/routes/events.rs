//! `POST /v1/events`: the HTTP intake of domain events (CloudEvents 1.0, JSON format), one or a
//! batch, for a credential holding the `publisher` role (or owner, admin). Every event of a
//! batch is checked before any is recorded; an event id the tenant sent before is accepted and
//! ignored (`duplicate`).

use aide::axum::ApiRouter;
use aide::axum::routing::post;
use axum::extract::State;
use countersign_app::workflows::{self, Receipt};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Acting, Reply, StrictJson};

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new().api_route("/v1/events", post(publish))
}

/// One CloudEvent, or an array of 1 to 100.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct EventsBody(pub serde_json::Value);

impl JsonSchema for EventsBody {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EventsBody".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let event = generator.subschema_for::<countersign_domain::workflow::CloudEvent>();
        json_schema!({
            "oneOf": [
                event,
                { "type": "array", "items": event, "minItems": 1, "maxItems": workflows::MAX_BATCH },
            ]
        })
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Receipts {
    pub events: Vec<Receipt>,
}

/// Publish domain events (publisher, owner, admin). A malformed event answers 422
/// `invalid_input` naming its field (`[2].type` in a batch) and records nothing.
async fn publish(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictJson(EventsBody(body)): StrictJson<EventsBody>,
) -> Result<Reply<Receipts, 202>, ApiError> {
    let events = workflows::publish(&state.app, &actor, &body, "http").await?;
    Ok(Reply::new(Receipts { events }).no_store())
}
