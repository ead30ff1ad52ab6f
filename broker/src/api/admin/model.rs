//! Wire types of the admin API, shaped like Microsoft Graph (camelCase, collections as
//! `{"value": [...]}`), shared by the server and the `wif-broker` CLI.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wif_config::{AssertionSource, Cloud};

pub use crate::policy::conditions::StoredRateLimit as RateLimit;

/// `{"value": [...]}`, with a cursor for the next page where paging applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Collection<T> {
    pub value: Vec<T>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `PUT /v1/identities/{name}` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityRequest {
    pub tenant_id: String,
    pub client_id: String,
    /// `public`, `usgov` or `china`; or give `authorityHost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub cloud: Option<Cloud>,
    /// An authority host the operator allowed in the config file (the named clouds',
    /// `[entra] authority_host`, `[entra] allowed_authority_hosts`); others are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_host: Option<String>,
    /// How the broker builds the client assertion: `passthrough`, `broker` (needs
    /// `[broker_issuer] url`) or `managed_identity`; `certificate` is config-file only.
    #[serde(default)]
    #[schema(value_type = String)]
    pub assertion: AssertionSource,
    /// With `assertion: broker`, the `sub` of the broker's assertions (1–600
    /// characters); default: the identity's name. Unique: not another identity's name
    /// or subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assertion_subject: Option<String>,
    /// Refuse every exchange for this identity at once, and drop its cached tokens,
    /// without deleting it (broker extension).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// The scopes this identity's tokens may be asked for, for credentials that name none:
    /// exact or with `*` wildcards (broker extension). Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_scopes: Vec<String>,
    /// This identity's exchange rate on each replica, instead of `[rate_limits]`
    /// (broker extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// The federated credential Entra must hold for an identity with the broker assertion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntraCredential {
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
}

/// An identity as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub cloud: Option<Cloud>,
    /// The authority host the broker calls for this identity.
    pub authority_host: String,
    #[schema(value_type = String)]
    pub assertion: AssertionSource,
    /// With `assertion: broker`, the `sub` of the broker's assertions when it is not the
    /// identity's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assertion_subject: Option<String>,
    /// `config` (declared in the file, read-only here) or `api`.
    pub source: String,
    /// With `assertion: broker`: the one federated credential to create on the app in
    /// Entra (issuer, subject, audiences), trusting this broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra_federated_credential: Option<EntraCredential>,
    pub read_only: bool,
    /// Refuse every exchange for this identity at once, and drop its cached tokens,
    /// without deleting it (broker extension).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// The scopes this identity's tokens may be asked for, for credentials that name none:
    /// exact or with `*` wildcards (broker extension). Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_scopes: Vec<String>,
    /// This identity's exchange rate on each replica, instead of `[rate_limits]`
    /// (broker extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified_date_time: Option<String>,
}

/// `claimsMatchingExpression`, as Graph writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimsMatchingExpression {
    pub value: String,
    pub language_version: u32,
}

/// `POST .../federatedIdentityCredentials` body, and (every field optional but `name`
/// immutable) `PATCH .../{credential}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Present and `null` in a PATCH clears the subject (to switch to an expression).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub subject: Option<Option<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub claims_matching_expression: Option<Option<ClaimsMatchingExpression>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audiences: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub description: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_use: Option<bool>,
    /// Broker extension: refuse tokens this credential matches, without deleting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Broker extension: the scopes tokens matched by this credential may be asked for
    /// (exact or with `*` wildcards); empty: the identity's `allowedScopes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_scopes: Option<Vec<String>>,
    /// Broker extension: networks (CIDR) exchanges must come from; empty: anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_networks: Option<Vec<String>>,
    /// Broker extension: refuse tokens issued (`iat`) longer ago than this; `null` clears.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub max_token_age_seconds: Option<Option<u64>>,
    /// Broker extension (RFC 3339): admit nothing before this time; `null` clears.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub not_before: Option<Option<String>>,
    /// Broker extension (RFC 3339): admit nothing from this time on; `null` clears.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub not_after: Option<Option<String>>,
    /// Broker extension: each caller's (issuer and subject) exchange rate on each replica,
    /// instead of `[rate_limits]`; `null` clears.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub rate_limit: Option<Option<RateLimit>>,
    /// Graph includes this read-only field in what it returns; accepted and ignored so a
    /// credential read from Graph or from here can be posted back unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Read-only in what this API returns; accepted and ignored for the same reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// A federated identity credential as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    /// A UUID for API-registered credentials; `config:<name>` for declarative ones.
    pub id: String,
    pub name: String,
    pub issuer: String,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub claims_matching_expression: Option<ClaimsMatchingExpression>,
    pub audiences: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub one_time_use: bool,
    pub read_only: bool,
    /// Broker extension: the credential admits nothing while set.
    #[serde(default)]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_networks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_age_seconds: Option<u64>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// `POST /v1/simulate`'s request and answer (defined with the checks they report).
pub use crate::simulate::{Check, CredentialRef, NearMiss, SimulateRequest, SimulateResponse};

/// Distinguishes "absent" (`None`) from "present and null" (`Some(None)`) in PATCH bodies.
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(
        value: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}
