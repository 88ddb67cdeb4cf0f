//! The example provider's handler (also run by `tests/capabilities.rs`): one task answering the
//! requests on `countersign.capability.<module>.*`. It serves `<module>.reserve`:
//!
//! - `{"sku": "widget", "quantity": 3}` reserves stock, reporting progress, and answers the undo
//!   payload `{"release": "<reservation>"}`: a rollback runs that payload through the same
//!   capability, which releases the reservation.
//! - Both are idempotent by execution key: a retried or repeated request finds its reservation
//!   (or its release) done and answers it again, never reserving twice.
//! - `preview` says what `execute` would do and changes nothing.
//!
//! The stock lives in memory, so this runs as one instance; a real provider keeps its
//! reservations keyed by execution key in its own database, and may then run several instances
//! in a queue group.

use std::collections::HashMap;

use async_nats::{Client, Subscriber};
use countersign_executor::external::{CapabilityReply, CapabilityRequest};
use futures::StreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::{info, warn};

/// What every SKU starts with.
pub const INITIAL_STOCK: u64 = 100;

/// The subjects of the module's capabilities.
pub fn subject(module: &str) -> String {
    format!("countersign.capability.{module}.*")
}

pub async fn subscribe(client: &Client, module: &str) -> anyhow::Result<Subscriber> {
    client
        .subscribe(subject(module))
        .await
        .map_err(|err| anyhow::anyhow!("subscribing to {}: {err}", subject(module)))
}

/// Answers the requests one at a time until the subscription ends.
pub async fn serve(client: Client, mut requests: Subscriber) -> anyhow::Result<()> {
    let mut inventory = Inventory::default();
    while let Some(message) = requests.next().await {
        let Some(reply_to) = message.reply else {
            warn!(subject = %message.subject, "a message without a reply subject: ignored");
            continue;
        };
        let reply = match serde_json::from_slice::<CapabilityRequest>(&message.payload) {
            Ok(request) => inventory.handle(&client, &request).await,
            Err(err) => refuse(format!("not a capability request: {err}")),
        };
        client
            .publish(reply_to, serde_json::to_vec(&reply)?.into())
            .await
            .map_err(|err| anyhow::anyhow!("replying: {err}"))?;
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reserve {
    sku: String,
    quantity: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Release {
    release: String,
}

#[derive(Debug, Clone)]
struct Reservation {
    sku: String,
    quantity: u64,
    released: bool,
}

#[derive(Debug, Default)]
struct Inventory {
    /// Reserved quantity per SKU.
    reserved: HashMap<String, u64>,
    /// Reservations by id; an id derives from the execution key that made it.
    reservations: HashMap<String, Reservation>,
}

/// A failure that trying again cannot fix.
fn refuse(error: String) -> CapabilityReply {
    CapabilityReply::failed(error, false)
}

fn parse<T: DeserializeOwned>(payload: &Value) -> Result<T, CapabilityReply> {
    serde_json::from_value(payload.clone()).map_err(|err| refuse(format!("payload: {err}")))
}

impl Inventory {
    fn available(&self, sku: &str) -> u64 {
        INITIAL_STOCK.saturating_sub(self.reserved.get(sku).copied().unwrap_or(0))
    }

    async fn handle(&mut self, client: &Client, request: &CapabilityRequest) -> CapabilityReply {
        info!(
            operation = request.operation,
            action_type = request.action_type,
            action_id = request.action_id,
            attempt = request.attempt,
            "request"
        );
        let capability = request
            .action_type
            .split_once('.')
            .map_or("", |(_, capability)| capability);
        if capability != "reserve" {
            return refuse(format!("{} is not served here", request.action_type));
        }
        let execute = match request.operation.as_str() {
            "execute" => true,
            "preview" => false,
            other => return refuse(format!("unknown operation {other}")),
        };
        let outcome = if request.payload.get("release").is_some() {
            parse::<Release>(&request.payload).map(|release| {
                if execute {
                    self.release(&release.release)
                } else {
                    self.preview_release(&release.release)
                }
            })
        } else {
            match parse::<Reserve>(&request.payload) {
                Ok(reserve) if execute => Ok(self.reserve(client, request, reserve).await),
                Ok(reserve) => Ok(self.preview_reserve(&reserve)),
                Err(refused) => Err(refused),
            }
        };
        outcome.unwrap_or_else(|refused| refused)
    }

    async fn reserve(
        &mut self,
        client: &Client,
        request: &CapabilityRequest,
        reserve: Reserve,
    ) -> CapabilityReply {
        let id = format!(
            "rsv-{}",
            request
                .execution_key
                .get(..16)
                .unwrap_or(&request.execution_key)
        );
        if let Some(done) = self.reservations.get(&id) {
            // A retry after a lost reply, or a repeat: the reservation exists, answer it again.
            return CapabilityReply::succeeded(
                json!({ "reservation": id, "sku": done.sku, "quantity": done.quantity, "repeated": true }),
                Some(json!({ "release": id })),
            );
        }
        if reserve.sku.is_empty() || reserve.quantity == 0 {
            return refuse("payload: `sku` must not be empty and `quantity` at least 1".into());
        }
        let available = self.available(&reserve.sku);
        progress(
            client,
            request,
            json!({ "step": "checking stock", "sku": reserve.sku, "available": available }),
        )
        .await;
        if available < reserve.quantity {
            return refuse(format!(
                "only {available} of {} available, {} asked",
                reserve.sku, reserve.quantity
            ));
        }
        *self.reserved.entry(reserve.sku.clone()).or_default() += reserve.quantity;
        self.reservations.insert(
            id.clone(),
            Reservation {
                sku: reserve.sku.clone(),
                quantity: reserve.quantity,
                released: false,
            },
        );
        progress(
            client,
            request,
            json!({ "step": "reserved", "reservation": id }),
        )
        .await;
        CapabilityReply::succeeded(
            json!({
                "reservation": id,
                "sku": reserve.sku,
                "quantity": reserve.quantity,
                "available": self.available(&reserve.sku),
            }),
            Some(json!({ "release": id })),
        )
    }

    fn preview_reserve(&self, reserve: &Reserve) -> CapabilityReply {
        let available = self.available(&reserve.sku);
        CapabilityReply::succeeded(
            json!({
                "would_reserve": { "sku": reserve.sku, "quantity": reserve.quantity },
                "available": available,
                "enough": reserve.quantity > 0 && available >= reserve.quantity,
            }),
            None,
        )
    }

    fn release(&mut self, id: &str) -> CapabilityReply {
        let Some(reservation) = self.reservations.get_mut(id) else {
            return refuse(format!("no reservation {id}"));
        };
        let already = reservation.released;
        if !already {
            reservation.released = true;
            if let Some(reserved) = self.reserved.get_mut(&reservation.sku) {
                *reserved = reserved.saturating_sub(reservation.quantity);
            }
        }
        let (sku, quantity) = (reservation.sku.clone(), reservation.quantity);
        CapabilityReply::succeeded(
            json!({
                "released": id,
                "sku": sku,
                "quantity": quantity,
                "repeated": already,
                "available": self.available(&sku),
            }),
            None,
        )
    }

    fn preview_release(&self, id: &str) -> CapabilityReply {
        match self.reservations.get(id) {
            Some(reservation) => CapabilityReply::succeeded(
                json!({
                    "would_release": id,
                    "sku": reservation.sku,
                    "quantity": reservation.quantity,
                    "already_released": reservation.released,
                }),
                None,
            ),
            None => refuse(format!("no reservation {id}")),
        }
    }
}

/// Progress is best effort: nobody may be listening.
async fn progress(client: &Client, request: &CapabilityRequest, progress: Value) {
    if let Err(err) = client
        .publish(
            request.progress_subject.clone(),
            progress.to_string().into(),
        )
        .await
    {
        warn!(error = %err, "publishing progress");
    }
}
