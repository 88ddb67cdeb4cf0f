//! Authentication and authorization.
//!
//! A caller presents `Authorization: Bearer <credential>`: a JWT (HS256 with a shared secret, or
//! RS256/EdDSA with public keys from a JWKS file) whose claims are `sub`, `tenant`, `roles` and
//! `exp`; or an API key `csk.<tenant>.<key id>.<secret>` created by an admin, stored only as a
//! keyed blake3 digest. The tenant comes only from the credential. With no key material
//! configured every `/v1` request is refused (fail closed).

use std::collections::BTreeSet;
use std::sync::Arc;

use aide::OperationInput;
use aide::generate::GenContext;
use aide::openapi::Operation;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use countersign_domain::tenant::ApiKeys;
use countersign_domain::{Principal, Role, TenantId, UserId};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;

/// The roles countersign knows; custom roles (such as `finance_ops`) also exist for quorum rules.
pub mod roles {
    pub const OWNER: &str = "owner";
    pub const ADMIN: &str = "admin";
    pub const APPROVER: &str = "approver";
    pub const REQUESTER: &str = "requester";
    pub const AUDITOR: &str = "auditor";
}

/// Key material, parsed once at start-up.
#[derive(Clone, Default)]
pub struct AuthConfig {
    /// HS256 shared secret.
    pub hs256_secret: Option<Vec<u8>>,
    /// Public keys for RS256 and EdDSA tokens.
    pub jwks: Option<JwkSet>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Key of the blake3 keyed digest of API key secrets; without it API keys are disabled.
    pub api_key_secret: Option<[u8; 32]>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwks_keys", &self.jwks.as_ref().map(|set| set.keys.len()))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field(
                "api_key_secret",
                &self.api_key_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl AuthConfig {
    /// Whether any credential can be verified at all.
    pub fn is_configured(&self) -> bool {
        self.hs256_secret.is_some()
            || self.jwks.as_ref().is_some_and(|set| !set.keys.is_empty())
            || self.api_key_secret.is_some()
    }

    /// Parses a 32-byte key given as 64 hex digits.
    pub fn parse_key(hex: &str) -> Result<[u8; 32], String> {
        blake3::Hash::from_hex(hex.trim())
            .map(|hash| *hash.as_bytes())
            .map_err(|_| "must be 64 hexadecimal digits (32 bytes)".to_owned())
    }
}

/// JWT claims countersign reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Mints an HS256 development token.
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| e.to_string())
}

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Jwt,
    ApiKey { key_id: String },
}

/// An authenticated caller: its tenant comes only from the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: TenantId,
    pub principal: Principal,
    pub credential: Credential,
}

impl Caller {
    pub fn has_any(&self, roles: &[&str]) -> bool {
        self.principal
            .roles
            .iter()
            .any(|role| roles.contains(&role.as_str()))
    }

    /// Refuses callers holding none of `roles`.
    pub fn require(&self, roles: &[&str], what: &str) -> Result<(), ApiError> {
        if self.has_any(roles) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{what} requires one of the roles: {}",
                roles.join(", ")
            )))
        }
    }

    pub fn is(&self, user: &str) -> bool {
        self.principal.id.as_str() == user
    }
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::unauthorized("invalid_token", detail)
}

/// Verifies credentials.
#[derive(Debug, Clone)]
pub struct Authenticator {
    config: Arc<AuthConfig>,
}

impl Authenticator {
    pub fn new(config: AuthConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.config.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &self.config.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        validation
    }

    fn verify_jwt(&self, token: &str) -> Result<Caller, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the token is not a JWT this service accepts"))?;
        let key = match header.alg {
            Algorithm::HS256 => {
                let secret = self
                    .config
                    .hs256_secret
                    .as_ref()
                    .ok_or_else(|| invalid("HS256 tokens are not accepted here"))?;
                DecodingKey::from_secret(secret)
            }
            Algorithm::RS256 | Algorithm::EdDSA => {
                let set =
                    self.config.jwks.as_ref().ok_or_else(|| {
                        invalid("no public keys are configured for this algorithm")
                    })?;
                let jwk = match &header.kid {
                    Some(kid) => set.find(kid),
                    None => set.keys.first(),
                }
                .ok_or_else(|| invalid("the token's key id is unknown"))?;
                DecodingKey::from_jwk(jwk)
                    .map_err(|_| invalid("the configured key cannot verify this token"))?
            }
            other => {
                return Err(invalid(format!(
                    "tokens signed with {other:?} are not accepted"
                )));
            }
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation(header.alg))
            .map_err(|err| {
                use jsonwebtoken::errors::ErrorKind;
                match err.kind() {
                    ErrorKind::ExpiredSignature => {
                        ApiError::unauthorized("token_expired", "the token has expired")
                    }
                    ErrorKind::InvalidSignature => invalid("the token's signature does not verify"),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        invalid(format!("the token has no `{claim}` claim"))
                    }
                    _ => invalid(format!("the token is not valid: {err}")),
                }
            })?;
        let claims = data.claims;
        let tenant = TenantId::parse(claims.tenant)
            .map_err(|e| invalid(format!("claim `tenant`: {}", e.message)))?;
        let id = UserId::parse(claims.sub)
            .map_err(|e| invalid(format!("claim `sub`: {}", e.message)))?;
        let roles = claims
            .roles
            .into_iter()
            .map(Role::parse)
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(|e| invalid(format!("claim `roles`: {}", e.message)))?;
        Ok(Caller {
            tenant,
            principal: Principal { id, roles },
            credential: Credential::Jwt,
        })
    }

    async fn verify_api_key(&self, state: &AppState, token: &str) -> Result<Caller, ApiError> {
        let secret_key = self
            .config
            .api_key_secret
            .ok_or_else(|| invalid("API keys are not enabled here"))?;
        let mut parts = token.splitn(4, '.');
        let (Some("csk"), Some(tenant), Some(key_id), Some(secret)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("malformed API key"));
        };
        let tenant = TenantId::parse(tenant).map_err(|_| invalid("malformed API key"))?;
        let (keys, _) = state
            .ledger
            .load::<ApiKeys>(tenant.as_str())
            .await
            .map_err(ApiError::from)?;
        let record = keys
            .keys
            .get(key_id)
            .ok_or_else(|| invalid("unknown API key"))?;
        let stored =
            blake3::Hash::from_hex(&record.digest).map_err(|_| invalid("unknown API key"))?;
        // blake3::Hash equality is constant-time.
        if stored != digest(&secret_key, secret) {
            return Err(invalid("unknown API key"));
        }
        if record.revoked_at.is_some() {
            return Err(ApiError::unauthorized(
                "api_key_revoked",
                "this API key has been revoked",
            ));
        }
        Ok(Caller {
            tenant,
            principal: Principal {
                id: UserId::parse(format!("key:{key_id}"))
                    .map_err(|_| invalid("malformed API key"))?,
                roles: record.roles.clone(),
            },
            credential: Credential::ApiKey {
                key_id: key_id.to_owned(),
            },
        })
    }

    pub async fn authenticate(
        &self,
        state: &AppState,
        authorization: Option<&str>,
    ) -> Result<Caller, ApiError> {
        if !self.config.is_configured() {
            return Err(ApiError::unauthorized(
                "authentication_unconfigured",
                "no credentials can be verified: the service has no key material configured",
            ));
        }
        let value = authorization.ok_or_else(|| {
            ApiError::unauthorized("unauthorized", "send `Authorization: Bearer <token>`")
        })?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "unauthorized",
                    "the Authorization header must be `Bearer <token>`",
                )
            })?
            .trim();
        if token.starts_with("csk.") {
            self.verify_api_key(state, token).await
        } else {
            self.verify_jwt(token)
        }
    }
}

/// The keyed blake3 digest under which an API key secret is stored.
pub fn digest(key: &[u8; 32], secret: &str) -> blake3::Hash {
    blake3::keyed_hash(key, secret.as_bytes())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        let caller = state.auth.authenticate(state, header).await?;
        tracing::Span::current().record("tenant", caller.tenant.as_str());
        tracing::Span::current().record("principal", caller.principal.id.as_str());
        Ok(caller)
    }
}

impl OperationInput for Caller {
    fn operation_input(_ctx: &mut GenContext, operation: &mut Operation) {
        operation.security.push(indexmap::IndexMap::from_iter([(
            "bearer".to_owned(),
            Vec::new(),
        )]));
    }
}
