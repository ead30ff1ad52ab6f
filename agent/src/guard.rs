//! Requests the agent answers only when they come straight from a local workload
//! (docs/agent.md, "Who may call the agent"), as IMDS does:
//!
//! - DNS rebinding: a web page the workload's browser (or any HTTP client following an
//!   attacker's name) loads can point a name it controls, say `rebind.attacker.example`, at
//!   127.0.0.1 and then call the agent as same-origin. Such a request carries the
//!   attacker's name in `Host`, so on TCP the agent answers only a `Host` (or an
//!   absolute-form request target, or an HTTP/2 `:authority`) that names it by address: a
//!   loopback host by the workspace's one rule ([`wif_config::is_loopback_host`]: an
//!   address in 127.0.0.0/8, `[::1]`, the name `localhost`), `169.254.169.254` (the IMDS
//!   address the SDKs use), or the host of its `listen` address, each with any port or
//!   none. When it listens on
//!   an unspecified address (`0.0.0.0`, `[::]`) any IP literal is accepted too: an address
//!   cannot be rebound, only a name can.
//! - Relayed requests: a request carrying `Forwarded`, `Via`, `X-Forwarded-For` or
//!   `X-Forwarded-Host` passed through a proxy, so it is not from the workload itself;
//!   real IMDS refuses it with 400. This applies to every listener, Unix socket included.
//!
//! Both are 400s in the agent's error shape, which moves SDK credential chains on. Both
//! run as one layer, [`Guard`], in front of every route: a check of the request in place,
//! nothing allocated or boxed for a request that passes (every token request pays it).

use std::future::{Ready, ready};
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::future::Either;

use wif_config::{ListenAddr, is_loopback_host};

use crate::serve::AgentError;

/// Headers a proxy adds; their presence means the request was relayed.
const PROXY_HEADERS: &[&str] = &["forwarded", "via", "x-forwarded-for", "x-forwarded-host"];

/// The checks a listener makes before any route: on TCP, that the request names the agent
/// ([`HostPolicy`]); on every listener, that no proxy relayed it.
#[derive(Debug, Clone)]
pub struct Guard {
    /// `None` on the Unix socket, which no browser can reach.
    hosts: Option<Arc<HostPolicy>>,
}

impl Guard {
    /// A TCP listener's: `hosts`, then the proxy headers.
    pub fn tcp(hosts: HostPolicy) -> Self {
        Self {
            hosts: Some(Arc::new(hosts)),
        }
    }

    /// The Unix socket's: the proxy headers only.
    pub fn unix() -> Self {
        Self { hosts: None }
    }

    /// Wraps every route of `router`.
    pub fn apply(self, router: Router) -> Router {
        router.layer(self)
    }

    /// The answer to a request that may not pass; `None` when it may.
    fn refusal(&self, request: &Request) -> Option<Response> {
        if let Some(hosts) = &self.hosts
            && let Err(why) = hosts.check(request.uri(), request.headers())
        {
            tracing::debug!(reason = why, "refused a request naming another host");
            return Some(
                AgentError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_host",
                    format!(
                        "{why}: call the agent at 127.0.0.1, [::1], localhost or \
                         169.254.169.254 (requests for other names may be DNS rebinding)"
                    ),
                )
                .into_response(),
            );
        }
        let name = proxy_header(request.headers())?;
        Some(
            AgentError::new(
                StatusCode::BAD_REQUEST,
                "proxied_request",
                format!("requests relayed by a proxy ({name} header) are refused"),
            )
            .into_response(),
        )
    }
}

impl<S> tower::Layer<S> for Guard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }
}

/// A route behind a [`Guard`].
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: Guard,
}

impl<S> tower::Service<Request> for Guarded<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.guard.refusal(&request) {
            Some(refused) => Either::Left(ready(Ok(refused))),
            None => Either::Right(self.inner.call(request)),
        }
    }
}

fn proxy_header(headers: &HeaderMap) -> Option<&'static str> {
    PROXY_HEADERS
        .iter()
        .copied()
        .find(|name| headers.contains_key(*name))
}

/// The IMDS address, which the SDKs call when told nothing else.
const IMDS_ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 169, 254));

/// The names a request on a TCP listener may call the agent by, beside loopback hosts and
/// the IMDS address.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// The host of `listen`, lowercased, when it is a name.
    name: Option<String>,
    /// The address of `listen`, when it is one (and not unspecified).
    address: Option<IpAddr>,
    any_address: bool,
}

impl HostPolicy {
    /// Loopback hosts, the IMDS address, and the host of `listen` (an address or a name);
    /// any IP literal as well when `listen` is an unspecified address.
    pub fn for_listen(listen: &ListenAddr) -> Self {
        let mut policy = Self {
            name: None,
            address: None,
            any_address: false,
        };
        match listen {
            ListenAddr::Addr(addr) if addr.ip().is_unspecified() => policy.any_address = true,
            ListenAddr::Addr(addr) => policy.address = Some(addr.ip()),
            ListenAddr::Name { host, .. } => policy.name = Some(host.to_ascii_lowercase()),
            ListenAddr::Off => {}
        }
        policy
    }

    /// Whether `authority` (`host[:port]`) names the agent.
    pub fn allows(&self, authority: &str) -> bool {
        match split_authority(authority).map(|(host, _)| parse_host(host)) {
            Some(Host::Address(ip)) => {
                self.any_address
                    || ip == IMDS_ADDRESS
                    || self.address == Some(ip)
                    || is_loopback_host(&match ip {
                        IpAddr::V4(v4) => url::Host::<&str>::Ipv4(v4),
                        IpAddr::V6(v6) => url::Host::Ipv6(v6),
                    })
            }
            Some(Host::Name(name)) => {
                self.name.as_deref() == Some(name.as_str())
                    || is_loopback_host(&url::Host::Domain(name.as_str()))
            }
            None => false,
        }
    }

    /// `Ok` when every authority the request carries is allowed and it carries one.
    fn check(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), &'static str> {
        let mut hosts = headers.get_all(header::HOST).iter();
        let host = hosts.next();
        if hosts.next().is_some() {
            return Err("more than one Host header");
        }
        let mut named = false;
        if let Some(authority) = uri.authority() {
            named = true;
            if !self.allows(authority.as_str()) {
                return Err("the request target names another host");
            }
        }
        if let Some(host) = host {
            named = true;
            if !host.to_str().is_ok_and(|h| self.allows(h)) {
                return Err("the Host header names another host");
            }
        }
        if named { Ok(()) } else { Err("no Host header") }
    }
}

#[derive(Debug, PartialEq)]
enum Host {
    Address(IpAddr),
    /// Lowercased.
    Name(String),
}

/// `host[:port]` split into the host and the port (digits, or none); `None` when malformed.
fn split_authority(authority: &str) -> Option<(&str, Option<&str>)> {
    let (host, rest) = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        (&authority[..end], &authority[end..])
    } else {
        let host = authority.split(':').next().unwrap_or_default();
        (host, &authority[host.len()..])
    };
    let port = match rest.strip_prefix(':') {
        Some(port) if (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit()) => {
            Some(port)
        }
        Some(_) => return None,
        None if rest.is_empty() => None,
        None => return None,
    };
    (!host.is_empty()).then_some((host, port))
}

fn parse_host(host: &str) -> Host {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match v6.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => Host::Address(IpAddr::V6(ip)),
            // Not an address: never equal to an allowed name either.
            Err(_) => Host::Name(host.to_ascii_lowercase()),
        };
    }
    match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => Host::Address(IpAddr::V4(ip)),
        Err(_) => Host::Name(host.to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(text: &str) -> ListenAddr {
        text.parse().unwrap()
    }

    #[test]
    fn loopback_literals_the_imds_address_and_the_listen_host_are_allowed() {
        let policy = HostPolicy::for_listen(&listen("127.0.0.1:8181"));
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8181",
            "127.0.0.1:15181",
            "localhost",
            "LocalHost:8181",
            "[::1]",
            "[::1]:8181",
            "169.254.169.254",
            "169.254.169.254:80",
            // Loopback by wif_config's one rule: all of 127.0.0.0/8, and mapped into IPv6.
            "127.0.0.2:8181",
            "[::ffff:127.0.0.1]:8181",
        ] {
            assert!(policy.allows(ok), "{ok}");
        }
        for refused in [
            "rebind.attacker.example",
            "rebind.attacker.example:8181",
            "localhost.attacker.example",
            "127.0.0.1.nip.io:8181",
            "127.1:8181",
            "0177.0.0.1",
            "10.0.0.7:8181",
            "127.0.0.1:8181:1",
            "127.0.0.1:abc",
            "127.0.0.1:",
            "[::1",
            "[::1]x",
            "[rebind.attacker.example]",
            "",
            ":8181",
            "localhost.:8181",
            "app.localhost:8181",
            "[::ffff:10.0.0.7]:8181",
            "0.0.0.0:8181",
        ] {
            assert!(!policy.allows(refused), "{refused}");
        }
        let host_network = HostPolicy::for_listen(&listen("10.0.0.7:15181"));
        assert!(host_network.allows("10.0.0.7:15181"));
        assert!(!host_network.allows("10.0.0.8:15181"));
        let v6 = HostPolicy::for_listen(&listen("[fd00::7]:8181"));
        assert!(v6.allows("[FD00::7]:8181"));
        let named = HostPolicy::for_listen(&listen("wif-agent.local:8181"));
        assert!(named.allows("wif-agent.local:8181"));
        assert!(!named.allows("rebind.attacker.example:8181"));
    }

    #[test]
    fn an_unspecified_listen_address_allows_any_address_but_no_other_name() {
        let policy = HostPolicy::for_listen(&listen("0.0.0.0:8181"));
        assert!(policy.allows("10.1.2.3:8181"));
        assert!(policy.allows("[fd00::1]:8181"));
        assert!(policy.allows("localhost:8181"));
        assert!(!policy.allows("rebind.attacker.example:8181"));
    }

    #[test]
    fn a_request_must_name_the_agent_once_everywhere() {
        let policy = HostPolicy::for_listen(&listen("127.0.0.1:8181"));
        let headers = |hosts: &[&str]| {
            let mut map = HeaderMap::new();
            for h in hosts {
                map.append(header::HOST, h.parse().unwrap());
            }
            map
        };
        let origin: Uri = "/metadata/identity/oauth2/token".parse().unwrap();
        assert!(policy.check(&origin, &headers(&["127.0.0.1:8181"])).is_ok());
        assert!(policy.check(&origin, &headers(&[])).is_err());
        assert!(
            policy
                .check(&origin, &headers(&["127.0.0.1:8181", "127.0.0.1:8181"]))
                .is_err()
        );
        let absolute: Uri = "http://rebind.attacker.example:8181/msi/token"
            .parse()
            .unwrap();
        assert!(
            policy
                .check(&absolute, &headers(&["127.0.0.1:8181"]))
                .is_err()
        );
        let h2: Uri = "http://127.0.0.1:8181/msi/token".parse().unwrap();
        assert!(policy.check(&h2, &headers(&[])).is_ok());
    }

    #[test]
    fn proxy_headers_are_found() {
        let mut headers = HeaderMap::new();
        assert_eq!(proxy_header(&headers), None);
        headers.insert("via", "1.1 proxy".parse().unwrap());
        assert_eq!(proxy_header(&headers), Some("via"));
        let mut headers = HeaderMap::new();
        headers.insert("Forwarded", "for=203.0.113.7".parse().unwrap());
        assert_eq!(proxy_header(&headers), Some("forwarded"));
    }
}
