//! Typed configuration for the WIF broker.
//!
//! Configuration is TOML. Every table denies unknown keys, so a typo is an error at
//! start-up rather than a silently ignored setting. Environment variables prefixed
//! `WIF_` override single keys of the fixed sections (see [`env`](mod@env)); the arrays of
//! tables (`[[issuers]]`, `[[identities]]`) come only from the file.
//!
//! Loading is three steps: parse the file, overlay the environment, validate. Every
//! validation message names the offending key (`identities[0].tenant_id: ...`).
//!
//! The file's form ([`BrokerConfig`]) keeps what the operator wrote; the values the broker
//! needs typed (addresses, URLs, networks, algorithms, GUIDs) are parsed here, by
//! validation, into [`Parsed`] ([`BrokerConfig::parse`]): the broker takes those and never
//! parses the strings itself.
//!
//! This crate never touches the network and never reads the clock.

/// Why a value could not be parsed: the message repeats the value (at most 100
/// characters of it) and says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

/// At most 100 characters of `value`, for a message that repeats it.
fn shown(value: &str) -> String {
    value.chars().take(100).collect()
}

/// Serde for a type parsed from a string: read with its `FromStr`, written with its
/// `Display`, so files and wire formats hold the string the operator wrote.
macro_rules! serde_as_string {
    ($type:ty) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pub mod agent;
pub mod algorithm;
pub mod env;
pub mod guid;
pub mod network;
mod parts;
pub mod tenant;
mod validate;
pub mod webhook;

pub use agent::{AgentConfig, BrokerUrl, ListenAddr};
pub use algorithm::Algorithm;
pub use guid::{Guid, is_guid};
pub use network::{Cidr, is_loopback, is_loopback_host, is_loopback_ip};
pub use tenant::{Tenant, is_tenant};
pub use webhook::WebhookConfig;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use validate::Problem;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid configuration ({origin}):\n{}", format_problems(problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What validation parsed out of a [`BrokerConfig`]'s strings, typed: the broker uses
/// these and never parses the strings again ([`BrokerConfig::parse`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// `[server] listen`.
    pub listen: SocketAddr,
    /// `[server] public_url`.
    pub public_url: Option<url::Url>,
    /// `[server] trusted_proxies`.
    pub trusted_proxies: Vec<Cidr>,
    /// `[tokens] algorithms`.
    pub algorithms: Vec<Algorithm>,
    /// The `algorithms` of each `[[issuers]]` entry that sets them, with the issuer's `url`.
    pub issuer_algorithms: Vec<(String, Vec<Algorithm>)>,
    /// `[webhook] listen`, when the webhook is enabled.
    pub webhook_listen: Option<SocketAddr>,
}

/// A configuration that passed validation, with the typed values validation parsed out of
/// it ([`BrokerConfig::load_checked`]): the broker starts from this without validating
/// the file a second time.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    config: BrokerConfig,
    parsed: Parsed,
}

impl Checked {
    /// Validates `config` ([`BrokerConfig::parse`]).
    pub fn new(config: BrokerConfig) -> Result<Self, ConfigError> {
        let parsed = config.parse()?;
        Ok(Self { config, parsed })
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn parsed(&self) -> &Parsed {
        &self.parsed
    }

    pub fn into_config(self) -> BrokerConfig {
        self.config
    }

    /// The configuration and its typed values, apart: a change to the configuration is
    /// no longer checked.
    pub fn into_parts(self) -> (BrokerConfig, Parsed) {
        (self.config, self.parsed)
    }
}

/// The broker's whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub entra: EntraConfig,
    pub cache: CacheConfig,
    pub tokens: TokenConfig,
    pub jwks: JwksConfig,
    pub outbound: OutboundConfig,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub audit: AuditConfig,
    pub webhook: WebhookConfig,
    pub broker_issuer: BrokerIssuerConfig,
    pub managed_identity: ManagedIdentityConfig,
    pub rate_limits: RateLimitsConfig,
    pub issuers: Vec<IssuerConfig>,
    pub identities: Vec<IdentityConfig>,
}

impl BrokerConfig {
    /// Every authority host the operator allowed, as origins (see
    /// [`authority_origin`]): the named clouds' hosts, `[entra] authority_host`, the
    /// `authority_host` of each declared identity and `[entra] allowed_authority_hosts`.
    pub fn allowed_authority_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = [Cloud::Public, Cloud::UsGov, Cloud::China]
            .iter()
            .map(|c| c.authority_host().to_owned())
            .collect();
        hosts.push(self.entra.authority_host.clone());
        hosts.extend(
            self.identities
                .iter()
                .filter_map(|i| i.authority_host.clone()),
        );
        hosts.extend(self.entra.allowed_authority_hosts.iter().cloned());
        let mut origins: Vec<String> = hosts.iter().filter_map(|h| authority_origin(h)).collect();
        origins.sort();
        origins.dedup();
        origins
    }
}

/// An authority host reduced to its origin (`scheme://host[:port]`, lower case, default
/// port left out), the form in which hosts are compared; `None` when it is not a URL.
pub fn authority_origin(host: &str) -> Option<String> {
    let url = url::Url::parse(host.trim()).ok()?;
    match url.origin() {
        url::Origin::Tuple(..) => Some(url.origin().ascii_serialization()),
        url::Origin::Opaque(_) => None,
    }
}

/// `[server]`: the HTTP listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on, `host:port`.
    pub listen: String,
    /// PEM certificate chain; with `tls_key`, the listener speaks TLS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// How often the certificate files are checked for changes.
    pub tls_reload_secs: u64,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest accepted external token.
    pub max_token_bytes: usize,
    /// After the drain: time allowed for in-flight requests to finish on shutdown; those
    /// still running are then answered 503 `shutting_down`.
    pub shutdown_timeout_secs: u64,
    /// Upper bound on one request's handling time.
    pub request_timeout_secs: u64,
    /// On SIGTERM, how long the broker keeps serving (with `/readyz` failing) before it
    /// stops accepting, so load balancers stop routing to it first. 0: stop at once.
    pub drain_secs: u64,
    /// Time a client has to send a request's headers: from accepting the connection (TLS
    /// handshake included), or from the first byte of a later request on it.
    pub header_read_timeout_secs: u64,
    /// A keep-alive connection idle this long between requests is closed.
    pub idle_timeout_secs: u64,
    /// HTTP/2: how often an idle peer is pinged.
    pub http2_keepalive_interval_secs: u64,
    /// HTTP/2: a ping unanswered this long closes the connection.
    pub http2_keepalive_timeout_secs: u64,
    /// HTTP/2: concurrent requests (streams) per connection.
    pub http2_max_concurrent_streams: u32,
    /// Connections served at once; beyond it, see `ops_reserve_connections`.
    pub max_connections: usize,
    /// Connections accepted above `max_connections` that serve only `/healthz`, `/readyz`
    /// and `/metrics` (one request, 2 s to send it); other requests on them get 503
    /// `overloaded`. Beyond both, new connections are closed at once.
    pub ops_reserve_connections: usize,
    /// The URL clients reach the broker at (`https://wif-broker.example`), an origin. The
    /// Entra-compatible discovery document names it; unset, only the listen address (and
    /// `localhost` when listening on loopback or every address) is accepted as `Host`.
    pub public_url: Option<String>,
    /// Networks (CIDR) of the reverse proxies in front of the broker. Only when the
    /// immediate peer is in one of them is the client address taken from
    /// `X-Forwarded-For` (for credentials' `source_networks`); from anyone else the header
    /// is ignored.
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            tls_cert: None,
            tls_key: None,
            tls_reload_secs: 10,
            max_body_bytes: 64 * 1024,
            max_token_bytes: 16 * 1024,
            shutdown_timeout_secs: 20,
            request_timeout_secs: 60,
            drain_secs: 5,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            http2_keepalive_interval_secs: 20,
            http2_keepalive_timeout_secs: 10,
            http2_max_concurrent_streams: 100,
            max_connections: 1024,
            ops_reserve_connections: 16,
            public_url: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[store]`: where registered identities and credentials live.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://path`, `sqlite::memory:` or `postgres://...`.
    pub url: String,
    /// How often a replica checks the store for registry changes made by other replicas.
    pub poll_interval_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://wif.db".into(),
            poll_interval_ms: 500,
        }
    }
}

/// `[rate_limits]`: the default token buckets for exchanges, per replica (docs/admin.md,
/// "Rate limits"). 0 requests per minute: no limit. An identity's or a credential's own
/// `rate_limit` replaces the default for it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Exchanges per minute for each identity, whoever asks.
    pub identity_per_minute: u32,
    /// How many of them may come at once (the bucket's size); default: `identity_per_minute`.
    pub identity_burst: u32,
    /// Exchanges per minute for each caller: one issuer and subject.
    pub subject_per_minute: u32,
    /// How many of them may come at once; default: `subject_per_minute`.
    pub subject_burst: u32,
}

/// A token bucket: `per_minute` tokens a minute, at most `burst` at once.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_minute: u32,
    /// Default: `per_minute`.
    #[serde(default)]
    pub burst: u32,
}

impl RateLimit {
    /// `per_minute` and `burst` as given, `None` for "no limit" (0 a minute); a burst of 0
    /// means `per_minute`.
    pub fn new(per_minute: u32, burst: u32) -> Option<Self> {
        (per_minute > 0).then_some(Self {
            per_minute,
            burst: if burst == 0 { per_minute } else { burst },
        })
    }
}

impl RateLimitsConfig {
    pub fn identity(&self) -> Option<RateLimit> {
        RateLimit::new(self.identity_per_minute, self.identity_burst)
    }
    pub fn subject(&self) -> Option<RateLimit> {
        RateLimit::new(self.subject_per_minute, self.subject_burst)
    }
}

/// `[admin]`: who may use the admin API, and limits on what they register.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Static admin tokens, one per line: `ROLE NAME sha256:HEX` (see docs/admin.md).
    pub tokens_file: Option<PathBuf>,
    /// An OIDC issuer whose tokens may call the admin API (e.g. Entra v2.0 for the tenant).
    pub oidc_issuer: Option<String>,
    /// The audience admin tokens must carry.
    pub oidc_audience: Option<String>,
    /// The claim holding roles or groups (a string or an array of strings).
    pub oidc_role_claim: String,
    /// The claim value that grants the `admin` role (write).
    pub oidc_admin_role: Option<String>,
    /// The claim value that grants the `reader` role (read, simulate).
    pub oidc_reader_role: Option<String>,
    /// Sanity limit on credentials per identity (Entra's own cap is 20).
    pub max_credentials_per_identity: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            tokens_file: None,
            oidc_issuer: None,
            oidc_audience: None,
            oidc_role_claim: "roles".into(),
            oidc_admin_role: None,
            oidc_reader_role: None,
            max_credentials_per_identity: 10_000,
        }
    }
}

/// `[audit]`: the audit trail.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Events older than this are deleted from the store (0 keeps them forever).
    pub retention_days: u64,
    /// Events waiting to be written; beyond this, events are dropped and counted.
    pub queue_size: usize,
    /// The most events the store keeps: beyond it the oldest are deleted as new ones are
    /// written, whatever their age (0: no limit but the age).
    pub max_events: u64,
    /// Refusals of unauthenticated requests (tokens that never verified, admin calls
    /// without a valid admin token) are recorded one by one only up to
    /// `samples_per_window` per kind, endpoint, issuer and outcome in each window of this
    /// many seconds; the rest are counted into one summary event per window.
    pub sample_window_secs: u64,
    /// See `sample_window_secs`.
    pub samples_per_window: u64,
    /// Where events that could not be written to the store by the end of a shutdown are
    /// kept (JSON lines), to be written at the next start. Without it they are counted in
    /// `wif_audit_dropped_total` and their number is logged.
    pub spill_file: Option<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: 90,
            queue_size: 10_000,
            max_events: 10_000_000,
            sample_window_secs: 60,
            samples_per_window: 5,
            spill_file: None,
        }
    }
}

/// `[entra]`: how the broker talks to Entra's token endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EntraConfig {
    /// Default authority host for identities that name neither `cloud` nor `authority_host`.
    pub authority_host: String,
    /// Extra PEM roots trusted for the authority host (Azure Stack, emulators).
    pub ca_file: Option<PathBuf>,
    /// Timeout for one token request, connect to last byte.
    pub timeout_secs: u64,
    /// Retries after the first attempt on 429 and 5xx.
    pub max_retries: u32,
    /// First backoff delay; doubles each retry (with jitter), capped by `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    /// Longest wait between attempts, including an honoured `Retry-After`.
    pub max_backoff_ms: u64,
    /// The most one Entra token request may take with all its retries and backoff (and
    /// the client assertion's making): attempts are cut short, and retries stop, when it
    /// cannot be met. Keep it under the agent's and the SDKs' own timeouts (10 s for
    /// `wif-agent`), so an answer still reaches a caller that waits.
    pub deadline_secs: u64,
    /// More authority hosts (origins) identities registered through the admin API may
    /// use. The named clouds' hosts, `authority_host` above and the `authority_host` of
    /// every `[[identities]]` entry are always allowed; no other host ever receives a
    /// token request (see docs/configuration.md).
    pub allowed_authority_hosts: Vec<String>,
}

impl Default for EntraConfig {
    fn default() -> Self {
        Self {
            authority_host: "https://login.microsoftonline.com".into(),
            ca_file: None,
            timeout_secs: 10,
            max_retries: 3,
            initial_backoff_ms: 200,
            max_backoff_ms: 5_000,
            deadline_secs: 8,
            allowed_authority_hosts: Vec::new(),
        }
    }
}

/// `[cache]`: the Entra access-token cache.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most (identity, scope) entries kept.
    pub max_entries: u64,
    /// A token is refreshed in the background once it has less than this left.
    pub refresh_before_secs: u64,
    /// A token with less than this left is never handed out (at least 300, like the SDKs).
    pub min_remaining_secs: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            refresh_before_secs: 900,
            min_remaining_secs: 300,
        }
    }
}

/// `[tokens]`: how external tokens are verified.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway_secs: u64,
    /// Longest accepted `exp - iat` (Entra's own limit is 25 hours).
    pub max_lifetime_secs: u64,
    /// Signature algorithms accepted by default; an issuer may narrow this.
    pub algorithms: Vec<String>,
    /// Tokens whose signature already verified, remembered by SHA-256 so a workload that
    /// presents the same token again is not verified again (0 turns this off).
    pub verified_cache_entries: u64,
    /// How long a verified token is remembered (never past its `exp`).
    pub verified_cache_secs: u64,
    /// Refuse ECDSA (ES256, ES384) signatures with a high `s`, the malleable twin of a
    /// low-`s` signature. Only for issuers known to sign with low `s`.
    pub ecdsa_low_s_only: bool,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            leeway_secs: 60,
            max_lifetime_secs: 25 * 3600,
            algorithms: ALGORITHMS.iter().map(|a| a.to_string()).collect(),
            verified_cache_entries: 10_000,
            verified_cache_secs: 300,
            ecdsa_low_s_only: false,
        }
    }
}

/// Every algorithm the broker can verify. `none` and HMAC are deliberately absent.
pub const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// `[jwks]`: defaults for fetching issuers' signing keys.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwksConfig {
    /// Timeout for one discovery or JWKS request.
    pub timeout_secs: u64,
    /// Keys are refetched in the background after this long.
    pub refresh_secs: u64,
    /// An unknown `kid` triggers at most one refetch per issuer in this period.
    pub refetch_cooldown_secs: u64,
    /// Last good keys keep serving this long after the issuer stops answering.
    pub max_stale_secs: u64,
    /// Largest discovery or JWKS document accepted.
    pub max_response_bytes: usize,
    /// Most keys taken from one JWKS (Entra counts only the first 100).
    pub max_keys: usize,
}

impl Default for JwksConfig {
    fn default() -> Self {
        Self {
            timeout_secs: 5,
            refresh_secs: 3600,
            refetch_cooldown_secs: 60,
            max_stale_secs: 24 * 3600,
            max_response_bytes: 256 * 1024,
            max_keys: 100,
        }
    }
}

/// `[outbound]`: rules for every outbound HTTP call.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Permit plain `http://` to loopback addresses (dev stack and tests only).
    pub allow_loopback_http: bool,
}

/// `[log]`: logging.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `wif_broker=debug`. `RUST_LOG` wins when set.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[[issuers]]`: explicit settings for one external issuer.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The issuer exactly as it appears in tokens' `iss`.
    pub url: String,
    /// JWKS URL; skips discovery.
    pub jwks_uri: Option<String>,
    /// JWKS read from a file (private clusters).
    pub jwks_file: Option<PathBuf>,
    /// JWKS given inline as JSON.
    pub jwks_inline: Option<String>,
    /// Extra PEM roots trusted for this issuer's discovery and JWKS.
    pub ca_file: Option<PathBuf>,
    /// Narrows `[tokens] algorithms` for this issuer.
    pub algorithms: Option<Vec<String>>,
    /// Accept a discovery document whose `jwks_uri` is on another origin (scheme, host,
    /// port) than the issuer's. Off: such a document is refused.
    #[serde(default)]
    pub allow_cross_origin_jwks_uri: bool,
}

/// The Azure cloud an identity lives in.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    Public,
    UsGov,
    China,
}

impl Cloud {
    pub fn authority_host(self) -> &'static str {
        match self {
            Cloud::Public => "https://login.microsoftonline.com",
            Cloud::UsGov => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
        }
    }

    /// The audience Entra expects in assertions for this cloud.
    pub fn default_audience(self) -> &'static str {
        match self {
            Cloud::Public => "api://AzureADTokenExchange",
            Cloud::UsGov => "api://AzureADTokenExchangeUSGov",
            Cloud::China => "api://AzureADTokenExchangeChina",
        }
    }
}

/// How the broker builds the client assertion it sends to Entra for an identity.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AssertionSource {
    /// Forward the caller's own token; Entra must hold a matching FIC too.
    #[default]
    Passthrough,
    /// The broker signs a short assertion as its own issuer (`[broker_issuer]`); Entra holds
    /// one FIC per identity trusting the broker.
    Broker,
    /// The broker's own managed-identity token (`[managed_identity]`), Entra's "managed
    /// identity as federated credential".
    ManagedIdentity,
    /// An assertion signed with a certificate's private key (`certificate_file`,
    /// `certificate_key_file`); the app registration holds the certificate.
    Certificate,
}

impl AssertionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AssertionSource::Passthrough => "passthrough",
            AssertionSource::Broker => "broker",
            AssertionSource::ManagedIdentity => "managed_identity",
            AssertionSource::Certificate => "certificate",
        }
    }
}

/// `[broker_issuer]`: the broker as an OIDC issuer, for identities with
/// `assertion = "broker"`. Entra must be able to reach `url` (over https) to fetch
/// `{url}/.well-known/openid-configuration` and the JWKS it names.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerIssuerConfig {
    /// The public issuer URL (`iss` of the broker's assertions). Unset: not an issuer.
    pub url: Option<String>,
    /// `exp - iat` of a signed assertion (at most 600).
    pub assertion_lifetime_secs: u64,
    /// PEM RSA private key that signs assertions. Unset: keys are generated by the broker
    /// and kept in the store, rotated every `rotation_days`.
    pub signing_key_file: Option<PathBuf>,
    /// PEM RSA keys published in the JWKS but not used to sign (the next and the previous
    /// key during a manual rotation). Missing files are skipped.
    pub published_key_files: Vec<PathBuf>,
    /// Generated keys: how long one key signs before the next takes over.
    pub rotation_days: u64,
    /// Generated keys: how long the next key is published before it signs, so every
    /// verifier's cached JWKS already holds it.
    pub publish_ahead_hours: u64,
    /// How often key files (and the store's keys) are checked for changes.
    pub reload_secs: u64,
}

impl Default for BrokerIssuerConfig {
    fn default() -> Self {
        Self {
            url: None,
            assertion_lifetime_secs: 300,
            signing_key_file: None,
            published_key_files: Vec::new(),
            rotation_days: 30,
            publish_ahead_hours: 24,
            reload_secs: 10,
        }
    }
}

/// Which managed-identity protocol the broker's host offers.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ManagedIdentityProtocol {
    /// App Service when `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set, IMDS otherwise.
    #[default]
    Auto,
    /// `GET {endpoint}?api-version=2018-02-01` with `Metadata: true`.
    Imds,
    /// `GET {endpoint}?api-version=2019-08-01` with `X-IDENTITY-HEADER`.
    AppService,
}

/// `[managed_identity]`: how the broker obtains its own managed-identity token, for
/// identities with `assertion = "managed_identity"`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ManagedIdentityConfig {
    pub protocol: ManagedIdentityProtocol,
    /// Token endpoint. Default: `IDENTITY_ENDPOINT` (App Service), else
    /// `http://169.254.169.254/metadata/identity/oauth2/token` (IMDS).
    pub endpoint: Option<String>,
    /// The App Service `X-IDENTITY-HEADER` secret. Default: `IDENTITY_HEADER`.
    pub identity_header: Option<String>,
    /// Client id of the user-assigned identity to use when the host has several; unset
    /// means the host's only (or system-assigned) identity.
    pub client_id: Option<String>,
    /// Timeout for one token request.
    pub timeout_secs: u64,
}

impl Default for ManagedIdentityConfig {
    fn default() -> Self {
        Self {
            protocol: ManagedIdentityProtocol::Auto,
            endpoint: None,
            identity_header: None,
            client_id: None,
            timeout_secs: 5,
        }
    }
}

/// `[[identities]]`: an Entra app registration or user-assigned managed identity.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub name: String,
    /// The directory: a GUID or a verified domain ([`Tenant`]).
    pub tenant_id: Tenant,
    /// The application (client) id of the app registration or managed identity.
    #[serde(deserialize_with = "guid::client_id")]
    pub client_id: Guid,
    pub cloud: Option<Cloud>,
    pub authority_host: Option<String>,
    #[serde(default)]
    pub assertion: AssertionSource,
    /// `sub` of the broker's assertions for this identity (`assertion = "broker"`);
    /// default: the identity's name.
    pub assertion_subject: Option<String>,
    /// PEM certificate registered on the app (`assertion = "certificate"`).
    pub certificate_file: Option<PathBuf>,
    /// PEM private key of that certificate; default: `certificate_file` (one PEM with both).
    pub certificate_key_file: Option<PathBuf>,
    #[serde(default)]
    pub federated_credentials: Vec<FederatedCredentialConfig>,
    /// Refuse every exchange for this identity (and drop its cached tokens) without
    /// deleting it.
    #[serde(default)]
    pub disabled: bool,
    /// The scopes this identity's tokens may be asked for, for credentials that name none:
    /// exact (`https://storage.azure.com/.default`) or with `*` wildcards. Empty: any.
    #[serde(default)]
    pub allowed_scopes: Vec<String>,
    /// This identity's own exchange rate, instead of `[rate_limits] identity_per_minute`.
    pub rate_limit: Option<RateLimit>,
}

/// `[[identities.federated_credentials]]`: who may act as the identity.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FederatedCredentialConfig {
    pub name: String,
    pub issuer: String,
    pub subject: Option<String>,
    pub claims_matching_expression: Option<String>,
    /// Exactly one value; defaults to the identity's cloud audience.
    #[serde(default)]
    pub audiences: Vec<String>,
    pub description: Option<String>,
    /// Refuse tokens matched by this credential, without deleting it.
    #[serde(default)]
    pub disabled: bool,
    /// The scopes tokens matched by this credential may be asked for (exact or with `*`
    /// wildcards); empty: the identity's `allowed_scopes`.
    #[serde(default)]
    pub allowed_scopes: Vec<String>,
    /// Networks (CIDR) the exchange must come from; empty: anywhere.
    #[serde(default)]
    pub source_networks: Vec<String>,
    /// Refuse tokens issued (`iat`) longer ago than this many seconds.
    pub max_token_age_secs: Option<u64>,
    /// RFC 3339: the credential admits nothing before this time.
    pub not_before: Option<String>,
    /// RFC 3339: the credential admits nothing from this time on.
    pub not_after: Option<String>,
    /// The rate for each caller (issuer and subject) matched by this credential, instead
    /// of `[rate_limits] subject_per_minute`.
    pub rate_limit: Option<RateLimit>,
}

impl IdentityConfig {
    /// The authority host to send this identity's token requests to: `authority_host` if
    /// set, else the host of `cloud`, else `default` (normally `[entra] authority_host`).
    /// A trailing `/` is removed, so `{host}/{tenant}/oauth2/v2.0/token` can be appended.
    pub fn effective_authority_host(&self, default: &str) -> String {
        self.authority_host
            .as_deref()
            .or(self.cloud.map(Cloud::authority_host))
            .unwrap_or(default)
            .trim_end_matches('/')
            .to_owned()
    }
}

impl FederatedCredentialConfig {
    /// The audiences a token must carry to match: `audiences` if given, else the default
    /// audience of the identity's `cloud` (`api://AzureADTokenExchange` when none is set).
    pub fn effective_audiences(&self, cloud: Option<Cloud>) -> Vec<String> {
        if self.audiences.is_empty() {
            vec![cloud.unwrap_or(Cloud::Public).default_audience().to_owned()]
        } else {
            self.audiences.clone()
        }
    }
}

impl BrokerConfig {
    /// Reads `path`, overlays `WIF_*` variables from the process environment, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_checked(path).map(Checked::into_config)
    }

    /// [`Self::load`], keeping the typed values validation parsed: what `wif-broker
    /// serve` starts from, so the file is validated once.
    pub fn load_checked(path: &Path) -> Result<Checked, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::check_toml_with_env(&text, &path.display().to_string(), &vars)
    }

    /// Built-in defaults with the environment overlaid (no file given).
    pub fn from_env_only() -> Result<Self, ConfigError> {
        Self::check_env_only().map(Checked::into_config)
    }

    /// [`Self::from_env_only`], keeping the typed values.
    pub fn check_env_only() -> Result<Checked, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::check_toml_with_env("", "defaults", &vars)
    }

    /// Parses TOML text without any environment overlay, then validates.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Self::from_toml_with_env(text, origin, &[])
    }

    /// Parses TOML text, overlays the given `WIF_*` variables, then validates.
    ///
    /// A mistake in the file is reported with its line and column; a bad override names
    /// its variable; a validation problem on a key set from the environment says so.
    pub fn from_toml_with_env(
        text: &str,
        origin: &str,
        vars: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        Self::check_toml_with_env(text, origin, vars).map(Checked::into_config)
    }

    /// [`Self::from_toml_with_env`], keeping the typed values validation parsed.
    pub fn check_toml_with_env(
        text: &str,
        origin: &str,
        vars: &[(String, String)],
    ) -> Result<Checked, ConfigError> {
        let parse_error = |origin: &str, message: String| ConfigError::Parse {
            origin: origin.to_owned(),
            message,
        };
        let overrides = env::overrides(vars, Self::SECTIONS);
        // A file declaring many identities is read one identity at a time when that
        // means the same as reading it whole ([`parts`]); otherwise, or when anything in
        // it is wrong, it is read whole below, which gives the error to report.
        let in_parts = match &overrides {
            Ok(overrides) => parts::read(text, overrides),
            Err(_) => None,
        };
        let (config, ids) = match in_parts {
            Some(config) => (config, Vec::new()),
            None => Self::read_whole(text, origin, overrides.as_deref().unwrap_or_default())?,
        };
        let overrides = overrides.map_err(|message| parse_error("environment", message))?;
        let mut problems = match validate::broker_with(&config, &ids) {
            Ok(parsed) => return Ok(Checked { config, parsed }),
            Err(problems) => problems,
        };
        for problem in &mut problems {
            if let Some(o) = overrides.iter().find(|o| o.path() == problem.key) {
                problem.message = format!(
                    "{} (set by environment variable {})",
                    problem.message, o.variable
                );
            }
        }
        Err(ConfigError::Invalid {
            origin: origin.to_owned(),
            problems,
        })
    }

    /// The whole file read at once, with `overrides` applied (when they are well formed:
    /// the caller reports them otherwise), and the problems of its identity ids.
    fn read_whole(
        text: &str,
        origin: &str,
        overrides: &[env::Override],
    ) -> Result<(Self, Vec<Problem>), ConfigError> {
        let parse_error = |origin: &str, message: String| ConfigError::Parse {
            origin: origin.to_owned(),
            message,
        };
        // Deserializing straight from the text keeps spans, so errors carry line numbers.
        // When that fails, a bad identity id may be why: those are problems reported with
        // the rest ([`validate::identity_ids`]), and the file is read again without them.
        let table = || -> Result<(toml::Table, Vec<Problem>), ConfigError> {
            let mut table: toml::Table =
                toml::from_str(text).map_err(|e| parse_error(origin, e.to_string()))?;
            let ids = validate::identity_ids(&mut table);
            Ok((table, ids))
        };
        let (from_file, ids) = match toml::from_str::<Self>(text) {
            Ok(config) => (config, Vec::new()),
            Err(error) => match table()? {
                (table, ids) if !ids.is_empty() => (
                    table
                        .try_into()
                        .map_err(|_| parse_error(origin, error.to_string()))?,
                    ids,
                ),
                _ => return Err(parse_error(origin, error.to_string())),
            },
        };
        if overrides.is_empty() {
            return Ok((from_file, ids));
        }
        let config = env::apply(table()?.0, overrides)
            .map_err(|message| parse_error("environment", message))?;
        Ok((config, ids))
    }

    /// Validates this configuration and returns its typed values: what the broker starts
    /// from. A configuration from [`Self::load`] is valid already; one built or changed in
    /// code is checked here by the same rules.
    pub fn parse(&self) -> Result<Parsed, ConfigError> {
        validate::broker(self).map_err(|problems| ConfigError::Invalid {
            origin: "configuration".to_owned(),
            problems,
        })
    }

    /// Sections whose keys may be overridden from the environment.
    pub const SECTIONS: &'static [&'static str] = &[
        "server",
        "store",
        "entra",
        "cache",
        "tokens",
        "jwks",
        "outbound",
        "log",
        "admin",
        "audit",
        "broker_issuer",
        "managed_identity",
        "webhook",
        "rate_limits",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_host_prefers_explicit_then_cloud_then_default() {
        let mut id = IdentityConfig::default();
        assert_eq!(
            id.effective_authority_host("https://login.microsoftonline.com/"),
            "https://login.microsoftonline.com"
        );
        id.cloud = Some(Cloud::UsGov);
        assert_eq!(
            id.effective_authority_host("https://login.microsoftonline.com"),
            "https://login.microsoftonline.us"
        );
        id.cloud = None;
        id.authority_host = Some("https://login.azurestack.example/".into());
        assert_eq!(
            id.effective_authority_host("https://login.microsoftonline.com"),
            "https://login.azurestack.example"
        );
    }

    #[test]
    fn audiences_default_to_the_clouds_exchange_audience() {
        let mut fic = FederatedCredentialConfig::default();
        assert_eq!(
            fic.effective_audiences(None),
            ["api://AzureADTokenExchange"]
        );
        assert_eq!(
            fic.effective_audiences(Some(Cloud::UsGov)),
            ["api://AzureADTokenExchangeUSGov"]
        );
        assert_eq!(
            fic.effective_audiences(Some(Cloud::China)),
            ["api://AzureADTokenExchangeChina"]
        );
        fic.audiences = vec!["api://custom".into()];
        assert_eq!(
            fic.effective_audiences(Some(Cloud::UsGov)),
            ["api://custom"]
        );
    }
}
