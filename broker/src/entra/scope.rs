//! Turning a caller's `scope` or `resource` into the one `/.default` scope Entra's
//! client-credentials flow accepts.

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScopeError {
    #[error("`scope` or `resource` is required, e.g. https://management.azure.com/.default")]
    Missing,
    #[error("only one resource per request; got {0} scopes")]
    Several(usize),
    #[error("`{0}` is not a resource URI or app id")]
    Invalid(String),
}

/// `https://x` and `https://x/.default` both become `https://x/.default`; a resource with a
/// trailing slash keeps it (`https://x/` → `https://x//.default`), as Entra expects.
pub fn to_default_scope(raw: &str) -> Result<String, ScopeError> {
    let parts: Vec<&str> = raw.split_whitespace().collect();
    let one = match parts.as_slice() {
        [] => return Err(ScopeError::Missing),
        [one] => *one,
        many => return Err(ScopeError::Several(many.len())),
    };
    if one.len() > 1024 || one.chars().any(|c| c.is_control()) {
        return Err(ScopeError::Invalid(one.chars().take(64).collect()));
    }
    if one.ends_with("/.default") {
        return Ok(one.to_owned());
    }
    Ok(format!("{one}/.default"))
}

/// The resource a `/.default` scope names (the `aud` of the token Entra issues).
pub fn resource_of(scope: &str) -> &str {
    scope.strip_suffix("/.default").unwrap_or(scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_entras_default_rule() {
        assert_eq!(
            to_default_scope("https://management.azure.com").unwrap(),
            "https://management.azure.com/.default"
        );
        assert_eq!(
            to_default_scope("https://management.azure.com/.default").unwrap(),
            "https://management.azure.com/.default"
        );
        assert_eq!(
            to_default_scope("https://management.azure.com/").unwrap(),
            "https://management.azure.com//.default"
        );
        assert_eq!(
            to_default_scope("00000003-0000-0000-c000-000000000000").unwrap(),
            "00000003-0000-0000-c000-000000000000/.default"
        );
        assert_eq!(to_default_scope("  ").unwrap_err(), ScopeError::Missing);
        assert_eq!(to_default_scope("a b").unwrap_err(), ScopeError::Several(2));
        assert_eq!(
            resource_of("https://vault.azure.net/.default"),
            "https://vault.azure.net"
        );
    }
}
