//! Prometheus metrics. Label values are bounded: issuers only once they are known to the
//! registry (anything else is `unknown`), outcomes and codes from fixed enums.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    exchanges: Family<Labels, Counter>,
    exchange_seconds: Family<Labels, Histogram>,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_refreshes: Family<Labels, Counter>,
    entra_requests: Family<Labels, Counter>,
    entra_errors: Family<Labels, Counter>,
    jwks_fetches: Family<Labels, Counter>,
    audit_dropped: Counter,
    audit_sampled: Family<Labels, Counter>,
    store_errors: Counter,
    store_bytes: Gauge,
    store_audit_events: Gauge,
    registry_reloads: Family<Labels, Counter>,
    admin_requests: Family<Labels, Counter>,
    rate_limited: Family<Labels, Counter>,
    connections: wif_proto::serve::ConnectionMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("wif");
        let exchanges = Family::<Labels, Counter>::default();
        registry.register(
            "exchanges",
            "Token exchanges by outcome (ok or error code) and issuer",
            exchanges.clone(),
        );
        let exchange_seconds = Family::<Labels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "exchange_duration_seconds",
            "Time to answer a token exchange, by endpoint",
            exchange_seconds.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "token_cache_hits",
            "Exchanges answered from the token cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "token_cache_misses",
            "Exchanges that needed a token from Entra (coalesced callers count once each)",
            cache_misses.clone(),
        );
        let cache_refreshes = Family::<Labels, Counter>::default();
        registry.register(
            "token_cache_refreshes",
            "Background refreshes of cached tokens, by outcome",
            cache_refreshes.clone(),
        );
        let entra_requests = Family::<Labels, Counter>::default();
        registry.register(
            "entra_requests",
            "HTTP requests to Entra's token endpoint, by outcome (ok, error, retry)",
            entra_requests.clone(),
        );
        let entra_errors = Family::<Labels, Counter>::default();
        registry.register(
            "entra_errors",
            "Errors answered by Entra, by AADSTS code (or HTTP status when there is none)",
            entra_errors.clone(),
        );
        let jwks_fetches = Family::<Labels, Counter>::default();
        registry.register(
            "jwks_fetches",
            "Signing-key fetches, by issuer and outcome",
            jwks_fetches.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "audit_dropped",
            "Audit events not written to the store because its queue was full (they were still logged)",
            audit_dropped.clone(),
        );
        let audit_sampled = Family::<Labels, Counter>::default();
        registry.register(
            "audit_sampled",
            "Refusals of unauthenticated requests counted into a summary event instead of \
             being recorded one by one, by kind and outcome",
            audit_sampled.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Failed store operations",
            store_errors.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register(
            "store_size_bytes",
            "The store's size on disk (SQLite pages; PostgreSQL: the broker's tables with their indexes)",
            store_bytes.clone(),
        );
        let store_audit_events = Gauge::default();
        registry.register(
            "store_audit_events",
            "Audit events the store holds (bounded by [audit] max_events and retention_days)",
            store_audit_events.clone(),
        );
        let registry_reloads = Family::<Labels, Counter>::default();
        registry.register(
            "registry_reloads",
            "Registry rebuilds from the store, by trigger (write, poll) and outcome",
            registry_reloads.clone(),
        );
        let admin_requests = Family::<Labels, Counter>::default();
        registry.register(
            "admin_requests",
            "Admin API requests, by action and outcome",
            admin_requests.clone(),
        );
        let rate_limited = Family::<Labels, Counter>::default();
        registry.register(
            "rate_limited",
            "Exchanges refused by a rate limit of this replica, by limit (identity, subject)",
            rate_limited.clone(),
        );
        let connections = wif_proto::serve::ConnectionMetrics::registered(&mut registry);
        Arc::new(Self {
            registry,
            exchanges,
            exchange_seconds,
            cache_hits,
            cache_misses,
            cache_refreshes,
            entra_requests,
            entra_errors,
            jwks_fetches,
            audit_dropped,
            audit_sampled,
            store_errors,
            store_bytes,
            store_audit_events,
            registry_reloads,
            admin_requests,
            rate_limited,
            connections,
        })
    }

    /// The listeners' connection counters (`wif_connections_*`).
    pub fn connections(&self) -> wif_proto::serve::ConnectionMetrics {
        self.connections.clone()
    }

    pub fn exchange(&self, endpoint: &'static str, outcome: &str, issuer: &str, seconds: f64) {
        self.exchanges
            .get_or_create(&vec![
                ("outcome", outcome.to_owned()),
                ("issuer", issuer.to_owned()),
            ])
            .inc();
        self.exchange_seconds
            .get_or_create(&vec![("endpoint", endpoint.to_owned())])
            .observe(seconds);
    }

    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    pub fn cache_refresh(&self, outcome: &'static str) {
        self.cache_refreshes
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
    }

    pub fn entra_request(&self, outcome: &'static str) {
        self.entra_requests
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
    }

    pub fn entra_error(&self, code: &str) {
        self.entra_errors
            .get_or_create(&vec![("code", code.to_owned())])
            .inc();
    }

    pub fn jwks_fetch(&self, issuer: &str, outcome: &'static str) {
        self.jwks_fetches
            .get_or_create(&vec![
                ("issuer", issuer.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    pub fn audit_dropped(&self) {
        self.audit_dropped.inc();
    }

    pub fn audit_sampled(&self, kind: &str, outcome: &str) {
        self.audit_sampled
            .get_or_create(&vec![
                ("kind", kind.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    pub fn store_size(&self, size: crate::store::StoreSize) {
        self.store_bytes
            .set(i64::try_from(size.bytes).unwrap_or(i64::MAX));
        self.store_audit_events
            .set(i64::try_from(size.audit_events).unwrap_or(i64::MAX));
    }

    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    pub fn registry_reload(&self, trigger: &'static str, outcome: &'static str) {
        self.registry_reloads
            .get_or_create(&vec![
                ("trigger", trigger.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    pub fn admin_request(&self, action: &'static str, outcome: &str) {
        self.admin_requests
            .get_or_create(&vec![
                ("action", action.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited
            .get_or_create(&vec![("limit", limit.to_owned())])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
