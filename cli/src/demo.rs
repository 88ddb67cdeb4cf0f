//! `countersign demo`: migrates the store and loads a demo tenant like reference 000's seed, the
//! way its people would have: the owner installs the example policies and the settings, the
//! requester submits, approvers vote, and the executor — the real one, with the built-in
//! capabilities — runs what was approved and fires the deadlines that passed. The result: two
//! pending approvals (high and medium risk), a payout escalated by its deadline, an approved
//! email waiting for someone to run it, an executed email, a rejection with a comment and an
//! expired request. Submissions are back-dated so that deadlines have passed; every other step
//! happens now. Every action has an idempotency key and every policy an id, so a second run
//! finds them and adds nothing.

use std::io::Write;

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use countersign_domain::action::{
    Action, ActionCommand, ActionError, CastVote, CommandContext, RequestExecution, SubmitAction,
};
use countersign_domain::members::{
    Email, MemberCommand, MemberDirectory, MemberDraft, MemberError,
};
use countersign_domain::policy::Policy;
use countersign_domain::quorum::Vote;
use countersign_domain::submission::Submission;
use countersign_domain::tenant::{
    PolicyCommand, PolicyDraft, PolicySet, Settings, SettingsCommand, TenantCommandContext,
    TenantError, TenantSettings,
};
use countersign_domain::{ActionId, Comment, IdempotencyKey, Principal, Role, TenantId, UserId};
use countersign_executor::{Executor, ExecutorConfig, ProgressHub, registry};
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
    /// The real executor with the built-in capabilities (email is logged without SMTP_URL).
    executor: Executor,
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

    fn tenant_context(&self, by: &Principal) -> TenantCommandContext {
        TenantCommandContext {
            tenant: self.tenant.clone(),
            by: by.clone(),
            at: self.now,
            correlation_id: None,
        }
    }

    /// The owner installs the example policies (each once) and the tenant's settings.
    async fn install(&self, owner: &Principal) -> anyhow::Result<usize> {
        let metadata = Metadata::new(self.tenant.clone(), owner.id.clone());
        let policies: Vec<Policy> =
            serde_json::from_str(POLICIES).context("docs/examples/policies.json")?;
        let mut installed = 0;
        for policy in policies {
            let command = PolicyCommand::CreatePolicy {
                context: self.tenant_context(owner),
                id: policy.id.clone(),
                draft: PolicyDraft {
                    name: policy.name,
                    priority: policy.priority,
                    criteria: policy.criteria,
                    requirements: policy.requirements,
                },
            };
            match self
                .ledger
                .execute::<PolicySet>(&self.tenant, command, &metadata)
                .await
            {
                Ok(_) => installed += 1,
                Err(LedgerError::Rejected(TenantError::PolicyExists(_))) => {}
                Err(err) => {
                    return Err(anyhow::Error::new(err)
                        .context(format!("installing demo policy {}", policy.id)));
                }
            }
        }
        let command = SettingsCommand::UpdateSettings {
            context: self.tenant_context(owner),
            settings: Settings::default(),
        };
        self.ledger
            .execute::<TenantSettings>(&self.tenant, command, &metadata)
            .await
            .context("installing the demo settings")?;
        Ok(installed)
    }

    /// The owner adds every demo person to the member directory with an email address (at
    /// `example.com`), so the notifier has someone to tell: approvers hear of what waits for
    /// them, requesters of decisions (docs/notifications.md).
    async fn install_members(&self, people: &People) -> anyhow::Result<()> {
        let metadata = Metadata::new(self.tenant.clone(), people.owner.id.clone());
        for person in people.all() {
            let draft = MemberDraft {
                display_name: Some(display_name(person.id.as_str())),
                email: Some(Email::parse(format!("{}@example.com", person.id))?),
                slack_user_id: None,
                roles: person.roles.clone(),
                preferences: None,
            };
            let command = MemberCommand::AddMember {
                context: self.tenant_context(&people.owner),
                user_id: person.id.clone(),
                draft,
            };
            match self
                .ledger
                .execute::<MemberDirectory>(&self.tenant, command, &metadata)
                .await
            {
                Ok(_) | Err(LedgerError::Rejected(MemberError::MemberExists(_))) => {}
                Err(err) => {
                    return Err(anyhow::Error::new(err)
                        .context(format!("adding demo member {}", person.id)));
                }
            }
        }
        Ok(())
    }

    async fn run(&self, id: ActionId, command: ActionCommand) -> anyhow::Result<()> {
        let by = command.context().by.id.clone();
        let name = command.name();
        self.ledger
            .execute::<Action>(&id, command, &Metadata::new(self.tenant.clone(), by))
            .await
            .map(drop)
            .with_context(|| format!("{name} on demo action {id}"))
    }

    /// Submits as the API does (the same policy resolution), at a time in the past.
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
        let (mode, policy) = countersign_app::actions::governing(
            self.ledger,
            &self.tenant,
            &requester.id,
            &submission,
        )
        .await
        .context("the policy governing a demo submission")?;
        let command = ActionCommand::SubmitAction(Box::new(SubmitAction {
            context: self.context(requester, self.now - Duration::minutes(minutes_ago)),
            action_id: id,
            submission,
            mode,
            policy,
            idempotency_key: Some(key.clone()),
            rollback_of: None,
        }));
        let metadata = Metadata::new(self.tenant.clone(), requester.id.clone());
        match self.ledger.execute::<Action>(&id, command, &metadata).await {
            Ok(_) => Ok(Loaded::New(id)),
            Err(LedgerError::Rejected(ActionError::AlreadySubmitted { .. })) => {
                Ok(Loaded::Existing)
            }
            Err(err) => {
                Err(anyhow::Error::new(err).context(format!("submitting demo action {key}")))
            }
        }
    }

    async fn vote(
        &self,
        id: ActionId,
        voter: &Principal,
        vote: Vote,
        comment: &str,
    ) -> anyhow::Result<()> {
        let command = ActionCommand::CastVote(CastVote {
            context: self.context(voter, self.now),
            vote,
            comment: Some(Comment::parse(comment)?),
        });
        self.run(id, command).await
    }

    async fn request_execution(&self, id: ActionId, by: &Principal) -> anyhow::Result<()> {
        let mode = countersign_app::actions::current_mode(self.ledger, &self.tenant)
            .await
            .context("the demo tenant's mode")?;
        let command = ActionCommand::RequestExecution(RequestExecution {
            context: self.context(by, self.now),
            mode,
        });
        self.run(id, command).await
    }

    /// What the executor's reactor does when it hears of the action: run it if it awaits
    /// execution, escalate or expire it if its deadline has passed.
    async fn react(&self, id: ActionId) -> anyhow::Result<()> {
        self.executor
            .process(&id)
            .await
            .map(drop)
            .with_context(|| format!("the executor on demo action {id}"))
    }
}

/// Loads the demo tenant; returns how many actions were new.
/// "olivia" → "Olivia".
fn display_name(id: &str) -> String {
    let mut letters = id.chars();
    letters
        .next()
        .map(|first| first.to_uppercase().chain(letters).collect())
        .unwrap_or_default()
}

pub async fn load(ledger: &Ledger, people: &People, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let executor = Executor::new(
        ledger.clone(),
        registry(None, None, None)?,
        ProgressHub::default(),
        ExecutorConfig::default(),
    );
    let loader = Loader {
        ledger,
        tenant: TenantId::parse(DEMO_TENANT)?,
        executor,
        now,
    };
    loader.install(&people.owner).await?;
    loader.install_members(people).await?;
    crate::events::install_demo_workflows(ledger, &loader.tenant, &people.owner).await?;
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

    // Escalated: the high-value payout policy wants two finance_ops approvals within an hour;
    // one came, the hour passed, and the deadline escalated it to the `cfo` role.
    if let Loaded::New(id) = loader
        .submit(
            "demo-payout-pause",
            &people.requester,
            90,
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
            .vote(id, &people.fay, Vote::Approve, "matches the fraud ticket")
            .await?;
        loader.react(id).await?;
        new += 1;
    }

    // Approved, waiting for someone to run it (`POST /v1/actions/{id}/execute`).
    if let Loaded::New(id) = loader
        .submit(
            "demo-invoice-reminder",
            &people.requester,
            50,
            json!({
                "module": "email", "capability": "send",
                "payload": {
                    "to": ["billing@customer-12.example.com"],
                    "subject": "Your November invoice",
                    "text": "A friendly reminder: invoice 2026-11-12 is due on Friday.",
                },
                "summary": "Remind a customer of the November invoice",
                "connectors": ["gmail", "stripe"], "impact": "one email", "source": "board",
                "risk_tag": "medium", "flags": ["financial"],
            }),
        )
        .await?
    {
        loader
            .vote(
                id,
                &people.owner,
                Vote::Approve,
                "wording checked with billing",
            )
            .await?;
        // Its policy does not auto-execute: the executor leaves it for a person to run.
        loader.react(id).await?;
        new += 1;
    }

    // Executed: approved, requested, and run by the executor through `email.send`.
    if let Loaded::New(id) = loader
        .submit(
            "demo-refund-confirmation",
            &people.requester,
            300,
            json!({
                "module": "email", "capability": "send",
                "payload": {
                    "to": ["customer-1042@example.com"],
                    "subject": "Your refund for order 1042",
                    "text": "We refunded order 1042; the money is on its way.",
                },
                "summary": "Confirm the refund of order 1042 to its customer",
                "connectors": ["gmail"], "impact": "one email", "source": "billing-service",
            }),
        )
        .await?
    {
        loader
            .vote(id, &people.admin, Vote::Approve, "refund went through")
            .await?;
        loader.request_execution(id, &people.requester).await?;
        loader.react(id).await?;
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
                "these leads are still in an active nurture campaign",
            )
            .await?;
        new += 1;
    }

    // Expired: nobody answered within the default 24 hours; the deadline expired it.
    if let Loaded::New(id) = loader
        .submit("demo-quarantine", &people.requester, 60 * 26, json!({
            "module": "mailbox", "capability": "quarantine",
            "payload": { "mailbox": "support@", "messages": 40 },
            "summary": "Move 40 emails to quarantine", "connectors": ["gmail"], "source": "automated-agent",
        }))
        .await?
    {
        loader.react(id).await?;
        new += 1;
    }
    Ok(new)
}

/// Loads the demo tenant unless it exists already (its settings have been written): the
/// first-run path of `serve` in development mode, which must not replay the demo's votes and
/// executions on every start. Answers how many actions it loaded (none when it was there).
pub async fn load_once(ledger: &Ledger, now: DateTime<Utc>) -> anyhow::Result<Option<usize>> {
    let tenant = TenantId::parse(DEMO_TENANT)?;
    let (_, version) = ledger
        .load::<TenantSettings>(&tenant)
        .await
        .context("reading the demo tenant's settings")?;
    if version > 0 {
        return Ok(None);
    }
    let people = People::new()?;
    load(ledger, &people, now).await.map(Some)
}

/// The demo users with their tenant and roles, `gus` of the second tenant `globex` last.
pub fn users() -> anyhow::Result<Vec<(&'static str, String, Vec<String>)>> {
    let people = People::new()?;
    let mut users: Vec<(&str, String, Vec<String>)> = people
        .all()
        .into_iter()
        .map(|person| {
            (
                DEMO_TENANT,
                person.id.to_string(),
                person
                    .roles
                    .iter()
                    .map(|role| role.as_str().to_owned())
                    .collect(),
            )
        })
        .collect();
    users.push(("globex", "gus".to_owned(), vec!["owner".to_owned()]));
    Ok(users)
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
    let users = users()?;
    for (tenant, user, roles) in users {
        let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
        let token = crate::auth::token(secret, &user, tenant, &roles, 30 * 86_400)?;
        writeln!(
            out,
            "  {user:<7} {tenant:<7} {:<28} {token}",
            roles.join(",")
        )?;
    }
    Ok(())
}
