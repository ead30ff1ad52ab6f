//! What Entra must hold for an identity to work through the broker, as the admin API
//! answers it (`GET /v1/identities/{name}/entraSetup`, which `wif-broker entra plan`
//! calls): the federated credentials to create on the app or managed identity, as Graph
//! JSON and as Azure CLI commands, and the broker credentials that cannot work with the
//! identity's assertion source because Entra would have to hold them itself and cannot.
//! The broker computes it (`wif_broker::entra_setup`).

use serde::{Deserialize, Serialize};

use crate::admin::CredentialRequest;

/// Entra's cap on federated credentials per app registration or managed identity.
pub const ENTRA_MAX_CREDENTIALS: usize = 20;

/// Everything Entra must hold for one identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EntraSetup {
    pub identity: String,
    pub tenant_id: String,
    pub client_id: String,
    pub assertion: String,
    /// The federated credentials to create in Entra, in order.
    pub federated_identity_credentials: Vec<EntraCredentialPlan>,
    /// Broker credentials that cannot work with this identity's assertion source.
    pub broker_only: Vec<BrokerOnly>,
    /// Anything else the admin must do or know, in words.
    pub notes: Vec<String>,
}

/// One federated credential to create in Entra.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EntraCredentialPlan {
    /// The body of `POST .../federatedIdentityCredentials` in Graph (also what the
    /// broker's own admin API accepts).
    pub graph: CredentialRequest,
    /// For an app registration.
    pub az_app_command: String,
    /// For a user-assigned managed identity (absent for an expression, which managed
    /// identities do not take).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub az_identity_command: Option<String>,
    /// The broker credential this mirrors (passthrough), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_credential: Option<String>,
}

/// A broker credential Entra cannot mirror, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BrokerOnly {
    pub credential: String,
    pub reason: String,
}
