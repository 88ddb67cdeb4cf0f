//! Sessions and CSRF.
//!
//! The session cookie holds the credential the person signed in with (a token or an API key),
//! encrypted and authenticated with a key derived from the service's configured secrets, so
//! every api process that shares those secrets reads it. Every request re-authenticates the
//! credential with the gateway's `Authenticator`: the principal, tenant and roles are exactly
//! the credential's, a revoked key or an expired token ends the session at once, and the
//! per-tenant and per-principal rate limits apply as on `/v1`.
//!
//! Every form carries a CSRF token, a keyed hash of the session's credential; every POST is
//! refused (403, nothing recorded) without the right one. The sign-in form, which has no
//! session yet, carries one bound to a random pre-session cookie (double submit).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum_extra::extract::cookie::{Cookie, Key, PrivateCookieJar, SameSite};
use countersign_app::{Actor, Channel};
use countersign_gateway::AuthConfig;
use countersign_gateway::auth::Caller;

use crate::Console;
use crate::error::PageError;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "countersign_session";
/// The pre-session cookie the sign-in form's CSRF token is bound to.
pub const SIGN_IN_COOKIE: &str = "countersign_sign_in";
/// The longest a session lasts, whatever the credential's own expiry.
pub const MAX_SESSION_SECONDS: i64 = 12 * 3600;

/// The console's keys, derived from the configured secrets.
pub struct Keys {
    cookie: Key,
    csrf: [u8; 32],
}

impl Keys {
    /// Derives the keys from the HS256 secret and the API key secret, so that every process
    /// configured alike reads the same cookies. With neither (public keys only), a random key
    /// per process: sessions then last as long as the process.
    pub fn derive(config: &AuthConfig) -> Self {
        let mut material = Vec::new();
        if let Some(secret) = &config.hs256_secret {
            material.extend_from_slice(b"hs256:");
            material.extend_from_slice(secret);
        }
        if let Some(secret) = &config.api_key_secret {
            material.extend_from_slice(b"api-key:");
            material.extend_from_slice(secret);
        }
        if material.is_empty() {
            tracing::warn!(
                "console: no shared secret configured; sessions are bound to this process"
            );
            for _ in 0..4 {
                material.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
            }
        }
        let mut cookie = [0u8; 64];
        let mut hasher = blake3::Hasher::new_derive_key("countersign console session cookie v1");
        hasher.update(&material);
        hasher.finalize_xof().fill(&mut cookie);
        Self {
            cookie: Key::from(&cookie),
            csrf: blake3::derive_key("countersign console csrf v1", &material),
        }
    }

    /// The CSRF token bound to `session` (a credential, or a pre-session nonce).
    pub fn csrf_token(&self, session: &str) -> String {
        blake3::keyed_hash(&self.csrf, session.as_bytes())
            .to_hex()
            .to_string()
    }

    /// Whether `token` is the CSRF token of `session`, compared in constant time.
    pub fn csrf_matches(&self, session: &str, token: &str) -> bool {
        blake3::Hash::from_hex(token.trim())
            .is_ok_and(|token| token == blake3::keyed_hash(&self.csrf, session.as_bytes()))
    }

    pub fn jar(&self, headers: &HeaderMap) -> PrivateCookieJar {
        PrivateCookieJar::from_headers(headers, self.cookie.clone())
    }
}

/// Whether the request reached us over TLS (directly or through a proxy that says so).
pub fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
        || headers
            .get("forwarded")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.to_ascii_lowercase().contains("proto=https"))
}

/// A cookie with the console's attributes: `HttpOnly; SameSite=Strict; Path=/` (and `Secure`
/// over TLS), living `seconds`.
pub fn cookie(name: &'static str, value: String, seconds: i64, secure: bool) -> Cookie<'static> {
    Cookie::build((name, value))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .secure(secure)
        .max_age(time::Duration::seconds(seconds.max(0)))
        .build()
}

/// The expiry (`exp`, seconds since the epoch) a JWT claims, read without verifying it (only
/// after the gateway verified it).
pub fn jwt_expiry(credential: &str) -> Option<i64> {
    use base64::Engine as _;
    let payload = credential.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_i64()
}

/// How long a session with `credential` may live: until the credential expires, at most
/// [`MAX_SESSION_SECONDS`].
pub fn lifetime(credential: &str) -> i64 {
    let now = chrono::Utc::now().timestamp();
    match jwt_expiry(credential) {
        Some(exp) if !credential.starts_with("csk.") => {
            exp.saturating_sub(now).min(MAX_SESSION_SECONDS)
        }
        _ => MAX_SESSION_SECONDS,
    }
}

/// Verifies `credential` with the gateway's authenticator, exactly as `/v1` would.
pub async fn authenticate(
    console: &Console,
    credential: &str,
) -> Result<Caller, countersign_gateway::error::ApiError> {
    let state = &console.gateway;
    state
        .auth
        .authenticate(state, Some(&format!("Bearer {}", credential.trim())))
        .await
}

/// The signed-in person of a request.
#[derive(Debug, Clone)]
pub struct Session {
    pub actor: Actor,
    /// The credential the session carries (never rendered).
    pub credential: String,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
}

impl Session {
    pub fn has_any(&self, roles: &[&str]) -> bool {
        self.actor.has_any(roles)
    }
}

impl FromRequestParts<Console> for Session {
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Console,
    ) -> Result<Self, Self::Rejection> {
        if let Some(session) = parts.extensions.get::<Self>() {
            return Ok(session.clone());
        }
        let jar = console.keys.jar(&parts.headers);
        let credential = jar
            .get(SESSION_COOKIE)
            .map(|cookie| cookie.value().to_owned())
            .ok_or(PageError::SignIn { reason: None })?;
        let caller = authenticate(console, &credential)
            .await
            .map_err(|refusal| PageError::SignIn {
                reason: Some(refusal.detail),
            })?;
        console
            .gateway
            .rate_limiters
            .check(
                &console.gateway.limits,
                &caller.tenant,
                &caller.principal.id,
            )
            .map_err(PageError::from)?;
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        tracing::Span::current().record("tenant", caller.tenant.as_str());
        tracing::Span::current().record("principal", caller.principal.id.as_str());
        let session = Self {
            actor: Actor::new(caller.tenant, caller.principal, Channel::Console)
                .with_request_id(request_id),
            csrf: console.keys.csrf_token(&credential),
            credential,
        };
        parts.extensions.insert(session.clone());
        Ok(session)
    }
}

/// A form POSTed by a signed-in person with the right CSRF token: its fields in order
/// (repeated names kept, for the inbox's selected rows).
#[derive(Debug)]
pub struct Posted {
    pub session: Session,
    pub fields: Vec<(String, String)>,
}

impl Posted {
    /// The first value of `name`, trimmed; empty counts as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        field(&self.fields, name)
    }

    pub fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The first value of `name` among `fields`, trimmed; empty counts as absent.
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// Reads an urlencoded body into its fields.
pub async fn read_fields(request: Request) -> Result<Vec<(String, String)>, PageError> {
    let bytes = axum::body::to_bytes(request.into_body(), 256 * 1024)
        .await
        .map_err(|_| PageError::new(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."))?;
    Ok(form_urlencoded::parse(&bytes).into_owned().collect())
}

impl FromRequest<Console> for Posted {
    type Rejection = PageError;

    async fn from_request(request: Request, console: &Console) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let session = Session::from_request_parts(&mut parts, console).await?;
        let header_token = parts
            .headers
            .get("x-csrf-token")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let fields = read_fields(Request::from_parts(parts, body)).await?;
        let token = field(&fields, "csrf")
            .map(str::to_owned)
            .or(header_token)
            .unwrap_or_default();
        if !console.keys.csrf_matches(&session.credential, &token) {
            tracing::warn!(
                tenant = %session.actor.tenant,
                principal = %session.actor.principal.id,
                "console: a POST without a valid CSRF token was refused"
            );
            return Err(PageError::csrf());
        }
        Ok(Self { session, fields })
    }
}
