//! `countersign events publish`: publishes one CloudEvent to the workflow intake — to JetStream
//! (`<prefix>.intake.<tenant>.<type>`, `Nats-Msg-Id` = the event id) with `--nats-url`, else
//! straight into the store through the same use case as `POST /v1/events`. Also the demo
//! tenant's example workflows (reference 003's three cases).

use std::io::Write;

use anyhow::Context;
use clap::{Args, Subcommand};
use countersign_app::workflows::{self, ReceiptStatus};
use countersign_app::{Actor, App, Channel};
use countersign_domain::tenant::{
    PolicyCommand, PolicySet, TenantCommandContext, TenantError, parse_draft as parse_policy,
};
use countersign_domain::workflow::{
    CloudEvent, WorkflowCommand, WorkflowError, WorkflowId, WorkflowSet, parse_draft,
};
use countersign_domain::{PolicyId, Principal, Role, TenantId, UserId};
use countersign_ledger::{Ledger, LedgerError, Metadata};
use countersign_workflows::IntakeConfig;
use serde_json::{Value, json};

use crate::store::StoreArgs;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Publish a domain event (CloudEvents 1.0) to the workflow intake.
    Publish(PublishArgs),
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The tenant the event belongs to.
    #[arg(long)]
    tenant: String,
    /// The event type, e.g. `order.refunded`.
    #[arg(long = "type")]
    event_type: String,
    /// The event's data, as JSON.
    #[arg(long, default_value = "{}")]
    data: String,
    /// The event id (default: a new UUID); publishing the same id again is ignored.
    #[arg(long)]
    id: Option<String>,
    /// The event's source.
    #[arg(long, default_value = "countersign-cli")]
    source: String,
    /// The event's subject, e.g. `order-1042`.
    #[arg(long)]
    subject: Option<String>,
    /// Publish to NATS JetStream; without it the event is recorded in the store directly.
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    nats_url: Option<String>,
    /// Subjects are `<prefix>.intake.<tenant>.<type>`.
    #[arg(long, env = "COUNTERSIGN_NATS_PREFIX", default_value = "countersign")]
    nats_prefix: String,
    #[command(flatten)]
    store: StoreArgs,
}

pub async fn run(command: EventsCommand) -> anyhow::Result<()> {
    match command {
        EventsCommand::Publish(args) => publish(&args).await,
    }
}

fn event_of(args: &PublishArgs) -> anyhow::Result<CloudEvent> {
    let data: Value = serde_json::from_str(&args.data).context("--data is not JSON")?;
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let mut document = json!({
        "specversion": "1.0", "id": id, "source": args.source, "type": args.event_type,
        "time": chrono::Utc::now().to_rfc3339(), "datacontenttype": "application/json", "data": data,
    });
    if let Some(subject) = &args.subject {
        document["subject"] = json!(subject);
    }
    CloudEvent::parse(&document).map_err(|err| anyhow::anyhow!("the event is refused: {err}"))
}

async fn publish(args: &PublishArgs) -> anyhow::Result<()> {
    let tenant = TenantId::parse(&args.tenant).context("--tenant")?;
    let event = event_of(args)?;
    let mut out = std::io::stdout();
    if let Some(url) = &args.nats_url {
        let client = async_nats::connect(url.as_str())
            .await
            .context("connecting to NATS")?;
        let jetstream = async_nats::jetstream::new(client);
        let config = IntakeConfig::default().with_prefix(&args.nats_prefix);
        config.ensure(&jetstream).await?;
        let subject = config.subject(tenant.as_str(), event.event_type.as_str());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id.as_str());
        let ack = jetstream
            .publish_with_headers(subject.clone(), headers, serde_json::to_vec(&event)?.into())
            .await
            .context("publishing")?
            .await
            .context("awaiting the stream's acknowledgement")?;
        writeln!(
            out,
            "{}",
            json!({ "id": event.id, "subject": subject, "stream": ack.stream, "sequence": ack.sequence, "duplicate": ack.duplicate })
        )?;
        return Ok(());
    }
    let ledger = args.store.open_migrated().await?;
    let (projections, seals) =
        countersign_runtime::open_projections_and_seals(&args.store.config()).await?;
    let app = App::new(ledger, projections, seals);
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
    let principal = Principal::new(
        UserId::parse(format!("cli:{user}")).unwrap_or(UserId::parse("cli:operator")?),
        [Role::parse(countersign_app::roles::PUBLISHER)?],
    );
    let actor = Actor::new(tenant, principal, Channel::Cli);
    let receipts = workflows::receive(&app, &actor, vec![event], "cli").await;
    app.close().await;
    for receipt in receipts? {
        writeln!(out, "{}", serde_json::to_string(&receipt)?)?;
        if receipt.status == ReceiptStatus::Duplicate {
            writeln!(out, "(already received: ignored)")?;
        }
    }
    Ok(())
}

/// The policies the demo workflows' actions are governed by.
fn demo_policies() -> Value {
    json!([
        {
            "id": "workflow-refund-ledger", "name": "Refunds reported to the ledger need finance", "priority": 200,
            "criteria": { "source": "workflow", "action_type": "webhook.post" },
            "requirements": { "stages": [{ "name": "finance", "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 1 }] }], "auto_execute": true },
        },
        {
            "id": "workflow-security-alerts", "name": "Security alerts go out at once", "priority": 200,
            "criteria": { "source": "workflow", "action_type": "email.send" },
            "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }], "auto_approve": true, "auto_execute": true },
        },
        {
            "id": "workflow-production-flags", "name": "Production flag changes need two approvers", "priority": 200,
            "criteria": { "source": "workflow", "action_type": { "$in": ["flags.enable", "flags.disable"] } },
            "requirements": { "stages": [{ "rules": [{ "type": "any", "min_approvals": 2 }] }], "auto_execute": true },
        },
    ])
}

/// Reference 003's three cases, as the demo tenant's workflows (docs/workflows.md).
pub fn demo_workflows() -> Value {
    json!([
        {
            "id": "refund-to-ledger", "name": "Large refunds are reported to the ledger after a finance approval",
            "triggers": ["order.refunded"],
            "condition": { "data.amount": { "$gt": 500 } },
            "steps": [{
                "capability": "webhook.post",
                "summary": "Report the refund of {{ event.data.amount }} {{ event.data.currency }} on {{ event.subject }} to the ledger",
                "payload": { "event": "order.refunded", "order": "{{ event.subject }}", "amount": "{{ event.data.amount }}", "currency": "{{ event.data.currency }}" },
                "require_approval": true,
            }],
        },
        {
            "id": "authz-denied-alert", "name": "Repeated denials email security",
            "triggers": ["authz.denied"],
            "condition": { "data.attempts": { "$gte": 5 } },
            "constants": { "security": "security@acme.example" },
            "steps": [{
                "capability": "email.send",
                "summary": "Alert security: {{ event.data.attempts }} denied requests for {{ event.subject }}",
                "payload": {
                    "to": ["{{ constants.security }}"],
                    "subject": "{{ event.data.attempts }} denied requests for {{ event.subject }}",
                    "text": "{{ event.subject }} was denied {{ event.data.attempts }} times (last: {{ event.data.permission }}).",
                },
            }],
        },
        {
            "id": "production-flag-changes", "name": "Production flag changes need two approvers",
            "triggers": ["flags.changed"],
            "condition": { "data.environment": "production" },
            "steps": [{
                "capability": "flags.enable",
                "summary": "Turn on {{ event.data.flag }} in production",
                "payload": { "flag": "{{ event.data.flag }}", "environment": "{{ event.data.environment }}" },
            }],
        },
    ])
}

/// Installs the demo workflows and the policies that govern their actions as `owner`; those
/// already there are left as they are.
pub async fn install_demo_workflows(
    ledger: &Ledger,
    tenant: &TenantId,
    owner: &Principal,
) -> anyhow::Result<()> {
    let context = || TenantCommandContext {
        tenant: tenant.clone(),
        by: owner.clone(),
        at: chrono::Utc::now(),
        correlation_id: None,
    };
    let metadata = Metadata {
        channel: Some("cli"),
        ..Metadata::new(tenant.clone(), owner.id.clone())
    };
    for policy in demo_policies().as_array().into_iter().flatten() {
        let id = PolicyId::parse(policy["id"].as_str().unwrap_or_default())?;
        let mut draft = policy.clone();
        if let Some(fields) = draft.as_object_mut() {
            fields.remove("id");
        }
        let draft =
            parse_policy(&draft).map_err(|err| anyhow::anyhow!("demo policy {id}: {err}"))?;
        let command = PolicyCommand::CreatePolicy {
            context: context(),
            id,
            draft,
        };
        match ledger
            .execute::<PolicySet>(tenant, command, &metadata)
            .await
        {
            Ok(_) | Err(LedgerError::Rejected(TenantError::PolicyExists(_))) => {}
            Err(err) => return Err(anyhow::anyhow!("installing a demo policy: {err}")),
        }
    }
    for workflow in demo_workflows().as_array().into_iter().flatten() {
        let id = WorkflowId::parse(workflow["id"].as_str().unwrap_or_default())?;
        let mut draft = workflow.clone();
        if let Some(fields) = draft.as_object_mut() {
            fields.remove("id");
        }
        let draft =
            parse_draft(&draft).map_err(|err| anyhow::anyhow!("demo workflow {id}: {err}"))?;
        let command = WorkflowCommand::CreateWorkflow {
            context: context(),
            id,
            draft,
        };
        match ledger
            .execute::<WorkflowSet>(tenant, command, &metadata)
            .await
        {
            Ok(_) | Err(LedgerError::Rejected(WorkflowError::Exists(_))) => {}
            Err(err) => return Err(anyhow::anyhow!("installing a demo workflow: {err}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_workflows_and_policies_parse_and_check() {
        for workflow in demo_workflows().as_array().into_iter().flatten() {
            let mut draft = workflow.clone();
            draft.as_object_mut().map(|fields| fields.remove("id"));
            let draft = parse_draft(&draft);
            assert!(
                draft.as_ref().is_ok_and(|d| d.check().is_ok()),
                "{workflow}: {draft:?}"
            );
        }
        for policy in demo_policies().as_array().into_iter().flatten() {
            let mut draft = policy.clone();
            draft.as_object_mut().map(|fields| fields.remove("id"));
            assert!(parse_policy(&draft).is_ok(), "{policy}");
        }
    }
}
