//! Authentication and authorization.
//!
//! A caller presents `Authorization: Bearer <credential>`: a JWT (HS256 with a shared secret, or
//! RS256/EdDSA with public keys from a JWKS file) whose claims are `sub`, `tenant`, `roles` and
//! `exp`; or an API key `csk.<tenant>.<key id>.<secret>` created by an admin, stored only as a
//! keyed blake3 digest. The tenant comes only from the credential. With no key material
//! configured every `/v1` request is refused (fail closed).
//!
//! A JWT is refused before its `nbf` or `iat` and after its `exp` (each with
//! [`LEEWAY_SECONDS`] for clock skew), and when its `sub` takes a form reserved for the service's
//! own callers ([`reserved_subject`]): only an API key makes a `key:` caller. A long-lived
//! response (an event stream) re-checks its credential with a [`CredentialWatch`] and ends when
//! a new request with it would be refused.
//!
//! The [`Caller`] extractor is also where every authenticated `/v1` request is counted against
//! its tenant's and its principal's rate limits ([`crate::rate_limit`]).
//!
//! A JWT may also carry the user's `name` and `email` ([`TokenClaims`]): when they differ from
//! what this process last recorded for that tenant and subject, they update the user's own
//! directory entry ([`countersign_app::members::record_claims`]). What was recorded is
//! remembered in a small bounded cache ([`ClaimsSeen`]), so an unchanged token writes nothing.
//! An email claim that is not an address is ignored (logged at debug) and never refuses the
//! request; neither does a failed write (logged, retried with the next request).

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aide::OperationInput;
use aide::generate::GenContext;
use aide::openapi::Operation;
use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use countersign_app::{Actor, Channel};
use countersign_domain::members::Email;
use countersign_domain::tenant::ApiKeys;
use countersign_domain::{Principal, Role, TenantId, UserId};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;

/// The roles countersign knows; custom roles (such as `finance_ops`) also exist for quorum rules.
pub use countersign_app::roles;

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

/// A JWT's claims with the optional profile claims that keep the user's directory entry
/// current: `name` (their display name) and `email`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    #[serde(flatten)]
    pub claims: Claims,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// What a token says about its user, as recorded in their directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Profile {
    name: Option<String>,
    email: Option<String>,
}

impl Profile {
    /// The profile claims worth recording: an email claim that is not an address is dropped.
    fn from_claims(name: Option<String>, email: Option<String>, subject: &str) -> Option<Self> {
        let email = email.filter(|email| match Email::parse(email.as_str()) {
            Ok(_) => true,
            Err(error) => {
                tracing::debug!(
                    subject,
                    reason = %error.message,
                    "the token's `email` claim is not an address; ignored"
                );
                false
            }
        });
        let name = name.filter(|name| !name.trim().is_empty());
        (name.is_some() || email.is_some()).then_some(Self { name, email })
    }

    fn digest(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }
}

/// The profile claims this process has recorded, per tenant and subject (a digest of them), so
/// an unchanged token writes nothing. Bounded: when [`ClaimsSeen::CAPACITY`] users are known it
/// starts over, which costs each user one more write that records nothing new.
#[derive(Debug, Default)]
pub struct ClaimsSeen {
    recorded: Mutex<HashMap<(TenantId, UserId), u64>>,
}

impl ClaimsSeen {
    pub const CAPACITY: usize = 10_000;

    fn is_recorded(&self, key: &(TenantId, UserId), digest: u64) -> bool {
        let recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
        recorded.get(key) == Some(&digest)
    }

    fn remember(&self, key: (TenantId, UserId), digest: u64) {
        let mut recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
        if recorded.len() >= Self::CAPACITY && !recorded.contains_key(&key) {
            recorded.clear();
        }
        recorded.insert(key, digest);
    }
}

/// Mints an HS256 development token from [`Claims`] or [`TokenClaims`].
pub fn mint_hs256(secret: &[u8], claims: &impl Serialize) -> jsonwebtoken::errors::Result<String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
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
    /// The request's `X-Request-Id` (set by the gateway when the client sent none), recorded in
    /// the metadata of every event the request causes.
    pub request_id: Option<String>,
}

/// How far (in seconds) a JWT's `exp`, `nbf` and `iat` may be off to allow for clock skew.
pub const LEEWAY_SECONDS: u64 = 30;

/// Prefixes of the callers the service names itself: API keys (`key:<key id>`), the deadline
/// sweeper (`system:…`), executors (`executor:…`) and the command line (`cli:…`).
pub const RESERVED_SUBJECT_PREFIXES: [&str; 4] = ["key:", "system:", "executor:", "cli:"];

/// The reserved prefix `subject` takes, compared without regard to ASCII case: a JWT whose `sub`
/// has one is refused, so no token can pass for an API key or for the service itself.
pub fn reserved_subject(subject: &str) -> Option<&'static str> {
    RESERVED_SUBJECT_PREFIXES.into_iter().find(|prefix| {
        subject
            .get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    })
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::unauthorized("invalid_token", detail)
}

fn not_yet_valid(claim: &str) -> ApiError {
    ApiError::unauthorized(
        "token_not_yet_valid",
        format!("the token is not valid yet: its `{claim}` claim lies in the future"),
    )
}

/// Verifies credentials.
#[derive(Debug, Clone)]
pub struct Authenticator {
    config: Arc<AuthConfig>,
    claims_seen: Arc<ClaimsSeen>,
}

impl Authenticator {
    pub fn new(config: AuthConfig) -> Self {
        Self {
            config: Arc::new(config),
            claims_seen: Arc::default(),
        }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
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

    fn verify_jwt(&self, token: &str) -> Result<(Caller, Option<Profile>), ApiError> {
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
        let data = jsonwebtoken::decode::<TokenClaims>(token, &key, &self.validation(header.alg))
            .map_err(|err| {
            use jsonwebtoken::errors::ErrorKind;
            match err.kind() {
                ErrorKind::ExpiredSignature => {
                    ApiError::unauthorized("token_expired", "the token has expired")
                }
                ErrorKind::ImmatureSignature => not_yet_valid("nbf"),
                ErrorKind::InvalidClaimFormat(claim) => invalid(format!(
                    "the token's `{claim}` claim is not a number of seconds"
                )),
                ErrorKind::InvalidSignature => invalid("the token's signature does not verify"),
                ErrorKind::MissingRequiredClaim(claim) => {
                    invalid(format!("the token has no `{claim}` claim"))
                }
                _ => invalid(format!("the token is not valid: {err}")),
            }
        })?;
        let TokenClaims {
            claims,
            name,
            email,
        } = data.claims;
        let profile = Profile::from_claims(name, email, &claims.sub);
        let leeway = i64::try_from(LEEWAY_SECONDS).unwrap_or(i64::MAX);
        if claims
            .iat
            .is_some_and(|iat| iat > chrono::Utc::now().timestamp().saturating_add(leeway))
        {
            return Err(not_yet_valid("iat"));
        }
        if let Some(prefix) = reserved_subject(&claims.sub) {
            return Err(invalid(format!(
                "claim `sub`: the `{prefix}` prefix is reserved for callers the service names itself"
            )));
        }
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
        Ok((
            Caller {
                tenant,
                principal: Principal { id, roles },
                credential: Credential::Jwt,
                request_id: None,
            },
            profile,
        ))
    }

    /// Records `profile` in the caller's own directory entry unless this process already did.
    /// Never refuses the request: a failed write is logged and tried again with the next one.
    async fn record_profile(&self, state: &AppState, caller: &Caller, profile: Profile) {
        let key = (caller.tenant.clone(), caller.principal.id.clone());
        let digest = profile.digest();
        if self.claims_seen.is_recorded(&key, digest) {
            return;
        }
        let actor = Actor::new(
            caller.tenant.clone(),
            caller.principal.clone(),
            Channel::Api,
        );
        match countersign_app::members::record_claims(
            &state.app,
            &actor,
            profile.name.as_deref(),
            profile.email.as_deref(),
        )
        .await
        {
            Ok(()) => self.claims_seen.remember(key, digest),
            Err(error) => tracing::warn!(
                tenant = %caller.tenant,
                principal = %caller.principal.id,
                code = error.code(),
                "the token's name and email claims were not recorded"
            ),
        }
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
            .app
            .ledger()
            .load::<ApiKeys>(&tenant)
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
            request_id: None,
        })
    }

    /// The caller `authorization` proves, and the profile (`name`, `email`) its token carries;
    /// records nothing.
    async fn verify(
        &self,
        state: &AppState,
        authorization: Option<&str>,
    ) -> Result<(Caller, Option<Profile>), ApiError> {
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
            Ok((self.verify_api_key(state, token).await?, None))
        } else {
            self.verify_jwt(token)
        }
    }

    /// The caller `authorization` proves; a token's `name` and `email` claims are recorded in
    /// their directory entry (once per change, see [`Self::record_profile`]).
    pub async fn authenticate(
        &self,
        state: &AppState,
        authorization: Option<&str>,
    ) -> Result<Caller, ApiError> {
        let (caller, profile) = self.verify(state, authorization).await?;
        if let Some(profile) = profile {
            self.record_profile(state, &caller, profile).await;
        }
        Ok(caller)
    }
}

/// Re-verifies the credential of a long-lived response (an event stream) every
/// [`crate::Limits::credential_recheck`], so the response ends when its key is revoked or its
/// token expires instead of outliving them.
#[derive(Debug, Clone)]
pub struct CredentialWatch {
    state: AppState,
    authorization: Option<String>,
    every: Duration,
}

impl CredentialWatch {
    /// Watches the credential `headers` authenticated with.
    pub fn new(state: &AppState, headers: &HeaderMap) -> Self {
        Self {
            state: state.clone(),
            authorization: headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
            every: state.limits.credential_recheck,
        }
    }

    /// Watches `credential` (a JWT or an API key, as sent after `Bearer `) held elsewhere than
    /// the `Authorization` header, such as the console's session cookie.
    pub fn for_credential(state: &AppState, credential: &str) -> Self {
        Self {
            state: state.clone(),
            authorization: Some(format!("Bearer {credential}")),
            every: state.limits.credential_recheck,
        }
    }

    /// Resolves with the refusal a new request with this credential would get (`api_key_revoked`,
    /// `token_expired`, …), at the first re-check after it stops authenticating. A check that
    /// cannot be made (the store is unreachable) refuses too: fail closed.
    pub async fn refused(self) -> ApiError {
        let every = self.every.max(Duration::from_millis(10));
        let mut checks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            checks.tick().await;
            // A re-check only verifies: the request that opened the stream recorded the claims.
            if let Err(refusal) = self
                .state
                .auth
                .verify(&self.state, self.authorization.as_deref())
                .await
            {
                return refusal;
            }
        }
    }
}

pub use countersign_app::digest;

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Authenticated and counted once per request: a second extraction reuses the first.
        if let Some(caller) = parts.extensions.get::<Self>() {
            return Ok(caller.clone());
        }
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        let (mut caller, profile) = state.auth.verify(state, header).await?;
        caller.request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        tracing::Span::current().record("tenant", caller.tenant.as_str());
        tracing::Span::current().record("principal", caller.principal.id.as_str());
        state
            .rate_limiters
            .check(&state.limits, &caller.tenant, &caller.principal.id)?;
        // Only a request within its limits writes the token's claims to the directory.
        if let Some(profile) = profile {
            state.auth.record_profile(state, &caller, profile).await;
        }
        parts.extensions.insert(caller.clone());
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
