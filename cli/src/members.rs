//! `countersign members`: a tenant's member directory on the store, as its operator (an owner,
//! through the CLI), through the same use cases as `/v1/members`.

use std::collections::BTreeSet;
use std::io::Write as _;

use anyhow::Context;
use clap::{Args, Subcommand};
use countersign_app::{Actor, App, Channel, members};
use countersign_domain::members::{Email, MemberDraft, SlackUserId};
use countersign_domain::{Principal, Role, TenantId, UserId};

use crate::store::StoreArgs;

#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// List the tenant's members.
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        tenant: String,
        /// Print each member as a JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Add a member.
    Add(MemberArgs),
    /// Replace a member's fields (what is not given is cleared).
    Update(MemberArgs),
    /// Remove a member.
    Remove {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        tenant: String,
        /// The member's user id.
        #[arg(long)]
        user: String,
    },
}

#[derive(Debug, Args)]
pub struct MemberArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[arg(long)]
    tenant: String,
    /// The member's user id (the `sub` of their tokens).
    #[arg(long)]
    user: String,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    email: Option<String>,
    /// Slack user id (U…).
    #[arg(long)]
    slack: Option<String>,
    /// Comma-separated roles the member holds.
    #[arg(long, value_delimiter = ',')]
    roles: Vec<String>,
}

impl MemberArgs {
    fn draft(&self) -> anyhow::Result<(UserId, MemberDraft)> {
        let user = UserId::parse(self.user.as_str()).context("--user")?;
        let roles: BTreeSet<Role> = self
            .roles
            .iter()
            .map(|role| Role::parse(role.as_str()))
            .collect::<Result<_, _>>()
            .context("--roles")?;
        Ok((
            user,
            MemberDraft {
                display_name: self.name.clone(),
                email: self
                    .email
                    .as_deref()
                    .map(Email::parse)
                    .transpose()
                    .context("--email")?,
                slack_user_id: self
                    .slack
                    .as_deref()
                    .map(SlackUserId::parse)
                    .transpose()
                    .context("--slack")?,
                roles,
                preferences: None,
            },
        ))
    }
}

fn operator() -> anyhow::Result<Principal> {
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
    Ok(Principal::new(
        UserId::parse(format!("cli:{user}")).unwrap_or(UserId::parse("cli:operator")?),
        [Role::owner()],
    ))
}

async fn as_operator(store: &StoreArgs, tenant: &str) -> anyhow::Result<(App, Actor)> {
    let tenant = TenantId::parse(tenant).context("--tenant")?;
    let ledger = store.open_migrated().await?;
    let (projections, seals) =
        countersign_runtime::open_projections_and_seals(&store.config()).await?;
    let app = App::new(ledger, projections, seals);
    Ok((app, Actor::new(tenant, operator()?, Channel::Cli)))
}

pub async fn run(command: MembersCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    match command {
        MembersCommand::List {
            store,
            tenant,
            json,
        } => {
            let (app, actor) = as_operator(&store, &tenant).await?;
            let listed = members::list(&app, &actor).await;
            app.close().await;
            for member in listed.context("listing members")?.members {
                if json {
                    writeln!(out, "{}", serde_json::to_string(&member)?)?;
                    continue;
                }
                let roles: Vec<&str> = member.roles.iter().map(Role::as_str).collect();
                writeln!(
                    out,
                    "{:<24} {:<24} {:<32} {}",
                    member.user_id,
                    member.display_name.as_deref().unwrap_or("-"),
                    member.email.as_ref().map_or("-", Email::as_str),
                    roles.join(","),
                )?;
            }
        }
        MembersCommand::Add(args) => {
            let (user, draft) = args.draft()?;
            let (app, actor) = as_operator(&args.store, &args.tenant).await?;
            let added = members::create(&app, &actor, user, draft).await;
            app.close().await;
            let added = added.context("adding the member")?.value;
            writeln!(out, "added {}", added.user_id)?;
        }
        MembersCommand::Update(args) => {
            let (user, draft) = args.draft()?;
            let (app, actor) = as_operator(&args.store, &args.tenant).await?;
            let updated = members::update(&app, &actor, user, draft).await;
            app.close().await;
            let updated = updated.context("updating the member")?.value;
            writeln!(out, "updated {}", updated.user_id)?;
        }
        MembersCommand::Remove {
            store,
            tenant,
            user,
        } => {
            let user = UserId::parse(user.as_str()).context("--user")?;
            let (app, actor) = as_operator(&store, &tenant).await?;
            let removed = members::remove(&app, &actor, user).await;
            app.close().await;
            let removed = removed.context("removing the member")?.value;
            writeln!(out, "removed {}", removed.user_id)?;
        }
    }
    Ok(())
}
