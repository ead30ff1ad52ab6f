//! Structural validation of a parsed configuration. Entra's rules for federated
//! credentials (name charset, lengths, one audience) are applied by the broker's
//! policy module when it builds its registry, so the admin API and the file share them.

use crate::BrokerConfig;

/// One thing wrong with a configuration, naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

pub(crate) fn broker(_config: &BrokerConfig) -> Vec<Problem> {
    Vec::new()
}
