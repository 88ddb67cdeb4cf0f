//! `countersign demo`: migrates the store and loads a demo tenant like reference 000's seed —
//! two pending approvals (high and medium risk), one executing, one executed, one rejected with a
//! comment, one expired. Every action has an idempotency key, so a second run finds it and adds
//! nothing.

use std::io::Write;

use anyhow::{Context, anyhow};
use chrono::{DateTime, Duration, Utc};
use countersign_domain::action::{
    Action, ActionCommand, ActionError, CastVote, CommandContext, ExpireAction,
    RecordExecutionSuccess, RequestExecution, StartExecution, SubmitAction,
};
use countersign_domain::policy::{Policy, Requirements, resolve};
use countersign_domain::quorum::Vote;
use countersign_domain::risk::assess;
use countersign_domain::submission::Submission;
use countersign_domain::{
    ActionId, Comment, IdempotencyKey, Principal, Role, TenantId, TenantMode, UserId,
};
use countersign_ledger::{Ledger, LedgerError, Metadata};
use serde_json::{Value, json};

use crate::store::StoreArgs;

const POLICIES: &str = include_str!("../../docs/examples/policies.json");
pub const DEMO_TENANT: &str = "demo";

/// The demo tenant's people.
pub struct People {
    pub owner: Principal,
    pub admin: Principal,
    pub fay: Principal,
    pub felix: Principal,
    pub requester: Principal,
    pub auditor: Principal,
}

fn principal(id: &str, roles: &[&str]) -> anyhow::Result<Principal> {
    let roles = roles
        .iter()
        .map(|r| Role::parse(*r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Principal::new(UserId::parse(id)?, roles))
}

impl People {
    pub fn all(&self) -> [&Principal; 6] {
        [
            &self.owner,
            &self.admin,
            &self.fay,
            &self.felix,
            &self.requester,
            &self.auditor,
        ]
    }

    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            owner: principal("olivia", &["owner"])?,
            admin: principal("adam", &["admin"])?,
            fay: principal("fay", &["approver", "finance_ops"])?,
            felix: principal("felix", &["approver", "finance_ops"])?,
            requester: principal("rita", &["requester"])?,
            auditor: principal("audrey", &["auditor"])?,
        })
    }
}

struct Loader<'a> {
    ledger: &'a Ledger,
    tenant: TenantId,
    policies: Vec<Policy>,
    now: DateTime<Utc>,
}

/// What loading one demo action did.
enum Loaded {
    New(ActionId),
    Existing,
}

impl Loader<'_> {
    fn context(&self, by: &Principal, at: DateTime<Utc>) -> CommandContext {
        CommandContext {
            tenant: self.tenant.clone(),
            by: by.clone(),
            at,
            correlation_id: None,
        }
    }

    async fn run(&self, id: ActionId, command: ActionCommand) -> anyhow::Result<()> {
        let by = command.context().by.id.clone();
        let name = command.name();
        self.ledger
            .execute::<Action>(
                &id.to_string(),
                command,
                &Metadata::new(self.tenant.clone(), by),
            )
            .await
            .map(drop)
            .map_err(|err| anyhow!("{name} on demo action {id}: {err}"))
    }

    async fn submit(
        &self,
        key: &str,
        requester: &Principal,
        minutes_ago: i64,
        submission: Value,
    ) -> anyhow::Result<Loaded> {
        let key = IdempotencyKey::parse(key)?;
        let id = ActionId::for_idempotency_key(&self.tenant, &key);
        let submission: Submission =
            serde_json::from_value(submission).context("demo submission")?;
        let risk = assess(&submission);
        let policy = resolve(
            &self.policies,
            &submission.facts(&requester.id, &risk),
            &Requirements::builtin_default(),
        );
        let command = ActionCommand::SubmitAction(Box::new(SubmitAction {
            context: self.context(requester, self.now - Duration::minutes(minutes_ago)),
            action_id: id,
            submission,
            mode: TenantMode::RequireApproval,
            policy,
            idempotency_key: Some(key.clone()),
            rollback_of: None,
        }));
        let metadata = Metadata::new(self.tenant.clone(), requester.id.clone());
        match self
            .ledger
            .execute::<Action>(&id.to_string(), command, &metadata)
            .await
        {
            Ok(_) => Ok(Loaded::New(id)),
            Err(LedgerError::Rejected(ActionError::AlreadySubmitted { .. })) => {
                Ok(Loaded::Existing)
            }
            Err(err) => Err(anyhow!("submitting demo action {key}: {err}")),
        }
    }

    async fn vote(
        &self,
        id: ActionId,
        voter: &Principal,
        vote: Vote,
        minutes_ago: i64,
        comment: &str,
    ) -> anyhow::Result<()> {
        let command = ActionCommand::CastVote(CastVote {
            context: self.context(voter, self.now - Duration::minutes(minutes_ago)),
            vote,
            comment: Some(Comment::parse(comment)?),
        });
        self.run(id, command).await
    }

    async fn start(
        &self,
        id: ActionId,
        minutes_ago: i64,
        lease_seconds: u32,
    ) -> anyhow::Result<()> {
        let executor = principal("executor:demo", &[])?;
        let command = ActionCommand::StartExecution(StartExecution {
            context: self.context(&executor, self.now - Duration::minutes(minutes_ago)),
            lease_seconds,
        });
        self.run(id, command).await
    }
}

/// Loads the demo tenant; returns how many actions were new.
pub async fn load(ledger: &Ledger, people: &People, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let loader = Loader {
        ledger,
        tenant: TenantId::parse(DEMO_TENANT)?,
        policies: serde_json::from_str(POLICIES).context("docs/examples/policies.json")?,
        now,
    };
    let mut new = 0;

    // Pending, high risk.
    if let Loaded::New(_) = loader
        .submit("demo-refund-batch", &people.requester, 95, json!({
            "module": "billing", "capability": "refund-batch",
            "payload": { "orders": 42, "campaign": "black-friday", "total": { "amount": 18_430.5, "currency": "EUR" } },
            "summary": "Refund 42 orders from the failed Black Friday campaign",
            "connectors": ["stripe", "shopify"], "impact": "mass refund to 42 customers",
            "scope": "one store", "risk_tag": "high", "flags": ["financial", "pii"], "source": "automated-agent",
            "undo_payload": { "recharge_orders": 42 },
        }))
        .await?
    {
        new += 1;
    }

    // Pending, medium risk.
    if let Loaded::New(_) = loader
        .submit("demo-weekly-update", &people.requester, 30, json!({
            "module": "email", "capability": "send",
            "payload": {
                "to": ["leads-active@lists.example.com"],
                "subject": "Weekly update",
                "text": "This week at Acme: three new integrations and a faster inbox.",
            },
            "summary": "Send weekly update email to 120 leads",
            "connectors": ["gmail", "hubspot"], "impact": "120 emails sent", "scope": "active leads",
            "risk_tag": "medium", "flags": ["pii"], "source": "board",
        }))
        .await?
    {
        new += 1;
    }

    // Executing: approved by the owner, an executor holds the lease.
    if let Loaded::New(id) = loader
        .submit(
            "demo-contact-sync",
            &people.requester,
            50,
            json!({
                "module": "crm", "capability": "sync-contacts",
                "payload": { "from": "hubspot", "to": "salesforce", "contacts": 3200 },
                "summary": "Sync 3,200 contacts from HubSpot to Salesforce",
                "connectors": ["hubspot", "salesforce"], "impact": "3,200 contact records updated",
                "scope": "sales pipeline", "source": "board",
            }),
        )
        .await?
    {
        loader
            .vote(
                id,
                &people.owner,
                Vote::Approve,
                40,
                "mapping checked with sales ops",
            )
            .await?;
        loader
            .run(
                id,
                ActionCommand::RequestExecution(RequestExecution {
                    context: loader.context(&people.requester, now - Duration::minutes(39)),
                }),
            )
            .await?;
        loader.start(id, 2, 3600).await?;
        new += 1;
    }

    // Executed: the high-value payout policy, two finance_ops approvals.
    if let Loaded::New(id) = loader
        .submit(
            "demo-payout-pause",
            &people.requester,
            300,
            json!({
                "module": "payouts", "capability": "pause",
                "payload": { "merchant": "m-42", "amount": 1_000_000, "currency": "XOF" },
                "summary": "Pause payout of 1,000,000 XOF to merchant m-42",
                "connectors": ["wave"], "flags": ["financial"], "source": "automated-agent",
            }),
        )
        .await?
    {
        loader
            .vote(
                id,
                &people.fay,
                Vote::Approve,
                290,
                "matches the fraud ticket",
            )
            .await?;
        loader
            .vote(
                id,
                &people.felix,
                Vote::Approve,
                280,
                "confirmed with the merchant",
            )
            .await?;
        loader
            .run(
                id,
                ActionCommand::RequestExecution(RequestExecution {
                    context: loader.context(&people.admin, now - Duration::minutes(279)),
                }),
            )
            .await?;
        loader.start(id, 278, 60).await?;
        let executor = principal("executor:demo", &[])?;
        loader
            .run(
                id,
                ActionCommand::RecordExecutionSuccess(RecordExecutionSuccess {
                    context: loader.context(&executor, now - Duration::minutes(278)),
                    attempt: 1,
                    result: json!({ "paused": true, "payout": "po_8842" }),
                    undo_payload: Some(json!({ "merchant": "m-42", "resume": "po_8842" })),
                    duration_ms: 412,
                }),
            )
            .await?;
        new += 1;
    }

    // Rejected with a comment.
    if let Loaded::New(id) = loader
        .submit(
            "demo-delete-leads",
            &people.requester,
            200,
            json!({
                "module": "crm", "capability": "delete-leads",
                "payload": { "segment": "stale-2024", "count": 3200 },
                "summary": "Delete 3,200 stale leads", "impact": "mass deletion of lead records",
                "flags": ["pii"], "source": "automated-agent",
            }),
        )
        .await?
    {
        loader
            .vote(
                id,
                &people.admin,
                Vote::Reject,
                180,
                "these leads are still in an active nurture campaign",
            )
            .await?;
        new += 1;
    }

    // Expired: nobody answered within the default 24 hours.
    if let Loaded::New(id) = loader
        .submit("demo-quarantine", &people.requester, 60 * 26, json!({
            "module": "mailbox", "capability": "quarantine",
            "payload": { "mailbox": "support@", "messages": 40 },
            "summary": "Move 40 emails to quarantine", "connectors": ["gmail"], "source": "automated-agent",
        }))
        .await?
    {
        let deadlines = principal("system:deadlines", &[])?;
        loader.run(id, ActionCommand::ExpireAction(ExpireAction { context: loader.context(&deadlines, now - Duration::minutes(60)) })).await?;
        new += 1;
    }
    Ok(new)
}

pub async fn run(store: &StoreArgs) -> anyhow::Result<()> {
    let ledger = store.open_migrated().await?;
    let people = People::new()?;
    let new = load(&ledger, &people, Utc::now()).await?;
    ledger.close().await;
    let mut out = std::io::stdout();
    if new == 0 {
        writeln!(
            out,
            "The demo tenant `{DEMO_TENANT}` was already loaded; nothing added."
        )?;
    } else {
        writeln!(
            out,
            "Loaded {new} demo actions into tenant `{DEMO_TENANT}` ({}).",
            crate::store::describe(&store.config())
        )?;
    }
    let keys = crate::auth::ensure_dev_keys(&store.data_dir)?;
    let secret = keys.jwt_hs256_secret.as_bytes();
    writeln!(
        out,
        "Development keys: {} (serve picks them up; never use them in production).",
        store.data_dir.join("dev-keys.json").display()
    )?;
    writeln!(
        out,
        "Tokens, valid 30 days (export one as TOKEN and send `Authorization: Bearer $TOKEN`):"
    )?;
    let mut users: Vec<(&str, String, Vec<&str>)> = people
        .all()
        .into_iter()
        .map(|person| {
            (
                DEMO_TENANT,
                person.id.to_string(),
                person.roles.iter().map(Role::as_str).collect(),
            )
        })
        .collect();
    users.push(("globex", "gus".to_owned(), vec!["owner"]));
    for (tenant, user, roles) in users {
        let token = crate::auth::token(secret, &user, tenant, &roles, 30 * 86_400)?;
        writeln!(
            out,
            "  {user:<7} {tenant:<7} {:<28} {token}",
            roles.join(",")
        )?;
    }
    Ok(())
}
