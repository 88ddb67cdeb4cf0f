//! The one HTTP client every outbound request of the executor's capabilities goes through
//! (`webhook.post`; notification webhooks and Slack to come), closed to server-side request
//! forgery.
//!
//! - URLs are parsed with the `url` crate (as reqwest parses them); only `http` and `https`.
//! - An address off the public internet ([`countersign_domain::address::refusal`]: loopback,
//!   private, shared, link-local, unique-local, documentation, reserved, and IPv6 forms
//!   embedding one) is refused unless the operator allows its range
//!   ([`OutboundPolicy`], `COUNTERSIGN_OUTBOUND_ALLOW`); unspecified, multicast, broadcast and
//!   the cloud metadata addresses are refused whatever the allow-list says.
//! - IP literals are checked before anything is sent. Names are resolved by the client's own
//!   resolver ([`CheckingResolver`]), which checks every address the name resolves to and hands
//!   the connector only checked addresses: the connection goes to an address that was checked,
//!   from the same single resolution, so a name that answers a public address to a first lookup
//!   and a loopback address to a second (DNS rebinding) has no second lookup to exploit. A name
//!   with any refused address is refused as a whole.
//! - No proxy from the environment (a proxy would resolve and connect on its own), no redirect
//!   followed (a 3xx is an answer), a bound on the whole request's time and on the answer's size.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use countersign_domain::address::{self, Refusal};
use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The setting that opens private ranges, named in every refusal.
pub const ALLOW_SETTING: &str = "COUNTERSIGN_OUTBOUND_ALLOW";

/// Which addresses off the public internet the operator allows outbound requests to reach:
/// nothing by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    allow: Vec<IpNet>,
}

/// An allow-list entry that is not a CIDR or an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ALLOW_SETTING}: `{entry}` is not a CIDR (such as 10.0.0.0/8 or fd00::/8) or an address")]
pub struct InvalidAllowList {
    pub entry: String,
}

impl FromStr for OutboundPolicy {
    type Err = InvalidAllowList;

    /// Comma-separated CIDRs (`127.0.0.0/8, 10.1.0.0/16, fd00::/8`); a bare address is its own
    /// /32 or /128; empty means nothing private is allowed.
    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let allow = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| InvalidAllowList {
                        entry: entry.to_owned(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allow })
    }
}

impl OutboundPolicy {
    /// Allows these ranges too.
    #[must_use]
    pub fn allowing(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.allow.extend(nets);
        self
    }

    /// The allowed ranges.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allow
    }

    /// Whether a request may connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let Some(refusal) = address::refusal(ip) else {
            return Ok(());
        };
        let embedded = match ip {
            IpAddr::V6(v6) => address::embedded_ipv4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let listed = self
            .allow
            .iter()
            .any(|net| net.contains(&ip) || embedded.is_some_and(|v4| net.contains(&v4)));
        if listed && !refusal.always() {
            Ok(())
        } else {
            Err(Refused {
                name: None,
                address: ip,
                refusal,
            })
        }
    }
}

/// A destination the policy refuses: a permanent failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The name that resolved to `address`, when the URL named a host.
    pub name: Option<String>,
    pub address: IpAddr,
    pub refusal: Refusal,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            name,
            address,
            refusal,
        } = self;
        match name {
            Some(name) => write!(
                f,
                "refused: {name} resolves to {address}, {}",
                refusal.describe()
            )?,
            None => write!(f, "refused: {address} is {}", refusal.describe())?,
        }
        if refusal.always() {
            write!(f, "; no outbound request may reach it")
        } else {
            write!(f, "; allow it with {ALLOW_SETTING}")
        }
    }
}

impl std::error::Error for Refused {}

/// Why an outbound request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The destination is refused: never retried.
    #[error(transparent)]
    Refused(Refused),
    /// The URL cannot be requested: never retried.
    #[error("{0}")]
    InvalidUrl(String),
    /// Connecting, sending or reading failed (unreachable, timed out, reset): may pass later.
    #[error("{0}")]
    Transport(String),
}

impl OutboundError {
    /// Whether trying again could succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Transport(_))
    }

    /// `err` without its URL (whose credentials stay out of recorded messages).
    fn of(err: reqwest::Error) -> Self {
        let err = err.without_url();
        // The resolver's refusal travels inside reqwest's and hyper's errors.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(cause) = source {
            if let Some(refused) = cause.downcast_ref::<Refused>() {
                return Self::Refused(refused.clone());
            }
            source = cause.source();
        }
        Self::Transport(chain(&err))
    }
}

/// An error and its causes, outermost first, for messages that say what happened.
fn chain(err: &dyn std::error::Error) -> String {
    let mut causes = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    causes.join(": ")
}

/// An answer, its body cut at the client's bound.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: reqwest::StatusCode,
    pub body: Vec<u8>,
    /// Whether the body was longer than the bound (and cut there).
    pub truncated: bool,
}

/// Bounds on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From connecting (resolution included) to the answer's last byte read.
    pub timeout: Duration,
    /// At most this many bytes of an answer are read.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(20),
            max_body: 1024 * 1024,
        }
    }
}

/// The outbound HTTP client: see the module's documentation.
#[derive(Debug, Clone)]
pub struct Outbound {
    client: reqwest::Client,
    policy: Arc<OutboundPolicy>,
    limits: Limits,
}

impl Outbound {
    pub fn new(policy: OutboundPolicy, limits: Limits) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(CheckingResolver {
                policy: policy.clone(),
            }))
            // A proxy from the environment would resolve and connect past the resolver.
            .no_proxy()
            // A followed 301/302/303 turns a POST into a GET without the body, and a redirect
            // may point anywhere: it is an answer like any other 3xx.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(limits.timeout)
            .connect_timeout(limits.timeout)
            .build()?;
        Ok(Self {
            client,
            policy,
            limits,
        })
    }

    pub fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }

    /// The URL, parsed and checked as far as it can be before resolution: `http` or `https`, a
    /// host, and an IP literal host allowed by the policy.
    pub fn check_url(&self, url: &str) -> Result<url::Url, OutboundError> {
        let parsed = url::Url::parse(url)
            .map_err(|err| OutboundError::InvalidUrl(format!("not a valid URL: {err}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(OutboundError::InvalidUrl(format!(
                "`{}` is not http or https",
                parsed.scheme()
            )));
        }
        let ip = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(_)) => return Ok(parsed),
            None => {
                return Err(OutboundError::InvalidUrl(
                    "the URL names no host".to_owned(),
                ));
            }
        };
        self.policy.check(ip).map_err(OutboundError::Refused)?;
        Ok(parsed)
    }

    /// POSTs `body` to `url` with the headers `build` adds, and reads the answer within the
    /// bounds. Nothing is sent to a refused destination.
    pub async fn post(
        &self,
        url: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
        body: Vec<u8>,
    ) -> Result<Answer, OutboundError> {
        let url = self.check_url(url)?;
        let request = build(self.client.post(url)).body(body);
        let mut response = request.send().await.map_err(OutboundError::of)?;
        let status = response.status();
        let mut body = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = response.chunk().await.map_err(OutboundError::of)? {
            let room = self.limits.max_body.saturating_sub(body.len());
            if chunk.len() > room {
                body.extend_from_slice(chunk.get(..room).unwrap_or_default());
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            body,
            truncated,
        })
    }
}

/// Resolves a name once with the system resolver and answers its addresses only if every one is
/// allowed: the connector then connects to one of exactly these.
#[derive(Debug)]
pub struct CheckingResolver {
    policy: Arc<OutboundPolicy>,
}

impl CheckingResolver {
    pub fn new(policy: OutboundPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl Resolve for CheckingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addresses.is_empty() {
                return Err(format!("{host} resolves to no address").into());
            }
            for address in &addresses {
                policy.check(address.ip()).map_err(|refused| Refused {
                    name: Some(host.clone()),
                    ..refused
                })?;
            }
            let addresses: Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(list: &str) -> OutboundPolicy {
        list.parse()
            .unwrap_or_else(|err| panic!("{list} is an allow-list: {err}"))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse()
            .unwrap_or_else(|_| panic!("{text} is an address"))
    }

    #[test]
    fn nothing_private_is_allowed_by_default() {
        let none = OutboundPolicy::default();
        assert_eq!(policy(" , "), none);
        for address in [
            "127.0.0.1",
            "10.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "fe80::1",
        ] {
            assert!(none.check(ip(address)).is_err(), "{address}");
        }
        assert!(none.check(ip("93.184.215.14")).is_ok());
        let refused = none.check(ip("127.0.0.1")).expect_err("loopback");
        assert_eq!(
            refused.to_string(),
            "refused: 127.0.0.1 is a loopback address; allow it with COUNTERSIGN_OUTBOUND_ALLOW"
        );
    }

    #[test]
    fn listed_ranges_open_their_addresses_and_mapped_forms_but_never_the_closed_ones() {
        let allowed = policy("127.0.0.0/8, 10.1.0.0/16,fd00::/8, 192.168.1.5");
        assert_eq!(allowed.allowed().len(), 4);
        for address in [
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "10.1.2.3",
            "fd12::1",
            "192.168.1.5",
        ] {
            assert!(allowed.check(ip(address)).is_ok(), "{address}");
        }
        for address in ["10.2.0.1", "192.168.1.6", "::1", "172.16.0.1"] {
            assert!(allowed.check(ip(address)).is_err(), "{address}");
        }
        let everything = policy("0.0.0.0/0, ::/0");
        for address in ["169.254.169.254", "0.0.0.0", "224.0.0.1", "ff02::1", "::"] {
            let refused = everything.check(ip(address)).expect_err(address);
            assert!(
                refused
                    .to_string()
                    .ends_with("no outbound request may reach it"),
                "{refused}"
            );
        }
    }

    #[test]
    fn an_entry_that_is_not_a_range_is_named() {
        let err = "10.0.0.0/8, intranet"
            .parse::<OutboundPolicy>()
            .expect_err("not a CIDR");
        assert_eq!(err.entry, "intranet");
        assert!(err.to_string().contains(ALLOW_SETTING));
        assert!("10.0.0.0/33".parse::<OutboundPolicy>().is_err());
    }
}
