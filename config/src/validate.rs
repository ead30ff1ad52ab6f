//! Structural validation of a parsed configuration.
//!
//! This module answers "can the broker start with this?": addresses parse, limits are
//! positive, URLs are https, identifiers have the right shape, nothing is set twice. It
//! reports every problem at once, each naming its key as it is written in TOML
//! (`identities[0].federated_credentials[1].issuer`), so an operator fixes a file in one
//! pass. There is one function per section (`server` for `[server]`, ...).
//!
//! It is also where the strings the broker uses as typed values are parsed, once: the
//! listen addresses, `public_url`, the trusted proxies' networks, the algorithms and the
//! managed identity's client id come out of [`broker`] as a [`Parsed`] when the whole
//! configuration is valid.
//!
//! What it must not do: apply Entra's content rules for federated credentials (name
//! charset and lengths, exactly one audience, `subject` versus
//! `claims_matching_expression`, expression syntax). The broker's policy module applies
//! those when it builds its registry, so credentials from the file and from the admin API
//! are judged by the same code. Nor does it look at the file system or the network: a
//! `jwks_file` or `tls_cert` that does not exist yet is a start-up error, not a
//! configuration error, so the documented examples stay loadable anywhere.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use url::Url;

use crate::InvalidValue;
use crate::algorithm::Algorithm;
use crate::guid::{Guid, parse_client_id};
use crate::network::{Cidr, is_loopback};
use crate::tenant::{Tenant, is_tenant};
use crate::{
    ALGORITHMS, AdminConfig, AssertionSource, AuditConfig, BrokerConfig, BrokerIssuerConfig,
    CacheConfig, EntraConfig, FederatedCredentialConfig, IdentityConfig, IssuerConfig, JwksConfig,
    LogConfig, ManagedIdentityConfig, Parsed, ServerConfig, StoreConfig, TokenConfig,
    WebhookConfig,
};

/// One thing wrong with a configuration, naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key as written in TOML, e.g. `server.listen` or `issuers[2].jwks_uri`.
    pub key: String,
    /// What is wrong, written for the operator who has to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }
}

/// Checks the whole configuration, section by section, and returns the values it parsed;
/// with any problem, every problem instead.
pub(crate) fn broker(config: &BrokerConfig) -> Result<Parsed, Vec<Problem>> {
    broker_with(config, &[])
}

/// [`broker`], also reporting `ids`: the problems [`identity_ids`] found in the file,
/// each in its identity's place.
pub(crate) fn broker_with(config: &BrokerConfig, ids: &[Problem]) -> Result<Parsed, Vec<Problem>> {
    let mut p = Problems::default();
    let loopback_http = config.outbound.allow_loopback_http;
    let server = server(&mut p, &config.server, loopback_http);
    store(&mut p, &config.store);
    entra(&mut p, &config.entra, loopback_http);
    cache(&mut p, &config.cache);
    let algorithms = tokens(&mut p, &config.tokens);
    jwks(&mut p, &config.jwks);
    log(&mut p, &config.log);
    let issuer_algorithms = issuers(&mut p, &config.issuers, &config.tokens, loopback_http);
    identities(&mut p, &config.identities, ids, loopback_http);
    broker_issuer(&mut p, &config.broker_issuer, loopback_http);
    managed_identity(&mut p, &config.managed_identity);
    identity_assertions(&mut p, config);
    admin(&mut p, &config.admin, loopback_http);
    audit(&mut p, &config.audit);
    let webhook_listen = webhook(&mut p, &config.webhook, &config.server, loopback_http);
    match (server, algorithms) {
        (Some((listen, public_url, trusted_proxies)), Some(algorithms)) if p.0.is_empty() => {
            Ok(Parsed {
                listen,
                public_url,
                trusted_proxies,
                algorithms,
                issuer_algorithms,
                webhook_listen,
            })
        }
        _ => Err(p.0),
    }
}

/// `[server]`: the listen address, `public_url` and the trusted proxies' networks, parsed.
fn server(
    p: &mut Problems,
    s: &ServerConfig,
    loopback_http: bool,
) -> Option<(SocketAddr, Option<Url>, Vec<Cidr>)> {
    let public_url = s
        .public_url
        .as_deref()
        .map(|url| https_url(p, "server.public_url", url, UrlShape::Origin, loopback_http));
    let listen = listen_address(p, "server.listen", &s.listen, "127.0.0.1:8080");
    match (&s.tls_cert, &s.tls_key) {
        (Some(_), None) => p.push(
            "server.tls_key",
            "is required when server.tls_cert is set (give both to serve TLS, or neither)",
        ),
        (None, Some(_)) => p.push(
            "server.tls_cert",
            "is required when server.tls_key is set (give both to serve TLS, or neither)",
        ),
        _ => {}
    }
    path(p, "server.tls_cert", s.tls_cert.as_deref());
    path(p, "server.tls_key", s.tls_key.as_deref());
    positive(p, "server.tls_reload_secs", s.tls_reload_secs);
    positive(p, "server.max_body_bytes", s.max_body_bytes);
    positive(p, "server.max_token_bytes", s.max_token_bytes);
    if s.max_token_bytes > s.max_body_bytes {
        p.push(
            "server.max_token_bytes",
            format!(
                "{} exceeds server.max_body_bytes ({}); the token travels inside the \
                 request, so it cannot be larger than the body",
                s.max_token_bytes, s.max_body_bytes
            ),
        );
    }
    positive(p, "server.shutdown_timeout_secs", s.shutdown_timeout_secs);
    positive(p, "server.request_timeout_secs", s.request_timeout_secs);
    positive(
        p,
        "server.header_read_timeout_secs",
        s.header_read_timeout_secs,
    );
    positive(p, "server.idle_timeout_secs", s.idle_timeout_secs);
    positive(
        p,
        "server.http2_keepalive_interval_secs",
        s.http2_keepalive_interval_secs,
    );
    positive(
        p,
        "server.http2_keepalive_timeout_secs",
        s.http2_keepalive_timeout_secs,
    );
    positive(
        p,
        "server.http2_max_concurrent_streams",
        s.http2_max_concurrent_streams,
    );
    positive(p, "server.max_connections", s.max_connections);
    let trusted_proxies = networks(p, "server.trusted_proxies", &s.trusted_proxies);
    let public_url = match public_url {
        Some(url) => Some(url?),
        None => None,
    };
    Some((listen?, public_url, trusted_proxies?))
}

/// A listen address: an IP address and a port (host names are not resolved).
fn listen_address(p: &mut Problems, key: &str, value: &str, example: &str) -> Option<SocketAddr> {
    if value.trim().is_empty() {
        p.push(
            key,
            format!("must not be empty; give an IP address and port such as {example}"),
        );
        return None;
    }
    match value.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            p.push(
                key,
                format!(
                    "`{}` is not an IP address and port such as {example}, 0.0.0.0:8443 \
                     or [::]:8443 (host names are not resolved)",
                    value.chars().take(100).collect::<String>()
                ),
            );
            None
        }
    }
}

/// Every entry a network in CIDR notation.
fn networks(p: &mut Problems, key: &str, entries: &[String]) -> Option<Vec<Cidr>> {
    match crate::network::parse_all(entries) {
        Ok(networks) => Some(networks),
        Err((i, message)) => {
            p.push(format!("{key}[{i}]"), message);
            None
        }
    }
}

/// An explicit `rate_limit` allows at least one exchange a minute (leave it out for none).
fn rate_limit(p: &mut Problems, key: &str, limit: Option<&crate::RateLimit>) {
    if limit.is_some_and(|l| l.per_minute == 0) {
        p.push(
            format!("{key}.per_minute"),
            "must be at least 1; leave rate_limit out for the [rate_limits] default",
        );
    }
}

/// Scope patterns: not empty, no spaces (one resource each).
fn scopes(p: &mut Problems, key: &str, entries: &[String]) {
    for (i, scope) in entries.iter().enumerate() {
        if scope.trim().is_empty() || scope.contains(char::is_whitespace) {
            p.push(
                format!("{key}[{i}]"),
                "must be one scope or resource, such as https://storage.azure.com/.default \
                 or https://*.vault.azure.net/.default",
            );
        }
    }
}

fn store(p: &mut Problems, s: &StoreConfig) {
    positive(p, "store.poll_interval_ms", s.poll_interval_ms);
    // The URL may carry a database password: never echo it.
    const KEY: &str = "store.url";
    const HINT: &str = "use sqlite://PATH, sqlite::memory: or postgres://USER@HOST/DATABASE";
    let url = s.url.trim();
    if url.is_empty() {
        p.push(KEY, format!("must not be empty; {HINT}"));
    } else if let Some(rest) = url.strip_prefix("sqlite:") {
        if rest.is_empty() || rest == "//" {
            p.push(KEY, format!("names no SQLite database; {HINT}"));
        }
    } else if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        if rest.is_empty() {
            p.push(KEY, format!("names no PostgreSQL server; {HINT}"));
        }
    } else {
        let scheme = match url.split_once(':') {
            Some((scheme, _)) => format!("the `{scheme}:` scheme is not supported"),
            None => "has no scheme".to_owned(),
        };
        p.push(KEY, format!("{scheme}; {HINT}"));
    }
}

fn entra(p: &mut Problems, e: &EntraConfig, loopback_http: bool) {
    positive(p, "entra.deadline_secs", e.deadline_secs);
    https_url(
        p,
        "entra.authority_host",
        &e.authority_host,
        UrlShape::Origin,
        loopback_http,
    );
    for (i, host) in e.allowed_authority_hosts.iter().enumerate() {
        https_url(
            p,
            &format!("entra.allowed_authority_hosts[{i}]"),
            host,
            UrlShape::Origin,
            loopback_http,
        );
    }
    path(p, "entra.ca_file", e.ca_file.as_deref());
    positive(p, "entra.timeout_secs", e.timeout_secs);
    if e.initial_backoff_ms > e.max_backoff_ms {
        p.push(
            "entra.initial_backoff_ms",
            format!(
                "{} exceeds entra.max_backoff_ms ({}); the first wait cannot be longer \
                 than the longest",
                e.initial_backoff_ms, e.max_backoff_ms
            ),
        );
    }
}

/// The Azure SDKs treat a token with less than this left as already expired.
const SDK_EXPIRY_MARGIN_SECS: u64 = 300;

fn cache(p: &mut Problems, c: &CacheConfig) {
    positive(p, "cache.max_entries", c.max_entries);
    if c.min_remaining_secs < SDK_EXPIRY_MARGIN_SECS {
        p.push(
            "cache.min_remaining_secs",
            format!(
                "{} is below {SDK_EXPIRY_MARGIN_SECS}: the Azure SDKs treat a token with \
                 under 5 minutes left as expired, so the broker must never hand one out",
                c.min_remaining_secs
            ),
        );
    }
    if c.refresh_before_secs <= c.min_remaining_secs {
        p.push(
            "cache.refresh_before_secs",
            format!(
                "must be greater than cache.min_remaining_secs ({}); otherwise a cached \
                 token stops being handed out before its background refresh begins",
                c.min_remaining_secs
            ),
        );
    }
}

/// Entra refuses assertions whose `exp - iat` exceeds 25 hours (AADSTS70023).
const MAX_LIFETIME_CAP_SECS: u64 = 25 * 3600;
const MIN_LIFETIME_SECS: u64 = 60;
const MAX_LEEWAY_SECS: u64 = 300;

/// `[tokens]`: the algorithms, parsed.
fn tokens(p: &mut Problems, t: &TokenConfig) -> Option<Vec<Algorithm>> {
    if t.verified_cache_entries > 0 && !(1..=3600).contains(&t.verified_cache_secs) {
        p.push(
            "tokens.verified_cache_secs",
            "must be 1 to 3600 while tokens.verified_cache_entries is above 0",
        );
    }
    if t.max_lifetime_secs < MIN_LIFETIME_SECS {
        p.push(
            "tokens.max_lifetime_secs",
            format!(
                "{} is below {MIN_LIFETIME_SECS}; no real issuer's tokens would pass",
                t.max_lifetime_secs
            ),
        );
    } else if t.max_lifetime_secs > MAX_LIFETIME_CAP_SECS {
        p.push(
            "tokens.max_lifetime_secs",
            format!(
                "{} exceeds {MAX_LIFETIME_CAP_SECS} (25 hours), Entra's own cap on an \
                 assertion's exp - iat",
                t.max_lifetime_secs
            ),
        );
    }
    if t.leeway_secs > MAX_LEEWAY_SECS {
        p.push(
            "tokens.leeway_secs",
            format!(
                "{} exceeds {MAX_LEEWAY_SECS} (5 minutes); a larger leeway accepts tokens \
                 that have plainly expired",
                t.leeway_secs
            ),
        );
    }
    algorithms(p, "tokens.algorithms", &t.algorithms, None)
}

const MAX_JWKS_KEYS: usize = 1000;

fn jwks(p: &mut Problems, j: &JwksConfig) {
    positive(p, "jwks.timeout_secs", j.timeout_secs);
    positive(p, "jwks.refresh_secs", j.refresh_secs);
    positive(p, "jwks.refetch_cooldown_secs", j.refetch_cooldown_secs);
    positive(p, "jwks.max_stale_secs", j.max_stale_secs);
    positive(p, "jwks.max_response_bytes", j.max_response_bytes);
    positive(p, "jwks.max_keys", j.max_keys);
    if j.max_keys > MAX_JWKS_KEYS {
        p.push(
            "jwks.max_keys",
            format!(
                "{} exceeds {MAX_JWKS_KEYS}; no legitimate issuer publishes that many keys \
                 (Entra itself reads only the first 100)",
                j.max_keys
            ),
        );
    }
}

fn log(p: &mut Problems, l: &LogConfig) {
    if l.level.trim().is_empty() {
        p.push(
            "log.level",
            "must not be empty; use a filter such as `info` or `wif_broker=debug,info`",
        );
    }
    if l.format != "text" && l.format != "json" {
        p.push(
            "log.format",
            format!("must be `text` or `json`, not `{}`", l.format),
        );
    }
}

/// `[[issuers]]`: the algorithms of those that narrow `[tokens] algorithms`, parsed, by URL.
fn issuers(
    p: &mut Problems,
    issuers: &[IssuerConfig],
    tokens: &TokenConfig,
    loopback_http: bool,
) -> Vec<(String, Vec<Algorithm>)> {
    let mut narrowed = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, issuer) in issuers.iter().enumerate() {
        let at = format!("issuers[{i}]");
        https_url(
            p,
            &format!("{at}.url"),
            &issuer.url,
            UrlShape::Issuer,
            loopback_http,
        );
        if !issuer.url.is_empty() {
            if let Some(first) = seen.get(issuer.url.as_str()) {
                p.push(
                    format!("{at}.url"),
                    format!(
                        "`{}` is already configured by issuers[{first}]; merge the two entries",
                        issuer.url
                    ),
                );
            } else {
                seen.insert(&issuer.url, i);
            }
        }

        let sources: Vec<&str> = [
            ("jwks_uri", issuer.jwks_uri.is_some()),
            ("jwks_file", issuer.jwks_file.is_some()),
            ("jwks_inline", issuer.jwks_inline.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if sources.len() > 1 {
            p.push(
                at.clone(),
                format!(
                    "sets {}; set at most one of jwks_uri, jwks_file and jwks_inline \
                     (or none, to use OIDC discovery)",
                    sources.join(" and ")
                ),
            );
        }
        if issuer.allow_cross_origin_jwks_uri && !sources.is_empty() {
            p.push(
                format!("{at}.allow_cross_origin_jwks_uri"),
                format!(
                    "applies only to OIDC discovery, and this issuer sets {}",
                    sources.join(" and ")
                ),
            );
        }
        if let Some(uri) = &issuer.jwks_uri {
            https_url(
                p,
                &format!("{at}.jwks_uri"),
                uri,
                UrlShape::Resource,
                loopback_http,
            );
        }
        path(p, &format!("{at}.jwks_file"), issuer.jwks_file.as_deref());
        if let Some(inline) = &issuer.jwks_inline {
            jwks_json(p, &format!("{at}.jwks_inline"), inline);
        }
        path(p, &format!("{at}.ca_file"), issuer.ca_file.as_deref());
        if let Some(algs) = &issuer.algorithms
            && let Some(parsed) = algorithms(
                p,
                &format!("{at}.algorithms"),
                algs,
                Some(tokens.algorithms.as_slice()),
            )
        {
            narrowed.push((issuer.url.clone(), parsed));
        }
    }
    narrowed
}

/// The typed keys of each `[[identities]]` table of a file: a `tenant_id` or `client_id`
/// that does not parse is a problem like any other (reported with the rest, in one pass),
/// and is replaced by a placeholder so the file can still be read and checked.
pub(crate) fn identity_ids(table: &mut toml::Table) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(toml::Value::Array(identities)) = table.get_mut("identities") else {
        return problems;
    };
    for (i, identity) in identities.iter_mut().enumerate() {
        let Some(identity) = identity.as_table_mut() else {
            continue;
        };
        type Check = fn(&str) -> Option<InvalidValue>;
        let checks: [(&str, Check, String); 2] = [
            (
                "tenant_id",
                |v| v.parse::<Tenant>().err(),
                Tenant::default().to_string(),
            ),
            (
                "client_id",
                |v| parse_client_id(v).err(),
                Guid::default().to_string(),
            ),
        ];
        for (key, check, placeholder) in checks {
            if let Some(message) = identity.get(key).and_then(|v| v.as_str()).and_then(check) {
                identity.insert(key.to_owned(), toml::Value::String(placeholder));
                problems.push(Problem {
                    key: format!("identities[{i}].{key}"),
                    message: message.to_string(),
                });
            }
        }
    }
    problems
}

fn identities(
    p: &mut Problems,
    identities: &[IdentityConfig],
    ids: &[Problem],
    loopback_http: bool,
) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut clean_issuers = HashSet::new();
    for (i, identity) in identities.iter().enumerate() {
        let at = format!("identities[{i}]");
        if identity.name.trim().is_empty() {
            p.push(format!("{at}.name"), "must not be empty");
        } else if let Some(first) = seen.get(identity.name.as_str()) {
            p.push(
                format!("{at}.name"),
                format!(
                    "`{}` is already used by identities[{first}]; identity names must be unique",
                    identity.name
                ),
            );
        } else {
            seen.insert(&identity.name, i);
        }

        // tenant_id and client_id are typed ([`crate::Tenant`], [`crate::Guid`]), parsed
        // when the file was read ([`identity_ids`]).
        let prefix = format!("{at}.");
        p.0.extend(ids.iter().filter(|id| id.key.starts_with(&prefix)).cloned());

        if let Some(host) = &identity.authority_host {
            if identity.cloud.is_some() {
                p.push(
                    at.clone(),
                    "sets both cloud and authority_host; set one of them (authority_host is \
                     for hosts outside the named clouds, such as Azure Stack or a test \
                     emulator)",
                );
            }
            https_url(
                p,
                &format!("{at}.authority_host"),
                host,
                UrlShape::Origin,
                loopback_http,
            );
        }

        scopes(p, &format!("{at}.allowed_scopes"), &identity.allowed_scopes);
        rate_limit(p, &format!("{at}.rate_limit"), identity.rate_limit.as_ref());
        for (j, credential) in identity.federated_credentials.iter().enumerate() {
            federated_credential(
                p,
                &|| format!("{at}.federated_credentials[{j}]"),
                credential,
                loopback_http,
                &mut clean_issuers,
            );
        }
    }
}

/// Only what the broker needs to trust the issuer safely; Entra's content rules live in
/// the policy module (see the module docs).
///
/// A file may declare a million credentials (docs/PERFORMANCE.md, "Scale"), so the
/// common case costs little: a key is written out (`at`) only for a setting that is
/// checked, and an issuer URL already found sound (`clean_issuers`: the problems depend
/// on the URL alone) is not parsed again.
fn federated_credential<'a>(
    p: &mut Problems,
    at: &dyn Fn() -> String,
    credential: &'a FederatedCredentialConfig,
    loopback_http: bool,
    clean_issuers: &mut HashSet<&'a str>,
) {
    if !clean_issuers.contains(credential.issuer.as_str()) {
        let before = p.0.len();
        https_url(
            p,
            &format!("{}.issuer", at()),
            &credential.issuer,
            UrlShape::Issuer,
            loopback_http,
        );
        if p.0.len() == before {
            clean_issuers.insert(&credential.issuer);
        }
    }
    if !credential.allowed_scopes.is_empty() {
        scopes(
            p,
            &format!("{}.allowed_scopes", at()),
            &credential.allowed_scopes,
        );
    }
    if !credential.source_networks.is_empty() {
        networks(
            p,
            &format!("{}.source_networks", at()),
            &credential.source_networks,
        );
    }
    if credential.rate_limit.is_some() {
        rate_limit(
            p,
            &format!("{}.rate_limit", at()),
            credential.rate_limit.as_ref(),
        );
    }
    if credential.max_token_age_secs == Some(0) {
        p.push(
            format!("{}.max_token_age_secs", at()),
            "must be at least 1; leave it out for no limit",
        );
    }
}

/// `[broker_issuer]`: the broker as an OIDC issuer.
fn broker_issuer(p: &mut Problems, b: &BrokerIssuerConfig, loopback_http: bool) {
    if let Some(url) = &b.url {
        https_url(p, "broker_issuer.url", url, UrlShape::Issuer, loopback_http);
    }
    if !(60..=600).contains(&b.assertion_lifetime_secs) {
        p.push(
            "broker_issuer.assertion_lifetime_secs",
            "must be between 60 and 600: assertions are used at once, and a short life \
             limits what a leaked one is worth",
        );
    }
    path(
        p,
        "broker_issuer.signing_key_file",
        b.signing_key_file.as_deref(),
    );
    for (i, file) in b.published_key_files.iter().enumerate() {
        path(
            p,
            &format!("broker_issuer.published_key_files[{i}]"),
            Some(file),
        );
    }
    if b.signing_key_file.is_none() && !b.published_key_files.is_empty() {
        p.push(
            "broker_issuer.published_key_files",
            "needs signing_key_file: published key files are the next and previous keys of \
             a manual rotation (without signing_key_file, keys are generated and rotated in \
             the store)",
        );
    }
    positive(p, "broker_issuer.rotation_days", b.rotation_days);
    positive(p, "broker_issuer.reload_secs", b.reload_secs);
    if b.publish_ahead_hours >= b.rotation_days.saturating_mul(24) {
        p.push(
            "broker_issuer.publish_ahead_hours",
            "must be shorter than rotation_days",
        );
    }
}

/// `[managed_identity]`: the broker's own managed identity.
fn managed_identity(p: &mut Problems, m: &ManagedIdentityConfig) {
    if let Some(endpoint) = &m.endpoint {
        managed_identity_endpoint(p, endpoint);
    }
    if let Some(Err(message)) = m.client_id.as_deref().map(str::parse::<Guid>) {
        p.push("managed_identity.client_id", message.to_string());
    }
    positive(p, "managed_identity.timeout_secs", m.timeout_secs);
}

/// What each identity's assertion source needs from the rest of the configuration
/// (`[broker_issuer] url` for `broker`, the certificate files for `certificate`).
fn identity_assertions(p: &mut Problems, config: &BrokerConfig) {
    let b = &config.broker_issuer;
    for (i, identity) in config.identities.iter().enumerate() {
        let at = format!("identities[{i}]");
        if identity.assertion == AssertionSource::Broker && b.url.is_none() {
            p.push(
                format!("{at}.assertion"),
                "is `broker`, which needs [broker_issuer] url: the public URL Entra fetches \
                 the broker's keys from",
            );
        }
        if let Some(subject) = &identity.assertion_subject {
            if identity.assertion != AssertionSource::Broker {
                p.push(
                    format!("{at}.assertion_subject"),
                    "is used only with assertion = \"broker\"",
                );
            }
            if subject.is_empty() || subject.len() > 600 {
                p.push(
                    format!("{at}.assertion_subject"),
                    "must be 1 to 600 characters (Entra's limit for a FIC subject)",
                );
            }
        }
        let certificate =
            identity.certificate_file.is_some() || identity.certificate_key_file.is_some();
        match (identity.assertion, &identity.certificate_file) {
            (AssertionSource::Certificate, None) => p.push(
                format!("{at}.certificate_file"),
                "is required with assertion = \"certificate\": the PEM certificate \
                 registered on the app",
            ),
            (AssertionSource::Certificate, Some(file)) => {
                path(p, &format!("{at}.certificate_file"), Some(file));
                path(
                    p,
                    &format!("{at}.certificate_key_file"),
                    identity.certificate_key_file.as_deref(),
                );
            }
            _ if certificate => p.push(
                format!("{at}.certificate_file"),
                "is used only with assertion = \"certificate\"",
            ),
            _ => {}
        }
    }
}

/// The managed-identity endpoint is plain http by nature (IMDS at 169.254.169.254, App
/// Service on loopback), so http is allowed here, but only to link-local and loopback
/// hosts: a token request must never leave the machine in clear text.
fn managed_identity_endpoint(p: &mut Problems, endpoint: &str) {
    let key = "managed_identity.endpoint";
    let Ok(url) = Url::parse(endpoint) else {
        p.push(key, format!("`{endpoint}` is not an absolute URL"));
        return;
    };
    let local =
        is_loopback(&url) || matches!(url.host(), Some(url::Host::Ipv4(a)) if a.is_link_local());
    match url.scheme() {
        "https" => {}
        "http" if local => {}
        _ => p.push(
            key,
            format!(
                "`{endpoint}` must be https, or http to a loopback or link-local address \
                 (IMDS is http://169.254.169.254)"
            ),
        ),
    }
}

fn admin(p: &mut Problems, a: &AdminConfig, loopback_http: bool) {
    path(p, "admin.tokens_file", a.tokens_file.as_deref());
    positive(
        p,
        "admin.max_credentials_per_identity",
        a.max_credentials_per_identity,
    );
    if a.oidc_role_claim.trim().is_empty() {
        p.push("admin.oidc_role_claim", "must not be empty");
    }
    match &a.oidc_issuer {
        Some(issuer) => {
            https_url(
                p,
                "admin.oidc_issuer",
                issuer,
                UrlShape::Issuer,
                loopback_http,
            );
            if a.oidc_audience
                .as_deref()
                .is_none_or(|s| s.trim().is_empty())
            {
                p.push(
                    "admin.oidc_audience",
                    "is required with admin.oidc_issuer: admin tokens must be meant for the broker",
                );
            }
            if a.oidc_admin_role.is_none() && a.oidc_reader_role.is_none() {
                p.push(
                    "admin.oidc_admin_role",
                    "admin.oidc_issuer needs oidc_admin_role or oidc_reader_role: without a required role every token of the issuer would be an admin",
                );
            }
        }
        None => {
            for (key, set) in [
                ("admin.oidc_audience", a.oidc_audience.is_some()),
                ("admin.oidc_admin_role", a.oidc_admin_role.is_some()),
                ("admin.oidc_reader_role", a.oidc_reader_role.is_some()),
            ] {
                if set {
                    p.push(key, "has no effect without admin.oidc_issuer");
                }
            }
        }
    }
}

fn audit(p: &mut Problems, a: &AuditConfig) {
    positive(p, "audit.queue_size", a.queue_size);
    positive(p, "audit.sample_window_secs", a.sample_window_secs);
    path(p, "audit.spill_file", a.spill_file.as_deref());
}

/// `[webhook]`: its listen address, parsed, when it is enabled.
fn webhook(
    p: &mut Problems,
    w: &WebhookConfig,
    server: &ServerConfig,
    loopback_http: bool,
) -> Option<SocketAddr> {
    let mut listen = None;
    if w.enabled {
        listen = webhook_listener(p, w, server);
        https_url(
            p,
            "webhook.broker_url",
            &w.broker_url,
            UrlShape::Resource,
            loopback_http,
        );
        if w.agent_image.trim().is_empty() {
            p.push(
                "webhook.agent_image",
                "is required when webhook.enabled = true: the image holding wif-agent",
            );
        }
    }
    if w.agent_image.chars().any(char::is_whitespace) {
        p.push("webhook.agent_image", "must not contain whitespace");
    }
    if !crate::webhook::PULL_POLICIES.contains(&w.agent_image_pull_policy.as_str()) {
        p.push(
            "webhook.agent_image_pull_policy",
            format!(
                "`{}` is not one of {}",
                w.agent_image_pull_policy,
                crate::webhook::PULL_POLICIES.join(", ")
            ),
        );
    }
    positive(p, "webhook.agent_port", w.agent_port);
    for (key, value) in [
        ("webhook.agent_cpu_request", &w.agent_cpu_request),
        ("webhook.agent_memory_request", &w.agent_memory_request),
        ("webhook.agent_memory_limit", &w.agent_memory_limit),
    ] {
        if !is_quantity(value) {
            p.push(
                key,
                format!("`{value}` is not a Kubernetes quantity such as 10m, 16Mi or 1"),
            );
        }
    }
    if w.token_audience.trim().is_empty() {
        p.push("webhook.token_audience", "must not be empty");
    }
    if !(600..=86_400).contains(&w.token_expiration_secs) {
        p.push(
            "webhook.token_expiration_secs",
            format!(
                "{} is outside 600–86400 (Kubernetes refuses projected tokens under 10 minutes)",
                w.token_expiration_secs
            ),
        );
    }
    if !w.token_mount_path.starts_with('/') || w.token_mount_path.contains(':') {
        p.push(
            "webhook.token_mount_path",
            format!("`{}` is not an absolute path", w.token_mount_path),
        );
    }
    if !is_annotation_key(&w.skip_containers_annotation) {
        p.push(
            "webhook.skip_containers_annotation",
            format!(
                "`{}` is not a Kubernetes annotation key such as example.com/skip-containers",
                w.skip_containers_annotation
            ),
        );
    }
    if let Some(tenant) = &w.default_tenant_id
        && !is_tenant(tenant)
    {
        p.push(
            "webhook.default_tenant_id",
            format!("`{tenant}` is not a GUID or a domain such as contoso.onmicrosoft.com"),
        );
    }
    if let Some(url) = &w.kube_api_url {
        https_url(
            p,
            "webhook.kube_api_url",
            url,
            UrlShape::Origin,
            loopback_http,
        );
    }
    path(p, "webhook.tls_cert", w.tls_cert.as_deref());
    path(p, "webhook.tls_key", w.tls_key.as_deref());
    path(p, "webhook.broker_ca_file", w.broker_ca_file.as_deref());
    path(p, "webhook.kube_token_file", Some(&w.kube_token_file));
    path(p, "webhook.kube_ca_file", Some(&w.kube_ca_file));
    positive(p, "webhook.max_body_bytes", w.max_body_bytes);
    listen
}

/// The webhook's own TLS listener (docs/kubernetes.md): an address apart from the API's,
/// and a certificate, since the API server calls webhooks over https only.
fn webhook_listener(
    p: &mut Problems,
    w: &WebhookConfig,
    server: &ServerConfig,
) -> Option<SocketAddr> {
    let listen = match w.listen.parse::<SocketAddr>() {
        _ if w.listen.trim().is_empty() => {
            p.push(
                "webhook.listen",
                "is required when webhook.enabled = true: the webhook's own TLS listener, such \
                 as 0.0.0.0:9443 (it is never served on the API port)",
            );
            None
        }
        Err(_) => {
            p.push(
                "webhook.listen",
                format!(
                    "`{}` is not an IP address and port such as 0.0.0.0:9443 (host names are \
                     not resolved)",
                    w.listen.chars().take(100).collect::<String>()
                ),
            );
            None
        }
        Ok(addr) => {
            if let Ok(api) = server.listen.parse::<SocketAddr>()
                && addr.port() != 0
                && addr.port() == api.port()
            {
                p.push(
                    "webhook.listen",
                    format!(
                        "port {} is the API port (server.listen): the webhook has its own listener",
                        addr.port()
                    ),
                );
            }
            Some(addr)
        }
    };
    for (key, value) in [
        ("webhook.tls_cert", &w.tls_cert),
        ("webhook.tls_key", &w.tls_key),
    ] {
        if value.is_none() {
            p.push(
                key,
                "is required when webhook.enabled = true: the API server calls admission \
                 webhooks over https only",
            );
        }
    }
    listen
}

/// A Kubernetes resource quantity: digits with an optional fraction and suffix.
fn is_quantity(s: &str) -> bool {
    let number_len = s
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let suffix = &s[number_len..];
    number_len > 0
        && s[..number_len].bytes().filter(|b| *b == b'.').count() <= 1
        && [
            "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
        ]
        .contains(&suffix)
}

/// `[prefix/]name`: a DNS-subdomain prefix and a name of letters, digits, `-`, `_`, `.`.
fn is_annotation_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphanumeric)
        && name
            .as_bytes()
            .last()
            .is_some_and(u8::is_ascii_alphanumeric);
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
    });
    name_ok && prefix_ok
}

fn positive<T: Default + PartialEq>(p: &mut Problems, key: &str, value: T) {
    if value == T::default() {
        p.push(key, "must be greater than 0");
    }
}

fn path(p: &mut Problems, key: &str, value: Option<&Path>) {
    if value.is_some_and(|v| v.as_os_str().is_empty()) {
        p.push(key, "must not be empty; leave the key out instead");
    }
}

/// Checks an algorithm list and parses it. `within` is the list an issuer's list may only
/// narrow.
fn algorithms(
    p: &mut Problems,
    key: &str,
    algs: &[String],
    within: Option<&[String]>,
) -> Option<Vec<Algorithm>> {
    if algs.is_empty() {
        p.push(
            key,
            format!(
                "must list at least one algorithm; supported: {}",
                ALGORITHMS.join(", ")
            ),
        );
        return None;
    }
    let mut parsed = Vec::with_capacity(algs.len());
    for alg in algs {
        match alg.parse::<Algorithm>() {
            Ok(a) => {
                if let Some(within) = within
                    && !within.contains(alg)
                {
                    p.push(
                        key,
                        format!(
                            "`{alg}` is not in tokens.algorithms; an issuer's list can only \
                             narrow that list"
                        ),
                    );
                }
                parsed.push(a);
            }
            Err(message) => p.push(key, message),
        }
    }
    (parsed.len() == algs.len()).then_some(parsed)
}

fn jwks_json(p: &mut Problems, key: &str, text: &str) {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            p.push(key, format!("is not valid JSON: {e}"));
            return;
        }
    };
    match value.get("keys").and_then(|k| k.as_array()) {
        None => p.push(
            key,
            "is not a JWKS: expected a JSON object with a `keys` array, \
             as in {\"keys\": [{\"kty\": \"RSA\", ...}]}",
        ),
        Some(keys) if keys.is_empty() => p.push(
            key,
            "has an empty `keys` array, so no token from this issuer could be verified",
        ),
        Some(keys) => {
            if let Some(n) = keys.iter().position(|k| !k.is_object()) {
                p.push(key, format!("`keys[{n}]` is not a JSON object"));
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum UrlShape {
    /// Scheme, host and optional port only: authority hosts, to which the tenant is appended.
    Origin,
    /// An OIDC issuer: a path is normal (GitHub Enterprise, AKS), a query or fragment is not.
    Issuer,
    /// Any https resource, such as a `jwks_uri`.
    Resource,
}

/// An https URL of the given shape (or plain http to loopback, when allowed). The URL once
/// it parses; what is wrong with it is pushed either way.
fn https_url(
    p: &mut Problems,
    key: &str,
    value: &str,
    shape: UrlShape,
    loopback_http: bool,
) -> Option<Url> {
    if value.trim().is_empty() {
        p.push(key, "must not be empty");
        return None;
    }
    let url = match Url::parse(value) {
        Ok(url) => url,
        Err(e) => {
            p.push(key, format!("`{value}` is not an absolute https URL ({e})"));
            return None;
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        // Do not echo: the URL carries credentials.
        p.push(key, "must not contain a user name or password");
        return None;
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {
            if !loopback_http {
                p.push(
                    key,
                    format!(
                        "`{value}` uses plain http, which is accepted for a loopback host \
                         only with outbound.allow_loopback_http = true (meant for the dev \
                         stack and tests); use https otherwise"
                    ),
                );
            }
        }
        "http" => p.push(
            key,
            format!(
                "`{value}` must use https; plain http is accepted only for a loopback host \
                 (localhost, 127.0.0.1, [::1]) and only with outbound.allow_loopback_http = true"
            ),
        ),
        _ => {
            p.push(key, format!("`{value}` is not an https URL"));
            return None;
        }
    }
    if url.host().is_none() {
        p.push(key, format!("`{value}` has no host"));
        return None;
    }
    match shape {
        UrlShape::Origin => {
            if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
                p.push(
                    key,
                    format!(
                        "`{value}` must be a scheme and host only, such as \
                         https://login.microsoftonline.com, with no path, query or fragment \
                         (the tenant comes from identities[*].tenant_id)"
                    ),
                );
            }
        }
        UrlShape::Issuer => {
            if url.query().is_some() || url.fragment().is_some() {
                p.push(
                    key,
                    format!("`{value}` has a query or fragment; an OIDC issuer URL has neither"),
                );
            }
        }
        UrlShape::Resource => {
            if url.fragment().is_some() {
                p.push(key, format!("`{value}` has a fragment; remove it"));
            }
        }
    }
    Some(url)
}

/// A DNS name with at least two labels, e.g. `contoso.onmicrosoft.com`.
#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{Cloud, OutboundConfig};

    fn problems(config: &BrokerConfig) -> Vec<Problem> {
        broker(config).err().unwrap_or_default()
    }

    const TENANT: &str = "72f988bf-0000-4000-8000-000000000001";
    const CLIENT: &str = "0b7c9e1d-0000-4000-8000-000000000002";

    fn identity(name: &str) -> IdentityConfig {
        IdentityConfig {
            name: name.into(),
            tenant_id: TENANT.parse().unwrap(),
            client_id: CLIENT.parse().unwrap(),
            federated_credentials: vec![FederatedCredentialConfig {
                name: "main".into(),
                issuer: "https://token.actions.githubusercontent.com".into(),
                subject: Some("repo:contoso/app:ref:refs/heads/main".into()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn issuer(url: &str) -> IssuerConfig {
        IssuerConfig {
            url: url.into(),
            ..Default::default()
        }
    }

    /// Validates the defaults with `change` applied.
    fn check(change: impl FnOnce(&mut BrokerConfig)) -> Vec<Problem> {
        let mut config = BrokerConfig::default();
        change(&mut config);
        problems(&config)
    }

    /// Asserts the only problem is at `key` and its message contains `fragment`.
    #[track_caller]
    fn only(problems: &[Problem], key: &str, fragment: &str) {
        assert_eq!(problems.len(), 1, "expected one problem, got {problems:#?}");
        assert_eq!(problems[0].key, key, "{problems:#?}");
        assert!(
            problems[0].message.contains(fragment),
            "message {:?} lacks {fragment:?}",
            problems[0].message
        );
    }

    #[track_caller]
    fn none(problems: &[Problem]) {
        assert!(
            problems.is_empty(),
            "expected no problems, got {problems:#?}"
        );
    }

    #[test]
    fn defaults_are_valid() {
        none(&problems(&BrokerConfig::default()));
    }

    #[test]
    fn a_realistic_config_is_valid() {
        none(&check(|c| {
            c.identities = vec![identity("deploy"), {
                let mut gov = identity("gov");
                gov.tenant_id = "fabrikam.onmicrosoft.us".parse().unwrap();
                gov.cloud = Some(Cloud::UsGov);
                gov
            }];
            c.issuers = vec![IssuerConfig {
                url: "https://westeurope.oic.prod-aks.azure.com/t/u/".into(),
                jwks_file: Some("/etc/wif/aks.jwks.json".into()),
                algorithms: Some(vec!["RS256".into(), "ES256".into()]),
                ..Default::default()
            }];
        }));
    }

    #[test]
    fn a_valid_config_comes_back_parsed() {
        let mut config = BrokerConfig::default();
        config.server.listen = "[::]:8443".into();
        config.server.public_url = Some("https://wif.contoso.example".into());
        config.server.trusted_proxies = vec!["10.0.0.0/8".into(), "2001:db8::1".into()];
        config.tokens.algorithms = vec!["ES256".into(), "RS256".into()];
        config.issuers = vec![
            issuer("https://a.example"),
            IssuerConfig {
                algorithms: Some(vec!["RS256".into()]),
                ..issuer("https://b.example/tenant")
            },
        ];
        let parsed = broker(&config).unwrap();
        assert_eq!(parsed.listen, "[::]:8443".parse().unwrap());
        assert_eq!(
            parsed.public_url.as_ref().map(Url::as_str),
            Some("https://wif.contoso.example/")
        );
        assert_eq!(
            parsed
                .trusted_proxies
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.0.0.0/8", "2001:db8::1/128"]
        );
        assert_eq!(parsed.algorithms, [Algorithm::ES256, Algorithm::RS256]);
        assert_eq!(
            parsed.issuer_algorithms,
            [(
                "https://b.example/tenant".to_owned(),
                vec![Algorithm::RS256]
            )]
        );
        assert_eq!(parsed.webhook_listen, None, "the webhook is off");

        config.webhook.enabled = true;
        config.webhook.listen = "0.0.0.0:9443".into();
        config.webhook.broker_url = "https://wif.contoso.example".into();
        config.webhook.agent_image = "wif-broker:0.1.0".into();
        config.webhook.tls_cert = Some("/etc/wif/webhook.crt".into());
        config.webhook.tls_key = Some("/etc/wif/webhook.key".into());
        assert_eq!(
            broker(&config).unwrap().webhook_listen,
            Some("0.0.0.0:9443".parse().unwrap())
        );
    }

    #[test]
    fn an_invalid_config_gives_problems_not_parsed_values() {
        // One problem in any section, even one with nothing to parse, and no Parsed.
        for change in [
            (|c: &mut BrokerConfig| c.server.listen = "localhost:80".into()) as fn(&mut _),
            |c| c.cache.max_entries = 0,
            |c| c.server.trusted_proxies = vec!["10.0.0.1/8".into()],
            |c| c.server.public_url = Some("https://x.example/path".into()),
        ] {
            let mut config = BrokerConfig::default();
            change(&mut config);
            assert_eq!(broker(&config).unwrap_err().len(), 1);
        }
    }

    #[test]
    fn problem_display_is_key_colon_message() {
        let p = Problem {
            key: "server.listen".into(),
            message: "bad".into(),
        };
        assert_eq!(p.to_string(), "server.listen: bad");
    }

    // [server]

    #[test]
    fn listen_must_be_a_socket_address() {
        only(
            &check(|c| c.server.listen = "localhost:8080".into()),
            "server.listen",
            "`localhost:8080` is not an IP address and port",
        );
        only(
            &check(|c| c.server.listen = "0.0.0.0".into()),
            "server.listen",
            "not an IP address and port",
        );
        only(
            &check(|c| c.server.listen = " ".into()),
            "server.listen",
            "must not be empty",
        );
        none(&check(|c| c.server.listen = "[::]:8443".into()));
    }

    #[test]
    fn tls_cert_and_key_come_together() {
        only(
            &check(|c| c.server.tls_cert = Some("cert.pem".into())),
            "server.tls_key",
            "required when server.tls_cert is set",
        );
        only(
            &check(|c| c.server.tls_key = Some("key.pem".into())),
            "server.tls_cert",
            "required when server.tls_key is set",
        );
        none(&check(|c| {
            c.server.tls_cert = Some("cert.pem".into());
            c.server.tls_key = Some("key.pem".into());
        }));
    }

    #[test]
    fn empty_paths_are_refused() {
        let problems = check(|c| {
            c.server.tls_cert = Some(PathBuf::new());
            c.server.tls_key = Some("key.pem".into());
        });
        only(&problems, "server.tls_cert", "must not be empty");
        only(
            &check(|c| c.entra.ca_file = Some(PathBuf::new())),
            "entra.ca_file",
            "must not be empty",
        );
    }

    #[test]
    fn server_limits_must_be_positive() {
        for (key, change) in [
            (
                "server.tls_reload_secs",
                (|c: &mut BrokerConfig| c.server.tls_reload_secs = 0) as fn(&mut BrokerConfig),
            ),
            ("server.shutdown_timeout_secs", |c| {
                c.server.shutdown_timeout_secs = 0
            }),
            ("server.request_timeout_secs", |c| {
                c.server.request_timeout_secs = 0
            }),
            ("server.max_token_bytes", |c| c.server.max_token_bytes = 0),
            ("server.header_read_timeout_secs", |c| {
                c.server.header_read_timeout_secs = 0
            }),
            ("server.idle_timeout_secs", |c| {
                c.server.idle_timeout_secs = 0
            }),
            ("server.http2_keepalive_interval_secs", |c| {
                c.server.http2_keepalive_interval_secs = 0
            }),
            ("server.http2_keepalive_timeout_secs", |c| {
                c.server.http2_keepalive_timeout_secs = 0
            }),
            ("server.http2_max_concurrent_streams", |c| {
                c.server.http2_max_concurrent_streams = 0
            }),
            ("server.max_connections", |c| c.server.max_connections = 0),
        ] {
            only(&check(change), key, "must be greater than 0");
        }
        // A zero body limit also puts the token limit above it.
        let problems = check(|c| c.server.max_body_bytes = 0);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert_eq!(problems[0].key, "server.max_body_bytes");
        assert_eq!(problems[1].key, "server.max_token_bytes");
    }

    #[test]
    fn token_limit_fits_in_body_limit() {
        only(
            &check(|c| {
                c.server.max_body_bytes = 1000;
                c.server.max_token_bytes = 1001;
            }),
            "server.max_token_bytes",
            "1001 exceeds server.max_body_bytes (1000)",
        );
        none(&check(|c| {
            c.server.max_body_bytes = 1000;
            c.server.max_token_bytes = 1000;
        }));
    }

    // [store]

    #[test]
    fn store_accepts_sqlite_and_postgres() {
        for url in [
            "sqlite://wif.db",
            "sqlite::memory:",
            "sqlite:/var/lib/wif/wif.db",
            "postgres://wif@db/wif",
            "postgresql://wif:secret@db:5432/wif?sslmode=verify-full",
        ] {
            none(&check(|c| c.store.url = url.into()));
        }
    }

    #[test]
    fn store_refuses_other_schemes_without_echoing_the_url() {
        let problems = check(|c| c.store.url = "mysql://root:hunter2@db/wif".into());
        only(
            &problems,
            "store.url",
            "the `mysql:` scheme is not supported",
        );
        assert!(!problems[0].message.contains("hunter2"));
        only(
            &check(|c| c.store.url = "".into()),
            "store.url",
            "must not be empty",
        );
        only(
            &check(|c| c.store.url = "wif.db".into()),
            "store.url",
            "has no scheme",
        );
        only(
            &check(|c| c.store.url = "sqlite:".into()),
            "store.url",
            "names no SQLite",
        );
        only(
            &check(|c| c.store.url = "postgres://".into()),
            "store.url",
            "names no PostgreSQL",
        );
    }

    // [entra]

    #[test]
    fn allowed_authority_hosts_and_the_public_url_are_https_origins() {
        none(&check(|c| {
            c.entra.allowed_authority_hosts = vec!["https://login.stack.example:8443".into()];
            c.server.public_url = Some("https://wif.contoso.example".into());
        }));
        only(
            &check(|c| c.entra.allowed_authority_hosts = vec!["http://login.example".into()]),
            "entra.allowed_authority_hosts[0]",
            "https",
        );
        only(
            &check(|c| c.server.public_url = Some("https://wif.contoso.example/x".into())),
            "server.public_url",
            "",
        );
    }

    #[test]
    fn authority_host_is_an_https_origin() {
        none(&check(|c| {
            c.entra.authority_host = "https://login.microsoftonline.com/".into()
        }));
        none(&check(|c| {
            c.entra.authority_host = "https://login.example.test:8443".into()
        }));
        only(
            &check(|c| c.entra.authority_host = "https://login.microsoftonline.com/contoso".into()),
            "entra.authority_host",
            "scheme and host only",
        );
        only(
            &check(|c| c.entra.authority_host = "https://login.example.test/?x=1".into()),
            "entra.authority_host",
            "no path, query or fragment",
        );
        only(
            &check(|c| c.entra.authority_host = "login.microsoftonline.com".into()),
            "entra.authority_host",
            "not an absolute https URL",
        );
        only(
            &check(|c| c.entra.authority_host = "ftp://login.example.test".into()),
            "entra.authority_host",
            "is not an https URL",
        );
        only(
            &check(|c| c.entra.authority_host = "".into()),
            "entra.authority_host",
            "must not be empty",
        );
    }

    #[test]
    fn urls_with_credentials_are_refused_without_echoing_them() {
        let problems = check(|c| c.entra.authority_host = "https://u:hunter2@login.test".into());
        only(&problems, "entra.authority_host", "user name or password");
        assert!(!problems[0].message.contains("hunter2"));
    }

    #[test]
    fn plain_http_needs_loopback_and_the_switch() {
        only(
            &check(|c| c.entra.authority_host = "http://login.microsoftonline.com".into()),
            "entra.authority_host",
            "must use https; plain http is accepted only for a loopback host",
        );
        // Loopback, but the switch is off: the message names the switch.
        only(
            &check(|c| c.entra.authority_host = "http://127.0.0.1:9000".into()),
            "entra.authority_host",
            "only with outbound.allow_loopback_http = true",
        );
        // Switch on, but not loopback: still refused.
        only(
            &check(|c| {
                c.outbound = OutboundConfig {
                    allow_loopback_http: true,
                };
                c.entra.authority_host = "http://10.0.0.1".into();
            }),
            "entra.authority_host",
            "must use https",
        );
        for host in [
            "http://127.0.0.1:9000",
            "http://[::1]:9000",
            "http://localhost",
        ] {
            none(&check(|c| {
                c.outbound.allow_loopback_http = true;
                c.entra.authority_host = host.into();
            }));
        }
    }

    #[test]
    fn entra_timeout_and_backoff() {
        only(
            &check(|c| c.entra.timeout_secs = 0),
            "entra.timeout_secs",
            "must be greater than 0",
        );
        only(
            &check(|c| {
                c.entra.initial_backoff_ms = 6000;
                c.entra.max_backoff_ms = 5000;
            }),
            "entra.initial_backoff_ms",
            "6000 exceeds entra.max_backoff_ms (5000)",
        );
        none(&check(|c| {
            c.entra.initial_backoff_ms = 5000;
            c.entra.max_backoff_ms = 5000;
            c.entra.max_retries = 0;
        }));
    }

    // [cache]

    #[test]
    fn cache_never_hands_out_tokens_the_sdks_consider_expired() {
        let problems = check(|c| c.cache.min_remaining_secs = 299);
        only(&problems, "cache.min_remaining_secs", "under 5 minutes");
        only(
            &check(|c| c.cache.refresh_before_secs = 300),
            "cache.refresh_before_secs",
            "must be greater than cache.min_remaining_secs (300)",
        );
        only(
            &check(|c| c.cache.max_entries = 0),
            "cache.max_entries",
            "must be greater than 0",
        );
        none(&check(|c| {
            c.cache.min_remaining_secs = 600;
            c.cache.refresh_before_secs = 601;
        }));
    }

    // [tokens]

    #[test]
    fn token_lifetime_is_bounded_by_entras_cap() {
        only(
            &check(|c| c.tokens.max_lifetime_secs = 90_001),
            "tokens.max_lifetime_secs",
            "Entra's own cap",
        );
        only(
            &check(|c| c.tokens.max_lifetime_secs = 59),
            "tokens.max_lifetime_secs",
            "below 60",
        );
        none(&check(|c| c.tokens.max_lifetime_secs = 60));
        none(&check(|c| c.tokens.max_lifetime_secs = 90_000));
    }

    #[test]
    fn leeway_is_at_most_five_minutes() {
        only(
            &check(|c| c.tokens.leeway_secs = 301),
            "tokens.leeway_secs",
            "301 exceeds 300",
        );
        none(&check(|c| c.tokens.leeway_secs = 0));
        none(&check(|c| c.tokens.leeway_secs = 300));
    }

    #[test]
    fn algorithms_are_a_nonempty_subset() {
        only(
            &check(|c| c.tokens.algorithms = vec![]),
            "tokens.algorithms",
            "at least one algorithm",
        );
        only(
            &check(|c| c.tokens.algorithms = vec!["RS256".into(), "XS1".into()]),
            "tokens.algorithms",
            "`XS1` is not a supported algorithm",
        );
        only(
            &check(|c| c.tokens.algorithms = vec!["rs256".into()]),
            "tokens.algorithms",
            "did you mean `RS256`?",
        );
        none(&check(|c| c.tokens.algorithms = vec!["ES256".into()]));
    }

    #[test]
    fn none_and_hmac_are_never_accepted() {
        only(
            &check(|c| c.tokens.algorithms = vec!["none".into()]),
            "tokens.algorithms",
            "`none` is never accepted",
        );
        for hs in ["HS256", "HS384", "hs512"] {
            only(
                &check(|c| c.tokens.algorithms = vec![hs.into()]),
                "tokens.algorithms",
                &format!("`{hs}` is never accepted"),
            );
        }
        // Every bad value is reported, not just the first.
        let problems = check(|c| c.tokens.algorithms = vec!["none".into(), "HS256".into()]);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        // A name whose second byte is inside a character is read safely.
        only(
            &check(|c| c.tokens.algorithms = vec!["Hé".into()]),
            "tokens.algorithms",
            "`Hé` is not a supported algorithm",
        );
    }

    // [jwks]

    #[test]
    fn jwks_limits_must_be_positive() {
        for (key, change) in [
            (
                "jwks.timeout_secs",
                (|c: &mut BrokerConfig| c.jwks.timeout_secs = 0) as fn(&mut BrokerConfig),
            ),
            ("jwks.refresh_secs", |c| c.jwks.refresh_secs = 0),
            ("jwks.refetch_cooldown_secs", |c| {
                c.jwks.refetch_cooldown_secs = 0
            }),
            ("jwks.max_stale_secs", |c| c.jwks.max_stale_secs = 0),
            ("jwks.max_response_bytes", |c| c.jwks.max_response_bytes = 0),
            ("jwks.max_keys", |c| c.jwks.max_keys = 0),
        ] {
            only(&check(change), key, "must be greater than 0");
        }
    }

    #[test]
    fn jwks_key_count_is_capped() {
        only(
            &check(|c| c.jwks.max_keys = 1001),
            "jwks.max_keys",
            "1001 exceeds 1000",
        );
        none(&check(|c| c.jwks.max_keys = 1000));
    }

    // [log]

    #[test]
    fn log_level_and_format() {
        only(
            &check(|c| c.log.level = "".into()),
            "log.level",
            "must not be empty",
        );
        only(
            &check(|c| c.log.format = "yaml".into()),
            "log.format",
            "must be `text` or `json`, not `yaml`",
        );
        none(&check(|c| {
            c.log.level = "wif_broker=debug,info".into();
            c.log.format = "json".into();
        }));
    }

    // [[issuers]]

    #[test]
    fn issuer_urls_are_unique_https() {
        let problems = check(|c| {
            c.issuers = vec![
                issuer("https://gitlab.example.com"),
                issuer("http://gitlab.example.com"),
                issuer("https://gitlab.example.com"),
            ]
        });
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert_eq!(problems[0].key, "issuers[1].url");
        assert!(problems[0].message.contains("must use https"));
        assert_eq!(problems[1].key, "issuers[2].url");
        assert!(
            problems[1]
                .message
                .contains("already configured by issuers[0]")
        );
        // Trailing slashes matter to issuers: these are two different issuers.
        none(&check(|c| {
            c.issuers = vec![
                issuer("https://k8s.example.com/a"),
                issuer("https://k8s.example.com/a/"),
            ]
        }));
    }

    #[test]
    fn issuer_url_may_have_a_path_but_no_query() {
        none(&check(|c| {
            c.issuers = vec![issuer("https://ghe.example.com/_services/token")]
        }));
        only(
            &check(|c| c.issuers = vec![issuer("https://issuer.example.com/?tenant=1")]),
            "issuers[0].url",
            "an OIDC issuer URL has neither",
        );
        only(
            &check(|c| c.issuers = vec![issuer("")]),
            "issuers[0].url",
            "must not be empty",
        );
    }

    #[test]
    fn issuer_loopback_http_follows_the_switch() {
        only(
            &check(|c| c.issuers = vec![issuer("http://127.0.0.1:7000")]),
            "issuers[0].url",
            "outbound.allow_loopback_http = true",
        );
        none(&check(|c| {
            c.outbound.allow_loopback_http = true;
            c.issuers = vec![issuer("http://127.0.0.1:7000")];
        }));
    }

    #[test]
    fn at_most_one_key_source() {
        only(
            &check(|c| {
                c.issuers = vec![IssuerConfig {
                    jwks_uri: Some("https://issuer.example.com/keys".into()),
                    jwks_file: Some("keys.json".into()),
                    jwks_inline: Some(r#"{"keys":[{"kty":"RSA"}]}"#.into()),
                    ..issuer("https://issuer.example.com")
                }]
            }),
            "issuers[0]",
            "sets jwks_uri and jwks_file and jwks_inline; set at most one",
        );
    }

    #[test]
    fn jwks_uri_is_https_with_the_loopback_rule() {
        let with_uri = |uri: &str| IssuerConfig {
            jwks_uri: Some(uri.into()),
            ..issuer("https://issuer.example.com")
        };
        none(&check(|c| {
            c.issuers = vec![with_uri("https://issuer.example.com/openid/v1/jwks?v=2")]
        }));
        only(
            &check(|c| c.issuers = vec![with_uri("http://issuer.example.com/keys")]),
            "issuers[0].jwks_uri",
            "must use https",
        );
        only(
            &check(|c| c.issuers = vec![with_uri("http://localhost:7000/keys")]),
            "issuers[0].jwks_uri",
            "outbound.allow_loopback_http = true",
        );
        only(
            &check(|c| c.issuers = vec![with_uri("https://issuer.example.com/keys#x")]),
            "issuers[0].jwks_uri",
            "fragment",
        );
    }

    #[test]
    fn cross_origin_jwks_uri_is_only_for_discovery() {
        none(&check(|c| {
            c.issuers = vec![IssuerConfig {
                allow_cross_origin_jwks_uri: true,
                ..issuer("https://accounts.google.com")
            }]
        }));
        only(
            &check(|c| {
                c.issuers = vec![IssuerConfig {
                    allow_cross_origin_jwks_uri: true,
                    jwks_uri: Some("https://www.googleapis.com/oauth2/v3/certs".into()),
                    ..issuer("https://accounts.google.com")
                }]
            }),
            "issuers[0].allow_cross_origin_jwks_uri",
            "applies only to OIDC discovery",
        );
    }

    #[test]
    fn jwks_inline_is_a_jwks() {
        let with_inline = |json: &str| IssuerConfig {
            jwks_inline: Some(json.into()),
            ..issuer("https://issuer.example.com")
        };
        none(&check(|c| {
            c.issuers = vec![with_inline(r#"{"keys":[{"kty":"EC","crv":"P-256"}]}"#)]
        }));
        only(
            &check(|c| c.issuers = vec![with_inline("{keys: []")]),
            "issuers[0].jwks_inline",
            "is not valid JSON",
        );
        only(
            &check(|c| c.issuers = vec![with_inline(r#"{"kty":"RSA"}"#)]),
            "issuers[0].jwks_inline",
            "a JSON object with a `keys` array",
        );
        only(
            &check(|c| c.issuers = vec![with_inline(r#"[]"#)]),
            "issuers[0].jwks_inline",
            "`keys` array",
        );
        only(
            &check(|c| c.issuers = vec![with_inline(r#"{"keys":[]}"#)]),
            "issuers[0].jwks_inline",
            "empty `keys` array",
        );
        only(
            &check(|c| c.issuers = vec![with_inline(r#"{"keys":[{}, "x"]}"#)]),
            "issuers[0].jwks_inline",
            "`keys[1]` is not a JSON object",
        );
    }

    #[test]
    fn issuer_files_must_not_be_empty_paths() {
        let problems = check(|c| {
            c.issuers = vec![IssuerConfig {
                jwks_file: Some(PathBuf::new()),
                ca_file: Some(PathBuf::new()),
                ..issuer("https://issuer.example.com")
            }]
        });
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert_eq!(problems[0].key, "issuers[0].jwks_file");
        assert_eq!(problems[1].key, "issuers[0].ca_file");
    }

    #[test]
    fn issuer_algorithms_narrow_the_global_list() {
        let with_algs = |algs: &[&str]| IssuerConfig {
            algorithms: Some(algs.iter().map(|a| a.to_string()).collect()),
            ..issuer("https://issuer.example.com")
        };
        none(&check(|c| c.issuers = vec![with_algs(&["ES256"])]));
        only(
            &check(|c| c.issuers = vec![with_algs(&[])]),
            "issuers[0].algorithms",
            "at least one",
        );
        only(
            &check(|c| c.issuers = vec![with_algs(&["HS256"])]),
            "issuers[0].algorithms",
            "`HS256` is never accepted",
        );
        only(
            &check(|c| {
                c.tokens.algorithms = vec!["RS256".into()];
                c.issuers = vec![with_algs(&["ES256"])];
            }),
            "issuers[0].algorithms",
            "`ES256` is not in tokens.algorithms",
        );
    }

    // [[identities]]

    #[test]
    fn identity_names_are_unique_and_present() {
        let problems =
            check(|c| c.identities = vec![identity("deploy"), identity(""), identity("deploy")]);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert_eq!(problems[0].key, "identities[1].name");
        assert!(problems[0].message.contains("must not be empty"));
        assert_eq!(problems[1].key, "identities[2].name");
        assert!(
            problems[1]
                .message
                .contains("already used by identities[0]")
        );
    }

    /// Loads a file declaring one identity with these ids; the problems when it is invalid.
    fn load_identity(tenant: &str, client: &str) -> Result<BrokerConfig, Vec<Problem>> {
        let text = format!(
            "[[identities]]\nname = \"x\"\ntenant_id = {tenant:?}\nclient_id = {client:?}\n"
        );
        match BrokerConfig::from_toml(&text, "broker.toml") {
            Ok(config) => Ok(config),
            Err(crate::ConfigError::Invalid { problems, .. }) => Err(problems),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn tenant_id_is_a_guid_or_a_domain() {
        for tenant in [
            TENANT,
            "contoso.onmicrosoft.com",
            "CONTOSO.com",
            "a-b.example.co.uk",
        ] {
            let config = load_identity(tenant, CLIENT).unwrap();
            assert_eq!(config.identities[0].tenant_id.as_str(), tenant);
        }
        only(
            &load_identity("", CLIENT).unwrap_err(),
            "identities[0].tenant_id",
            "must not be empty",
        );
        for bad in [
            "common",
            "contoso",
            "-x.com",
            "a..com",
            "72f988bf-0000",
            "x.123",
            "con toso.com",
        ] {
            only(
                &load_identity(bad, CLIENT).unwrap_err(),
                "identities[0].tenant_id",
                "neither a GUID nor a domain",
            );
        }
    }

    #[test]
    fn client_id_is_a_guid() {
        for bad in [
            "",
            "my-app",
            "0b7c9e1d00004000800000000000000002",
            "0b7c9e1d-0000-4000-8000-00000000000g",
        ] {
            only(
                &load_identity(TENANT, bad).unwrap_err(),
                "identities[0].client_id",
                "is not a GUID; give the application (client) ID",
            );
        }
        let upper = CLIENT.to_uppercase();
        let config = load_identity(TENANT, &upper).unwrap();
        assert_eq!(config.identities[0].client_id.as_str(), upper);
        let written = toml::to_string(&config).unwrap();
        assert!(
            written.contains(&format!("client_id = \"{upper}\"")),
            "{written}"
        );
        assert!(
            written.contains(&format!("tenant_id = \"{TENANT}\"")),
            "{written}"
        );
    }

    #[test]
    fn cloud_and_authority_host_are_exclusive() {
        only(
            &check(|c| {
                let mut id = identity("x");
                id.cloud = Some(Cloud::UsGov);
                id.authority_host = Some("https://login.microsoftonline.us".into());
                c.identities = vec![id];
            }),
            "identities[0]",
            "sets both cloud and authority_host",
        );
    }

    #[test]
    fn identity_authority_host_follows_the_entra_rules() {
        let with_host = |host: &str| {
            let mut id = identity("x");
            id.authority_host = Some(host.into());
            id
        };
        none(&check(|c| {
            c.identities = vec![with_host("https://login.azurestack.example")]
        }));
        only(
            &check(|c| c.identities = vec![with_host("https://login.example.test/tenant")]),
            "identities[0].authority_host",
            "scheme and host only",
        );
        only(
            &check(|c| c.identities = vec![with_host("http://127.0.0.1:9000")]),
            "identities[0].authority_host",
            "outbound.allow_loopback_http = true",
        );
        none(&check(|c| {
            c.outbound.allow_loopback_http = true;
            c.identities = vec![with_host("http://127.0.0.1:9000")];
        }));
    }

    #[test]
    fn credential_issuer_is_https() {
        let with_issuer = |iss: &str| {
            let mut id = identity("x");
            id.federated_credentials.push(FederatedCredentialConfig {
                name: "second".into(),
                issuer: iss.into(),
                subject: Some("s".into()),
                ..Default::default()
            });
            id
        };
        none(&check(|c| {
            c.identities = vec![with_issuer(
                "https://westeurope.oic.prod-aks.azure.com/t/u/",
            )]
        }));
        only(
            &check(|c| c.identities = vec![with_issuer("http://gitlab.example.com")]),
            "identities[0].federated_credentials[1].issuer",
            "must use https",
        );
        only(
            &check(|c| c.identities = vec![with_issuer("")]),
            "identities[0].federated_credentials[1].issuer",
            "must not be empty",
        );
    }

    #[test]
    fn entra_content_rules_are_left_to_the_policy_module() {
        // Bad name charset, two audiences, both subject and expression, odd expression:
        // all the policy module's business, so structural validation passes them.
        none(&check(|c| {
            let mut id = identity("x");
            id.federated_credentials = vec![FederatedCredentialConfig {
                name: "!".into(),
                issuer: "https://token.actions.githubusercontent.com".into(),
                subject: Some("a".into()),
                claims_matching_expression: Some("claims[".into()),
                audiences: vec!["a".into(), "b".into()],
                description: None,
                ..Default::default()
            }];
            c.identities = vec![id];
        }));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = format!(
            "[server]\nlisten = \"nope\"\n[cache]\nmin_remaining_secs = 10\n[log]\n\
             format = \"xml\"\n[[identities]]\nname = \"x\"\ntenant_id = \"{TENANT}\"\n\
             client_id = \"nope\"\n"
        );
        let Err(crate::ConfigError::Invalid { problems, .. }) =
            BrokerConfig::from_toml(&text, "broker.toml")
        else {
            panic!("expected problems");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.listen",
                "cache.min_remaining_secs",
                "log.format",
                "identities[0].client_id"
            ]
        );
    }

    #[test]
    fn the_webhook_is_off_and_unconstrained_by_default() {
        none(&check(|_| {}));
    }

    #[test]
    fn an_enabled_webhook_needs_a_broker_url_and_an_image() {
        let problems = check(|c| c.webhook.enabled = true);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "webhook.listen",
                "webhook.tls_cert",
                "webhook.tls_key",
                "webhook.broker_url",
                "webhook.agent_image"
            ]
        );
        fn enabled(c: &mut BrokerConfig) {
            c.webhook.enabled = true;
            c.webhook.listen = "0.0.0.0:9443".into();
            c.webhook.tls_cert = Some("/etc/wif-broker/tls/tls.crt".into());
            c.webhook.tls_key = Some("/etc/wif-broker/tls/tls.key".into());
            c.webhook.broker_url = "https://wif-broker.wif-system.svc:8443".into();
            c.webhook.agent_image = "registry.example/wif-broker:0.1.0".into();
        }
        none(&check(enabled));
        only(
            &check(|c| {
                enabled(c);
                c.webhook.broker_url = "http://wif-broker.wif-system.svc:8080".into();
            }),
            "webhook.broker_url",
            "must use https",
        );
    }

    #[test]
    fn the_webhook_has_its_own_tls_listener_apart_from_the_api() {
        let enabled = |c: &mut BrokerConfig| {
            c.webhook.enabled = true;
            c.webhook.listen = "0.0.0.0:9443".into();
            c.webhook.tls_cert = Some("tls.crt".into());
            c.webhook.tls_key = Some("tls.key".into());
            c.webhook.broker_url = "https://wif-broker.wif-system.svc:8443".into();
            c.webhook.agent_image = "wif-broker:0.1.0".into();
        };
        only(
            &check(|c| {
                enabled(c);
                c.server.listen = "0.0.0.0:9443".into();
            }),
            "webhook.listen",
            "the API port",
        );
        only(
            &check(|c| {
                enabled(c);
                c.webhook.listen = "webhook.local:9443".into();
            }),
            "webhook.listen",
            "not an IP address and port",
        );
        only(
            &check(|c| {
                enabled(c);
                c.webhook.tls_key = None;
            }),
            "webhook.tls_key",
            "https only",
        );
        none(&check(|c| {
            enabled(c);
            c.server.listen = "127.0.0.1:0".into();
            c.webhook.listen = "127.0.0.1:0".into();
        }));
    }

    #[test]
    fn webhook_sidecar_settings_are_checked() {
        only(
            &check(|c| c.webhook.token_expiration_secs = 60),
            "webhook.token_expiration_secs",
            "600",
        );
        only(
            &check(|c| c.webhook.agent_image_pull_policy = "always".into()),
            "webhook.agent_image_pull_policy",
            "IfNotPresent",
        );
        only(
            &check(|c| c.webhook.agent_memory_limit = "64 MB".into()),
            "webhook.agent_memory_limit",
            "quantity",
        );
        only(
            &check(|c| c.webhook.skip_containers_annotation = "Example.com/x".into()),
            "webhook.skip_containers_annotation",
            "annotation key",
        );
        only(
            &check(|c| c.webhook.token_mount_path = "relative/dir".into()),
            "webhook.token_mount_path",
            "absolute",
        );
        only(
            &check(|c| c.webhook.default_tenant_id = Some("contoso".into())),
            "webhook.default_tenant_id",
            "GUID",
        );
        only(
            &check(|c| c.webhook.agent_port = 0),
            "webhook.agent_port",
            "greater than 0",
        );
        only(
            &check(|c| c.webhook.kube_api_url = Some("https://10.0.0.1:443/api".into())),
            "webhook.kube_api_url",
            "scheme and host only",
        );
        for good in ["10m", "0.5", "16Mi", "1", "2Gi"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "m", "1.2.3", "16MB", "-1"] {
            assert!(!is_quantity(bad), "{bad}");
        }
        assert!(is_annotation_key("wif-broker.io/skip-containers"));
        assert!(is_annotation_key("skip"));
        assert!(!is_annotation_key("a/"));
        assert!(!is_annotation_key("/x"));
    }

    #[test]
    fn a_broker_assertion_needs_the_broker_issuer_url() {
        let problems = check(|c| {
            let mut id = identity("deploy");
            id.assertion = AssertionSource::Broker;
            c.identities = vec![id];
        });
        only(&problems, "identities[0].assertion", "[broker_issuer] url");
        none(&check(|c| {
            let mut id = identity("deploy");
            id.assertion = AssertionSource::Broker;
            id.assertion_subject = Some("deploy-prod".into());
            c.identities = vec![id];
            c.broker_issuer.url = Some("https://wif.contoso.com".into());
        }));
    }

    #[test]
    fn broker_assertions_live_at_most_ten_minutes() {
        only(
            &check(|c| c.broker_issuer.assertion_lifetime_secs = 601),
            "broker_issuer.assertion_lifetime_secs",
            "between 60 and 600",
        );
        only(
            &check(|c| c.broker_issuer.published_key_files = vec!["next.pem".into()]),
            "broker_issuer.published_key_files",
            "needs signing_key_file",
        );
    }

    #[test]
    fn a_certificate_assertion_needs_the_certificate() {
        let problems = check(|c| {
            let mut id = identity("cert");
            id.assertion = AssertionSource::Certificate;
            c.identities = vec![id];
        });
        only(&problems, "identities[0].certificate_file", "is required");
        let problems = check(|c| {
            let mut id = identity("cert");
            id.certificate_file = Some("app.pem".into());
            c.identities = vec![id];
        });
        only(
            &problems,
            "identities[0].certificate_file",
            "used only with",
        );
    }

    #[test]
    fn the_managed_identity_endpoint_stays_on_the_machine() {
        none(&check(|c| {
            c.managed_identity.endpoint =
                Some("http://169.254.169.254/metadata/identity/oauth2/token".into())
        }));
        none(&check(|c| {
            c.managed_identity.endpoint = Some("http://127.0.0.1:41000/msi/token".into())
        }));
        only(
            &check(|c| c.managed_identity.endpoint = Some("http://imds.example.com/token".into())),
            "managed_identity.endpoint",
            "loopback or link-local",
        );
    }
}
