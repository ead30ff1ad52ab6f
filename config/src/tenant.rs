//! Entra tenants, as an identity names its directory: the tenant (directory) ID, a GUID, or
//! one of the tenant's verified domains such as `contoso.onmicrosoft.com`. The workspace's
//! one tenant rule ([`is_tenant`]): `[[identities]] tenant_id`, `[webhook]
//! default_tenant_id` and identities registered through the admin API or the console.

use std::fmt;
use std::str::FromStr;

use crate::guid::is_guid;
use crate::{InvalidValue, shown};

/// Whether `s` names a tenant: a GUID ([`is_guid`]) or a domain name of at least two
/// labels (letters, digits and `-`, neither first nor last; at most 63 characters each,
/// 253 in all) whose last label is letters only.
pub fn is_tenant(s: &str) -> bool {
    is_guid(s) || is_domain(s)
}

fn is_domain(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    s.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_alphabetic()))
}

/// A tenant, parsed (see [`is_tenant`]); it displays, and is written by serde, as it was
/// written. The default is the nil GUID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant(String);

impl Tenant {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Tenant {
    fn default() -> Self {
        Self(crate::Guid::default().as_str().to_owned())
    }
}

impl FromStr for Tenant {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        if s.trim().is_empty() {
            Err(InvalidValue(
                "must not be empty; give the directory (tenant) ID as a GUID, or a domain such \
                 as contoso.onmicrosoft.com"
                    .to_owned(),
            ))
        } else if is_tenant(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidValue(format!(
                "`{}` is neither a GUID nor a domain such as contoso.onmicrosoft.com",
                shown(s)
            )))
        }
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

serde_as_string!(Tenant);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn tenants_are_guids_or_domains() {
        assert!(is_tenant("72f988bf-86f1-41af-91ab-2d7cd011db47"));
        assert!(is_tenant("contoso.onmicrosoft.com"));
        assert!(is_tenant("fabrikam.onmicrosoft.us"));
        assert!(is_tenant("login-test.contoso.com"));
        assert!(!is_tenant("contoso"));
        assert!(!is_tenant("-bad.example.com"));
        assert!(!is_tenant("bad-.example.com"));
        assert!(!is_tenant("a..b"));
        assert!(!is_tenant("contoso.com."));
        assert!(!is_tenant("contoso.123"));
        assert!(!is_tenant("contoso_x.com"));
        assert!(!is_tenant(&format!("{}.com", "a".repeat(64))));
        assert!(!is_tenant(""));
    }

    #[test]
    fn tenants_read_and_write_the_string_given() {
        let tenant: Tenant = "Contoso.onmicrosoft.com".parse().unwrap();
        assert_eq!(tenant.as_str(), "Contoso.onmicrosoft.com");
        assert_eq!(
            serde_json::to_string(&tenant).unwrap(),
            "\"Contoso.onmicrosoft.com\""
        );
        assert_eq!(
            serde_json::from_str::<Tenant>("\"Contoso.onmicrosoft.com\"").unwrap(),
            tenant
        );
        let err = "contoso".parse::<Tenant>().unwrap_err();
        assert!(
            err.to_string().contains("neither a GUID nor a domain"),
            "{err}"
        );
        let err = " ".parse::<Tenant>().unwrap_err();
        assert!(err.to_string().contains("must not be empty"), "{err}");
        assert!(is_tenant(Tenant::default().as_str()));
    }
}
