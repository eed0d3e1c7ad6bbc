//! Where callbacks may go. A `callback_url` comes from whoever may submit, so
//! without a policy Sluice would POST, on their behalf, to its own loopback,
//! the private network or a cloud metadata address.
//!
//! By default only public addresses are reached. A host name is resolved here,
//! its addresses filtered, and the connection is made to an address that passed
//! (the HTTP client asks this resolver, so a name that resolves differently a
//! second time, DNS rebinding, cannot slip past). An IP address written in the
//! URL never goes through a resolver, so it is checked before sending.
//! `--callback-allow` admits internal receivers by network or by name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Networks a callback never reaches unless `--callback-allow` admits them:
/// loopback, private (RFC 1918), CGNAT, link-local (cloud metadata),
/// unspecified and "this network", multicast, reserved and broadcast, and
/// IPv6's unique-local, link-local, site-local, multicast and the transition
/// prefixes that can tunnel to any IPv4 address.
static DENIED: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
        // Unspecified, loopback and the old IPv4-compatible addresses.
        "::/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/32",
        "2002::/16",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    ]
    .iter()
    .map(|net| net.parse().expect("the deny-list parses"))
    .collect()
});

/// The IPv4/IPv6 translation prefix: `64:ff9b::a.b.c.d` reaches `a.b.c.d`.
const NAT64: Ipv6Addr = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0);

/// The IPv4 address an IPv6 address stands for (IPv4-mapped or NAT64), or the
/// address itself.
fn effective(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            if segments[..6] == NAT64.segments()[..6] {
                let [.., a, b, c, d] = v6.octets();
                IpAddr::V4(Ipv4Addr::new(a, b, c, d))
            } else {
                ip.to_canonical()
            }
        }
        IpAddr::V4(_) => ip,
    }
}

/// Whether an address is internal: on the deny-list, directly or through the
/// IPv4 address it stands for.
fn is_internal(ip: IpAddr) -> bool {
    let effective = effective(ip);
    DENIED
        .iter()
        .any(|net| net.contains(&ip) || net.contains(&effective))
}

/// One `--callback-allow`: a network, or a host name whose addresses are all
/// admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackAllow {
    Net(IpNet),
    Host(String),
}

impl FromStr for CallbackAllow {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Self::Net(net.trunc()));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self::Net(IpNet::from(ip)));
        }
        let name = text.trim_end_matches('.').to_ascii_lowercase();
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if valid && !name.contains('/') {
            Ok(Self::Host(name))
        } else {
            Err(format!(
                "{text:?} is neither a network (10.0.0.0/8, fd00::/8, 192.0.2.7) nor a host name"
            ))
        }
    }
}

/// The destinations callbacks may reach.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    allowed_nets: Vec<IpNet>,
    /// Lower case, without a trailing dot.
    allowed_hosts: Vec<String>,
}

impl Destinations {
    pub fn new(allow: &[CallbackAllow]) -> Self {
        let mut destinations = Self::default();
        for entry in allow {
            match entry {
                CallbackAllow::Net(net) => destinations.allowed_nets.push(*net),
                CallbackAllow::Host(name) => destinations.allowed_hosts.push(name.clone()),
            }
        }
        destinations
    }

    /// Whether a callback may connect to `ip`.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let effective = effective(ip);
        !is_internal(ip)
            || self
                .allowed_nets
                .iter()
                .any(|net| net.contains(&ip) || net.contains(&effective))
    }

    /// Whether `host` was admitted by name, whatever it resolves to.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowed_hosts.contains(&host)
    }
}

/// The resolver's refusal: no address of the name may be reached.
#[derive(Debug, thiserror::Error)]
#[error("destination not allowed")]
pub(crate) struct DestinationRefused;

/// Resolves a callback's host and keeps only the addresses the policy allows,
/// so that the check and the connection use the same address.
pub(crate) struct GuardedResolver {
    pub(crate) destinations: Arc<Destinations>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let destinations = Arc::clone(&self.destinations);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let by_name = destinations.allows_host(&host);
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| by_name || destinations.allows_ip(addr.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(DestinationRefused) as Box<_>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_on_the_deny_list() {
        for address in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "::127.0.0.1",
            "2002:7f00:1::1",
        ] {
            assert!(is_internal(ip(address)), "{address}");
            assert!(!Destinations::default().allows_ip(ip(address)), "{address}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for address in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4007:80e::200e",
            "::ffff:93.184.216.34",
            "64:ff9b::808:808",
        ] {
            assert!(!is_internal(ip(address)), "{address}");
            assert!(Destinations::default().allows_ip(ip(address)), "{address}");
        }
    }

    #[test]
    fn callback_allow_admits_networks_and_names() {
        let allow: Vec<CallbackAllow> = ["127.0.0.0/8", "10.1.2.3", "fd00::/8", "Hooks.Internal."]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        assert_eq!(allow[1], CallbackAllow::Net("10.1.2.3/32".parse().unwrap()));
        assert_eq!(allow[3], CallbackAllow::Host("hooks.internal".into()));
        let destinations = Destinations::new(&allow);
        assert!(destinations.allows_ip(ip("127.0.0.1")));
        assert!(destinations.allows_ip(ip("::ffff:127.0.0.1")));
        assert!(destinations.allows_ip(ip("10.1.2.3")));
        assert!(!destinations.allows_ip(ip("10.1.2.4")));
        assert!(destinations.allows_ip(ip("fd00::5")));
        assert!(!destinations.allows_ip(ip("169.254.169.254")));
        assert!(!destinations.allows_ip(ip("::1")));
        assert!(destinations.allows_host("hooks.internal"));
        assert!(destinations.allows_host("HOOKS.internal."));
        assert!(!destinations.allows_host("other.internal"));
    }

    #[test]
    fn bad_allow_entries_are_refused() {
        for bad in [
            "",
            "10.0.0.0/33",
            "http://x",
            "a..b",
            "some host",
            "10.0.0.0/8/1",
        ] {
            assert!(bad.parse::<CallbackAllow>().is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_resolver_keeps_only_allowed_addresses() {
        let refused = GuardedResolver {
            destinations: Arc::new(Destinations::default()),
        };
        let name: Name = "localhost".parse().unwrap();
        let error = refused.resolve(name).await.err().expect("refused");
        assert!(error.is::<DestinationRefused>());

        let allowed = GuardedResolver {
            destinations: Arc::new(Destinations::new(&["127.0.0.0/8".parse().unwrap()])),
        };
        let addrs: Vec<SocketAddr> = allowed
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.ip().is_ipv4())
        );
    }
}
