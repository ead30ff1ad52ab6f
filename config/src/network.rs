//! IP networks in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or a bare address for one
//! host), as `[server] trusted_proxies` and a credential's `source_networks` give them; and
//! the workspace's one answer to "is this host loopback?" ([`is_loopback`]).

use std::net::IpAddr;

/// Whether `url`'s host is loopback: the only hosts plain `http` may reach, and only when
/// `[outbound] allow_loopback_http` is set (docs/configuration.md, "Plain http to loopback
/// hosts").
///
/// Every caller asks the same question, whether a request to this URL stays on this
/// machine: configuration validation (issuers, authority hosts, `public_url`, ...), the
/// broker's outbound calls (including a discovery document's `jwks_uri` learnt at run
/// time), the policy's check of issuers registered through the admin API, `wif-broker dev
/// token` and the admin CLI's warning about plain http. So there is one rule:
///
/// - an IPv4 literal in 127.0.0.0/8 (all of it is loopback, RFC 1122), or the IPv6 literal
///   `::1`; an IPv4 loopback address mapped into IPv6 (`[::ffff:127.0.0.1]`) too, since a
///   connection to it reaches 127.0.0.1 (the same convention as [`Cidr::contains`]);
/// - the name `localhost`, in any case (URLs lower-case host names: `LOCALHOST` is
///   `localhost`);
/// - nothing else. Names are never resolved, so `127.0.0.1.nip.io` is not loopback
///   whatever it resolves to. Neither are subdomains of `localhost` (`app.localhost`) nor
///   the absolute form `localhost.`: RFC 6761 asks resolvers to map them to loopback, but
///   the system resolver does not always do so and may ask DNS instead. `0.0.0.0` and `::`
///   are "every address" for a listener, not a destination, and are not loopback either.
pub fn is_loopback(url: &url::Url) -> bool {
    url.host().is_some_and(|host| is_loopback_host(&host))
}

/// Whether `host` is loopback by the rule of [`is_loopback`]: for a host that is not in a
/// URL, such as the `Host` header of a request the agent checks against DNS rebinding
/// (docs/agent.md, "Who may call the agent"). A name is compared as given, never resolved.
pub fn is_loopback_host<S: AsRef<str>>(host: &url::Host<S>) -> bool {
    match host {
        url::Host::Domain(name) => name.as_ref().eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => is_loopback_ip(IpAddr::V4(*ip)),
        url::Host::Ipv6(ip) => is_loopback_ip(IpAddr::V6(*ip)),
    }
}

/// Whether `ip` is a loopback address: 127.0.0.0/8, `::1`, or 127.0.0.0/8 mapped into IPv6
/// (see [`is_loopback`]).
pub fn is_loopback_ip(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// One network: an address and how many leading bits of it are fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n`, or a bare address (all its bits). The address must
    /// be the network's first: `10.0.0.1/8` is refused as a likely mistake.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| {
            format!("`{text}` is not an IP network such as 10.0.0.0/8 or 2001:db8::/32")
        })?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("`{text}`: the prefix length must be 0 to {max}")),
            },
        };
        let cidr = Self { network, prefix };
        if cidr.masked(network) != network {
            return Err(format!(
                "`{text}` has host bits set; the network is {}",
                Cidr {
                    network: cidr.masked(network),
                    prefix
                }
            ));
        }
        Ok(cidr)
    }

    fn masked(&self, addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    /// Whether `addr` is in this network. An IPv4 address mapped into IPv6
    /// (`::ffff:10.1.2.3`, as a dual-stack listener reports IPv4 peers) counts as the
    /// IPv4 address.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        addr.is_ipv4() == self.network.is_ipv4() && self.masked(addr) == self.network
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Parses every entry; the first bad one is the error, with its position.
pub fn parse_all(entries: &[String]) -> Result<Vec<Cidr>, (usize, String)> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| Cidr::parse(e).map_err(|m| (i, m)))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn loopback_is_127_8_and_1_and_the_name_localhost_only() {
        for (url, loopback) in [
            ("http://localhost:1", true),
            ("http://LOCALHOST", true),
            ("http://LocalHost:8080/path", true),
            ("http://127.0.0.1", true),
            ("http://127.8.9.1", true),
            ("http://127.255.255.255:1", true),
            ("http://[::1]:80", true),
            ("http://[0:0:0:0:0:0:0:1]", true),
            ("http://[::ffff:127.0.0.1]", true),
            ("http://[::ffff:127.1.2.3]:8080", true),
            // Names are not resolved.
            ("http://127.0.0.1.nip.io", false),
            ("http://localhost.example.com", false),
            ("http://app.localhost", false),
            ("http://localhost.", false),
            ("http://localhostx", false),
            // Every address is not a destination.
            ("http://0.0.0.0:8080", false),
            ("http://[::]:8080", false),
            ("http://[::ffff:10.0.0.1]", false),
            ("http://[::ffff:0.0.0.0]", false),
            ("http://10.0.0.1", false),
            ("http://128.0.0.1", false),
            ("http://126.255.255.255", false),
            ("http://[::2]", false),
            ("http://169.254.169.254", false),
            ("file:///etc/passwd", false),
        ] {
            let parsed = url::Url::parse(url).unwrap();
            assert_eq!(is_loopback(&parsed), loopback, "{url}");
        }
        // The url crate reads these IPv4 spellings as 127.0.0.1, as the resolver would.
        for url in ["http://2130706433", "http://0x7f.1", "http://127.1"] {
            let parsed = url::Url::parse(url).unwrap();
            assert!(is_loopback(&parsed), "{url} -> {parsed}");
        }
    }

    #[test]
    fn hosts_outside_urls_follow_the_same_rule() {
        use std::net::{Ipv4Addr, Ipv6Addr};
        for (host, loopback) in [
            (url::Host::Domain("localhost"), true),
            (url::Host::Domain("LocalHost"), true),
            (url::Host::Domain("localhost."), false),
            (url::Host::Domain("app.localhost"), false),
            (url::Host::Domain("127.0.0.1.nip.io"), false),
            // Not an address to this function: a name, never resolved.
            (url::Host::Domain("127.1"), false),
            (url::Host::Ipv4(Ipv4Addr::new(127, 0, 0, 1)), true),
            (url::Host::Ipv4(Ipv4Addr::new(127, 9, 0, 1)), true),
            (url::Host::Ipv4(Ipv4Addr::new(169, 254, 169, 254)), false),
            (url::Host::Ipv4(Ipv4Addr::UNSPECIFIED), false),
            (url::Host::Ipv6(Ipv6Addr::LOCALHOST), true),
            (
                url::Host::Ipv6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped()),
                true,
            ),
            (url::Host::Ipv6(Ipv6Addr::UNSPECIFIED), false),
        ] {
            assert_eq!(is_loopback_host(&host), loopback, "{host:?}");
        }
    }

    #[test]
    fn networks_hold_their_addresses() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let host = Cidr::parse("127.0.0.1").unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("203.0.113.7".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
    }

    #[test]
    fn mistakes_are_named() {
        assert!(
            Cidr::parse("10.0.0.1/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(
            Cidr::parse("intranet")
                .unwrap_err()
                .contains("not an IP network")
        );
    }
}
