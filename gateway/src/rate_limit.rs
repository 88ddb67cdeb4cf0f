//! Rate limits on the `/v1` API, per tenant and per principal (a token's subject or an API key).
//!
//! Every `/v1` request is counted once, after authentication: the [`crate::Caller`] extractor
//! (which every `/v1` handler reaches through [`crate::extract::Acting`]) authenticates, then
//! asks [`RateLimiters::check`] before any handler code runs, and keeps the caller in the
//! request's extensions so a second extraction neither authenticates nor counts again. An
//! unauthenticated request is refused 401 before it is counted; `/healthz`, `/readyz`,
//! `/metrics`, `/docs` and `/openapi.json` take no caller and are never limited.
//!
//! The principal's limit is checked first, so a principal over its own limit spends nothing of
//! its tenant's allowance and cannot starve the tenant's other principals through it. A refusal
//! answers 429 `rate_limited` with `Retry-After` (seconds, rounded up) and changes nothing; it is
//! counted in `countersign_rate_limited_total{scope="tenant"|"principal"}`.
//!
//! The limiters are GCRA cells keyed by tenant and by (tenant, principal), kept by `governor`.
//! Memory stays bounded: at most every [`SWEEP_EVERY`] a check drops the cells that have refilled
//! to a full burst (indistinguishable from a fresh one), so only principals seen within about a
//! burst's refill time are kept.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use countersign_domain::{TenantId, UserId};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::Limits;
use crate::error::ApiError;

/// How often, at most, the limiters forget the callers whose allowance has fully refilled.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A rate: `requests` every `per`, in bursts of up to `burst` requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: NonZeroU32,
    pub per: Duration,
    pub burst: NonZeroU32,
}

impl RateLimit {
    /// `requests` a second, in bursts of as many.
    pub fn per_second(requests: NonZeroU32) -> Self {
        Self {
            requests,
            per: Duration::from_secs(1),
            burst: requests,
        }
    }

    #[must_use]
    pub fn with_burst(self, burst: NonZeroU32) -> Self {
        Self { burst, ..self }
    }

    /// Parses `<n>/s`, `<n>/m` or `<n>/h` (a bare `<n>` is per second), in bursts of `<n>`;
    /// `0` (or an empty value) means no limit.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let (count, per) = match text.split_once('/') {
            None => (text, Duration::from_secs(1)),
            Some((count, unit)) => {
                let per = match unit.trim() {
                    "s" | "sec" | "second" => Duration::from_secs(1),
                    "m" | "min" | "minute" => Duration::from_secs(60),
                    "h" | "hour" => Duration::from_secs(3600),
                    other => {
                        return Err(format!(
                            "unknown unit `{other}`: write a rate as `<requests>/s`, `/m` or `/h` (such as `100/s`)"
                        ));
                    }
                };
                (count, per)
            }
        };
        let count: u32 = count.trim().parse().map_err(|_| {
            format!("`{text}` is not a rate: write `<requests>/s`, `/m` or `/h` (such as `100/s`)")
        })?;
        let Some(requests) = NonZeroU32::new(count) else {
            return Ok(None);
        };
        if per / requests.get() < Duration::from_micros(1) {
            return Err(format!("`{text}` is faster than one request a microsecond"));
        }
        Ok(Some(Self {
            requests,
            per,
            burst: requests,
        }))
    }

    fn quota(&self) -> Quota {
        let period = (self.per / self.requests.get()).max(Duration::from_nanos(1));
        Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(self.requests))
            .allow_burst(self.burst)
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            60 => "m",
            3600 => "h",
            _ => "s",
        };
        write!(f, "{}/{unit} (burst {})", self.requests, self.burst)
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Tenant,
    Principal,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Principal => "principal",
        }
    }
}

/// A request over a limit: which one, and how long until the next request would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    pub scope: Scope,
    pub retry_after: Duration,
}

impl RateLimited {
    /// Whole seconds to wait, rounded up (at least 1).
    pub fn retry_after_seconds(&self) -> u32 {
        let seconds = self
            .retry_after
            .as_secs()
            .saturating_add(u64::from(self.retry_after.subsec_nanos() > 0));
        u32::try_from(seconds).unwrap_or(u32::MAX).max(1)
    }
}

impl From<RateLimited> for ApiError {
    fn from(limited: RateLimited) -> Self {
        let seconds = limited.retry_after_seconds();
        Self {
            retry_after: Some(seconds),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "this {} is over its rate limit; nothing was recorded, retry in {seconds} s",
                    limited.scope.as_str()
                ),
            )
        }
    }
}

type PrincipalKey = (TenantId, UserId);

#[derive(Debug)]
struct Built {
    tenant: Option<DefaultKeyedRateLimiter<TenantId>>,
    principal: Option<DefaultKeyedRateLimiter<PrincipalKey>>,
    last_sweep: Mutex<Instant>,
}

/// The gateway's limiters, shared by every clone of the state. They are built from
/// [`Limits::tenant_rate`] and [`Limits::principal_rate`] at the first check: limits changed
/// after the first request are not seen.
#[derive(Debug, Clone, Default)]
pub struct RateLimiters {
    built: Arc<OnceLock<Built>>,
}

fn limited<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    scope: Scope,
) -> Result<(), RateLimited> {
    limiter.check_key(key).map_err(|not_until| RateLimited {
        scope,
        retry_after: not_until.wait_time_from(limiter.clock().now()),
    })
}

impl RateLimiters {
    fn built(&self, limits: &Limits) -> &Built {
        self.built.get_or_init(|| Built {
            tenant: limits
                .tenant_rate
                .map(|rate| RateLimiter::keyed(rate.quota())),
            principal: limits
                .principal_rate
                .map(|rate| RateLimiter::keyed(rate.quota())),
            last_sweep: Mutex::new(Instant::now()),
        })
    }

    /// Counts one request of `principal` in `tenant`, or refuses it (counting the refusal in
    /// `countersign_rate_limited_total`).
    pub fn check(
        &self,
        limits: &Limits,
        tenant: &TenantId,
        principal: &UserId,
    ) -> Result<(), RateLimited> {
        let built = self.built(limits);
        self.sweep_if_due(built);
        let outcome = built
            .principal
            .as_ref()
            .map_or(Ok(()), |limiter| {
                limited(
                    limiter,
                    &(tenant.clone(), principal.clone()),
                    Scope::Principal,
                )
            })
            .and_then(|()| {
                built
                    .tenant
                    .as_ref()
                    .map_or(Ok(()), |limiter| limited(limiter, tenant, Scope::Tenant))
            });
        if let Err(limited) = &outcome {
            metrics::counter!("countersign_rate_limited_total", "scope" => limited.scope.as_str())
                .increment(1);
        }
        outcome
    }

    /// How many callers the limiters remember (tenants plus principals).
    pub fn tracked(&self, limits: &Limits) -> usize {
        let built = self.built(limits);
        built.tenant.as_ref().map_or(0, RateLimiter::len)
            + built.principal.as_ref().map_or(0, RateLimiter::len)
    }

    /// Forgets every caller whose allowance has fully refilled.
    pub fn sweep(&self, limits: &Limits) {
        Self::sweep_now(self.built(limits));
    }

    fn sweep_if_due(&self, built: &Built) {
        let Ok(mut last) = built.last_sweep.try_lock() else {
            return;
        };
        if last.elapsed() < SWEEP_EVERY {
            return;
        }
        *last = Instant::now();
        drop(last);
        Self::sweep_now(built);
    }

    fn sweep_now(built: &Built) {
        if let Some(limiter) = &built.tenant {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &built.principal {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn rate(text: &str) -> Option<RateLimit> {
        RateLimit::parse(text).expect("a rate")
    }

    #[test]
    fn rates_parse_with_units_and_zero_is_off() {
        let hundred = NonZeroU32::new(100).expect("non-zero");
        assert_eq!(rate("100/s"), Some(RateLimit::per_second(hundred)));
        assert_eq!(rate("100"), Some(RateLimit::per_second(hundred)));
        assert_eq!(
            rate("100/m").map(|rate| rate.per),
            Some(Duration::from_secs(60))
        );
        assert_eq!(rate("0"), None);
        assert_eq!(rate("0/s"), None);
        assert_eq!(rate(""), None);
        for bad in ["x/s", "10/d", "-1/s", "1.5/s", "4000000000/s"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let after = |retry_after| {
            RateLimited {
                scope: Scope::Tenant,
                retry_after,
            }
            .retry_after_seconds()
        };
        assert_eq!(after(Duration::ZERO), 1);
        assert_eq!(after(Duration::from_millis(10)), 1);
        assert_eq!(after(Duration::from_secs(1)), 1);
        assert_eq!(after(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn off_limits_never_refuse() {
        let limiters = RateLimiters::default();
        let limits = Limits::default();
        let tenant = TenantId::parse("acme").expect("tenant");
        let user = UserId::parse("alice").expect("user");
        for _ in 0..1000 {
            assert_eq!(limiters.check(&limits, &tenant, &user), Ok(()));
        }
        assert_eq!(limiters.tracked(&limits), 0);
    }

    #[test]
    fn a_burst_is_allowed_then_refused() {
        let limiters = RateLimiters::default();
        let per_hour = RateLimit::parse("1/h")
            .expect("a rate")
            .map(|rate| rate.with_burst(NonZeroU32::new(3).expect("non-zero")));
        let limits = Limits {
            principal_rate: per_hour,
            ..Limits::default()
        };
        let tenant = TenantId::parse("acme").expect("tenant");
        let user = UserId::parse("alice").expect("user");
        for _ in 0..3 {
            assert_eq!(limiters.check(&limits, &tenant, &user), Ok(()));
        }
        let refused = limiters
            .check(&limits, &tenant, &user)
            .expect_err("over the burst");
        assert_eq!(refused.scope, Scope::Principal);
        assert!(refused.retry_after_seconds() > 1000);
    }

    #[tokio::test]
    async fn callers_whose_allowance_refilled_are_forgotten() {
        use countersign_ledger::testing::{eventually, within};
        let limiters = RateLimiters::default();
        let fast = RateLimit::parse("1000/s").expect("a rate");
        let limits = Limits {
            tenant_rate: fast,
            principal_rate: fast,
            ..Limits::default()
        };
        let tenant = TenantId::parse("acme").expect("tenant");
        for n in 0..500 {
            let user = UserId::parse(format!("user-{n}")).expect("user");
            assert_eq!(limiters.check(&limits, &tenant, &user), Ok(()));
        }
        assert_eq!(limiters.tracked(&limits), 501);
        eventually(within(Duration::from_secs(10)), async || {
            limiters.sweep(&limits);
            match limiters.tracked(&limits) {
                0 => Ok(()),
                left => Err(format!("{left} callers still tracked")),
            }
        })
        .await;
    }
}
