//! Who is asking: the client address credentials' `source_networks` judge
//! (docs/configuration.md, `trusted_proxies`). The socket's peer, unless that peer is a
//! trusted proxy: then the nearest address in `X-Forwarded-For` that is not one. A header
//! from anyone else is ignored, so a caller cannot claim an address by writing it.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use wif_config::network::Cidr;

use super::AppState;

/// The client's address, `None` when the request carries no peer address (not over
/// TCP) or a trusted proxy forwarded an address that does not parse.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub Option<IpAddr>);

/// The client address for a request from `peer` with `headers`.
pub fn resolve(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[Cidr]) -> Option<IpAddr> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = peer?;
    if !is_trusted(peer) {
        return Some(peer);
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    // Right to left: each hop appends the address it received from.
    for hop in forwarded.iter().rev() {
        client = hop.parse::<IpAddr>().ok()?;
        if !is_trusted(client) {
            break;
        }
    }
    Some(client)
}

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        Ok(Self(resolve(
            peer,
            &parts.headers,
            state.broker.trusted_proxies(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxies = [Cidr::parse("10.0.0.0/8").unwrap()];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let spoofed = headers(&["192.0.2.1"]);
        assert_eq!(
            resolve(ip("203.0.113.9"), &spoofed, &proxies),
            ip("203.0.113.9")
        );
        assert_eq!(resolve(ip("10.0.0.2"), &spoofed, &proxies), ip("192.0.2.1"));
        // The client prepended a fake; the proxy appended what it saw.
        let chain = headers(&["192.0.2.1, 198.51.100.7", "10.0.0.5"]);
        assert_eq!(
            resolve(ip("10.0.0.2"), &chain, &proxies),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolve(ip("10.0.0.2"), &headers(&[]), &proxies),
            ip("10.0.0.2")
        );
        assert_eq!(resolve(ip("10.0.0.2"), &headers(&["junk"]), &proxies), None);
        assert_eq!(resolve(None, &spoofed, &proxies), None);
    }
}
