//! Which network addresses an outbound request (a webhook, a notification) may reach: the one
//! classification the save-time check ([`crate::tenant::WebhookUrl::check_destination`]) and the
//! executor's outbound client share. Pure: no resolution, no settings.
//!
//! Every address outside the public internet has a [`Refusal`]. The executor refuses them unless
//! the operator allows their range (`COUNTERSIGN_OUTBOUND_ALLOW`), except the ones no allow-list
//! may open ([`Refusal::always`]): unspecified, multicast, broadcast and the cloud metadata
//! addresses. IPv6 forms that embed an IPv4 address (mapped `::ffff:a.b.c.d`, compatible
//! `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the IPv4 address they embed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not on the public internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unspecified,
    Loopback,
    Private,
    SharedAddressSpace,
    LinkLocal,
    CloudMetadata,
    Multicast,
    Broadcast,
    UniqueLocal,
    Documentation,
    Reserved,
}

impl Refusal {
    /// The kind of address, as a sentence's complement ("127.0.0.1 is a loopback address").
    pub fn describe(self) -> &'static str {
        match self {
            Self::Unspecified => "an unspecified address",
            Self::Loopback => "a loopback address",
            Self::Private => "a private address",
            Self::SharedAddressSpace => "a shared (carrier-grade NAT) address",
            Self::LinkLocal => "a link-local address",
            Self::CloudMetadata => "the cloud metadata address",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::UniqueLocal => "a unique-local address",
            Self::Documentation => "a documentation address",
            Self::Reserved => "a reserved address",
        }
    }

    /// Whether no allow-list may open it: nothing legitimate is ever reached there.
    pub fn always(self) -> bool {
        matches!(
            self,
            Self::Unspecified | Self::CloudMetadata | Self::Multicast | Self::Broadcast
        )
    }
}

/// The IPv4 address an IPv6 address embeds (mapped, compatible, NAT64, 6to4), if any.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return Some(mapped);
    }
    let low = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    // Compatible (`::a.b.c.d`, deprecated), but `::` and `::1` are IPv6's own.
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some(low);
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low);
    }
    // 6to4 2002:a.b.c.d::/48.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

/// Why `ip` may not be reached without the operator's leave; `None` for a public address.
pub fn refusal(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(ip) => refusal_v4(ip),
        IpAddr::V6(ip) => match embedded_ipv4(ip) {
            Some(v4) => refusal_v4(v4),
            None => refusal_v6(ip),
        },
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<Refusal> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => Refusal::CloudMetadata,
        _ if ip.is_broadcast() => Refusal::Broadcast,
        // 0.0.0.0/8, "this network": connecting there reaches the host itself.
        (0, _, _) => Refusal::Unspecified,
        (127, _, _) => Refusal::Loopback,
        (10, _, _) | (192, 168, _) => Refusal::Private,
        (172, 16..=31, _) => Refusal::Private,
        (100, 64..=127, _) => Refusal::SharedAddressSpace,
        (169, 254, _) => Refusal::LinkLocal,
        (224..=239, _, _) => Refusal::Multicast,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Refusal::Documentation,
        // IETF protocol assignments, benchmarking, and 240/4 (future use).
        (192, 0, 0) | (198, 18..=19, _) | (240..=255, _, _) => Refusal::Reserved,
        _ => return None,
    })
}

fn refusal_v6(ip: Ipv6Addr) -> Option<Refusal> {
    let s = ip.segments();
    Some(match s[0] {
        _ if ip.is_unspecified() => Refusal::Unspecified,
        _ if ip.is_loopback() => Refusal::Loopback,
        // AWS's IPv6 instance metadata address (inside fc00::/7).
        _ if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => Refusal::CloudMetadata,
        0xff00..=0xffff => Refusal::Multicast,
        0xfe80..=0xfebf => Refusal::LinkLocal,
        // Site-local (fec0::/10), deprecated but still routed privately somewhere.
        0xfec0..=0xfeff => Refusal::Private,
        0xfc00..=0xfdff => Refusal::UniqueLocal,
        0x2001 if s[1] == 0xdb8 => Refusal::Documentation,
        0x3fff if s[1] <= 0x0fff => Refusal::Documentation,
        // Discard-only 100::/64.
        0x0100 if s[1..4] == [0, 0, 0] => Refusal::Reserved,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(text: &str) -> Option<Refusal> {
        refusal(
            text.parse()
                .unwrap_or_else(|_| panic!("{text} is an address")),
        )
    }

    #[test]
    fn addresses_off_the_public_internet_are_named() {
        for (address, expected) in [
            ("127.0.0.1", Refusal::Loopback),
            ("127.255.0.9", Refusal::Loopback),
            ("10.1.2.3", Refusal::Private),
            ("172.16.0.1", Refusal::Private),
            ("172.31.255.255", Refusal::Private),
            ("192.168.1.1", Refusal::Private),
            ("100.64.0.1", Refusal::SharedAddressSpace),
            ("169.254.1.1", Refusal::LinkLocal),
            ("169.254.169.254", Refusal::CloudMetadata),
            ("0.0.0.0", Refusal::Unspecified),
            ("224.0.0.1", Refusal::Multicast),
            ("255.255.255.255", Refusal::Broadcast),
            ("192.0.2.7", Refusal::Documentation),
            ("203.0.113.7", Refusal::Documentation),
            ("::", Refusal::Unspecified),
            ("::1", Refusal::Loopback),
            ("fe80::1", Refusal::LinkLocal),
            ("fc00::1", Refusal::UniqueLocal),
            ("fd12:3456::1", Refusal::UniqueLocal),
            ("fd00:ec2::254", Refusal::CloudMetadata),
            ("ff02::1", Refusal::Multicast),
            ("2001:db8::1", Refusal::Documentation),
            ("::ffff:127.0.0.1", Refusal::Loopback),
            ("::ffff:10.0.0.1", Refusal::Private),
            ("::ffff:169.254.169.254", Refusal::CloudMetadata),
            ("::127.0.0.1", Refusal::Loopback),
            ("64:ff9b::7f00:1", Refusal::Loopback),
            ("2002:7f00:1::", Refusal::Loopback),
        ] {
            assert_eq!(of(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "193.0.2.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
        ] {
            assert_eq!(of(address), None, "{address}");
        }
    }

    #[test]
    fn only_addresses_nothing_legitimate_uses_are_closed_for_good() {
        assert!(Refusal::CloudMetadata.always() && Refusal::Unspecified.always());
        assert!(Refusal::Multicast.always() && Refusal::Broadcast.always());
        assert!(!Refusal::Loopback.always() && !Refusal::Private.always());
        assert!(!Refusal::LinkLocal.always() && !Refusal::UniqueLocal.always());
    }
}
