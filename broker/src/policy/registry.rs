//! The registry: identities and their federated credentials, indexed for matching.
//!
//! A registry is immutable once built; changes build a new one and swap it in whole, so an
//! exchange always sees one consistent version. Matching looks up the token's issuer,
//! then its exact subject in a hash index, then evaluates the issuer's expression rules.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use wif_config::{AssertionSource, BrokerConfig};

use super::ffl::Expression;
use super::rules::{self, CredentialSpec, RuleOptions};
use crate::token::VerifiedToken;

/// An Entra identity (app registration or user-assigned managed identity).
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
    pub authority_host: String,
    pub assertion: AssertionSource,
    /// Declared in the config file; the admin API may not change it.
    pub read_only: bool,
}

/// How a credential decides on a token's subject.
#[derive(Debug, Clone, PartialEq)]
pub enum SubjectRule {
    Exact(String),
    Expression(Expression),
}

/// A federated credential: tokens from `issuer` matching `rule` with `audience` may act
/// as `identity`.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    pub name: String,
    pub identity: Arc<Identity>,
    pub issuer: String,
    pub rule: SubjectRule,
    pub audience: String,
    pub description: Option<String>,
}

#[derive(Debug, Default)]
struct IssuerIndex {
    exact: HashMap<String, Vec<Arc<Credential>>>,
    expressions: Vec<Arc<Credential>>,
}

/// Why a verified token matched no credential.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MatchError {
    #[error("no federated credential matches this token")]
    NoCredential,
    #[error(
        "a federated credential matches the subject but not the token's audience; expected {expected}"
    )]
    Audience { expected: String },
}

/// Why no identity could be chosen among the matched ones.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectError {
    #[error("this token may not act as the requested identity")]
    NotAllowed,
    #[error("this token may act as several identities ({}); name one with `identity` or `client_id`", .0.join(", "))]
    Ambiguous(Vec<String>),
}

/// A problem found while building a registry, naming where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildProblem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for BuildProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Identities and credentials, indexed by issuer.
#[derive(Debug, Default)]
pub struct Registry {
    identities: BTreeMap<String, Arc<Identity>>,
    credentials: Vec<Arc<Credential>>,
    by_issuer: HashMap<String, IssuerIndex>,
}

impl Registry {
    /// Builds the declarative registry from the config file, applying Entra's rules.
    pub fn from_config(cfg: &BrokerConfig) -> Result<Self, Vec<BuildProblem>> {
        let opts = RuleOptions {
            allow_loopback_http: cfg.outbound.allow_loopback_http,
        };
        let mut problems = Vec::new();
        let mut identities = Vec::new();
        let mut credentials = Vec::new();
        for (i, id) in cfg.identities.iter().enumerate() {
            let identity = Arc::new(Identity {
                name: id.name.clone(),
                tenant_id: id.tenant_id.clone(),
                client_id: id.client_id.clone(),
                authority_host: id
                    .effective_authority_host(&cfg.entra.authority_host)
                    .trim_end_matches('/')
                    .to_owned(),
                assertion: id.assertion,
                read_only: true,
            });
            for (j, fc) in id.federated_credentials.iter().enumerate() {
                let key = format!("identities[{i}].federated_credentials[{j}]");
                let audiences = fc.effective_audiences(id.cloud);
                let spec = CredentialSpec {
                    name: &fc.name,
                    issuer: &fc.issuer,
                    subject: fc.subject.as_deref(),
                    claims_matching_expression: fc.claims_matching_expression.as_deref(),
                    audiences: &audiences,
                    description: fc.description.as_deref(),
                };
                let violations = rules::check(&spec, &opts);
                if !violations.is_empty() {
                    problems.extend(violations.into_iter().map(|v| BuildProblem {
                        key: format!("{key}.{}", snake(v.field)),
                        message: v.message,
                    }));
                    continue;
                }
                match build_credential(&identity, &spec) {
                    Ok(c) => credentials.push(c),
                    Err(message) => problems.push(BuildProblem { key, message }),
                }
            }
            identities.push(identity);
        }
        let explicit: Vec<String> = cfg.issuers.iter().map(|i| i.url.clone()).collect();
        match Self::build(identities, credentials, &explicit) {
            Ok(r) if problems.is_empty() => Ok(r),
            Ok(_) => Err(problems),
            Err(mut more) => {
                problems.append(&mut more);
                Err(problems)
            }
        }
    }

    /// Indexes identities and credentials; rejects duplicates the way Entra does.
    pub fn build(
        identities: Vec<Arc<Identity>>,
        credentials: Vec<Credential>,
        explicit_issuers: &[String],
    ) -> Result<Self, Vec<BuildProblem>> {
        let mut problems = Vec::new();
        let mut by_name = BTreeMap::new();
        let mut client_ids = HashSet::new();
        for identity in identities {
            if !client_ids.insert(identity.client_id.to_ascii_lowercase()) {
                problems.push(BuildProblem {
                    key: format!("identity {}", identity.name),
                    message: format!(
                        "client_id {} is used by another identity",
                        identity.client_id
                    ),
                });
            }
            if by_name
                .insert(identity.name.clone(), identity.clone())
                .is_some()
            {
                problems.push(BuildProblem {
                    key: format!("identity {}", identity.name),
                    message: "an identity with this name already exists".into(),
                });
            }
        }
        let mut registry = Registry {
            identities: by_name,
            ..Default::default()
        };
        for issuer in explicit_issuers {
            registry.by_issuer.entry(issuer.clone()).or_default();
        }
        let mut names = HashSet::new();
        let mut subjects = HashSet::new();
        for cred in credentials {
            let key = format!("identity {} credential {}", cred.identity.name, cred.name);
            if !names.insert((cred.identity.name.clone(), cred.name.clone())) {
                problems.push(BuildProblem {
                    key,
                    message: "a credential with this name already exists on the identity".into(),
                });
                continue;
            }
            let cred = Arc::new(cred);
            let index = registry.by_issuer.entry(cred.issuer.clone()).or_default();
            match &cred.rule {
                SubjectRule::Exact(subject) => {
                    if !subjects.insert((
                        cred.identity.name.clone(),
                        cred.issuer.clone(),
                        subject.clone(),
                    )) {
                        problems.push(BuildProblem {
                            key,
                            message: format!(
                                "issuer {} and subject {subject} are already used by another credential of this identity",
                                cred.issuer
                            ),
                        });
                        continue;
                    }
                    index
                        .exact
                        .entry(subject.clone())
                        .or_default()
                        .push(cred.clone());
                }
                SubjectRule::Expression(_) => index.expressions.push(cred.clone()),
            }
            registry.credentials.push(cred);
        }
        if problems.is_empty() {
            Ok(registry)
        } else {
            Err(problems)
        }
    }

    /// True when tokens from `iss` are trusted at all (some credential or `[[issuers]]`
    /// names it). Nothing is fetched for any other issuer.
    pub fn knows_issuer(&self, iss: &str) -> bool {
        self.by_issuer.contains_key(iss)
    }

    pub fn identities(&self) -> impl Iterator<Item = &Arc<Identity>> {
        self.identities.values()
    }

    pub fn identity(&self, name: &str) -> Option<&Arc<Identity>> {
        self.identities.get(name)
    }

    pub fn credentials(&self) -> &[Arc<Credential>] {
        &self.credentials
    }

    /// The credentials a verified token satisfies (issuer, subject or expression, audience).
    pub fn matching(&self, token: &VerifiedToken) -> Result<Vec<Arc<Credential>>, MatchError> {
        let Some(index) = self.by_issuer.get(&token.iss) else {
            return Err(MatchError::NoCredential);
        };
        let exact = token
            .sub
            .as_deref()
            .and_then(|sub| index.exact.get(sub))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut subject_matches =
            exact
                .iter()
                .chain(index.expressions.iter().filter(|c| match &c.rule {
                    SubjectRule::Expression(e) => e.matches(&token.claims),
                    SubjectRule::Exact(_) => false,
                }));
        let mut matched = Vec::new();
        let mut wanted_audience = None;
        for cred in subject_matches.by_ref() {
            if token.aud.iter().any(|a| a == &cred.audience) {
                matched.push(cred.clone());
            } else if wanted_audience.is_none() {
                wanted_audience = Some(cred.audience.clone());
            }
        }
        match (matched.is_empty(), wanted_audience) {
            (false, _) => Ok(matched),
            (true, Some(expected)) => Err(MatchError::Audience { expected }),
            (true, None) => Err(MatchError::NoCredential),
        }
    }
}

/// Chooses the identity (DESIGN.md step 5): the requested one if the token may act as it,
/// else the only one.
pub fn select_identity(
    matched: &[Arc<Credential>],
    requested: Option<&str>,
) -> Result<Arc<Identity>, SelectError> {
    let mut identities: Vec<&Arc<Identity>> = Vec::new();
    for cred in matched {
        if !identities.iter().any(|i| i.name == cred.identity.name) {
            identities.push(&cred.identity);
        }
    }
    match requested {
        Some(wanted) => identities
            .into_iter()
            .find(|i| i.name == wanted || i.client_id.eq_ignore_ascii_case(wanted))
            .cloned()
            .ok_or(SelectError::NotAllowed),
        None => match identities.as_slice() {
            [only] => Ok((*only).clone()),
            [] => Err(SelectError::NotAllowed),
            many => Err(SelectError::Ambiguous(
                many.iter().map(|i| i.name.clone()).collect(),
            )),
        },
    }
}

/// Builds a credential from a spec that already passed [`rules::check`].
pub fn build_credential(
    identity: &Arc<Identity>,
    spec: &CredentialSpec<'_>,
) -> Result<Credential, String> {
    let rule = match (spec.subject, spec.claims_matching_expression) {
        (Some(subject), None) => SubjectRule::Exact(subject.to_owned()),
        (None, Some(expr)) => {
            SubjectRule::Expression(Expression::parse(expr).map_err(|e| e.to_string())?)
        }
        _ => {
            return Err("exactly one of subject and claims_matching_expression is required".into());
        }
    };
    let audience = spec
        .audiences
        .first()
        .cloned()
        .unwrap_or_else(|| rules::DEFAULT_AUDIENCE.to_owned());
    Ok(Credential {
        name: spec.name.to_owned(),
        identity: identity.clone(),
        issuer: spec.issuer.to_owned(),
        rule,
        audience,
        description: spec.description.map(str::to_owned),
    })
}

/// `claimsMatchingExpression` → `claims_matching_expression`, for config-file key paths.
fn snake(field: &str) -> String {
    let mut out = String::with_capacity(field.len() + 4);
    for c in field.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(text: &str) -> Result<Registry, Vec<BuildProblem>> {
        let cfg = BrokerConfig::from_toml(text, "test").unwrap();
        Registry::from_config(&cfg)
    }

    #[test]
    fn every_example_config_builds_a_registry_under_entras_rules() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let registry = load(&text).unwrap_or_else(|p| panic!("{}: {p:?}", path.display()));
                assert!(registry.identities().count() > 0, "{}", path.display());
                seen += 1;
            }
        }
        assert!(seen >= 3, "only {seen} examples found");
    }

    const BASE: &str = r#"
        [[identities]]
        name = "deploy"
        tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
        client_id = "3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6c"
    "#;

    #[test]
    fn a_credential_breaking_entras_rules_is_named_by_its_key() {
        let text = format!(
            "{BASE}
            [[identities.federated_credentials]]
            name = \"bad name!\"
            issuer = \"https://token.actions.githubusercontent.com\"
            subject = \"repo:c/r:ref:refs/heads/main\"
            audiences = [\"a\", \"b\"]
            claims_matching_expression = \"claims['sub'] eq 'x'\"
            "
        );
        let problems = load(&text).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(
            keys.contains(&"identities[0].federated_credentials[0].name"),
            "{problems:?}"
        );
        assert!(
            keys.contains(&"identities[0].federated_credentials[0].audiences"),
            "{problems:?}"
        );
        assert!(
            keys.contains(&"identities[0].federated_credentials[0].subject"),
            "{problems:?}"
        );
    }

    #[test]
    fn duplicate_issuer_and_subject_on_one_identity_is_refused() {
        let cred = "
            [[identities.federated_credentials]]
            issuer = \"https://token.actions.githubusercontent.com\"
            subject = \"repo:c/r:ref:refs/heads/main\"
            ";
        let text = format!(
            "{BASE}{}{}",
            cred.replace(
                "[[identities.federated_credentials]]",
                "[[identities.federated_credentials]]\nname = \"one\""
            ),
            cred.replace(
                "[[identities.federated_credentials]]",
                "[[identities.federated_credentials]]\nname = \"two\""
            )
        );
        let problems = load(&text).unwrap_err();
        assert!(problems[0].message.contains("already used"), "{problems:?}");
    }

    fn token(iss: &str, sub: &str, aud: &str, extra: serde_json::Value) -> VerifiedToken {
        let mut claims = json!({"iss": iss, "sub": sub, "aud": aud});
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        VerifiedToken {
            iss: iss.into(),
            sub: Some(sub.into()),
            aud: vec![aud.into()],
            exp: 0,
            iat: 0,
            jti: None,
            sha256: String::new(),
            claims,
        }
    }

    #[test]
    fn exact_subjects_and_expressions_match_with_the_right_audience_only() {
        let text = format!(
            "{BASE}
            [[identities.federated_credentials]]
            name = \"main\"
            issuer = \"https://token.actions.githubusercontent.com\"
            subject = \"repo:c/r:ref:refs/heads/main\"
            [[identities.federated_credentials]]
            name = \"releases\"
            issuer = \"https://token.actions.githubusercontent.com\"
            claims_matching_expression = \"claims['sub'] matches 'repo:c/r:ref:refs/heads/release/*' and claims['actor'] eq 'octocat'\"
            "
        );
        let registry = load(&text).unwrap();
        let gh = "https://token.actions.githubusercontent.com";
        let aud = "api://AzureADTokenExchange";
        let main = registry
            .matching(&token(gh, "repo:c/r:ref:refs/heads/main", aud, json!({})))
            .unwrap();
        assert_eq!(main[0].name, "main");
        let release = token(
            gh,
            "repo:c/r:ref:refs/heads/release/1.2",
            aud,
            json!({"actor": "octocat"}),
        );
        assert_eq!(registry.matching(&release).unwrap()[0].name, "releases");
        let wrong_actor = token(
            gh,
            "repo:c/r:ref:refs/heads/release/1.2",
            aud,
            json!({"actor": "mallory"}),
        );
        assert_eq!(
            registry.matching(&wrong_actor).unwrap_err(),
            MatchError::NoCredential
        );
        let case = token(gh, "repo:c/r:ref:refs/heads/MAIN", aud, json!({}));
        assert_eq!(
            registry.matching(&case).unwrap_err(),
            MatchError::NoCredential
        );
        let other_aud = token(gh, "repo:c/r:ref:refs/heads/main", "api://other", json!({}));
        assert!(matches!(
            registry.matching(&other_aud),
            Err(MatchError::Audience { .. })
        ));
        assert!(!registry.knows_issuer("https://token.actions.githubusercontent.com/"));
    }

    #[test]
    fn sovereign_clouds_get_their_authority_and_audience() {
        let text = "
            [[identities]]
            name = \"gov\"
            tenant_id = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"
            client_id = \"3f1c2a9e-5b7d-4e21-9c3a-1d2e3f4a5b6c\"
            cloud = \"usgov\"
            [[identities.federated_credentials]]
            name = \"main\"
            issuer = \"https://token.actions.githubusercontent.com\"
            subject = \"repo:c/r:ref:refs/heads/main\"
        ";
        let registry = load(text).unwrap();
        let gov = registry.identity("gov").unwrap();
        assert_eq!(gov.authority_host, "https://login.microsoftonline.us");
        assert_eq!(
            registry.credentials()[0].audience,
            "api://AzureADTokenExchangeUSGov"
        );
    }
}
