//! Entra's validation rules for a federated identity credential (docs/admin.md), applied
//! whenever a credential is written, from the configuration file or the admin API.
//!
//! Entra itself checks almost nothing at write time: a wrong value only shows up as a
//! failed exchange minutes later. Here every broken rule becomes one [`Violation`] naming
//! the Graph field (`name`, `issuer`, `subject`, `claimsMatchingExpression`, `audiences`,
//! `description`) and saying, for an admin, which rule and which value (long values are
//! shortened). A few values Entra would accept but no token could ever match (a subject
//! with surrounding whitespace or control characters, an issuer with a query) are refused
//! too, each with the reason.
//!
//! Lengths count Unicode characters. Pure functions: no I/O, and no knowledge of other
//! credentials (uniqueness of names and of issuer + subject is the registry's job).

use std::fmt;

use serde::Serialize;
use url::Url;

use super::ffl::{Expression, FflError};

/// The audience Entra expects in assertions in the public cloud.
pub const DEFAULT_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The application id of Entra's token-exchange app in the public cloud. The v2.0 tokens
/// Entra issues for [`DEFAULT_AUDIENCE`] (a managed identity's, an Azure DevOps service
/// connection's from Entra's issuer) carry it as `aud`, and Entra's federated credentials,
/// whose audience is [`DEFAULT_AUDIENCE`], accept them: so do the broker's.
pub const TOKEN_EXCHANGE_APP_ID: &str = "fb60f99c-7a34-4190-8149-302f77469936";
/// Entra's limit for `issuer`, `subject`, an audience, `description` and the expression.
pub const MAX_FIELD_LEN: usize = 600;
/// Credential names are 3–120 characters.
pub const MIN_NAME_LEN: usize = 3;
/// Longest credential or identity name.
pub const MAX_NAME_LEN: usize = 120;
/// How much of an offending value a message quotes.
const SHOWN_CHARS: usize = 64;

/// A credential as written, before anything is trusted.
#[derive(Debug, Clone, Copy)]
pub struct CredentialSpec<'a> {
    pub name: &'a str,
    pub issuer: &'a str,
    pub subject: Option<&'a str>,
    /// The expression text (the `value` of Graph's `claimsMatchingExpression`).
    pub claims_matching_expression: Option<&'a str>,
    pub audiences: &'a [String],
    pub description: Option<&'a str>,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The Graph field name, camelCase.
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Relaxations for development setups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleOptions {
    /// Accept `http://` issuers whose host is 127.0.0.1, ::1 or localhost (the local dev
    /// issuer). Never for production: Entra accepts only https issuers.
    pub allow_loopback_http: bool,
}

/// Every rule the credential breaks; empty when it is valid.
pub fn check(spec: &CredentialSpec, opts: &RuleOptions) -> Vec<Violation> {
    let mut out = Vec::new();
    out.extend(check_name(spec.name));
    check_issuer(spec.issuer, opts, &mut out);
    match (spec.subject, spec.claims_matching_expression) {
        (Some(_), Some(_)) => out.push(violation(
            "subject",
            "set either subject or claimsMatchingExpression, not both".to_owned(),
        )),
        (None, None) => out.push(violation(
            "subject",
            "one of subject or claimsMatchingExpression is required".to_owned(),
        )),
        _ => {}
    }
    if let Some(subject) = spec.subject {
        check_subject(subject, &mut out);
    }
    if let Some(expression) = spec.claims_matching_expression {
        check_expression(expression, &mut out);
    }
    check_audiences(spec.audiences, &mut out);
    if let Some(description) = spec.description {
        out.extend(too_long("description", description));
    }
    out
}

/// A credential name: 3–120 characters, letters, digits, `-` and `_`, starting with a
/// letter or digit.
pub fn check_name(name: &str) -> Option<Violation> {
    check_name_rule(name, "name", MIN_NAME_LEN)
}

/// An identity name: the credential-name character rule, 1–120 characters.
pub fn check_identity_name(name: &str) -> Option<Violation> {
    check_name_rule(name, "identity name", 1)
}

/// The workspace's one GUID rule, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (see
/// [`wif_config::guid`]), as tenant, client and object ids are written.
pub use wif_config::is_guid;

fn check_name_rule(name: &str, label: &str, min: usize) -> Option<Violation> {
    let shown = Shown(name);
    let message = if name.is_empty() {
        format!("{label} is required")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        format!("{label} {shown} may contain only letters, digits, '-' and '_'")
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        format!("{label} {shown} must start with a letter or digit")
    } else {
        let len = name.chars().count();
        if (min..=MAX_NAME_LEN).contains(&len) {
            return None;
        }
        let unit = if len == 1 { "character" } else { "characters" };
        format!(
            "{label} {shown} is {len} {unit} long; it must be {min} to {MAX_NAME_LEN} \
             characters"
        )
    };
    Some(violation("name", message))
}

fn check_issuer(issuer: &str, opts: &RuleOptions, out: &mut Vec<Violation>) {
    let field = "issuer";
    if issuer.is_empty() {
        out.push(violation(field, "issuer is required".to_owned()));
        return;
    }
    out.extend(too_long(field, issuer));
    let shown = Shown(issuer);
    if let Some(c) = issuer.chars().find(|c| c.is_whitespace() || c.is_control()) {
        out.push(violation(
            field,
            format!(
                "issuer {shown} contains {}; it is compared with the token's iss exactly, \
                 so no token would match",
                describe(c)
            ),
        ));
        return;
    }
    let url = match Url::parse(issuer) {
        Ok(url) => url,
        Err(error) => {
            out.push(violation(
                field,
                format!("issuer {shown} is not an absolute https URL ({error})"),
            ));
            return;
        }
    };
    // The workspace's one loopback rule, the one the configuration file's issuers follow.
    let loopback = wif_config::is_loopback(&url);
    let scheme = url.scheme();
    let scheme_allowed = match scheme {
        "https" => true,
        "http" => opts.allow_loopback_http && loopback,
        _ => false,
    };
    let after_scheme = issuer.get(scheme.len()..).unwrap_or_default();
    if !scheme_allowed {
        let message = match scheme {
            "http" if loopback => format!(
                "issuer {shown} must use https; plain http to a loopback host is accepted \
                 only when allow_loopback_http is set"
            ),
            "http" => format!(
                "issuer {shown} must use https; plain http is accepted only for \
                 127.0.0.1, ::1 or localhost in development"
            ),
            _ => format!("issuer {shown} must be an https URL"),
        };
        out.push(violation(field, message));
        return;
    }
    let Some(authority_and_path) = after_scheme.strip_prefix("://") else {
        out.push(violation(
            field,
            format!("issuer {shown} must start with {scheme}:// followed by the host"),
        ));
        return;
    };
    let authority = authority_and_path
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    if authority.is_empty() || url.host_str().is_none_or(str::is_empty) {
        out.push(violation(field, format!("issuer {shown} has no host")));
    }
    if authority.contains('@') {
        out.push(violation(
            field,
            format!("issuer {shown} must not contain a user name or password"),
        ));
    }
    if url.query().is_some() {
        out.push(violation(
            field,
            format!("issuer {shown} must not have a query ('?...')"),
        ));
    }
    if url.fragment().is_some() {
        out.push(violation(
            field,
            format!("issuer {shown} must not have a fragment ('#...')"),
        ));
    }
}

fn check_subject(subject: &str, out: &mut Vec<Violation>) {
    let field = "subject";
    if subject.trim().is_empty() {
        out.push(violation(
            field,
            format!(
                "subject must not be empty{}",
                if subject.is_empty() {
                    ""
                } else {
                    " or only whitespace"
                }
            ),
        ));
        return;
    }
    out.extend(too_long(field, subject));
    out.extend(exact_match_hazards(field, "subject", "sub", subject));
}

fn check_expression(text: &str, out: &mut Vec<Violation>) {
    let field = "claimsMatchingExpression";
    out.extend(too_long(field, text));
    match Expression::parse(text) {
        Ok(_) | Err(FflError::TooLong { .. }) => {}
        Err(error) => out.push(violation(
            field,
            format!(
                "claimsMatchingExpression {} does not parse: {error}",
                shown(text)
            ),
        )),
    }
}

fn check_audiences(audiences: &[String], out: &mut Vec<Violation>) {
    let field = "audiences";
    match audiences {
        [] => out.push(violation(
            field,
            format!(
                "audiences must hold exactly one value, found none; \
                 the usual one is \"{DEFAULT_AUDIENCE}\""
            ),
        )),
        [audience] => {
            if audience.is_empty() {
                out.push(violation(
                    field,
                    "the audience must not be empty".to_owned(),
                ));
                return;
            }
            out.extend(too_long(field, audience));
            out.extend(exact_match_hazards(field, "audience", "aud", audience));
        }
        many => {
            let listed: Vec<String> = many.iter().take(3).map(|a| shown(a)).collect();
            let more = if many.len() > 3 { ", …" } else { "" };
            out.push(violation(
                field,
                format!(
                    "audiences must hold exactly one value, found {}: {}{more}",
                    many.len(),
                    listed.join(", ")
                ),
            ));
        }
    }
}

/// Values compared exactly with a claim: surrounding whitespace or control characters are
/// copy-and-paste mistakes that Entra accepts and no token ever matches.
fn exact_match_hazards(
    field: &'static str,
    label: &str,
    claim: &str,
    value: &str,
) -> Option<Violation> {
    let shown = Shown(value);
    let message = if value.trim() != value {
        format!(
            "{label} {shown} starts or ends with whitespace; it is compared with the token's \
             {claim} exactly, so no token would match"
        )
    } else if let Some(c) = value.chars().find(|c| c.is_control()) {
        format!(
            "{label} {shown} contains {}; it is compared with the token's {claim} exactly, \
             so no token would match",
            describe(c)
        )
    } else {
        return None;
    };
    Some(violation(field, message))
}

fn too_long(field: &'static str, value: &str) -> Option<Violation> {
    let len = value.chars().count();
    (len > MAX_FIELD_LEN).then(|| {
        violation(
            field,
            format!(
                "{field} is {len} characters long; at most {MAX_FIELD_LEN} are allowed \
                 (it starts {})",
                shown(value)
            ),
        )
    })
}

fn violation(field: &'static str, message: String) -> Violation {
    Violation { field, message }
}

/// [`shown`], written out only when a message is: every credential, of a million in a
/// config file, is checked (docs/PERFORMANCE.md, "Scale").
struct Shown<'a>(&'a str);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&shown(self.0))
    }
}

/// A value quoted for a message, shortened to its first characters.
fn shown(value: &str) -> String {
    let mut text: String = value.chars().take(SHOWN_CHARS).collect();
    if text.len() < value.len() {
        text.push('…');
    }
    format!("{text:?}")
}

fn describe(c: char) -> String {
    match c {
        ' ' => "a space".to_owned(),
        '\t' => "a tab".to_owned(),
        '\n' | '\r' => "a line break".to_owned(),
        c if c.is_control() => format!("a control character (U+{:04X})", u32::from(c)),
        c => format!("whitespace (U+{:04X})", u32::from(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::LazyLock;

    const GITHUB: &str = "https://token.actions.githubusercontent.com";

    fn audiences(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    static DEFAULT_AUDIENCES: LazyLock<Vec<String>> =
        LazyLock::new(|| vec![DEFAULT_AUDIENCE.to_owned()]);

    fn spec<'a>(audiences: &'a [String]) -> CredentialSpec<'a> {
        CredentialSpec {
            name: "github-main",
            issuer: GITHUB,
            subject: Some("repo:contoso/app:ref:refs/heads/main"),
            claims_matching_expression: None,
            audiences,
            description: Some("deploys from main"),
        }
    }

    fn strict() -> RuleOptions {
        RuleOptions::default()
    }

    fn dev() -> RuleOptions {
        RuleOptions {
            allow_loopback_http: true,
        }
    }

    /// The violations for a spec that differs from the valid one only in `change`.
    fn violations<'a>(
        change: impl FnOnce(&mut CredentialSpec<'a>),
        opts: &RuleOptions,
    ) -> Vec<Violation> {
        let mut s: CredentialSpec<'a> = spec(&DEFAULT_AUDIENCES);
        change(&mut s);
        check(&s, opts)
    }

    fn issuer_violations(issuer: &str, opts: &RuleOptions) -> Vec<Violation> {
        violations(|s| s.issuer = issuer, opts)
    }

    fn only(violations: Vec<Violation>) -> Violation {
        assert_eq!(violations.len(), 1, "{violations:#?}");
        violations.into_iter().next().unwrap()
    }

    #[test]
    fn a_github_credential_for_main_is_valid() {
        assert_eq!(violations(|_| {}, &strict()), vec![]);
    }

    #[test]
    fn a_flexible_credential_for_every_branch_is_valid() {
        let found = violations(
            |s| {
                s.subject = None;
                s.claims_matching_expression =
                    Some("claims['sub'] matches 'repo:contoso/app:ref:refs/heads/*'");
                s.description = None;
            },
            &strict(),
        );
        assert_eq!(found, vec![]);
    }

    #[test]
    fn an_aks_credential_with_a_trailing_slash_issuer_is_valid() {
        let found = violations(
            |s| {
                s.name = "aks_prod-1";
                s.issuer = "https://westeurope.oic.prod-aks.azure.com/\
                            72f988bf-86f1-41af-91ab-2d7cd011db47/0b5c1a2e-0000-4000-8000-000000000000/";
                s.subject = Some("system:serviceaccount:team-a:deployer");
            },
            &strict(),
        );
        assert_eq!(found, vec![]);
    }

    #[test]
    fn sovereign_cloud_audiences_are_valid() {
        for audience in [
            "api://AzureADTokenExchangeUSGov",
            "api://AzureADTokenExchangeChina",
            "api://AzureADTokenExchangeUSNat",
            "api://AzureADTokenExchangeUSSec",
        ] {
            let list = audiences(&[audience]);
            assert_eq!(check(&spec(&list), &strict()), vec![], "{audience}");
        }
    }

    // --- name ----------------------------------------------------------------------------

    #[test]
    fn name_length_is_three_to_one_hundred_twenty() {
        assert_eq!(
            check_name("ab"),
            Some(Violation {
                field: "name",
                message: "name \"ab\" is 2 characters long; it must be 3 to 120 characters".into(),
            })
        );
        assert_eq!(
            check_name("x").map(|v| v.message),
            Some("name \"x\" is 1 character long; it must be 3 to 120 characters".into())
        );
        assert_eq!(check_name("abc"), None);
        assert_eq!(check_name(&"a".repeat(120)), None);
        let long = check_name(&"a".repeat(121)).unwrap();
        assert_eq!(long.field, "name");
        assert!(
            long.message
                .ends_with("…\" is 121 characters long; it must be 3 to 120 characters"),
            "{}",
            long.message
        );
    }

    #[test]
    fn name_is_required() {
        assert_eq!(check_name("").unwrap().message, "name is required");
        let found = only(violations(|s| s.name = "", &strict()));
        assert_eq!(found.field, "name");
    }

    #[test]
    fn name_may_hold_only_letters_digits_dash_and_underscore() {
        assert_eq!(
            check_name("my cred!").unwrap().message,
            "name \"my cred!\" may contain only letters, digits, '-' and '_'"
        );
        for bad in ["a.b.c", "crédit", "a/b/c", "abc ", "a\tbc", "ab@c"] {
            assert!(
                check_name(bad)
                    .unwrap()
                    .message
                    .contains("may contain only"),
                "{bad}"
            );
        }
        for good in ["A-b_9", "0abc", "github_main", "X--"] {
            assert_eq!(check_name(good), None, "{good}");
        }
    }

    #[test]
    fn name_must_start_with_a_letter_or_digit() {
        assert_eq!(
            check_name("-abc").unwrap().message,
            "name \"-abc\" must start with a letter or digit"
        );
        assert_eq!(
            check_name("_abc").unwrap().message,
            "name \"_abc\" must start with a letter or digit"
        );
    }

    #[test]
    fn identity_names_follow_the_same_characters_with_one_to_one_hundred_twenty() {
        assert_eq!(
            check_identity_name("").unwrap().message,
            "identity name is required"
        );
        assert_eq!(check_identity_name("a"), None);
        assert_eq!(check_identity_name("ab"), None);
        assert_eq!(check_identity_name(&"a".repeat(120)), None);
        let long = check_identity_name(&"a".repeat(121)).unwrap();
        assert_eq!(long.field, "name");
        assert!(
            long.message
                .contains("121 characters long; it must be 1 to 120")
        );
        assert_eq!(
            check_identity_name("deploy bot").unwrap().message,
            "identity name \"deploy bot\" may contain only letters, digits, '-' and '_'"
        );
        assert_eq!(
            check_identity_name("-x").unwrap().message,
            "identity name \"-x\" must start with a letter or digit"
        );
    }

    // --- issuer --------------------------------------------------------------------------

    #[test]
    fn issuer_is_required() {
        let found = only(issuer_violations("", &strict()));
        assert_eq!(found.field, "issuer");
        assert_eq!(found.message, "issuer is required");
    }

    #[test]
    fn issuer_is_at_most_six_hundred_characters() {
        let base = "https://example.com/";
        let exact = format!("{base}{}", "a".repeat(MAX_FIELD_LEN - base.len()));
        assert_eq!(exact.len(), 600);
        assert_eq!(issuer_violations(&exact, &strict()), vec![]);
        let over = format!("{exact}a");
        let found = only(issuer_violations(&over, &strict()));
        assert_eq!(found.field, "issuer");
        assert!(
            found.message.starts_with(
                "issuer is 601 characters long; at most 600 are allowed \
                 (it starts \"https://example.com/aaaa"
            ),
            "{}",
            found.message
        );
        assert!(found.message.ends_with("…\")"));
    }

    #[test]
    fn issuer_must_use_https() {
        assert_eq!(
            only(issuer_violations("http://issuer.example.com", &strict())).message,
            "issuer \"http://issuer.example.com\" must use https; plain http is accepted \
             only for 127.0.0.1, ::1 or localhost in development"
        );
        assert_eq!(
            only(issuer_violations("ftp://issuer.example.com", &strict())).message,
            "issuer \"ftp://issuer.example.com\" must be an https URL"
        );
        assert_eq!(
            only(issuer_violations("http://issuer.example.com", &dev())).field,
            "issuer"
        );
        assert_eq!(
            issuer_violations("https://127.0.0.1:8443", &strict()),
            vec![]
        );
    }

    #[test]
    fn plain_http_is_only_for_loopback_in_development() {
        for issuer in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/issuer/",
            "http://[::1]:9000",
            "http://localhost:3000/dev",
            "http://LOCALHOST",
            // All of 127/8, as in the configuration file (wif_config::is_loopback).
            "http://127.0.0.2",
            "http://[::ffff:127.0.0.1]:8080",
        ] {
            assert_eq!(issuer_violations(issuer, &dev()), vec![], "{issuer}");
            let refused = only(issuer_violations(issuer, &strict()));
            assert!(
                refused
                    .message
                    .ends_with("only when allow_loopback_http is set"),
                "{issuer}: {}",
                refused.message
            );
        }
        for issuer in [
            "http://10.0.0.1",
            "http://localhost.example.com",
            "http://127.0.0.1.nip.io",
            "http://localhost./",
            "http://0.0.0.0:8080",
            "http://[::2]",
        ] {
            assert_eq!(issuer_violations(issuer, &dev()).len(), 1, "{issuer}");
        }
    }

    #[test]
    fn issuer_must_be_an_absolute_url_with_a_host() {
        let relative = only(issuer_violations(
            "token.actions.githubusercontent.com",
            &strict(),
        ));
        assert!(
            relative.message.starts_with(
                "issuer \"token.actions.githubusercontent.com\" is not an absolute https URL ("
            ),
            "{}",
            relative.message
        );
        for no_host in ["https://", "https:///path"] {
            assert_eq!(
                issuer_violations(no_host, &strict()).len(),
                1,
                "{no_host}: {:?}",
                issuer_violations(no_host, &strict())
            );
        }
        assert_eq!(
            only(issuer_violations("https:///token.example.com", &strict())).message,
            "issuer \"https:///token.example.com\" has no host"
        );
        assert_eq!(
            only(issuer_violations("https:token.example.com", &strict())).message,
            "issuer \"https:token.example.com\" must start with https:// followed by the host"
        );
        assert_eq!(
            only(issuer_violations("https:/token.example.com", &strict())).message,
            "issuer \"https:/token.example.com\" must start with https:// followed by the host"
        );
    }

    #[test]
    fn issuer_must_not_carry_userinfo_query_or_fragment() {
        assert_eq!(
            only(issuer_violations(
                "https://user:pw@issuer.example.com",
                &strict()
            ))
            .message,
            "issuer \"https://user:pw@issuer.example.com\" must not contain a user name or password"
        );
        assert_eq!(
            only(issuer_violations("https://@issuer.example.com", &strict())).message,
            "issuer \"https://@issuer.example.com\" must not contain a user name or password"
        );
        assert_eq!(
            only(issuer_violations(
                "https://issuer.example.com/?tenant=x",
                &strict()
            ))
            .message,
            "issuer \"https://issuer.example.com/?tenant=x\" must not have a query ('?...')"
        );
        assert_eq!(
            only(issuer_violations("https://issuer.example.com?", &strict())).message,
            "issuer \"https://issuer.example.com?\" must not have a query ('?...')"
        );
        assert_eq!(
            only(issuer_violations(
                "https://issuer.example.com/#x",
                &strict()
            ))
            .message,
            "issuer \"https://issuer.example.com/#x\" must not have a fragment ('#...')"
        );
        assert_eq!(
            issuer_violations("https://u@issuer.example.com/?q#f", &strict()).len(),
            3
        );
    }

    #[test]
    fn issuer_with_whitespace_can_never_match() {
        assert_eq!(
            only(issuer_violations(
                "https://token.actions.githubusercontent.com ",
                &strict()
            ))
            .message,
            "issuer \"https://token.actions.githubusercontent.com \" contains a space; \
             it is compared with the token's iss exactly, so no token would match"
        );
        assert!(
            only(issuer_violations("\thttps://issuer.example.com", &strict()))
                .message
                .contains("contains a tab")
        );
        assert!(
            only(issuer_violations("https://issuer.exa\nmple.com", &strict()))
                .message
                .contains("contains a line break")
        );
    }

    #[test]
    fn issuer_case_ports_and_paths_are_kept_as_written() {
        for issuer in [
            "https://token.actions.githubusercontent.com/contoso",
            "https://ghes.contoso.com/_services/token",
            "https://vstoken.dev.azure.com/72f988bf-86f1-41af-91ab-2d7cd011db47",
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0",
            "https://gitlab.example.com:8443",
            "HTTPS://Issuer.Example.com/",
        ] {
            assert_eq!(issuer_violations(issuer, &strict()), vec![], "{issuer}");
        }
    }

    // --- subject and claimsMatchingExpression ---------------------------------------------

    #[test]
    fn exactly_one_of_subject_or_expression() {
        let both = only(violations(
            |s| s.claims_matching_expression = Some("claims['sub'] eq 'x'"),
            &strict(),
        ));
        assert_eq!(
            both,
            Violation {
                field: "subject",
                message: "set either subject or claimsMatchingExpression, not both".into(),
            }
        );
        let neither = only(violations(|s| s.subject = None, &strict()));
        assert_eq!(
            neither,
            Violation {
                field: "subject",
                message: "one of subject or claimsMatchingExpression is required".into(),
            }
        );
    }

    #[test]
    fn subject_must_not_be_empty() {
        assert_eq!(
            only(violations(|s| s.subject = Some(""), &strict())).message,
            "subject must not be empty"
        );
        assert_eq!(
            only(violations(|s| s.subject = Some("  "), &strict())).message,
            "subject must not be empty or only whitespace"
        );
    }

    #[test]
    fn subject_is_at_most_six_hundred_characters() {
        let exact = "s".repeat(600);
        assert_eq!(violations(|s| s.subject = Some(&exact), &strict()), vec![]);
        let wide = "é".repeat(600);
        assert_eq!(violations(|s| s.subject = Some(&wide), &strict()), vec![]);
        let over = "s".repeat(601);
        let found = only(violations(|s| s.subject = Some(&over), &strict()));
        assert_eq!(found.field, "subject");
        assert!(
            found
                .message
                .starts_with("subject is 601 characters long; at most 600 are allowed")
        );
        assert!(
            found.message.len() < 200,
            "long values are shortened: {}",
            found.message
        );
    }

    #[test]
    fn subject_with_surrounding_whitespace_can_never_match() {
        let found = only(violations(
            |s| s.subject = Some("repo:contoso/app:ref:refs/heads/main "),
            &strict(),
        ));
        assert_eq!(found.field, "subject");
        assert_eq!(
            found.message,
            "subject \"repo:contoso/app:ref:refs/heads/main \" starts or ends with whitespace; \
             it is compared with the token's sub exactly, so no token would match"
        );
        let newline = only(violations(
            |s| s.subject = Some("repo:contoso/app:ref:refs/heads/main\n"),
            &strict(),
        ));
        assert!(
            newline
                .message
                .contains("\\n\" starts or ends with whitespace")
        );
        // Whitespace inside is free form and allowed.
        assert_eq!(
            violations(|s| s.subject = Some("sc://org/My Project/conn"), &strict()),
            vec![]
        );
    }

    #[test]
    fn subject_with_control_characters_can_never_match() {
        let found = only(violations(
            |s| s.subject = Some("repo:a/b\u{0}:x"),
            &strict(),
        ));
        assert_eq!(
            found.message,
            "subject \"repo:a/b\\0:x\" contains a control character (U+0000); it is compared \
             with the token's sub exactly, so no token would match"
        );
    }

    #[test]
    fn expression_must_parse_and_the_reason_is_given() {
        let found = only(violations(
            |s| {
                s.subject = None;
                s.claims_matching_expression = Some("claims['sub'] equals 'x'");
            },
            &strict(),
        ));
        assert_eq!(found.field, "claimsMatchingExpression");
        assert_eq!(
            found.message,
            "claimsMatchingExpression \"claims['sub'] equals 'x'\" does not parse: at \
             character 15: expected `eq` or `matches`, found `equals`; FFL has only the \
             operators `eq`, `matches` and `and`"
        );
        let empty = only(violations(
            |s| {
                s.subject = None;
                s.claims_matching_expression = Some("");
            },
            &strict(),
        ));
        assert!(empty.message.contains("the expression is empty"));
    }

    #[test]
    fn expression_is_at_most_six_hundred_characters() {
        let prefix = "claims['sub'] eq '";
        let exact = format!("{prefix}{}'", "x".repeat(600 - prefix.len() - 1));
        assert_eq!(exact.chars().count(), 600);
        let no_subject = |text: &str| {
            violations(
                |s| {
                    s.subject = None;
                    s.claims_matching_expression = Some(text);
                },
                &strict(),
            )
        };
        assert_eq!(no_subject(&exact), vec![]);
        let over = format!("{prefix}{}'", "x".repeat(600 - prefix.len()));
        let found = only(no_subject(&over));
        assert!(found.message.starts_with(
            "claimsMatchingExpression is 601 characters long; at most 600 are allowed"
        ));
        // Far beyond the parser's own limit there is still one length violation.
        let huge = format!("{prefix}{}'", "x".repeat(5000));
        assert_eq!(only(no_subject(&huge)).field, "claimsMatchingExpression");
        // Too long and malformed: two rules, two violations.
        let both = format!("{prefix}{}", "x".repeat(600));
        assert_eq!(no_subject(&both).len(), 2);
    }

    // --- audiences -------------------------------------------------------------------------

    fn audience_violations(values: &[&str]) -> Vec<Violation> {
        let list = audiences(values);
        check(&spec(&list), &strict())
    }

    #[test]
    fn audiences_hold_exactly_one_value() {
        assert_eq!(
            only(audience_violations(&[])),
            Violation {
                field: "audiences",
                message: "audiences must hold exactly one value, found none; the usual one \
                          is \"api://AzureADTokenExchange\""
                    .into(),
            }
        );
        assert_eq!(
            only(audience_violations(&[DEFAULT_AUDIENCE, "api://other"])).message,
            "audiences must hold exactly one value, found 2: \
             \"api://AzureADTokenExchange\", \"api://other\""
        );
        assert_eq!(
            only(audience_violations(&["a", "b", "c", "d", "e"])).message,
            "audiences must hold exactly one value, found 5: \"a\", \"b\", \"c\", …"
        );
    }

    #[test]
    fn the_audience_must_not_be_empty() {
        assert_eq!(
            only(audience_violations(&[""])),
            Violation {
                field: "audiences",
                message: "the audience must not be empty".into(),
            }
        );
    }

    #[test]
    fn the_audience_is_at_most_six_hundred_characters() {
        let exact = format!("api://{}", "a".repeat(594));
        assert_eq!(audience_violations(&[&exact]), vec![]);
        let over = format!("{exact}a");
        assert!(
            only(audience_violations(&[&over]))
                .message
                .starts_with("audiences is 601 characters long; at most 600 are allowed")
        );
    }

    #[test]
    fn an_audience_with_surrounding_whitespace_can_never_match() {
        assert_eq!(
            only(audience_violations(&[" api://AzureADTokenExchange"])).message,
            "audience \" api://AzureADTokenExchange\" starts or ends with whitespace; it is \
             compared with the token's aud exactly, so no token would match"
        );
    }

    // --- description -------------------------------------------------------------------------

    #[test]
    fn description_is_optional_and_at_most_six_hundred_characters() {
        assert_eq!(violations(|s| s.description = None, &strict()), vec![]);
        assert_eq!(violations(|s| s.description = Some(""), &strict()), vec![]);
        let exact = "d".repeat(600);
        assert_eq!(
            violations(|s| s.description = Some(&exact), &strict()),
            vec![]
        );
        let over = "d".repeat(601);
        let found = only(violations(|s| s.description = Some(&over), &strict()));
        assert_eq!(found.field, "description");
        assert!(
            found
                .message
                .starts_with("description is 601 characters long; at most 600 are allowed")
        );
        // Free text: line breaks are fine.
        assert_eq!(
            violations(|s| s.description = Some("line one\nline two "), &strict()),
            vec![]
        );
    }

    // --- everything at once ------------------------------------------------------------------

    #[test]
    fn every_broken_rule_is_reported_once_in_field_order() {
        let list = audiences(&[]);
        let long_description = "d".repeat(601);
        let s = CredentialSpec {
            name: "x",
            issuer: "http://issuer.example.com",
            subject: Some(" sub"),
            claims_matching_expression: Some("claims['sub'] or 'x'"),
            audiences: &list,
            description: Some(&long_description),
        };
        let fields: Vec<&str> = check(&s, &strict()).iter().map(|v| v.field).collect();
        assert_eq!(
            fields,
            vec![
                "name",
                "issuer",
                "subject",
                "subject",
                "claimsMatchingExpression",
                "audiences",
                "description",
            ]
        );
    }

    #[test]
    fn violations_serialize_for_the_admin_api_and_display_for_logs() {
        let v = check_name("my cred!").unwrap();
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            serde_json::json!({
                "field": "name",
                "message": "name \"my cred!\" may contain only letters, digits, '-' and '_'",
            })
        );
        assert_eq!(
            v.to_string(),
            "name: name \"my cred!\" may contain only letters, digits, '-' and '_'"
        );
    }
}
