//! Least privilege: what the broker adds to identities and credentials beyond Entra
//! (docs/admin.md, "Least privilege"). A credential may be disabled, limited to some
//! scopes, to source networks, to tokens issued recently, and to a period of validity;
//! an identity may be disabled and limited to some scopes. Checked on every exchange
//! after the token matched and before any cached answer or Entra call.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use wif_config::RateLimit;
use wif_config::network::Cidr;

use super::registry::{Credential, Identity};
use crate::error::ErrorCode;
use crate::redact::Untrusted;

/// The controls as written (config file, admin API) and stored; the stored form is the
/// store's ([`crate::store::Restrictions`]), what they mean is here.
pub use crate::store::Restrictions;

/// A token bucket as the admin API and the store write it.
pub use wif_proto::admin::RateLimit as StoredRateLimit;

impl Restrictions {
    /// True when nothing is restricted (stored as NULL).
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// An identity's restrictions from its `[[identities]]` entry.
    pub fn of_identity(id: &wif_config::IdentityConfig) -> Self {
        Self {
            disabled: id.disabled,
            allowed_scopes: id.allowed_scopes.clone(),
            rate_limit: id
                .rate_limit
                .and_then(|r| RateLimit::new(r.per_minute, r.burst))
                .map(Into::into),
            ..Self::default()
        }
    }

    /// A credential's restrictions from its config entry; the dates must be RFC 3339.
    pub fn of_credential(
        fc: &wif_config::FederatedCredentialConfig,
    ) -> Result<Self, Vec<Violation>> {
        let mut problems = Vec::new();
        let mut date = |field: &'static str, text: &Option<String>| {
            text.as_deref().and_then(|t| match parse_time(t) {
                Ok(at) => Some(at),
                Err(message) => {
                    problems.push(Violation { field, message });
                    None
                }
            })
        };
        let restrictions = Self {
            disabled: fc.disabled,
            allowed_scopes: fc.allowed_scopes.clone(),
            source_networks: fc.source_networks.clone(),
            max_token_age_seconds: fc.max_token_age_secs,
            not_before: date("notBefore", &fc.not_before),
            not_after: date("notAfter", &fc.not_after),
            rate_limit: fc
                .rate_limit
                .and_then(|r| RateLimit::new(r.per_minute, r.burst))
                .map(Into::into),
        };
        if problems.is_empty() {
            Ok(restrictions)
        } else {
            Err(problems)
        }
    }
}

/// An RFC 3339 date-time (or a date, midnight UTC) as epoch seconds.
pub fn parse_time(text: &str) -> Result<u64, String> {
    wif_proto::timespec::parse_rfc3339(text.trim())
        .and_then(|t| u64::try_from(t).ok())
        .ok_or_else(|| {
            format!(
                "{:?} is not an RFC 3339 date-time such as 2026-12-31T18:00:00Z",
                Untrusted::new(text)
            )
        })
}

/// A rule a restriction breaks, by its API field name (camelCase).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub field: &'static str,
    pub message: String,
}

/// [`Restrictions`] checked and ready to apply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conditions {
    pub restrictions: Restrictions,
    networks: Vec<Cidr>,
}

/// The longest list of scopes or networks one entry may hold.
pub const MAX_ENTRIES: usize = 100;

impl Conditions {
    /// Checks `restrictions`; `credential` false for an identity, which may carry only
    /// `disabled`, `allowedScopes` and `rateLimit`.
    pub fn new(restrictions: Restrictions, credential: bool) -> Result<Self, Vec<Violation>> {
        let mut problems = Vec::new();
        let mut problem =
            |field: &'static str, message: String| problems.push(Violation { field, message });
        let r = &restrictions;
        if r.allowed_scopes.len() > MAX_ENTRIES {
            problem("allowedScopes", format!("at most {MAX_ENTRIES} entries"));
        }
        for scope in &r.allowed_scopes {
            if scope.trim().is_empty()
                || scope.contains(|c: char| c.is_whitespace() || c.is_control())
                || scope.len() > 512
            {
                problem(
                    "allowedScopes",
                    format!(
                        "{:?} is not one scope or resource, such as https://storage.azure.com/.default or https://*.vault.azure.net/.default",
                        Untrusted::new(scope)
                    ),
                );
            }
        }
        if r.source_networks.len() > MAX_ENTRIES {
            problem("sourceNetworks", format!("at most {MAX_ENTRIES} entries"));
        }
        let networks = match wif_config::network::parse_all(&r.source_networks) {
            Ok(n) => n,
            Err((_, message)) => {
                problem("sourceNetworks", crate::redact::untrusted(&message));
                Vec::new()
            }
        };
        if r.max_token_age_seconds == Some(0) {
            problem(
                "maxTokenAgeSeconds",
                "must be at least 1; leave it out for no limit".into(),
            );
        }
        if let (Some(from), Some(until)) = (r.not_before, r.not_after)
            && from >= until
        {
            problem("notAfter", "must be after notBefore".into());
        }
        if r.rate_limit.is_some_and(|l| l.per_minute == 0) {
            problem(
                "rateLimit",
                "perMinute must be at least 1; leave rateLimit out for the default".into(),
            );
        }
        if !credential {
            for (set, field) in [
                (!r.source_networks.is_empty(), "sourceNetworks"),
                (r.max_token_age_seconds.is_some(), "maxTokenAgeSeconds"),
                (r.not_before.is_some(), "notBefore"),
                (r.not_after.is_some(), "notAfter"),
            ] {
                if set {
                    problem(field, "applies to federated credentials only".into());
                }
            }
        }
        if problems.is_empty() {
            Ok(Self {
                restrictions,
                networks,
            })
        } else {
            Err(problems)
        }
    }

    pub fn disabled(&self) -> bool {
        self.restrictions.disabled
    }

    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.restrictions
            .rate_limit
            .and_then(|r| RateLimit::new(r.per_minute, r.burst))
    }
}

/// What the conditions look at in one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub now: u64,
    /// The token's `iat`, when it has one (a token without it is of unknown age, which
    /// no maximum age admits).
    pub issued_at: Option<u64>,
    /// Normalised to `<resource>/.default`; `None` (only in `simulate`): not judged.
    pub scope: Option<&'a str>,
    /// The client's address (docs/configuration.md, `trusted_proxies`); `None` when
    /// unknown, which no source-network rule admits.
    pub client: Option<IpAddr>,
    /// False (only in `simulate`, given no address): source networks are not judged.
    pub judge_source: bool,
}

/// Why the conditions refused an exchange. Each has its own error code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("identity {0:?} is disabled")]
    IdentityDisabled(String),
    #[error("federated credential {0:?} is disabled")]
    CredentialDisabled(String),
    #[error("federated credential {credential:?} admits tokens only from {from}")]
    NotYetValid { credential: String, from: String },
    #[error("federated credential {credential:?} admitted tokens only until {until}")]
    Expired { credential: String, until: String },
    #[error(
        "federated credential {credential:?} admits exchanges only from its source networks; this one came from {client}"
    )]
    SourceNotAllowed { credential: String, client: String },
    #[error(
        "the token was issued {}; federated credential {credential:?} admits tokens at most {max} s old",
        .age.map_or_else(|| "at an unknown time (it has no iat)".to_owned(), |a| format!("{a} s ago"))
    )]
    TokenTooOld {
        credential: String,
        age: Option<u64>,
        max: u64,
    },
    #[error("scope {scope} is not among the scopes {owner} allows: {}", .allowed.join(", "))]
    ScopeNotAllowed {
        scope: Untrusted,
        owner: String,
        allowed: Vec<String>,
    },
}

impl Refusal {
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::IdentityDisabled(_) => ErrorCode::IdentityDisabled,
            Refusal::CredentialDisabled(_) => ErrorCode::CredentialDisabled,
            Refusal::NotYetValid { .. } => ErrorCode::CredentialNotYetValid,
            Refusal::Expired { .. } => ErrorCode::CredentialExpired,
            Refusal::SourceNotAllowed { .. } => ErrorCode::SourceNotAllowed,
            Refusal::TokenTooOld { .. } => ErrorCode::TokenTooOld,
            Refusal::ScopeNotAllowed { .. } => ErrorCode::ScopeNotAllowed,
        }
    }

    /// The control that refused, as `simulate` names its check.
    pub fn control(&self) -> &'static str {
        match self {
            Refusal::IdentityDisabled(_) | Refusal::CredentialDisabled(_) => "disabled",
            Refusal::NotYetValid { .. } | Refusal::Expired { .. } => "validity",
            Refusal::SourceNotAllowed { .. } => "sourceNetworks",
            Refusal::TokenTooOld { .. } => "maxTokenAge",
            Refusal::ScopeNotAllowed { .. } => "allowedScopes",
        }
    }
}

/// The controls in the order [`admit`] applies them, as `simulate` lists its checks.
pub const CONTROLS: [&str; 5] = [
    "disabled",
    "validity",
    "sourceNetworks",
    "maxTokenAge",
    "allowedScopes",
];

/// Whether `identity` may be acted as through `credential` (named `credential_name`) in
/// this attempt: the first control that refuses, in [`CONTROLS`] order.
pub fn admit(
    identity: (&str, &Conditions),
    credential: (&str, &Conditions),
    attempt: &Attempt<'_>,
) -> Result<(), Refusal> {
    let (identity_name, of_identity) = identity;
    let (name, of_credential) = credential;
    let r = &of_credential.restrictions;
    if of_identity.disabled() {
        return Err(Refusal::IdentityDisabled(identity_name.to_owned()));
    }
    if r.disabled {
        return Err(Refusal::CredentialDisabled(name.to_owned()));
    }
    if let Some(from) = r.not_before
        && attempt.now < from
    {
        return Err(Refusal::NotYetValid {
            credential: name.to_owned(),
            from: crate::clock::rfc3339(from),
        });
    }
    if let Some(until) = r.not_after
        && attempt.now >= until
    {
        return Err(Refusal::Expired {
            credential: name.to_owned(),
            until: crate::clock::rfc3339(until),
        });
    }
    if attempt.judge_source
        && !of_credential.networks.is_empty()
        && !attempt
            .client
            .is_some_and(|ip| of_credential.networks.iter().any(|n| n.contains(ip)))
    {
        return Err(Refusal::SourceNotAllowed {
            credential: name.to_owned(),
            client: attempt
                .client
                .map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string()),
        });
    }
    if let Some(max) = r.max_token_age_seconds {
        let age = attempt.issued_at.map(|iat| attempt.now.saturating_sub(iat));
        if age.is_none_or(|age| age > max) {
            return Err(Refusal::TokenTooOld {
                credential: name.to_owned(),
                age,
                max,
            });
        }
    }
    let (owner, allowed) = if r.allowed_scopes.is_empty() {
        (
            format!("identity {identity_name:?}"),
            &of_identity.restrictions.allowed_scopes,
        )
    } else {
        (format!("federated credential {name:?}"), &r.allowed_scopes)
    };
    if let Some(scope) = attempt.scope
        && !allowed.is_empty()
        && !allowed.iter().any(|p| scope_allowed(p, scope))
    {
        return Err(Refusal::ScopeNotAllowed {
            scope: Untrusted::new(scope),
            owner,
            allowed: allowed.clone(),
        });
    }
    Ok(())
}

/// The credential through which `identity` is acted as in this attempt, among those the
/// token `matched`: of the identity's credentials that admit it, the first without
/// replay protection, else the first. When none admits it, the first credential's
/// refusal, and that credential's name (for the audit event).
pub fn choose_credential(
    identity: &Identity,
    matched: &[Arc<Credential>],
    attempt: &Attempt<'_>,
) -> Result<Arc<Credential>, (Refusal, Option<String>)> {
    let mut admitting = Vec::new();
    let mut refused: Option<(Refusal, Option<String>)> = None;
    for c in matched.iter().filter(|c| c.identity.name == identity.name) {
        match admit(
            (&identity.name, &identity.conditions),
            (&c.name, &c.conditions),
            attempt,
        ) {
            Ok(()) => admitting.push(c),
            Err(r) => {
                refused.get_or_insert((r, Some(c.name.to_string())));
            }
        }
    }
    match admitting
        .iter()
        .find(|c| !c.one_time_use)
        .or(admitting.first())
    {
        Some(c) => Ok((*c).clone()),
        None => Err(refused.unwrap_or((Refusal::IdentityDisabled(identity.name.clone()), None))),
    }
}

/// Whether `scope` (`<resource>/.default`) fits `pattern`: the scope or its resource,
/// exactly or with `*` standing for any run of characters; case-insensitive, as Entra
/// compares resource URIs.
pub fn scope_allowed(pattern: &str, scope: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    let scope = scope.to_ascii_lowercase();
    let resource = scope.strip_suffix("/.default").unwrap_or(&scope);
    glob(&pattern, &scope) || glob(&pattern, resource)
}

/// `*` matches any run of characters (none included); everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_match_exactly_or_by_wildcard() {
        let storage = "https://storage.azure.com/.default";
        assert!(scope_allowed(storage, storage));
        assert!(scope_allowed("https://storage.azure.com", storage));
        assert!(scope_allowed("HTTPS://Storage.azure.com/.default", storage));
        assert!(!scope_allowed(
            storage,
            "https://management.azure.com/.default"
        ));
        assert!(scope_allowed(
            "https://*.vault.azure.net/.default",
            "https://contoso.vault.azure.net/.default"
        ));
        assert!(!scope_allowed(
            "https://*.vault.azure.net/.default",
            "https://contoso.vault.azure.net.evil.example/.default"
        ));
        assert!(scope_allowed("*", storage));
        assert!(!scope_allowed(
            "https://storage.azure.com/.default",
            "https://storage.azure.com.evil.example/.default"
        ));
    }

    fn conditions(r: Restrictions) -> Conditions {
        Conditions::new(r, true).unwrap()
    }

    #[test]
    fn each_control_refuses_with_its_own_code() {
        let open = Conditions::default();
        let attempt = Attempt {
            now: 1_000,
            issued_at: Some(990),
            scope: Some("https://management.azure.com/.default"),
            client: Some("10.1.2.3".parse().unwrap()),
            judge_source: true,
        };
        let cases = [
            (
                Restrictions {
                    disabled: true,
                    ..Default::default()
                },
                "credential_disabled",
            ),
            (
                Restrictions {
                    not_before: Some(1_001),
                    ..Default::default()
                },
                "credential_not_yet_valid",
            ),
            (
                Restrictions {
                    not_after: Some(1_000),
                    ..Default::default()
                },
                "credential_expired",
            ),
            (
                Restrictions {
                    source_networks: vec!["192.168.0.0/16".into()],
                    ..Default::default()
                },
                "source_not_allowed",
            ),
            (
                Restrictions {
                    max_token_age_seconds: Some(5),
                    ..Default::default()
                },
                "token_too_old",
            ),
            (
                Restrictions {
                    allowed_scopes: vec!["https://storage.azure.com/.default".into()],
                    ..Default::default()
                },
                "scope_not_allowed",
            ),
        ];
        for (r, code) in cases {
            let got = admit(("id", &open), ("cred", &conditions(r)), &attempt).unwrap_err();
            assert_eq!(got.code(), code);
        }
        // A token without `iat` is of unknown age: no maximum admits it.
        let aged = conditions(Restrictions {
            max_token_age_seconds: Some(3600),
            ..Default::default()
        });
        let no_iat = Attempt {
            issued_at: None,
            ..attempt
        };
        let refused = admit(("id", &open), ("cred", &aged), &no_iat).unwrap_err();
        assert_eq!(refused.code(), "token_too_old");
        assert!(refused.to_string().contains("no iat"), "{refused}");
        let disabled = conditions(Restrictions {
            disabled: true,
            ..Default::default()
        });
        assert_eq!(
            admit(("id", &disabled), ("cred", &open), &attempt)
                .unwrap_err()
                .code(),
            "identity_disabled"
        );
        let fitting = conditions(Restrictions {
            source_networks: vec!["10.0.0.0/8".into()],
            max_token_age_seconds: Some(10),
            not_before: Some(1_000),
            not_after: Some(1_001),
            allowed_scopes: vec!["https://management.azure.com".into()],
            ..Default::default()
        });
        admit(("id", &open), ("cred", &fitting), &attempt).unwrap();
    }

    #[test]
    fn identity_scopes_apply_when_the_credential_names_none() {
        let identity = conditions(Restrictions {
            allowed_scopes: vec!["https://storage.azure.com/.default".into()],
            ..Default::default()
        });
        let mut attempt = Attempt {
            now: 0,
            issued_at: Some(0),
            scope: Some("https://management.azure.com/.default"),
            client: None,
            judge_source: true,
        };
        let refused = admit(("id", &identity), ("c", &Conditions::default()), &attempt);
        assert!(refused.unwrap_err().to_string().contains("identity \"id\""));
        let widened = conditions(Restrictions {
            allowed_scopes: vec!["https://management.azure.com/.default".into()],
            ..Default::default()
        });
        admit(("id", &identity), ("c", &widened), &attempt).unwrap();
        attempt.scope = Some("https://storage.azure.com/.default");
        admit(("id", &identity), ("c", &Conditions::default()), &attempt).unwrap();
    }

    #[test]
    fn identities_carry_only_their_controls() {
        let wrong = Restrictions {
            source_networks: vec!["10.0.0.0/8".into()],
            ..Default::default()
        };
        let problems = Conditions::new(wrong, false).unwrap_err();
        assert_eq!(problems[0].field, "sourceNetworks");
        let bad_dates = Restrictions {
            not_before: Some(10),
            not_after: Some(10),
            ..Default::default()
        };
        assert_eq!(
            Conditions::new(bad_dates, true).unwrap_err()[0].field,
            "notAfter"
        );
    }
}
