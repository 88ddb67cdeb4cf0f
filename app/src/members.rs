//! The member directory: owners and admins add, change and remove members; owners, admins and
//! auditors read it; every signed-in user reads and changes their own notification preferences
//! (and the claims of their token — name, email — keep their own entry current). Every member
//! registers their own Ed25519 key for signing votes; they, owners and admins remove it.

use countersign_domain::UserId;
use countersign_domain::members::{
    Email, Member, MemberCommand, MemberDirectory, MemberDraft, MemberError, Preferences,
    SigningKeyEntry,
};
use countersign_domain::signing::VotePublicKey;
use countersign_ledger::Committed;
use schemars::JsonSchema;
use serde::Serialize;

use crate::actions::Written;
use crate::tenant::count;
use crate::{Actor, App, AppError, roles};

impl From<MemberError> for AppError {
    fn from(error: MemberError) -> Self {
        match error {
            MemberError::InvalidInput(parse) => Self::InvalidInput(parse),
            MemberError::MemberNotFound(_) | MemberError::WrongTenant => member_not_found(),
            MemberError::MemberExists(user) => Self::NotYet {
                code: "member_exists",
                message: format!("member `{user}` already exists"),
            },
            not_permitted @ (MemberError::NotPermitted { .. }
            | MemberError::NotKeyHolder { .. }) => Self::Forbidden(not_permitted.to_string()),
            MemberError::SigningKeyInUse(key_id) => Self::NotYet {
                code: "signing_key_in_use",
                message: format!(
                    "this public key is already registered (key {key_id}); generate a new key"
                ),
            },
            MemberError::NoSigningKey(_) => {
                Self::not_found("signing_key_not_found", "active signing key")
            }
        }
    }
}

fn member_not_found() -> AppError {
    AppError::not_found("member_not_found", "member")
}

/// A member's preferences as they apply: their own, or the tenant's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct PreferencesView {
    pub preferences: Preferences,
    /// False while the tenant's defaults apply.
    pub custom: bool,
}

/// The directory's members.
#[derive(Debug, Serialize, JsonSchema)]
pub struct MemberList {
    pub members: Vec<Member>,
}

#[tracing::instrument(name = "command", skip_all, fields(
    command = name,
    tenant = %actor.tenant,
    principal = %actor.principal.id,
    channel = actor.channel.as_str(),
    correlation_id = actor.correlation_id.as_ref().map(|id| id.as_str()),
))]
async fn run(
    app: &App,
    actor: &Actor,
    name: &'static str,
    command: MemberCommand,
) -> Result<Committed<MemberDirectory>, AppError> {
    let result = app
        .ledger
        .execute::<MemberDirectory>(
            &actor.tenant,
            command,
            &actor.metadata(actor.correlation_id.clone()),
        )
        .await;
    count(name, &result, MemberError::code);
    Ok(result?)
}

fn admin(actor: &Actor) -> Result<(), AppError> {
    actor.require(&[roles::OWNER, roles::ADMIN], "managing members")
}

fn reader(actor: &Actor) -> Result<(), AppError> {
    actor.require(
        &[roles::OWNER, roles::ADMIN, roles::AUDITOR],
        "reading the member directory",
    )
}

/// The tenant's directory as it stands.
pub async fn directory(app: &App, actor: &Actor) -> Result<MemberDirectory, AppError> {
    let (directory, _) = app.ledger.load::<MemberDirectory>(&actor.tenant).await?;
    Ok(directory)
}

/// Every member (owner, admin, auditor).
pub async fn list(app: &App, actor: &Actor) -> Result<MemberList, AppError> {
    reader(actor)?;
    let directory = directory(app, actor).await?;
    Ok(MemberList {
        members: directory.members.into_values().collect(),
    })
}

/// One member (owner, admin, auditor; anyone for themselves).
pub async fn get(app: &App, actor: &Actor, user: &UserId) -> Result<Member, AppError> {
    if !actor.is(user.as_str()) {
        reader(actor)?;
    }
    directory(app, actor)
        .await?
        .members
        .remove(user)
        .ok_or_else(member_not_found)
}

fn written(
    committed: &Committed<MemberDirectory>,
    user: &UserId,
) -> Result<Written<Member>, AppError> {
    let member = committed
        .aggregate
        .members
        .get(user)
        .cloned()
        .ok_or_else(member_not_found)?;
    Ok(Written {
        value: member,
        cursor: committed.last_cursor(),
    })
}

/// Adds a member (owner, admin; only an owner grants `owner`).
pub async fn create(
    app: &App,
    actor: &Actor,
    user: UserId,
    draft: MemberDraft,
) -> Result<Written<Member>, AppError> {
    admin(actor)?;
    let command = MemberCommand::AddMember {
        context: actor.tenant_context(),
        user_id: user.clone(),
        draft,
    };
    let committed = run(app, actor, "AddMember", command).await?;
    written(&committed, &user)
}

/// Replaces a member's fields (owner, admin; only an owner grants or takes `owner`).
pub async fn update(
    app: &App,
    actor: &Actor,
    user: UserId,
    draft: MemberDraft,
) -> Result<Written<Member>, AppError> {
    admin(actor)?;
    let command = MemberCommand::UpdateMember {
        context: actor.tenant_context(),
        user_id: user.clone(),
        draft,
    };
    let committed = run(app, actor, "UpdateMember", command).await?;
    written(&committed, &user)
}

/// Removes a member (owner, admin; only an owner removes an owner). Answers the removed entry.
pub async fn remove(app: &App, actor: &Actor, user: UserId) -> Result<Written<Member>, AppError> {
    admin(actor)?;
    let before = directory(app, actor)
        .await?
        .members
        .remove(&user)
        .ok_or_else(member_not_found)?;
    let command = MemberCommand::RemoveMember {
        context: actor.tenant_context(),
        user_id: user,
    };
    let committed = run(app, actor, "RemoveMember", command).await?;
    Ok(Written {
        value: before,
        cursor: committed.last_cursor(),
    })
}

/// The actor's own preferences as they apply (anyone signed in).
pub async fn my_preferences(app: &App, actor: &Actor) -> Result<PreferencesView, AppError> {
    let directory = directory(app, actor).await?;
    Ok(
        match directory
            .members
            .get(&actor.principal.id)
            .and_then(|member| member.preferences)
        {
            Some(preferences) => PreferencesView {
                preferences,
                custom: true,
            },
            None => PreferencesView {
                preferences: directory.defaults,
                custom: false,
            },
        },
    )
}

/// Sets the actor's own preferences (none: back to the tenant's defaults). A user not yet in
/// the directory is added first, with the roles of their credential.
pub async fn set_my_preferences(
    app: &App,
    actor: &Actor,
    preferences: Option<Preferences>,
) -> Result<Written<PreferencesView>, AppError> {
    let known = directory(app, actor)
        .await?
        .members
        .contains_key(&actor.principal.id);
    if !known {
        record_claims(app, actor, None, None).await?;
    }
    let command = MemberCommand::SetPreferences {
        context: actor.tenant_context(),
        user_id: actor.principal.id.clone(),
        preferences,
    };
    let committed = run(app, actor, "SetPreferences", command).await?;
    let directory = &committed.aggregate;
    let member = directory
        .members
        .get(&actor.principal.id)
        .ok_or_else(member_not_found)?;
    Ok(Written {
        value: PreferencesView {
            preferences: directory.preferences_of(member),
            custom: member.preferences.is_some(),
        },
        cursor: committed.last_cursor(),
    })
}

/// The tenant's default preferences (anyone signed in may read them).
pub async fn defaults(app: &App, actor: &Actor) -> Result<Preferences, AppError> {
    Ok(directory(app, actor).await?.defaults)
}

/// Sets the tenant's default preferences (owner, admin).
pub async fn set_defaults(
    app: &App,
    actor: &Actor,
    defaults: Preferences,
) -> Result<Written<Preferences>, AppError> {
    admin(actor)?;
    let command = MemberCommand::SetDefaultPreferences {
        context: actor.tenant_context(),
        defaults,
    };
    let committed = run(app, actor, "SetDefaultPreferences", command).await?;
    Ok(Written {
        value: committed.aggregate.defaults,
        cursor: committed.last_cursor(),
    })
}

/// Keeps the actor's own entry current with what their credential says (a token's `name` and
/// `email` claims): adds them when missing, records nothing when nothing changed. An email
/// claim that is not an acceptable address is ignored (the token is not the user's input).
pub async fn record_claims(
    app: &App,
    actor: &Actor,
    name: Option<&str>,
    email: Option<&str>,
) -> Result<(), AppError> {
    let command = MemberCommand::RecordClaims {
        context: actor.tenant_context(),
        display_name: name.map(str::to_owned),
        email: email.and_then(|email| Email::parse(email).ok()),
    };
    run(app, actor, "RecordClaims", command).await?;
    Ok(())
}

/// A member's signing keys: the active one (if any) and every retired one, oldest first.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SigningKeyList {
    pub user_id: UserId,
    /// The id of the key that signs the member's votes now.
    pub active_key_id: Option<String>,
    pub keys: Vec<SigningKeyEntry>,
}

fn key_list(directory: &MemberDirectory, user: &UserId) -> SigningKeyList {
    SigningKeyList {
        user_id: user.clone(),
        active_key_id: directory
            .active_signing_key(user)
            .map(|key| key.key_id.clone()),
        keys: directory.signing_keys_of(user).to_vec(),
    }
}

/// A member's signing keys (owner, admin, auditor; anyone for themselves). A member who never
/// registered one answers an empty list.
pub async fn signing_keys(
    app: &App,
    actor: &Actor,
    user: &UserId,
) -> Result<SigningKeyList, AppError> {
    if !actor.is(user.as_str()) {
        reader(actor)?;
    }
    Ok(key_list(&directory(app, actor).await?, user))
}

/// The key that signs `user`'s votes now, if they registered one.
pub async fn active_signing_key(
    app: &App,
    actor: &Actor,
    user: &UserId,
) -> Result<Option<SigningKeyEntry>, AppError> {
    Ok(directory(app, actor)
        .await?
        .active_signing_key(user)
        .cloned())
}

/// Registers the actor's own public key for signing votes (anyone signed in; a user not in the
/// directory is added first, with the roles of their credential). Their previous key is
/// retired, and stays listed so that the votes it signed can still be checked.
pub async fn set_my_signing_key(
    app: &App,
    actor: &Actor,
    public_key: VotePublicKey,
) -> Result<Written<SigningKeyList>, AppError> {
    let current = directory(app, actor).await?;
    let known = current.members.contains_key(&actor.principal.id);
    // A key in use is refused before anything is recorded (adding the member included).
    if !known && current.key_registered(&public_key.key_id()) {
        return Err(MemberError::SigningKeyInUse(public_key.key_id()).into());
    }
    if !known {
        record_claims(app, actor, None, None).await?;
    }
    let command = MemberCommand::SetSigningKey {
        context: actor.tenant_context(),
        public_key,
    };
    let committed = run(app, actor, "SetSigningKey", command).await?;
    Ok(Written {
        value: key_list(&committed.aggregate, &actor.principal.id),
        cursor: committed.last_cursor(),
    })
}

/// Retires a member's active signing key (the member themselves, an owner or an admin). Votes
/// it signed stay checkable.
pub async fn remove_signing_key(
    app: &App,
    actor: &Actor,
    user: UserId,
) -> Result<Written<SigningKeyList>, AppError> {
    if !actor.is(user.as_str()) {
        admin(actor)?;
    }
    let command = MemberCommand::RemoveSigningKey {
        context: actor.tenant_context(),
        user_id: user.clone(),
    };
    let committed = run(app, actor, "RemoveSigningKey", command).await?;
    Ok(Written {
        value: key_list(&committed.aggregate, &user),
        cursor: committed.last_cursor(),
    })
}
