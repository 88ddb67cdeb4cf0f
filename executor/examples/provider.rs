//! An external capability provider: serves `inventory.reserve` and its undo, `inventory.release`,
//! over NATS request/reply (the protocol is in docs/capabilities.md).
//!
//! ```sh
//! cargo run -p countersign-executor --example provider -- --nats-url nats://127.0.0.1:4222
//! ```
//!
//! With `NATS_URL` set, `countersign serve` then runs approved `inventory.reserve` actions here.
//! The stock is in memory: restarting the provider forgets every reservation.

#[path = "provider/inventory.rs"]
mod inventory;

use clap::Parser;
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    about = "Example countersign capability provider: inventory.reserve and inventory.release"
)]
struct Args {
    /// The NATS server the executor uses.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The module served: requests arrive on `countersign.capability.<module>.*`.
    #[arg(long, default_value = "inventory")]
    module: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let client = async_nats::connect(args.nats_url.as_str())
        .await
        .map_err(|err| anyhow::anyhow!("connecting to NATS at {}: {err}", args.nats_url))?;
    let requests = inventory::subscribe(&client, &args.module).await?;
    info!(
        subject = inventory::subject(&args.module),
        initial_stock = inventory::INITIAL_STOCK,
        "serving"
    );
    tokio::select! {
        served = inventory::serve(client, requests) => served,
        _ = tokio::signal::ctrl_c() => {
            info!("stopping");
            Ok(())
        }
    }
}
