//! One exchange, step by step (DESIGN.md "One exchange"): read the token without trusting
//! it, refuse unknown issuers without any network call, get the issuer's keys, verify,
//! match credentials and choose the identity, then answer from the cache or from Entra,
//! and record the decision.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use jsonwebtoken::Algorithm;
use wif_config::BrokerConfig;

use crate::audit::{self, AuditEvent};
use crate::cache::{CacheError, CacheKey, CacheOutcome, TokenCache};
use crate::clock::SharedClock;
use crate::entra::scope::ScopeError;
use crate::entra::{EntraClient, EntraError, EntraToken};
use crate::issuer::{IssuerSetupError, KeyError, KeyStore};
use crate::metrics::Metrics;
use crate::policy::registry::BuildProblem;
use crate::policy::{Identity, MatchError, Registry, SelectError, select_identity};
use crate::token::{self, TokenError, UnverifiedToken, VerifyPolicy};

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
}

impl ExchangeError {
    /// The stable error code callers, metrics and audit see.
    pub fn code(&self) -> &'static str {
        match self {
            ExchangeError::Scope(_) => "invalid_scope",
            ExchangeError::Token(t) => match t {
                TokenError::TooLarge { .. } => "token_too_large",
                TokenError::Malformed(_) => "invalid_token",
                TokenError::MissingClaim(_) => "missing_claim",
                TokenError::ForbiddenAlgorithm(_)
                | TokenError::AlgorithmNotAllowed(_)
                | TokenError::AlgorithmKeyMismatch(_) => "unsupported_algorithm",
                TokenError::BadSignature => "invalid_signature",
                TokenError::Expired { .. } => "token_expired",
                TokenError::NotYetValid { .. } | TokenError::IssuedInFuture { .. } => {
                    "token_not_yet_valid"
                }
                TokenError::LifetimeTooLong { .. } => "token_lifetime_too_long",
            },
            ExchangeError::UnknownIssuer => "unknown_issuer",
            ExchangeError::Keys(KeyError::UnknownKey { .. }) => "unknown_signing_key",
            ExchangeError::Keys(KeyError::Unavailable { .. }) => "issuer_unavailable",
            ExchangeError::Match(MatchError::NoCredential) => "no_matching_credential",
            ExchangeError::Match(MatchError::Audience { .. }) => "invalid_audience",
            ExchangeError::Select(SelectError::NotAllowed) => "identity_not_allowed",
            ExchangeError::Select(SelectError::Ambiguous(_)) => "identity_required",
            ExchangeError::Cache(CacheError::ShortLived { .. }) => "entra_token_too_short",
            ExchangeError::Cache(CacheError::Entra(e)) => match e.as_ref() {
                EntraError::Unavailable { .. } => "entra_unavailable",
                EntraError::Protocol(_) => "entra_bad_response",
                EntraError::Rejected { aadsts, .. } => match aadsts {
                    Some(70021 | 700211 | 700212 | 700213 | 7002138) => {
                        "entra_no_matching_federated_credential"
                    }
                    Some(700024) => "entra_assertion_expired",
                    Some(70023 | 7000272 | 50027 | 700222) => "entra_assertion_rejected",
                    Some(700016) => "entra_application_not_found",
                    Some(90002) => "entra_tenant_not_found",
                    _ => "entra_rejected",
                },
            },
        }
    }
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
    #[error("tokens.algorithms: {0}")]
    TokenAlgorithms(String),
    #[error("issuers[{index}].algorithms: {reason}")]
    Algorithms { index: usize, reason: String },
}

/// The exchange path's state, shared by all requests.
pub struct Broker {
    registry: ArcSwap<Registry>,
    keys: KeyStore,
    default_policy: VerifyPolicy,
    issuer_policies: HashMap<String, VerifyPolicy>,
    max_token_bytes: usize,
    cache: TokenCache,
    entra: Arc<EntraClient>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

fn algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    names
        .iter()
        .map(|n| token::parse_algorithm(n).map_err(|e| e.to_string()))
        .collect()
}

impl Broker {
    pub fn new(
        cfg: &BrokerConfig,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SetupError> {
        crate::crypto::install_provider();
        let registry = Registry::from_config(cfg).map_err(SetupError::Registry)?;
        let default_algorithms =
            algorithms(&cfg.tokens.algorithms).map_err(SetupError::TokenAlgorithms)?;
        let default_policy = VerifyPolicy {
            algorithms: default_algorithms,
            leeway_secs: cfg.tokens.leeway_secs,
            max_lifetime_secs: cfg.tokens.max_lifetime_secs,
        };
        let mut issuer_policies = HashMap::new();
        for (index, issuer) in cfg.issuers.iter().enumerate() {
            if let Some(names) = &issuer.algorithms {
                let algs =
                    algorithms(names).map_err(|reason| SetupError::Algorithms { index, reason })?;
                issuer_policies.insert(
                    issuer.url.clone(),
                    VerifyPolicy {
                        algorithms: algs,
                        ..default_policy.clone()
                    },
                );
            }
        }
        let keys = KeyStore::new(
            &cfg.jwks,
            &cfg.issuers,
            cfg.outbound.allow_loopback_http,
            clock.clone(),
            metrics.clone(),
        )?;
        let entra = Arc::new(EntraClient::new(
            &cfg.entra,
            clock.clone(),
            metrics.clone(),
        )?);
        Ok(Self {
            registry: ArcSwap::from_pointee(registry),
            keys,
            default_policy,
            issuer_policies,
            max_token_bytes: cfg.server.max_token_bytes,
            cache: TokenCache::new(&cfg.cache, clock.clone(), metrics.clone()),
            entra,
            clock,
            metrics,
        })
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.load_full()
    }

    /// Replaces the registry; the next exchange sees the new one.
    pub fn set_registry(&self, registry: Registry) {
        self.registry.store(Arc::new(registry));
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Runs one exchange and records its audit event and metrics.
    pub async fn exchange(&self, req: ExchangeRequest<'_>) -> Result<Exchanged, ExchangeError> {
        let started = std::time::Instant::now();
        let mut event = AuditEvent {
            kind: "exchange",
            time: self.clock.now(),
            request_id: req.request_id.to_owned(),
            endpoint: req.endpoint,
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
                event.outcome = e.code().into();
                event.reason = Some(e.to_string());
                if let ExchangeError::Cache(CacheError::Entra(entra)) = e {
                    event.upstream_correlation_id = entra.correlation_id().map(str::to_owned);
                }
            }
        }
        self.metrics.exchange(
            req.endpoint,
            &event.outcome,
            issuer_label,
            started.elapsed().as_secs_f64(),
        );
        audit::record(&event);
        result
    }

    async fn run(
        &self,
        req: &ExchangeRequest<'_>,
        event: &mut AuditEvent,
    ) -> Result<Exchanged, ExchangeError> {
        // 1. Read, don't trust.
        let unverified = UnverifiedToken::parse(req.token, self.max_token_bytes)?;
        let scope = crate::entra::scope::to_default_scope(req.scope.unwrap_or_default())?;
        event.scope = Some(scope.clone());
        // 2. Known issuers only: nothing is fetched for any other.
        let registry = self.registry.load();
        if !registry.knows_issuer(&unverified.iss) {
            event.issuer = Some(unverified.iss.chars().take(200).collect());
            return Err(ExchangeError::UnknownIssuer);
        }
        event.issuer = Some(unverified.iss.clone());
        // 3. Keys.
        let keys = self
            .keys
            .keys_for(&unverified.iss, unverified.kid.as_deref())
            .await?;
        // 4. Verify.
        let policy = self
            .issuer_policies
            .get(&unverified.iss)
            .unwrap_or(&self.default_policy);
        let verified = token::verify(unverified, &keys, policy, self.clock.now())?;
        event.subject = verified.sub.clone();
        event.token_sha256 = Some(verified.sha256.clone());
        event.jti = verified.jti.clone();
        // 5. Match and choose the identity.
        let matched = registry.matching(&verified)?;
        let identity = select_identity(&matched, req.identity)?;
        event.identity = Some(identity.name.clone());
        event.credential = matched
            .iter()
            .find(|c| c.identity.name == identity.name)
            .map(|c| c.name.clone());
        // 6. and 7. Cache, else Entra.
        let key = CacheKey {
            authority_host: identity.authority_host.clone(),
            tenant_id: identity.tenant_id.clone(),
            client_id: identity.client_id.clone(),
            scope: scope.clone(),
        };
        let fetch = {
            let entra = self.entra.clone();
            let identity = identity.clone();
            let assertion = entra.assertion(&identity, req.token).to_owned();
            let scope = scope.clone();
            let request_id = req.request_id.to_owned();
            move || async move {
                entra
                    .request_token(&identity, &assertion, &scope, &request_id)
                    .await
            }
        };
        let (token, cache) = self.cache.get(key, fetch).await?;
        Ok(Exchanged {
            token,
            identity,
            scope,
            cache,
        })
    }
}
