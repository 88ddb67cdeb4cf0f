//! API keys: create (the secret is shown once), list, revoke.

use std::collections::BTreeSet;

use countersign_domain::tenant::{ApiKeyCommand, ApiKeyRecord, ApiKeys};
use countersign_domain::{Role, Timestamp};
use schemars::JsonSchema;
use serde::Serialize;

use crate::actions::Written;
use crate::tenant::run;
use crate::{Actor, App, AppError, digest, roles};

/// An API key without its secret.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ApiKeyView {
    pub key_id: String,
    pub name: String,
    pub roles: BTreeSet<Role>,
    pub created_by: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl From<&ApiKeyRecord> for ApiKeyView {
    fn from(record: &ApiKeyRecord) -> Self {
        Self {
            key_id: record.key_id.clone(),
            name: record.name.clone(),
            roles: record.roles.clone(),
            created_by: record.created_by.to_string(),
            created_at: record.created_at,
            revoked_at: record.revoked_at,
        }
    }
}

/// A new key: `api_key` is shown this once and never again.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKeyView,
    /// Send as `Authorization: Bearer <api_key>`.
    pub api_key: String,
}

/// A random key id and secret (the only randomness of key creation; the domain records digests).
fn new_key_material() -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    (id, secret)
}

fn admin(actor: &Actor) -> Result<(), AppError> {
    actor.require(&[roles::OWNER, roles::ADMIN], "managing API keys")
}

/// Creates a key for the actor's tenant (owner, admin; only an owner grants `owner`). The name
/// is trimmed; the domain decides whether it is acceptable.
pub async fn create(
    app: &App,
    actor: &Actor,
    name: &str,
    roles: BTreeSet<Role>,
) -> Result<Written<CreatedApiKey>, AppError> {
    admin(actor)?;
    let secret_key = app.api_key_secret.ok_or_else(|| AppError::Unavailable {
        code: "api_keys_disabled",
        message: "API keys need COUNTERSIGN_API_KEY_SECRET to be configured".into(),
    })?;
    let (key_id, secret) = new_key_material();
    let command = ApiKeyCommand::CreateApiKey {
        context: actor.tenant_context(),
        key_id: key_id.clone(),
        name: name.trim().to_owned(),
        roles,
        digest: digest(&secret_key, &secret).to_hex().to_string(),
    };
    let committed = run::<ApiKeys>(app, actor, "CreateApiKey", command).await?;
    let record = committed.aggregate.keys.get(&key_id).ok_or_else(|| {
        AppError::internal("recording a key", anyhow::anyhow!("created key missing"))
    })?;
    Ok(Written {
        value: CreatedApiKey {
            key: record.into(),
            api_key: format!("csk.{}.{key_id}.{secret}", actor.tenant),
        },
        cursor: committed.last_cursor(),
    })
}

/// The tenant's keys, without secrets (owner, admin).
pub async fn list(app: &App, actor: &Actor) -> Result<Vec<ApiKeyView>, AppError> {
    admin(actor)?;
    let (keys, _) = app.ledger.load::<ApiKeys>(&actor.tenant).await?;
    Ok(keys.keys.values().map(ApiKeyView::from).collect())
}

/// Revokes a key (owner, admin): it stops working at once.
pub async fn revoke(
    app: &App,
    actor: &Actor,
    key_id: &str,
) -> Result<Written<ApiKeyView>, AppError> {
    admin(actor)?;
    let command = ApiKeyCommand::RevokeApiKey {
        context: actor.tenant_context(),
        key_id: key_id.to_owned(),
    };
    let committed = run::<ApiKeys>(app, actor, "RevokeApiKey", command).await?;
    let record = committed
        .aggregate
        .keys
        .get(key_id)
        .ok_or_else(|| AppError::not_found("api_key_not_found", "API key"))?;
    Ok(Written {
        value: record.into(),
        cursor: committed.last_cursor(),
    })
}
