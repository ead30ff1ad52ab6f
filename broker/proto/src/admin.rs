//! Wire types of the admin API, shaped like Microsoft Graph (camelCase, collections as
//! `{"value": [...]}`), shared by the server and the `wif-broker` CLI; the admin roles;
//! and the form admin tokens are stored in.

use serde::{Deserialize, Serialize};
use wif_config::{AssertionSource, Cloud};

/// A token bucket as the admin API and the store write it: `perMinute` exchanges a
/// minute, at most `burst` at once (default: `perMinute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    pub per_minute: u32,
    #[serde(default)]
    pub burst: u32,
}

impl RateLimit {
    /// With the default burst filled in.
    pub fn normalized(self) -> Self {
        Self {
            burst: if self.burst == 0 {
                self.per_minute
            } else {
                self.burst
            },
            ..self
        }
    }
}

impl From<wif_config::RateLimit> for RateLimit {
    fn from(r: wif_config::RateLimit) -> Self {
        Self {
            per_minute: r.per_minute,
            burst: r.burst,
        }
    }
}

/// What a caller of the admin API may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read identities, credentials and the audit trail; simulate.
    Reader,
    /// Everything a reader may, and write.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Admin => "admin",
        }
    }
}

/// A new admin token: 32 random bytes from the system generator, base64url without
/// padding (43 characters).
pub fn new_admin_token() -> Result<String, aws_lc_rs::error::Unspecified> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// `sha256:HEX` of an admin token, the form `[admin] tokens_file` holds.
pub fn token_hash(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    format!("sha256:{}", hex::encode(digest.as_ref()))
}

/// `{"value": [...]}`, with a cursor for the next page where paging applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Collection<T> {
    pub value: Vec<T>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `PUT /v1/identities/{name}` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityRequest {
    pub tenant_id: String,
    pub client_id: String,
    /// `public`, `usgov` or `china`; or give `authorityHost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub cloud: Option<Cloud>,
    /// An authority host the operator allowed in the config file (the named clouds',
    /// `[entra] authority_host`, `[entra] allowed_authority_hosts`); others are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_host: Option<String>,
    /// How the broker builds the client assertion: `passthrough`, `broker` (needs
    /// `[broker_issuer] url`) or `managed_identity`; `certificate` is config-file only.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EntraCredential {
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
}

/// An identity as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub cloud: Option<Cloud>,
    /// The authority host the broker calls for this identity.
    pub authority_host: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimsMatchingExpression {
    pub value: String,
    pub language_version: u32,
}

/// `POST .../federatedIdentityCredentials` body, and (every field optional but `name`
/// immutable) `PATCH .../{credential}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// `POST /v1/simulate` body: a real token, or an issuer and claims to test rules before
/// any job runs (then signature and times are not checked).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimulateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub claims: Option<serde_json::Value>,
    /// The identity the caller would name in the exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The scope the exchange would ask for, to judge `allowedScopes`; absent: not judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The client address the exchange would come from, to judge `sourceNetworks`;
    /// absent: not judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
}

/// What an exchange with this token (or these claims) would decide, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// One step: `parse`, `issuer`, `keys`, `signature`, `times`, `match`, then the
/// least-privilege controls `disabled`, `validity`, `sourceNetworks`, `maxTokenAge`,
/// `allowedScopes` and `rateLimit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub name: String,
    /// `passed`, `failed` or `skipped`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CredentialRef {
    pub identity: String,
    pub credential: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
