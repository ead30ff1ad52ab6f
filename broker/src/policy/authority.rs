//! The authority hosts (origins) the operator allowed: the named clouds', `[entra]
//! authority_host`, declared identities' and `[entra] allowed_authority_hosts`
//! (docs/configuration.md). Nothing else ever receives an assertion: an identity whose
//! host is not here is refused when it is written and before any token request.

use wif_config::BrokerConfig;

/// The allowed authority origins, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorityHosts(Vec<String>);

impl AuthorityHosts {
    pub fn from_config(cfg: &BrokerConfig) -> Self {
        Self(cfg.allowed_authority_hosts())
    }

    /// Whether `host` (any URL; compared by origin) is allowed.
    pub fn allows(&self, host: &str) -> bool {
        wif_config::authority_origin(host).is_some_and(|origin| self.0.contains(&origin))
    }

    /// The allowed origins, sorted.
    pub fn origins(&self) -> &[String] {
        &self.0
    }
}
