//! Wire types of the admin API, shaped like Microsoft Graph (camelCase, collections as
//! `{"value": [...]}`), shared by the server and the `wif-broker` CLI.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wif_config::{AssertionSource, Cloud};

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
}

/// `POST /v1/simulate` body: a real token, or an issuer and claims to test rules before
/// any job runs (then signature and times are not checked).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimulateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub claims: Option<serde_json::Value>,
    /// The identity the caller would name in the exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// What an exchange with this token (or these claims) would decide, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimulateResponse {
    /// `ok`, or the error code the exchange would answer.
    pub outcome: String,
    pub description: String,
    /// The identity the exchange would act as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Each check in the order the exchange makes them.
    pub checks: Vec<Check>,
    pub matches: Vec<CredentialRef>,
    /// Credentials that almost matched, with the check each failed.
    pub near_misses: Vec<NearMiss>,
}

/// One verification step: `issuer`, `keys`, `signature`, `times`, `audience`, ...
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub name: String,
    /// `passed`, `failed` or `skipped`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRef {
    pub identity: String,
    pub credential: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NearMiss {
    pub identity: String,
    pub credential: String,
    /// `issuer`, `audience`, `subject` or `expression`.
    pub failed: String,
    /// For `expression`: the first clause that does not hold, and its position (1-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clause: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clause_index: Option<usize>,
    pub detail: String,
}

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
