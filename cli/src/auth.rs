//! Key material for the service (`serve`), development keys and tokens (`demo`, `token`), and
//! API key administration from the command line (`api-keys`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use countersign_app::{Actor, App, Channel, keys};
use countersign_domain::{Principal, Role, TenantId, UserId};
use countersign_gateway::{AuthConfig, Claims, mint_hs256};
use jsonwebtoken::jwk::JwkSet;
use serde::{Deserialize, Serialize};

use crate::store::StoreArgs;

#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// HS256 secret for JWTs (any string; at least 32 bytes recommended).
    #[arg(long, env = "COUNTERSIGN_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// A JWKS file of RS256/EdDSA public keys for JWTs.
    #[arg(long, env = "COUNTERSIGN_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "COUNTERSIGN_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "COUNTERSIGN_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// 64 hex digits keying the digests API keys are stored as; without it API keys are off.
    #[arg(long, env = "COUNTERSIGN_API_KEY_SECRET", hide_env_values = true)]
    pub api_key_secret: Option<String>,
    /// 64 hex digits from which each tenant's webhook signing secret is derived; without it
    /// `webhook.post` refuses to run.
    #[arg(long, env = "COUNTERSIGN_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Use the development keys `countersign demo` wrote to <data-dir>/dev-keys.json, if present.
    #[arg(long, env = "COUNTERSIGN_DEV_KEYS", default_value_t = true, action = clap::ArgAction::Set)]
    pub dev_keys: bool,
}

/// Development key material, written by `countersign demo` beside the embedded store.
#[derive(Debug, Serialize, Deserialize)]
pub struct DevKeys {
    pub jwt_hs256_secret: String,
    pub api_key_secret: String,
    #[serde(default)]
    pub webhook_secret: Option<String>,
}

fn dev_keys_path(data_dir: &Path) -> PathBuf {
    data_dir.join("dev-keys.json")
}

fn random_hex() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The development keys at `path`, when the file exists. A file others can read (written by an
/// older version) is narrowed to its owner first.
fn read_dev_keys(path: &Path) -> anyhow::Result<Option<DevKeys>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the development keys were readable by others; narrowing them to mode 0600");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("narrowing {} to mode 0600", path.display()))?;
        }
    }
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{} is not valid", path.display()))
}

/// Creates `path` readable and writable by its owner only (mode 0600 from the start, never
/// wider), refusing to replace an existing file.
fn create_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// The development keys under `data_dir`, created on first use (mode 0600).
pub fn ensure_dev_keys(data_dir: &Path) -> anyhow::Result<DevKeys> {
    let path = dev_keys_path(data_dir);
    if let Some(keys) = read_dev_keys(&path)? {
        return Ok(keys);
    }
    std::fs::create_dir_all(data_dir)?;
    let keys = DevKeys {
        jwt_hs256_secret: random_hex(),
        api_key_secret: random_hex(),
        webhook_secret: Some(random_hex()),
    };
    match create_secret_file(&path, serde_json::to_string_pretty(&keys)?.as_bytes()) {
        Ok(()) => Ok(keys),
        // Another process wrote them first: use theirs.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => read_dev_keys(&path)?
            .with_context(|| format!("{} vanished while being created", path.display())),
        Err(err) => Err(err).with_context(|| format!("writing {}", path.display())),
    }
}

impl AuthArgs {
    /// Whether any key material is configured by flag or environment (a JWT secret, a JWKS
    /// file, the API key or webhook secret): then the service never runs in development mode.
    pub fn has_key_material(&self) -> bool {
        self.jwt_hs256_secret.is_some()
            || self.jwks_file.is_some()
            || self.api_key_secret.is_some()
            || self.webhook_secret.is_some()
    }

    fn dev_keys(&self, store: &StoreArgs) -> anyhow::Result<Option<DevKeys>> {
        if !self.dev_keys {
            return Ok(None);
        }
        read_dev_keys(&dev_keys_path(&store.data_dir))
    }

    /// The key webhook signing secrets derive from: the flag or environment, else the development keys.
    pub fn webhook_key(&self, store: &StoreArgs) -> anyhow::Result<Option<[u8; 32]>> {
        let hex = match &self.webhook_secret {
            Some(hex) => Some(hex.clone()),
            None => self.dev_keys(store)?.and_then(|keys| keys.webhook_secret),
        };
        hex.map(|hex| {
            AuthConfig::parse_key(&hex).map_err(|err| anyhow::anyhow!("--webhook-secret {err}"))
        })
        .transpose()
    }

    /// The key material: flags and environment first, then the development keys.
    pub fn config(&self, store: &StoreArgs) -> anyhow::Result<AuthConfig> {
        let dev = self.dev_keys(store)?;
        if dev.is_some() {
            tracing::warn!(path = %dev_keys_path(&store.data_dir).display(), "using the development keys (written by `countersign demo` or development mode); configure real keys in production");
        }
        let hs256_secret = self
            .jwt_hs256_secret
            .clone()
            .or_else(|| dev.as_ref().map(|keys| keys.jwt_hs256_secret.clone()))
            .map(String::into_bytes);
        if hs256_secret
            .as_ref()
            .is_some_and(|secret| secret.len() < 16)
        {
            bail!("--jwt-hs256-secret must be at least 16 bytes");
        }
        let jwks = match &self.jwks_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Some(
                    serde_json::from_str::<JwkSet>(&text)
                        .with_context(|| format!("{} is not a JWKS document", path.display()))?,
                )
            }
            None => None,
        };
        let api_key_secret = match self
            .api_key_secret
            .clone()
            .or_else(|| dev.as_ref().map(|keys| keys.api_key_secret.clone()))
        {
            Some(hex) => Some(
                AuthConfig::parse_key(&hex)
                    .map_err(|err| anyhow::anyhow!("--api-key-secret {err}"))?,
            ),
            None => None,
        };
        Ok(AuthConfig {
            hs256_secret,
            jwks,
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            api_key_secret,
        })
    }
}

/// A token for `subject` valid for `ttl_seconds`.
pub fn token(
    secret: &[u8],
    subject: &str,
    tenant: &str,
    roles: &[&str],
    ttl_seconds: i64,
) -> anyhow::Result<String> {
    let now = chrono::Utc::now().timestamp();
    mint_hs256(
        secret,
        &Claims {
            sub: subject.to_owned(),
            tenant: tenant.to_owned(),
            roles: roles.iter().map(|role| (*role).to_owned()).collect(),
            exp: now + ttl_seconds,
            iat: Some(now),
            iss: None,
            aud: None,
        },
    )
    .context("minting a token")
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// The user (`sub` claim).
    #[arg(long)]
    pub sub: String,
    #[arg(long)]
    pub tenant: String,
    /// Comma-separated roles.
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    pub ttl_seconds: i64,
}

/// `countersign token`: mints a development HS256 token.
pub fn token_command(args: &TokenArgs) -> anyhow::Result<()> {
    TenantId::parse(args.tenant.as_str()).context("--tenant")?;
    UserId::parse(args.sub.as_str()).context("--sub")?;
    if let Some(prefix) = countersign_gateway::auth::reserved_subject(&args.sub) {
        bail!("--sub: the `{prefix}` prefix is reserved for callers the service names itself");
    }
    for role in &args.roles {
        Role::parse(role.as_str()).context("--roles")?;
    }
    let config = args.auth.config(&args.store)?;
    let secret = config
        .hs256_secret
        .context("no HS256 secret: set COUNTERSIGN_JWT_HS256_SECRET or run `countersign demo` for development keys")?;
    let roles: Vec<&str> = args.roles.iter().map(String::as_str).collect();
    writeln!(
        std::io::stdout(),
        "{}",
        token(&secret, &args.sub, &args.tenant, &roles, args.ttl_seconds)?
    )?;
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum ApiKeysCommand {
    /// Create a key; its secret is printed once.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        auth: AuthArgs,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        /// Comma-separated roles the key holds.
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
    },
    /// List a tenant's keys (never their secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key at once.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        key_id: String,
    },
}

fn operator() -> anyhow::Result<Principal> {
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
    Ok(Principal::new(
        UserId::parse(format!("cli:{user}")).unwrap_or(UserId::parse("cli:operator")?),
        [Role::owner()],
    ))
}

/// The application over the store, as the operator of `tenant` (an owner, through the CLI).
async fn as_operator(
    store: &StoreArgs,
    tenant: &str,
    api_key_secret: Option<[u8; 32]>,
) -> anyhow::Result<(App, Actor)> {
    let tenant = TenantId::parse(tenant).context("--tenant")?;
    let ledger = store.open_migrated().await?;
    let (projections, seals) =
        countersign_runtime::open_projections_and_seals(&store.config()).await?;
    let app = App::new(ledger, projections, seals).with_api_key_secret(api_key_secret);
    Ok((app, Actor::new(tenant, operator()?, Channel::Cli)))
}

pub async fn api_keys_command(command: ApiKeysCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    match command {
        ApiKeysCommand::Create {
            store,
            auth,
            tenant,
            name,
            roles,
        } => {
            let roles = roles
                .iter()
                .map(|role| Role::parse(role.as_str()))
                .collect::<Result<_, _>>()
                .context("--roles")?;
            let secret_key = auth
                .config(&store)?
                .api_key_secret
                .context("no API key secret: set COUNTERSIGN_API_KEY_SECRET (64 hex digits)")?;
            let (app, actor) = as_operator(&store, &tenant, Some(secret_key)).await?;
            let created = keys::create(&app, &actor, &name, roles).await;
            app.close().await;
            let created = created.context("creating the key")?.value;
            writeln!(
                out,
                "key id {}; the secret is shown once:\n{}",
                created.key.key_id, created.api_key
            )?;
        }
        ApiKeysCommand::List { store, tenant } => {
            let (app, actor) = as_operator(&store, &tenant, None).await?;
            let listed = keys::list(&app, &actor).await;
            app.close().await;
            for key in listed.context("listing keys")? {
                let roles: Vec<&str> = key.roles.iter().map(Role::as_str).collect();
                let state = key.revoked_at.map_or_else(
                    || "active".to_owned(),
                    |at| format!("revoked {}", at.to_rfc3339()),
                );
                writeln!(
                    out,
                    "{}  {:<24} {:<30} {}",
                    key.key_id,
                    key.name,
                    roles.join(","),
                    state
                )?;
            }
        }
        ApiKeysCommand::Revoke {
            store,
            tenant,
            key_id,
        } => {
            let (app, actor) = as_operator(&store, &tenant, None).await?;
            let revoked = keys::revoke(&app, &actor, &key_id).await;
            app.close().await;
            revoked.context("revoking the key")?;
            writeln!(out, "revoked {key_id}")?;
        }
    }
    Ok(())
}
