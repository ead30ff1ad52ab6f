//! Client assertions (docs/assertion-sources.md): what the broker presents to Entra as an identity.
//!
//! - `passthrough`: the caller's own token (Entra holds a FIC matching it);
//! - `broker`: a short assertion the broker signs as its own issuer ([`issuer`]);
//! - `managed_identity`: the broker host's managed-identity token ([`managed_identity`]);
//! - `certificate`: an assertion signed with the app's certificate ([`certificate`]).
//!
//! An assertion is built only when Entra is about to be called (a cache miss or refresh),
//! and never logged. One the broker signs (`broker`, `certificate`) is reused for the
//! next call to the same host while at least half its life is left ([`reuse`]).

pub mod certificate;
pub mod issuer;
pub mod managed_identity;
pub mod reuse;
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
    /// The identity names an authority host the operator did not allow (a row stored
    /// before the allow-list existed, for example): no assertion is built for it, and no
    /// request goes to that host.
    #[error(
        "identity {identity:?} names authority host {host:?}, which this broker's config does not allow ([entra] allowed_authority_hosts)"
    )]
    AuthorityHostNotAllowed { identity: String, host: String },
}

impl AssertionError {
    /// What a caller may be told: no file path, no endpoint's answer body, no store text
    /// (the whole error goes to the log; docs/architecture.md, "Errors").
    pub fn public_message(&self) -> String {
        match self {
            AssertionError::NotConfigured { .. }
            | AssertionError::AuthorityHostNotAllowed { .. } => self.to_string(),
            AssertionError::Issuer(IssuerKeyError::NoKey) => self.to_string(),
            AssertionError::Issuer(IssuerKeyError::Sign(_)) => {
                "the broker's signing key cannot sign the assertion".into()
            }
            AssertionError::Issuer(_) => "the broker's signing key cannot be read".into(),
            AssertionError::ManagedIdentity(mi) => match mi {
                ManagedIdentityError::Unreachable { .. } => {
                    "the managed-identity endpoint cannot be reached".into()
                }
                ManagedIdentityError::Refused { status, .. } => {
                    format!("the managed-identity endpoint answered {status}")
                }
                ManagedIdentityError::Protocol(_) => {
                    "the managed-identity endpoint answered something unexpected".into()
                }
                ManagedIdentityError::NoHeader => mi.to_string(),
            },
            AssertionError::Certificate(c) => match c {
                CertificateError::Read { .. } => {
                    "the identity's certificate: its certificate or key file cannot be read".into()
                }
                CertificateError::NoCertificate { .. } => {
                    "the identity's certificate: the file holds no PEM certificate".into()
                }
                CertificateError::NotRsa { .. } => {
                    "the identity's certificate does not hold an RSA public key".into()
                }
                CertificateError::Key { error, .. } => {
                    format!("the identity's certificate: its private key: {error}")
                }
                CertificateError::Mismatch { .. } => {
                    "the identity's certificate: the private key does not belong to the certificate"
                        .into()
                }
            },
        }
    }

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

/// The authority hosts the operator allowed ([`crate::policy::authority`]).
pub use crate::policy::authority::AuthorityHosts;

impl AuthorityHosts {
    /// `Err` unless `identity`'s authority host is allowed.
    pub fn check(&self, identity: &Identity) -> Result<(), AssertionError> {
        if self.allows(&identity.authority_host) {
            return Ok(());
        }
        Err(AssertionError::AuthorityHostNotAllowed {
            identity: crate::redact::untrusted(&identity.name),
            host: crate::redact::untrusted(&identity.authority_host),
        })
    }
}

/// Builds assertions for every identity of this broker.
pub struct Assertions {
    hosts: AuthorityHosts,
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
            hosts: AuthorityHosts::from_config(cfg),
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

    /// The authority hosts assertions may be sent to.
    pub fn authority_hosts(&self) -> &AuthorityHosts {
        &self.hosts
    }

    /// The client assertion for `identity`. Refused, before anything is signed or
    /// fetched, when the identity's authority host is not one the operator allowed: an
    /// assertion (the caller's token, one the broker signs, or the broker's own
    /// managed-identity token) is only ever built for an allowed host.
    pub async fn build(
        &self,
        identity: &Identity,
        caller_token: &Secret,
    ) -> Result<Secret, AssertionError> {
        self.hosts.check(identity)?;
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
                Ok(issuer
                    .assertion_for(&identity.authority_host, subject, audience)
                    .await?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_authority_hosts_are_allowed_compared_by_origin() {
        let cfg = BrokerConfig::from_toml(
            r#"
            [entra]
            authority_host = "https://login.contoso-stack.example:8443"
            allowed_authority_hosts = ["https://login.emulator.example"]
            "#,
            "test",
        )
        .unwrap();
        let hosts = AuthorityHosts::from_config(&cfg);
        for allowed in [
            "https://login.microsoftonline.com",
            "https://LOGIN.microsoftonline.com:443/",
            "https://login.microsoftonline.us",
            "https://login.chinacloudapi.cn",
            "https://login.contoso-stack.example:8443",
            "https://login.emulator.example",
        ] {
            assert!(hosts.allows(allowed), "{allowed}");
        }
        for refused in [
            "http://login.microsoftonline.com",
            "https://login.microsoftonline.com:8443",
            "https://login.microsoftonline.com.attacker.example",
            "https://login.microsoftonline.com@attacker.example",
            "http://127.0.0.1:9999",
            "not a url",
        ] {
            assert!(!hosts.allows(refused), "{refused}");
        }
    }

    #[tokio::test]
    async fn no_assertion_is_built_for_an_identity_at_another_host() {
        let cfg = BrokerConfig::default();
        let assertions = Assertions::new(&cfg, None, |_| None, crate::clock::system()).unwrap();
        let identity = Identity {
            name: "x".into(),
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            client_id: "3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6c".into(),
            authority_host: "http://127.0.0.1:9999".into(),
            cloud: None,
            assertion: AssertionSource::Passthrough,
            assertion_subject: None,
            certificate: None,
            read_only: false,
            created_at: None,
            updated_at: None,
            conditions: Default::default(),
        };
        let refused = assertions
            .build(&identity, &Secret::new("caller-token"))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, AssertionError::AuthorityHostNotAllowed { .. }),
            "{refused:?}"
        );
    }
}
