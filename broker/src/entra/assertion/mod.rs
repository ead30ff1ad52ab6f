//! Client assertions (DESIGN.md step 7): what the broker presents to Entra as an identity.
//!
//! - `passthrough`: the caller's own token (Entra holds a FIC matching it);
//! - `broker`: a short assertion the broker signs as its own issuer ([`issuer`]);
//! - `managed_identity`: the broker host's managed-identity token ([`managed_identity`]);
//! - `certificate`: an assertion signed with the app's certificate ([`certificate`]).
//!
//! An assertion is built only when Entra is about to be called (a cache miss or refresh),
//! and never logged.

pub mod certificate;
pub mod issuer;
pub mod managed_identity;
pub mod rsa;

use std::sync::Arc;

use wif_config::{AssertionSource, BrokerConfig, Cloud};

use self::certificate::{CertificateError, Certificates};
use self::issuer::{BrokerIssuer, IssuerKeyError};
use self::managed_identity::{ManagedIdentity, ManagedIdentityError};
use crate::clock::SharedClock;
use crate::entra::Secret;
use crate::policy::Identity;
use crate::store::Store;

/// Why no assertion could be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AssertionError {
    #[error(
        "identity {identity:?} uses the {kind} assertion, which this broker is not configured for ({missing})"
    )]
    NotConfigured {
        identity: String,
        kind: &'static str,
        missing: &'static str,
    },
    #[error("the broker's signing key: {0}")]
    Issuer(#[from] IssuerKeyError),
    #[error(transparent)]
    ManagedIdentity(#[from] ManagedIdentityError),
    #[error("the identity's certificate: {0}")]
    Certificate(#[from] CertificateError),
}

impl AssertionError {
    /// Transient failures are worth retrying; the rest need an operator.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AssertionError::ManagedIdentity(
                ManagedIdentityError::Unreachable { .. } | ManagedIdentityError::Refused { .. }
            ) | AssertionError::Issuer(IssuerKeyError::Store(_) | IssuerKeyError::NoKey)
        )
    }
}

/// Builds assertions for every identity of this broker.
pub struct Assertions {
    issuer: Option<Arc<BrokerIssuer>>,
    managed: ManagedIdentity,
    certificates: Certificates,
}

impl std::fmt::Debug for Assertions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertions")
            .field("issuer", &self.issuer)
            .field("managed", &self.managed)
            .finish_non_exhaustive()
    }
}

impl Assertions {
    pub fn new(
        cfg: &BrokerConfig,
        store: Option<Arc<dyn Store>>,
        env: impl Fn(&str) -> Option<String>,
        clock: SharedClock,
    ) -> Result<Self, crate::outbound::OutboundError> {
        Ok(Self {
            issuer: BrokerIssuer::from_config(&cfg.broker_issuer, store, clock.clone())
                .map(Arc::new),
            managed: ManagedIdentity::from_config(&cfg.managed_identity, env, clock.clone())?,
            certificates: Certificates::new(clock),
        })
    }

    /// The broker as issuer, when `[broker_issuer] url` is set.
    pub fn issuer(&self) -> Option<&Arc<BrokerIssuer>> {
        self.issuer.as_ref()
    }

    /// The client assertion for `identity`.
    pub async fn build(
        &self,
        identity: &Identity,
        caller_token: &Secret,
    ) -> Result<Secret, AssertionError> {
        let audience = identity.cloud.unwrap_or(Cloud::Public).default_audience();
        let not_configured = |missing| AssertionError::NotConfigured {
            identity: identity.name.clone(),
            kind: identity.assertion.as_str(),
            missing,
        };
        match identity.assertion {
            AssertionSource::Passthrough => Ok(caller_token.clone()),
            AssertionSource::Broker => {
                let issuer = self
                    .issuer
                    .as_ref()
                    .ok_or_else(|| not_configured("[broker_issuer] url is not set"))?;
                let subject = identity
                    .assertion_subject
                    .as_deref()
                    .unwrap_or(&identity.name);
                Ok(issuer.sign(subject, audience).await?)
            }
            AssertionSource::ManagedIdentity => Ok(self.managed.token(audience).await?),
            AssertionSource::Certificate => {
                let (certificate, key) = identity
                    .certificate
                    .as_ref()
                    .ok_or_else(|| not_configured("certificate_file is not set"))?;
                let endpoint = format!(
                    "{}/{}/oauth2/v2.0/token",
                    identity.authority_host.trim_end_matches('/'),
                    identity.tenant_id
                );
                Ok(self
                    .certificates
                    .sign(certificate, key, &identity.client_id, &endpoint)?)
            }
        }
    }
}
