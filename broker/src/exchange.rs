//! One exchange, step by step (README, "How an exchange works"): read the token without trusting
//! it, refuse unknown issuers without any network call, get the issuer's keys, verify,
//! match credentials and choose the identity, then answer from the cache or from Entra,
//! and record the decision.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use wif_config::BrokerConfig;

use crate::audit::{AuditEvent, Auditor};
use crate::cache::{CacheError, CacheKey, CacheOutcome, TokenCache};
use crate::clock::SharedClock;
use crate::entra::assertion::Assertions;
use crate::entra::assertion::issuer::BrokerIssuer;
use crate::entra::scope::ScopeError;
use crate::entra::{EntraClient, EntraError, EntraToken, Secret};
use crate::error::{ApiError, ErrorCode};
use crate::issuer::{IssuerSetupError, KeyError, KeyStore};
use crate::metrics::Metrics;
use crate::policy::conditions::{self, Attempt, Refusal};
use crate::policy::registry::Credential;
use crate::policy::registry::{BuildProblem, Declared, StoredBuild, StoredChange};
use crate::policy::{Identity, MatchError, Registry, SelectError, select_identity};
use crate::ratelimit::{Limited, RateLimiter};
use crate::redact::{Untrusted, untrusted};
use crate::store::{Store, StoreError};
use crate::token::{self, TokenError, UnverifiedToken, VerifiedToken, VerifyPolicy};

/// Everything an exchange can fail on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("tokens from this issuer are not trusted: no federated credential names it")]
    UnknownIssuer,
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Match(#[from] MatchError),
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("the identity is not in tenant {0}; use its tenant in the URL")]
    TenantMismatch(Untrusted),
    #[error("this token was already used, and its credential accepts each token once")]
    Replayed,
    #[error("replay protection needs the store, which cannot be reached: {0}")]
    Store(StoreError),
    /// A least-privilege control refused (docs/admin.md, "Least privilege").
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    RateLimited(#[from] Limited),
}

impl ExchangeError {
    /// The error's one classification (docs/api.md, "Errors"): code, status,
    /// `Retry-After`, the description the caller gets and, for store, assertion-store and
    /// upstream failures, the detail only the log gets.
    pub fn classify(&self) -> ApiError {
        let public = || ApiError::new(self.code(), self.to_string());
        match self {
            ExchangeError::Keys(KeyError::Unavailable { .. }) => {
                public().with_retry_after(crate::issuer::RETRY_AFTER_FAILURE_SECS)
            }
            ExchangeError::RateLimited(limited) => public().with_retry_after(limited.retry_after),
            ExchangeError::Store(_) => ApiError::store(self),
            ExchangeError::Cache(CacheError::Entra(entra)) => classify_entra(entra),
            _ => public(),
        }
    }

    /// The stable error code callers, metrics and audit see.
    pub fn code(&self) -> ErrorCode {
        match self {
            ExchangeError::Scope(_) => ErrorCode::InvalidScope,
            ExchangeError::Token(t) => match t {
                TokenError::TooLarge { .. } => ErrorCode::TokenTooLarge,
                TokenError::Malformed(_) => ErrorCode::InvalidToken,
                TokenError::MissingClaim(_) => ErrorCode::MissingClaim,
                TokenError::ForbiddenAlgorithm(_)
                | TokenError::AlgorithmNotAllowed(_)
                | TokenError::AlgorithmKeyMismatch(_) => ErrorCode::UnsupportedAlgorithm,
                TokenError::BadSignature => ErrorCode::InvalidSignature,
                TokenError::Expired { .. } => ErrorCode::TokenExpired,
                TokenError::NotYetValid { .. } | TokenError::IssuedInFuture { .. } => {
                    ErrorCode::TokenNotYetValid
                }
                TokenError::LifetimeTooLong { .. } | TokenError::RemainingTooLong { .. } => {
                    ErrorCode::TokenLifetimeTooLong
                }
            },
            ExchangeError::UnknownIssuer => ErrorCode::UnknownIssuer,
            ExchangeError::Keys(KeyError::UnknownKey { .. }) => ErrorCode::UnknownSigningKey,
            ExchangeError::Keys(KeyError::Unavailable { .. }) => ErrorCode::IssuerUnavailable,
            ExchangeError::Match(MatchError::NoCredential) => ErrorCode::NoMatchingCredential,
            ExchangeError::Match(MatchError::Audience { .. }) => ErrorCode::InvalidAudience,
            ExchangeError::Select(SelectError::NotAllowed) => ErrorCode::IdentityNotAllowed,
            ExchangeError::Select(SelectError::Ambiguous(_)) => ErrorCode::IdentityRequired,
            ExchangeError::Cache(CacheError::ShortLived { .. }) => ErrorCode::EntraTokenTooShort,
            ExchangeError::Replayed => ErrorCode::TokenReplayed,
            ExchangeError::TenantMismatch(_) => ErrorCode::TenantMismatch,
            ExchangeError::Store(_) => ErrorCode::StoreUnavailable,
            ExchangeError::Refused(r) => r.code(),
            ExchangeError::RateLimited(_) => ErrorCode::RateLimited,
            ExchangeError::Cache(CacheError::Entra(e)) => entra_code(e),
        }
    }
}

fn entra_code(e: &EntraError) -> ErrorCode {
    match e {
        EntraError::Unavailable { .. } => ErrorCode::EntraUnavailable,
        EntraError::Protocol(_) => ErrorCode::EntraBadResponse,
        EntraError::Assertion(a) if a.is_transient() => ErrorCode::AssertionUnavailable,
        EntraError::Assertion(_) => ErrorCode::AssertionMisconfigured,
        EntraError::Rejected { aadsts, .. } => match aadsts {
            Some(70021 | 700211 | 700212 | 700213 | 7002138) => {
                ErrorCode::EntraNoMatchingFederatedCredential
            }
            Some(700024) => ErrorCode::EntraAssertionExpired,
            Some(70023 | 7000272 | 50027 | 700222 | 700027) => ErrorCode::EntraAssertionRejected,
            Some(700016) => ErrorCode::EntraApplicationNotFound,
            Some(90002) => ErrorCode::EntraTenantNotFound,
            _ => ErrorCode::EntraRejected,
        },
    }
}

/// A failure on the way to Entra or from it: what the caller may know, and the hint
/// that helps them (docs/api.md, "Errors").
fn classify_entra(e: &EntraError) -> ApiError {
    use crate::entra::assertion::AssertionError;
    use crate::entra::assertion::issuer::IssuerKeyError;
    let code = entra_code(e);
    match e {
        EntraError::Unavailable { retry_after, .. } => ApiError::new(
            code,
            format!("{e}; no cached token is available, retry later"),
        )
        .with_retry_after(retry_after.unwrap_or(5)),
        EntraError::Protocol(_) => ApiError::internal(
            code,
            "Entra answered something that is not its token protocol",
            e,
        ),
        // The store holding the broker's signing keys failed: the store's text is internal.
        EntraError::Assertion(AssertionError::Issuer(
            IssuerKeyError::Store(_) | IssuerKeyError::StoredKey(_),
        )) => ApiError::internal(code, crate::error::STORE_UNAVAILABLE, e)
            .with_status(axum::http::StatusCode::SERVICE_UNAVAILABLE)
            .with_retry_after(5),
        EntraError::Assertion(a) => {
            let public = format!("no client assertion: {}", a.public_message());
            let error = ApiError::internal(code, public, e);
            if a.is_transient() {
                error.with_retry_after(5)
            } else {
                error
            }
        }
        EntraError::Rejected { description, .. } => {
            let hint = match code {
                ErrorCode::EntraNoMatchingFederatedCredential => {
                    " The broker accepted the token, but the Entra app registration has no federated credential matching the assertion: with the passthrough assertion, register the token's issuer, subject and audience in Entra; with the broker assertion, one credential trusting the broker's issuer URL and the identity's assertion subject (see docs/assertion-sources.md)."
                }
                ErrorCode::EntraAssertionExpired => {
                    " The presented token expired before Entra saw it; request a fresh one."
                }
                ErrorCode::EntraApplicationNotFound => {
                    " Check the identity's client_id and tenant_id."
                }
                ErrorCode::EntraTenantNotFound => {
                    " Check the identity's tenant_id and cloud (authority host)."
                }
                _ => "",
            };
            ApiError::new(
                code,
                format!("Entra refused the request: {description}.{hint}"),
            )
        }
    }
}

/// A step of the exchange, as an [`Observer`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// 1. The token read without trusting it (its size, its form).
    Parse,
    /// 2. Its issuer is one a federated credential names.
    Issuer,
    /// 3. The issuer's signing keys.
    Keys,
    /// 4. Signature and times.
    Verify,
    /// 5. Credentials matched and the identity chosen.
    Match,
    /// The identity is in the tenant the caller addressed.
    Tenant,
    /// The least-privilege controls (docs/admin.md, "Least privilege").
    Conditions,
}

/// Watches the exchange's checks ([`Broker::decide`]): `simulate` runs the exchange's own
/// steps through an observer that records each one, so a check added to the exchange is
/// simulated too (docs/admin.md, "POST /v1/simulate").
pub trait Observer: Send {
    /// `step` passed (`Ok`), or refused with the error the exchange answers.
    fn step(&mut self, step: Step, outcome: Result<(), &ExchangeError>);

    /// The token, read and not yet trusted.
    fn parsed(&mut self, _token: &UnverifiedToken) {}

    /// The token verified (or the claims `simulate` was given).
    fn verified(&mut self, _token: &Arc<VerifiedToken>) {}

    /// A dry run (`simulate`): every token is verified afresh (not taken from the
    /// verified-token cache), and a scope or client address not given is not judged.
    fn dry_run(&self) -> bool {
        false
    }
}

/// The exchange's own observer: sees nothing.
#[derive(Debug, Default)]
pub struct Unobserved;

impl Observer for Unobserved {
    fn step(&mut self, _step: Step, _outcome: Result<(), &ExchangeError>) {}
}

/// Reports `result` as `step`'s outcome and passes it on.
fn observed<T>(
    observer: &mut dyn Observer,
    step: Step,
    result: Result<T, ExchangeError>,
) -> Result<T, ExchangeError> {
    observer.step(step, result.as_ref().map(|_| ()));
    result
}

/// What the checks decided ([`Broker::decide`]).
#[derive(Debug, Clone)]
pub struct Decision {
    pub verified: Arc<VerifiedToken>,
    /// Every credential the token matches.
    pub matched: Vec<Arc<Credential>>,
    /// The identity the exchange acts as.
    pub identity: Arc<Identity>,
    /// The credential that admitted the token.
    pub credential: Arc<Credential>,
}

/// One exchange request, already read off the wire.
#[derive(Debug)]
pub struct ExchangeRequest<'a> {
    pub endpoint: &'static str,
    pub request_id: &'a str,
    pub token: &'a str,
    /// As the caller gave it; normalised to a `/.default` scope here.
    pub scope: Option<&'a str>,
    /// An identity name or client id.
    pub identity: Option<&'a str>,
    /// The tenant the caller addressed (the Entra-compatible endpoint's `{tenant}`); the
    /// chosen identity must be in it. Checked only after the token verified, so nothing
    /// about identities is revealed to a caller without a valid token.
    pub tenant: Option<&'a str>,
    /// The client's address (the socket's peer, or `X-Forwarded-For` from a trusted
    /// proxy), for credentials' `source_networks`; `None` when unknown.
    pub client: Option<IpAddr>,
}

/// A successful exchange.
#[derive(Debug, Clone)]
pub struct Exchanged {
    pub token: Arc<EntraToken>,
    pub identity: Arc<Identity>,
    pub scope: String,
    pub cache: CacheOutcome,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid federated credentials:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Registry(Vec<BuildProblem>),
    #[error(transparent)]
    Issuer(#[from] IssuerSetupError),
    #[error("entra: {0}")]
    Entra(#[from] crate::outbound::OutboundError),
    #[error(transparent)]
    Config(#[from] wif_config::ConfigError),
}

/// The exchange path's state, shared by all requests.
pub struct Broker {
    registry: ArcSwap<Registry>,
    /// Tokens whose signature verified, by SHA-256 of the raw token.
    verified: Option<moka::sync::Cache<[u8; 32], Arc<VerifiedToken>>>,
    declared: Declared,
    store: Option<Arc<dyn Store>>,
    /// The store version of the registry in use. Held only to compare and swap (and apply
    /// changes in memory), never across a store call, so a stalled database cannot block a
    /// write's own reload.
    loaded_version: std::sync::Mutex<Option<i64>>,
    /// Whether the last registry load reached the store (readiness says `degraded` when
    /// not: the broker serves what it has, the store's registry may be missing or stale).
    store_reachable: std::sync::atomic::AtomicBool,
    auditor: Auditor,
    keys: KeyStore,
    default_policy: VerifyPolicy,
    issuer_policies: HashMap<String, VerifyPolicy>,
    max_token_bytes: usize,
    trusted_proxies: Vec<wif_config::network::Cidr>,
    cache: TokenCache,
    limiter: RateLimiter,
    entra: Arc<EntraClient>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// Builds the exchange path from `cfg`. With a store, call [`Broker::reload`] before
    /// serving so API-registered credentials are in the registry; without one (as in
    /// `check-config`), only declared credentials exist and nothing is audited to a store.
    pub fn new(
        cfg: &BrokerConfig,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        store: Option<Arc<dyn Store>>,
    ) -> Result<Self, SetupError> {
        Self::with_parsed(cfg, &cfg.parse()?, clock, metrics, store)
    }

    /// [`Broker::new`] with the values `wif-config` parsed out of `cfg` already
    /// ([`BrokerConfig::parse`]).
    pub fn with_parsed(
        cfg: &BrokerConfig,
        parsed: &wif_config::Parsed,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        store: Option<Arc<dyn Store>>,
    ) -> Result<Self, SetupError> {
        let declared = Declared::from_config(cfg).map_err(SetupError::Registry)?;
        Self::with_declared(cfg, parsed, declared, clock, metrics, store)
    }

    /// [`Broker::with_parsed`] with the declared registry built already (from a
    /// configuration whose credentials [`Declared::take_from_config`] took).
    pub fn with_declared(
        cfg: &BrokerConfig,
        parsed: &wif_config::Parsed,
        declared: Declared,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        store: Option<Arc<dyn Store>>,
    ) -> Result<Self, SetupError> {
        crate::crypto::install_provider();
        let registry = declared.registry.clone();
        let auditor = match &store {
            Some(store) => Auditor::with_store(store.clone(), &cfg.audit, metrics.clone()),
            None => Auditor::log_only(&cfg.audit, metrics.clone()),
        };
        let default_policy = VerifyPolicy {
            algorithms: token::algorithms(&parsed.algorithms),
            leeway_secs: cfg.tokens.leeway_secs,
            max_lifetime_secs: cfg.tokens.max_lifetime_secs,
            ecdsa_low_s_only: cfg.tokens.ecdsa_low_s_only,
        };
        let mut issuer_policies = HashMap::new();
        for (url, algorithms) in &parsed.issuer_algorithms {
            issuer_policies.insert(
                url.clone(),
                VerifyPolicy {
                    algorithms: token::algorithms(algorithms),
                    ..default_policy.clone()
                },
            );
        }
        let keys = KeyStore::new(
            &cfg.jwks,
            &cfg.issuers,
            cfg.outbound.allow_loopback_http,
            clock.clone(),
            metrics.clone(),
        )?;
        let assertions = Assertions::new(
            cfg,
            store.clone(),
            |name| std::env::var(name).ok(),
            clock.clone(),
        )?;
        let entra = Arc::new(EntraClient::new(
            &cfg.entra,
            clock.clone(),
            metrics.clone(),
            assertions,
        )?);
        let verified = (cfg.tokens.verified_cache_entries > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(cfg.tokens.verified_cache_entries)
                .time_to_live(std::time::Duration::from_secs(
                    cfg.tokens.verified_cache_secs,
                ))
                .build()
        });
        Ok(Self {
            registry: ArcSwap::from_pointee(registry),
            verified,
            declared,
            store,
            loaded_version: std::sync::Mutex::new(None),
            store_reachable: std::sync::atomic::AtomicBool::new(true),
            auditor,
            keys,
            default_policy,
            issuer_policies,
            max_token_bytes: cfg.server.max_token_bytes,
            trusted_proxies: parsed.trusted_proxies.clone(),
            cache: TokenCache::new(&cfg.cache, clock.clone(), metrics.clone()),
            limiter: RateLimiter::new(&cfg.rate_limits, clock.clone(), metrics.clone()),
            entra,
            clock,
            metrics,
        })
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.load_full()
    }

    /// The broker as an OIDC issuer, when `[broker_issuer] url` is set.
    pub fn issuer(&self) -> Option<&Arc<BrokerIssuer>> {
        self.entra.assertions().issuer()
    }

    /// `[entra] authority_host`, without a trailing `/`.
    pub fn default_authority_host(&self) -> &str {
        &self.declared.default_authority_host
    }

    /// The authority hosts identities may use (docs/configuration.md).
    pub fn authority_hosts(&self) -> &crate::policy::authority::AuthorityHosts {
        &self.declared.authority_hosts
    }

    pub fn is_issuer(&self) -> bool {
        self.issuer().is_some()
    }

    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }

    pub fn auditor(&self) -> &Auditor {
        &self.auditor
    }

    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// The verification policy for tokens from `iss`.
    pub fn verify_policy(&self, iss: &str) -> &VerifyPolicy {
        self.issuer_policies
            .get(iss)
            .unwrap_or(&self.default_policy)
    }

    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// `[server] trusted_proxies`.
    pub fn trusted_proxies(&self) -> &[wif_config::network::Cidr] {
        &self.trusted_proxies
    }

    /// Brings the registry up to the store's version and swaps it in; the next exchange
    /// sees it. Normally only the entries changed since the loaded version are read and
    /// applied ([`Registry::apply`]); `whole` (at start), a replica far behind, or a change
    /// that needs it reads and builds everything. Returns whether a new registry was
    /// swapped in.
    pub async fn reload(&self, trigger: &'static str, whole: bool) -> Result<bool, StoreError> {
        let Some(store) = &self.store else {
            return Ok(false);
        };
        let loaded = self.loaded_version.lock().map(|v| *v).unwrap_or(None);
        let fresh = match read_registry(store.as_ref(), &self.declared, loaded, whole).await {
            Ok(Some(fresh)) => fresh,
            Ok(None) => return Ok(false),
            Err(e) => {
                self.metrics.registry_reload(trigger, "error");
                self.metrics.store_error();
                if matches!(e, StoreError::Unavailable(_)) {
                    self.store_reachable
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                }
                return Err(e);
            }
        };
        self.store_reachable
            .store(true, std::sync::atomic::Ordering::Relaxed);
        match self.install(fresh) {
            Some(swapped) => {
                if swapped {
                    self.metrics.registry_reload(trigger, "ok");
                }
                Ok(swapped)
            }
            None => Box::pin(self.reload(trigger, true)).await,
        }
    }

    /// Swaps in what a reload read, unless a newer registry is in use already. `None`:
    /// the changes cannot be applied one by one; read everything.
    fn install(&self, fresh: Fresh) -> Option<bool> {
        let Ok(mut current) = self.loaded_version.lock() else {
            return Some(false);
        };
        // The identities a change may have disabled or removed (`None`: any).
        let mut revisited: Option<Vec<String>> = None;
        let (version, registry) = match fresh {
            Fresh::Whole {
                version,
                registry,
                problems,
            } => {
                // Concurrent reloads may finish out of order; never go back to an older
                // version.
                if current.is_some_and(|v| v > version) {
                    return Some(false);
                }
                for p in &problems {
                    tracing::warn!(entry = %p.key, problem = %p.message, "stored entry left out of the registry");
                }
                (version, *registry)
            }
            Fresh::Changes { version, changes } => {
                if current.is_some_and(|v| v >= version) {
                    return Some(false);
                }
                revisited = Some(
                    changes
                        .iter()
                        .filter_map(|c| match c {
                            StoredChange::Identity { name, .. } => Some(name.clone()),
                            StoredChange::Credential { .. } => None,
                        })
                        .collect(),
                );
                // Applied to the registry in use even if another reload moved it on since
                // `loaded`: each change carries its entry as stored now, so applying one
                // again is harmless.
                (
                    version,
                    self.registry.load().apply(&self.declared, &changes)?,
                )
            }
        };
        let previous = self.registry.swap(Arc::new(registry));
        self.evict_revoked(&previous, revisited.as_deref());
        *current = Some(version);
        Some(true)
    }

    /// Drops the cached Entra tokens of identities that were enabled in `previous` and are
    /// now disabled or gone, so none of them is handed out again (docs/security.md).
    /// `names`: only those identities can have changed.
    fn evict_revoked(&self, previous: &Registry, names: Option<&[String]>) {
        let current = self.registry.load();
        let candidates: Vec<&Arc<Identity>> = match names {
            Some(names) => names.iter().filter_map(|n| previous.identity(n)).collect(),
            None => previous.identities().collect(),
        };
        for before in candidates.into_iter().filter(|i| !i.conditions.disabled()) {
            let revoked = current
                .identity(&before.name)
                .is_none_or(|now| now.conditions.disabled() || now.client_id != before.client_id);
            if revoked {
                self.cache.evict_identity(
                    &before.authority_host,
                    &before.tenant_id,
                    &before.client_id,
                );
            }
        }
    }

    /// False while the store cannot be reached (seen by the last registry load).
    pub fn store_reachable(&self) -> bool {
        self.store_reachable
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Records a refusal an exchange endpoint made before the exchange began (no token,
    /// a malformed or unknown parameter): counted in `wif_exchanges_total` and audited
    /// like every unauthenticated refusal, so sampled (docs/admin.md, "Audit").
    pub fn record_refusal(
        &self,
        endpoint: &'static str,
        request_id: &str,
        code: &str,
        description: &str,
    ) {
        self.auditor.record(&AuditEvent {
            kind: "exchange",
            time: self.clock.now(),
            request_id: request_id.to_owned(),
            endpoint,
            outcome: code.to_owned(),
            reason: Some(description.to_owned()),
            unauthenticated: true,
            ..Default::default()
        });
        self.metrics.exchange(endpoint, code, "unknown", 0.0);
    }

    /// Runs one exchange and records its audit event and metrics.
    pub async fn exchange(&self, req: ExchangeRequest<'_>) -> Result<Exchanged, ExchangeError> {
        let started = std::time::Instant::now();
        let mut event = AuditEvent {
            kind: "exchange",
            time: self.clock.now(),
            request_id: req.request_id.to_owned(),
            endpoint: req.endpoint,
            source_address: req.client.map(|ip| ip.to_string()),
            // Until the token verifies: such refusals cost the caller nothing, so they are
            // sampled rather than recorded one by one.
            unauthenticated: true,
            ..Default::default()
        };
        let result = self.run(&req, &mut event).await;
        let issuer_label = match (&result, &event.issuer) {
            (Err(ExchangeError::UnknownIssuer), _) | (_, None) => "unknown",
            (_, Some(iss)) => iss.as_str(),
        };
        match &result {
            Ok(done) => {
                event.outcome = "ok".into();
                event.cache = Some(done.cache.as_str());
            }
            Err(e) => {
                event.outcome = e.code().as_str().into();
                event.reason = Some(e.to_string());
                if let ExchangeError::Cache(CacheError::Entra(entra)) = e {
                    event.upstream_correlation_id = entra.correlation_id().map(str::to_owned);
                }
            }
        }
        self.auditor.record(&event);
        self.metrics.exchange(
            req.endpoint,
            &event.outcome,
            issuer_label,
            started.elapsed().as_secs_f64(),
        );
        result
    }

    async fn run(
        &self,
        req: &ExchangeRequest<'_>,
        event: &mut AuditEvent,
    ) -> Result<Exchanged, ExchangeError> {
        let Decision {
            verified,
            identity,
            credential,
            ..
        } = self.decide(req, event, &mut Unobserved).await?;
        let scope = event.scope.clone().unwrap_or_default();
        let caller = format!(
            "{}\n{}",
            verified.iss,
            verified.sub.as_deref().unwrap_or_default()
        );
        self.limiter.take(
            (&identity.name, identity.conditions.rate_limit()),
            (&caller, credential.conditions.rate_limit()),
        )?;
        // A credential without replay protection admits the token as it is; otherwise the
        // token is spent here, before any cached answer.
        if credential.one_time_use {
            self.spend(&verified).await?;
        }
        // 6. and 7. Cache, else Entra.
        let key = CacheKey {
            authority_host: identity.authority_host.clone(),
            tenant_id: identity.tenant_id.clone(),
            client_id: identity.client_id.clone(),
            scope: scope.clone(),
        };
        let make_fetch = || {
            let entra = self.entra.clone();
            let identity = identity.clone();
            let caller_token = Secret::new(req.token.to_owned());
            let scope = scope.clone();
            let request_id = req.request_id.to_owned();
            move || async move {
                entra
                    .token_for(&identity, &caller_token, &scope, &request_id)
                    .await
            }
        };
        let (token, cache) = self.cache.get(key, make_fetch).await?;
        Ok(Exchanged {
            token,
            identity,
            scope,
            cache,
        })
    }

    /// Steps 1 to 5 and the least-privilege controls, each reported to `observer`: the
    /// token verified, matched, the identity chosen and the credential that admits it.
    /// The exchange runs it with [`Unobserved`]; `simulate` with an observer that records
    /// each check, so whatever the exchange checks, `simulate` reports.
    pub async fn decide(
        &self,
        req: &ExchangeRequest<'_>,
        event: &mut AuditEvent,
        observer: &mut dyn Observer,
    ) -> Result<Decision, ExchangeError> {
        let verified = self.verify(req, event, observer).await?;
        self.judge(verified, req, event, observer)
    }

    /// Step 5 and the least-privilege controls, for a verified token (or, in `simulate`,
    /// claims given directly): match, choose the identity, check the tenant and the
    /// controls. The scope judged is `event.scope`.
    pub fn judge(
        &self,
        verified: Arc<VerifiedToken>,
        req: &ExchangeRequest<'_>,
        event: &mut AuditEvent,
        observer: &mut dyn Observer,
    ) -> Result<Decision, ExchangeError> {
        observer.verified(&verified);
        event.unauthenticated = false;
        let registry = self.registry.load();
        event.subject = verified.sub.clone();
        event.token_sha256 = Some(verified.sha256.clone());
        event.jti = verified.jti.clone();
        // 5. Match and choose the identity.
        let chosen = registry
            .matching(&verified)
            .map_err(ExchangeError::from)
            .and_then(|matched| {
                let identity = select_identity(&matched, req.identity).inspect_err(|e| {
                    // The identity the caller named, so a refusal is counted against it.
                    if matches!(e, SelectError::NotAllowed) {
                        event.identity = req.identity.map(crate::redact::untrusted);
                    }
                })?;
                Ok((matched, identity))
            });
        let (matched, identity) = observed(observer, Step::Match, chosen)?;
        event.identity = Some(identity.name.clone());
        if let Some(tenant) = req.tenant
            && !identity.tenant_id.eq_ignore_ascii_case(tenant)
        {
            let e = ExchangeError::TenantMismatch(Untrusted::new(tenant));
            observer.step(Step::Tenant, Err(&e));
            return Err(e);
        }
        // The least-privilege controls (docs/admin.md), then (in the exchange) the rate
        // limits: both before the token is spent and before any cached answer.
        let attempt = Attempt {
            now: self.clock.now(),
            issued_at: verified.iat,
            scope: event.scope.as_deref(),
            client: req.client,
            // A dry run judges the source only for an address it was given.
            judge_source: !observer.dry_run() || req.client.is_some(),
        };
        let credential = match conditions::choose_credential(&identity, &matched, &attempt) {
            Ok(c) => c,
            Err((refusal, credential)) => {
                event.credential = credential;
                let e = ExchangeError::from(refusal);
                observer.step(Step::Conditions, Err(&e));
                return Err(e);
            }
        };
        observer.step(Step::Conditions, Ok(()));
        event.credential = Some(credential.name.to_string());
        Ok(Decision {
            verified,
            matched,
            identity,
            credential,
        })
    }

    /// Steps 1 to 4: the token read, its issuer trusted, its signature and times checked.
    /// A token seen before is recognised by its SHA-256 and not verified again, but its
    /// expiry and its issuer's trust are checked on every request. The cache key is the
    /// whole token, signature included: keyed on `header.payload` alone, a copy with any
    /// signature would pass as verified. A re-signed copy (ECDSA `s` → `n - s`) misses the
    /// cache and is verified like any new token; replay protection does not depend on it.
    async fn verify(
        &self,
        req: &ExchangeRequest<'_>,
        event: &mut AuditEvent,
        observer: &mut dyn Observer,
    ) -> Result<Arc<VerifiedToken>, ExchangeError> {
        // 1. Read, don't trust.
        if req.token.len() > self.max_token_bytes {
            let e = ExchangeError::from(TokenError::TooLarge {
                limit: self.max_token_bytes,
            });
            observer.step(Step::Parse, Err(&e));
            return Err(e);
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, req.token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        let now = self.clock.now();
        let remembered = self
            .verified
            .as_ref()
            .filter(|_| !observer.dry_run())
            .and_then(|cache| cache.get(&key));
        let registry = self.registry.load();
        if let Some(known) = remembered {
            event.scope = Some(crate::entra::scope::to_default_scope(
                req.scope.unwrap_or_default(),
            )?);
            if !registry.knows_issuer(&known.iss) {
                event.issuer = Some(known.iss.clone());
                return Err(ExchangeError::UnknownIssuer);
            }
            event.issuer = Some(known.iss.clone());
            let leeway = self.verify_policy(&known.iss).leeway_secs;
            if now >= known.exp.saturating_add(leeway) {
                return Err(TokenError::Expired {
                    exp: known.exp,
                    now,
                }
                .into());
            }
            return Ok(known);
        }
        let parsed = UnverifiedToken::parse(req.token, self.max_token_bytes);
        let mut unverified = observed(observer, Step::Parse, parsed.map_err(Into::into))?;
        unverified.sha256 = Some(key);
        observer.parsed(&unverified);
        event.scope = if observer.dry_run() {
            // A dry run judges the scope only when it was given one that is valid.
            req.scope
                .and_then(|s| crate::entra::scope::to_default_scope(s).ok())
        } else {
            Some(crate::entra::scope::to_default_scope(
                req.scope.unwrap_or_default(),
            )?)
        };
        // 2. Known issuers only: nothing is fetched for any other.
        if !registry.knows_issuer(&unverified.iss) {
            event.issuer = Some(untrusted(&unverified.iss));
            observer.step(Step::Issuer, Err(&ExchangeError::UnknownIssuer));
            return Err(ExchangeError::UnknownIssuer);
        }
        observer.step(Step::Issuer, Ok(()));
        event.issuer = Some(unverified.iss.clone());
        // 3. Keys.
        let keys = self
            .keys
            .keys_for(&unverified.iss, unverified.kid.as_deref())
            .await
            .map_err(ExchangeError::from);
        let keys = observed(observer, Step::Keys, keys)?;
        // 4. Verify.
        let policy = self.verify_policy(&unverified.iss);
        let verified = token::verify(unverified, &keys, policy, now).map_err(ExchangeError::from);
        let verified = Arc::new(observed(observer, Step::Verify, verified)?);
        if let Some(cache) = &self.verified {
            cache.insert(key, verified.clone());
        }
        Ok(verified)
    }

    /// Records the token as used until it expires; refuses it when it was used before.
    /// The key is what the issuer signed: its `jti`, or the SHA-256 of `header.payload`
    /// when it has none, never the raw token, whose signature another party can vary
    /// (ECDSA `s` → `n - s`) without the key. Fails closed without the store.
    async fn spend(&self, token: &VerifiedToken) -> Result<(), ExchangeError> {
        let Some(store) = &self.store else {
            return Err(ExchangeError::Store(StoreError::Unavailable(
                "no store is configured".into(),
            )));
        };
        let key = format!("{}\n{}", token.iss, token.replay_id);
        let until = token.exp.saturating_add(self.default_policy.leeway_secs);
        match store.use_token_once(&key, until).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ExchangeError::Replayed),
            Err(e) => {
                self.metrics.store_error();
                Err(ExchangeError::Store(e))
            }
        }
    }
}

/// The most registry changes a reload applies one by one; a replica further behind reads
/// the whole registry.
const MAX_CHANGES: u32 = 1000;

/// What a reload read from the store.
enum Fresh {
    /// Built from every stored row as it was read (outside any lock).
    Whole {
        version: i64,
        registry: Box<Registry>,
        problems: Vec<BuildProblem>,
    },
    Changes {
        version: i64,
        changes: Vec<StoredChange>,
    },
}

/// Reads what changed since `loaded` (everything when `whole` or nothing is loaded), or
/// `None` when nothing did.
async fn read_registry(
    store: &dyn Store,
    declared: &Declared,
    loaded: Option<i64>,
    whole: bool,
) -> Result<Option<Fresh>, StoreError> {
    let version = store.version().await?;
    if !whole && loaded == Some(version) {
        return Ok(None);
    }
    let behind =
        loaded.filter(|l| !whole && version > *l && version - *l <= i64::from(MAX_CHANGES));
    if let Some(since) = behind {
        let changes = store.changes_since(since, MAX_CHANGES).await?;
        let consecutive = changes
            .iter()
            .zip(since + 1..)
            .all(|(c, expected)| c.version == expected);
        let newest = changes.last().map_or(since, |c| c.version);
        // A gap (changes purged, or written by an older broker) reads everything.
        if consecutive && newest >= version {
            let changes = read_changes(store, &changes).await?;
            return Ok(Some(Fresh::Changes {
                version: newest,
                changes,
            }));
        }
    }
    // Read after the version: the lists are at least as new as it says. The credentials
    // go into the registry row by row as they arrive (docs/PERFORMANCE.md, "Scale").
    let identities = store.list_identities().await?;
    let mut build = StoredBuild::new(declared, &identities);
    drop(identities);
    store
        .each_credential(crate::store::CALL_TIMEOUT, &mut |c| build.credential(c))
        .await?;
    let (registry, problems) = build.finish();
    Ok(Some(Fresh::Whole {
        version,
        registry: Box::new(registry),
        problems,
    }))
}

/// Each changed entry as stored now, once: identities (with all their credentials)
/// first, then single credentials.
async fn read_changes(
    store: &dyn Store,
    changes: &[crate::store::RegistryChange],
) -> Result<Vec<StoredChange>, StoreError> {
    let mut whole: Vec<&str> = changes
        .iter()
        .filter(|c| c.credential.is_none())
        .map(|c| c.identity.as_str())
        .collect();
    whole.sort_unstable();
    whole.dedup();
    let mut out = Vec::new();
    for name in &whole {
        let now = match store.get_identity(name).await? {
            Some(row) => Some((row, store.list_credentials(Some(name)).await?)),
            None => None,
        };
        out.push(StoredChange::Identity {
            name: (*name).to_owned(),
            now,
        });
    }
    let mut seen = std::collections::HashSet::new();
    for c in changes {
        let Some(name) = &c.credential else { continue };
        if whole.binary_search(&c.identity.as_str()).is_ok() || !seen.insert((&c.identity, name)) {
            continue;
        }
        // By name: a name wins over another credential's id, and only the named one counts.
        let now = store
            .get_credential(&c.identity, name)
            .await?
            .filter(|stored| &stored.name == name);
        out.push(StoredChange::Credential {
            identity: c.identity.clone(),
            name: name.clone(),
            now,
        });
    }
    Ok(out)
}
